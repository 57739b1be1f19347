"""Training tools: the codec (rate-distortion), the adapter (distillation from CLIP), both jointly, and a small
CLIP on the procedural world.

Two-phase training after Luo 2024 (arXiv 2404.10234): first the codec with ``L = R + λ·D``, then the adapter with
the codec frozen and ``Ds = 1 - cos(adapter(y_hat), CLIP(x))``; then optionally joint fine-tuning with
``L = R + λ·D + λs·Ds``.

Layout: :mod:`.run` (output folder: checkpoints, JSONL log, provenance), :mod:`.loop` (device, learning-rate
schedule, the step loop), :mod:`.data` (image folders, deterministic sampling, augmentations), :mod:`.latent`
(y_hat as at inference, and the differentiable training forward), :mod:`.teacher` (CLIP's image tower),
:mod:`.world_data` (rendered world splits), one module per trainer (:mod:`.codec`, :mod:`.adapter`,
:mod:`.joint`, :mod:`.clip`) and :mod:`.cli` (the ``licsearch train`` arguments). Nothing heavy is imported here.
"""
