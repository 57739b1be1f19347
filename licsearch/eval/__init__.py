"""Evaluation: rate-distortion, BD-rate and semantic fidelity of the codec and its adapter (``licsearch eval``).

Modules, one concept each (the metrics themselves, PSNR, MS-SSIM, recall overlap and hit@k, are
:mod:`licsearch.metrics`):

- :mod:`.baselines`: JPEG, WebP and AVIF through Pillow, swept over their quality settings.
- :mod:`.rd`: rate-distortion points and curves, measured or loaded from published anchors.
- :mod:`.bdrate`: Bjøntegaard delta rate and delta PSNR between two curves.
- :mod:`.planes`: which model planes to evaluate (one per codec quality, or per bundle).
- :mod:`.semantic`: adapter-vs-teacher agreement, text-to-image hit rates, near-duplicate recall.
- :mod:`.plots`: RD and hit-rate figures (matplotlib).
- :mod:`.report`: the whole evaluation as one JSON document.
- :mod:`.table`: its compact human summary.

Nothing here is imported by the rest of the package at start-up; heavy libraries load inside functions.
"""
