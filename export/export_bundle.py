"""Export a store's models (or models named by flags) to an ONNX bundle.

A thin shell over ``licsearch export``: the export, ``onnx.checker`` and the ONNX-Runtime-vs-torch parity
checks live in ``licsearch.bundle.export``. Usage::

    python export/export_bundle.py [--store DIR | model flags] --out BUNDLE_DIR [--int8 none|dynamic|static]
                                   [--calibration DIR] [--opset N]
"""

import sys

from licsearch.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
