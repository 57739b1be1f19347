"""Text anchors for ``migrate``'s closed-form output layer: free pairs of the old and the new CLIP's text towers.

``migrate`` maps the old adapter's unit vectors ``x`` linearly to the new CLIP's teacher vectors ``t`` (ridge
regression shrunk towards the orthogonal Procrustes map, Schönemann 1966; penalty by leave-one-out error, Allen 1974),
fitted on the decoded sample alone: a hundred pairs for a 128 x 128 map. Both CLIPs also embed text, and a text costs
no decoding: each text's vector under the old text tower and under the new one is one more pair of the same map
(a text and an image of one space are aligned by CLIP's training, so the map that carries old image vectors to new ones
should carry old text vectors to new ones too). Added to the fit, these anchors fix the directions the sample leaves
loose, and above all keep the migrated images aligned with the new text tower, which is what text search reads.

Each anchor row gets the weight ``len(x) / len(anchors)``: the anchors together count as much as the image pairs,
whatever their number. The penalty is still chosen by the leave-one-out cosine of the image pairs only (the anchors
are always in the fit; the PRESS identity holds for any row of the design). Texts should be the store's kind of
query (captions, past queries); on the offline world, texts that the world CLIP cannot read (its tokenizer's
vocabulary words) move the old vectors the wrong way, so anchors are only used when texts are given.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from ..model.models import TextLike

RIDGE_PENALTIES = tuple(10.0 ** (e / 4) for e in range(-12, 9))
"""Ridge penalties tried on unit features, 1e-3 to 1e2 (the leave-one-out error picks one)."""
MIN_ANCHORS = 2
MAX_ANCHORS = 512
"""At most this many texts are embedded (a fixed sample by hash): each costs two text-tower passes, and on the offline
world 300 anchors fit as well as 2,822 (README, "Moving to another CLIP")."""


@dataclass(frozen=True)
class TextAnchors:
    """The same texts under the old and the new CLIP's text towers (rows are texts, unit vectors).

    Attributes:
        old: ``(K, D_old)`` vectors of the old text tower (the store's space, which the old adapter's vectors share).
        new: ``(K, D_new)`` vectors of the new text tower.
    """

    old: np.ndarray = field(repr=False)
    new: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.old)


def text_anchors(old: TextLike, new: TextLike, texts: Sequence[str], *, limit: int = MAX_ANCHORS) -> TextAnchors:
    """Embeds ``texts`` with both text towers (deduplicated; beyond ``limit``, a fixed sample chosen by hash).

    Raises:
        InputError: fewer than two distinct non-empty texts.
    """
    import numpy as np

    unique = list(dict.fromkeys(s.strip() for s in texts if s.strip()))
    if len(unique) < MIN_ANCHORS:
        raise InputError(
            f"{len(unique)} distinct anchor text(s); text anchors need at least {MIN_ANCHORS}",
            hint="give a file of captions or typical queries, one per line",
        )
    if len(unique) > limit:
        unique = sorted(unique, key=lambda s: hashlib.sha256(s.encode()).hexdigest())[:limit]
    a = old.embed(unique).vectors.double().numpy()
    b = new.embed(unique).vectors.double().numpy()
    return TextAnchors(np.ascontiguousarray(a), np.ascontiguousarray(b))


def fit_map(x: np.ndarray, t: np.ndarray, anchors: TextAnchors | None = None) -> np.ndarray:
    """``M`` with ``x @ M ~ t``: ridge towards the Procrustes map, the penalty of best leave-one-out cosine.

    For a penalty ``lam`` and prior ``Q`` (the Procrustes map of the same weighted rows),
    ``M = (G + lam I)^-1 (C + lam Q)`` with ``G = x^T x + w a^T a`` and ``C = x^T t + w a^T b`` over image pairs
    ``(x, t)`` and anchors ``(a, b)`` of weight ``w = len(x) / len(a)``. The leave-one-out residual of an image pair
    is its residual divided by ``1 - leverage`` (the PRESS statistic, Allen 1974).

    Raises:
        InputError: the anchors' widths do not match ``x`` and ``t``.
    """
    import numpy as np

    x, t = np.asarray(x, dtype=np.float64), np.asarray(t, dtype=np.float64)
    gram, cross = x.T @ x, x.T @ t
    if anchors is not None:
        if anchors.old.shape[1] != x.shape[1] or anchors.new.shape[1] != t.shape[1]:
            raise InputError(
                f"text anchors of widths {anchors.old.shape[1]} -> {anchors.new.shape[1]} do not fit a map "
                f"{x.shape[1]} -> {t.shape[1]}",
                hint="embed the anchors with the store's text tower and the new CLIP's",
            )
        w = len(x) / len(anchors)
        gram = gram + w * (anchors.old.T @ anchors.old)
        cross = cross + w * (anchors.old.T @ anchors.new)
    u, _, vt = np.linalg.svd(cross, full_matrices=False)
    prior = u @ vt
    best: tuple[float, np.ndarray] = (-math.inf, prior)
    for lam in RIDGE_PENALTIES:
        inv = np.linalg.inv(gram + lam * np.eye(x.shape[1]))
        m = inv @ (cross + lam * prior)
        leverage = np.einsum("ij,jk,ik->i", x, inv, x)
        loo = t - (t - x @ m) / (1.0 - leverage)[:, None]
        score = float(np.mean(np.sum(loo * t, axis=1) / np.maximum(np.linalg.norm(loo, axis=1), 1e-12)))
        if score > best[0]:
            best = (score, m)
    return best[1]
