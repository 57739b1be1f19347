"""The one compiled part of licsearch: the rANS decoder in C (licsearch/model/_rans.c).

Everything else is in pyproject.toml. The extension is optional: where no C compiler is found the install goes on,
and licsearch.model.rans decodes with its numba kernel instead (the same loop; tests/test_rans_native.py holds the
two to each other).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("licsearch.model._rans", ["licsearch/model/_rans.c"], optional=True)])
