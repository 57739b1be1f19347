"""The project's defaults, each defined once: input limits, the default models and the release thresholds.

The CLI's flags, the store config, the library's functions and the serving limits read these names; nothing else
types the values.
"""

from __future__ import annotations

MAX_PIXELS = 40_000_000
"""Largest image accepted (decoded, encoded or ingested), in pixels: a decompression-bomb guard."""
MAX_REQUEST_BYTES = 16 * 1024 * 1024
"""Largest payload (image or bitstream) of one request to a served model, in bytes."""
MAX_TEXTS_PER_REQUEST = 256
"""Most texts in one request to the served ``embed`` model."""
PREVIEW_SIDE_PX = 256
"""Longest side of the WebP previews (thumbnails) a store keeps for its images, in pixels."""
PREVIEW_WEBP_QUALITY = 80
"""WebP quality of those previews."""

CODEC_ARCH = "bmshj2018-hyperprior"
CODEC_QUALITY = 3
CODEC = f"{CODEC_ARCH}:{CODEC_QUALITY}"
"""The default codec, as ``--codec`` writes it: CompressAI's scale hyperprior (Ballé et al. 2018) at quality 3."""

CLIP_MODEL = "ViT-B-32"
CLIP_TAG = "laion2b_s34b_b79k"
CLIP = f"{CLIP_MODEL}:{CLIP_TAG}"
"""The default CLIP, as ``--clip`` writes it: open_clip's ViT-B/32 trained on LAION-2B."""

CODEC_WEIGHTS = "pretrained"
CLIP_WEIGHTS = "pretrained"
ADAPTER_WEIGHTS = "random"
SEED = 0
"""Weights sources of the three models when no flag names them, and the seed of random weights."""

PSNR_DELTA_MIN_DB = -0.1
"""Parity gate and canary: least PSNR change (candidate minus reference), in dB."""
BPP_DELTA_MAX_PCT = 1.0
"""Parity gate and canary: largest bits-per-pixel growth of the candidate, in percent."""
COS_MEAN_MIN = 0.99
"""Parity gate and canary: least mean cosine between the reference's and the candidate's embeddings."""
RECALL_OVERLAP_MIN = 0.95
"""Parity gate: least overlap of the image rankings' top 10 (recall@10 overlap)."""
LATENCY_RATIO_MAX = 1.5
"""Canary: largest candidate-over-live request time."""

DISTILL_HOLDOUT = 0.1
"""``licsearch distill``: fraction of the points held out (by id) to measure the distilled adapter."""
DISTILL_MIN_POINTS = 50
"""``licsearch distill``: fewest points with a teacher vector a store needs to distil its adapter."""
DISTILL_STEPS = 2000
DISTILL_BATCH = 32
DISTILL_LR = 1e-3
"""``licsearch distill``: optimisation steps, pairs per step and peak learning rate (AdamW, cosine decay)."""
DISTILL_FLIP = 0.5
"""``licsearch distill``: the chance that a training pair's y_hat is mirrored left to right."""
DISTILL_TEXTS = 200
"""``licsearch distill``: text queries drawn from the CLIP tokenizer's vocabulary for the top-10 agreement."""

DUPES_THRESHOLD = 0.93
"""``licsearch dupes``: least cosine similarity of two images joined as near-duplicates (README, Duplicates)."""
WATCH_INTERVAL_S = 60.0
"""``licsearch watch``: seconds between two rescans of the watched folders."""

ADAPTER_RECALL_OVERLAP_MIN = 0.9
"""``distill`` and ``migrate``: least held-out recall@10 overlap (adapter against teacher) for a space to activate."""
MIGRATE_HOLDOUT = 0.2
"""``licsearch migrate``: fraction of the decoded sample held out to measure the new adapter."""
MIGRATE_STEPS = 300
"""``licsearch migrate``: training steps of a fresh adapter on the sample (when the store has no adapter space)."""

ARC_MARGIN_SCALE = 30.0
ARC_MARGIN_MARGIN = 0.1
"""ArcMargin (Deng et al. 2019, as Schall et al. 2024 use it): logit scale s and additive angular margin m, radians."""
PSEUDO_CAPTION_THRESHOLD = 0.27
PSEUDO_CAPTION_COUNT = 20
"""MCIP's pseudo-captions (Schall et al. 2024): an image's nearest captions, at most this many, above this cosine."""
MCIP_LAMBDA_LABELS = 0.1
MCIP_LAMBDA_CAPTIONS = 0.5
MCIP_LAMBDA_DISTILL = 1.0
"""MCIP's loss weights: λ1 on ArcMargin over labels and λ2 on MCArcMargin over pseudo-captions (Schall et al. 2024),
and λd on the distillation term 1 - cos to CLIP's image embedding (not in the seed).

They depart from the seed's λ1 = λ2 = 0.5 (and no distillation term) because of what they measured on the offline
preset's q2 codec (README, Retrieval objectives; docs/retrieval-objectives.json): with the seed's weights, held-out
world mAP@R is 1.06x the distilled adapter's and text-to-image hit@1 drops from 0.491 to 0.394; with λ1 = 0.1,
λd = 1 it is 1.25x-1.27x (seeds 0, 1 and 2) with hit@1 0.509-0.519 (near-duplicate figures are mixed: see the
README). The pseudo-caption threshold stays the seed's: it is a cosine on the CLIP model's own scale (the world CLIP
needs ``--caption-threshold 0.85``)."""
