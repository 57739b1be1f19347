"""Text anchors in migrate's closed-form map (``licsearch.ops.anchors``).

Synthetic pairs check the algebra (the plain fit is migrate's, anchors recover a known map that a few pairs cannot,
the weight makes the anchors' number irrelevant); the shipped world CLIPs check that anchors of real text towers
carry old vectors to new ones better than a handful of pairs alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from licsearch.errors import InputError
from licsearch.ops.anchors import TextAnchors, fit_map, text_anchors


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _problem(n: int, k: int, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray, TextAnchors, np.ndarray]:
    """``n`` noisy pairs and ``k`` anchors of one random rotation ``r`` (returned last)."""
    rng = np.random.default_rng(seed)
    r, _ = np.linalg.qr(rng.normal(size=(d, d)))
    x = _unit(rng.normal(size=(n, d)))
    t = _unit(x @ r + 0.3 * rng.normal(size=(n, d)) / np.sqrt(d))
    a = _unit(rng.normal(size=(k, d)))
    return x, t, TextAnchors(a, a @ r), r


def test_without_anchors_it_is_migrates_ridge_towards_procrustes() -> None:
    from licsearch.ops.migrate import _fit_map

    x, t, _, _ = _problem(40, 0)
    np.testing.assert_allclose(fit_map(x, t), _fit_map(x, t), rtol=1e-10, atol=1e-12)


def test_anchors_recover_a_map_that_few_pairs_leave_loose() -> None:
    x, t, anchors, r = _problem(6, 200)
    plain = np.linalg.norm(fit_map(x, t) - r)
    anchored = np.linalg.norm(fit_map(x, t, anchors) - r)
    assert anchored < 0.25 * plain, (anchored, plain)
    held = _unit(np.random.default_rng(1).normal(size=(50, 16)))
    cos = np.sum(_unit(held @ fit_map(x, t, anchors)) * (held @ r), axis=1)
    assert cos.mean() > 0.95


def test_anchors_together_weigh_as_much_as_the_pairs_whatever_their_number() -> None:
    x, t, anchors, _ = _problem(10, 30)
    twice = TextAnchors(np.concatenate([anchors.old] * 2), np.concatenate([anchors.new] * 2))
    np.testing.assert_allclose(fit_map(x, t, twice), fit_map(x, t, anchors), rtol=1e-8, atol=1e-10)


def test_anchors_of_other_widths_refused() -> None:
    x, t, anchors, _ = _problem(10, 5)
    with pytest.raises(InputError, match="do not fit"):
        fit_map(x, t, TextAnchors(anchors.old[:, :8], anchors.new))


def test_world_clips_text_anchors_carry_old_vectors_to_new_ones() -> None:
    from licsearch.model.text import TextEncoder
    from licsearch.world import sample_specs

    old = TextEncoder.load("licsearch-world", None, "shipped:offline/clip-world.safetensors")
    new = TextEncoder.load("licsearch-world", None, "shipped:offline/clip-world-b.safetensors")
    with pytest.raises(InputError, match="at least 2"):
        text_anchors(old, new, ["one", " one ", ""])
    train = [s.caption() for s in sample_specs(300, seed=11, split="train")]
    anchors = text_anchors(old, new, [*train, *train[:10]])
    assert len(anchors) == len(set(train))
    assert anchors.old.shape == anchors.new.shape == (len(anchors), 128)
    np.testing.assert_allclose(np.linalg.norm(anchors.new, axis=1), 1.0, atol=1e-5)
    test = list(dict.fromkeys(s.caption() for s in sample_specs(60, seed=12, split="test")))
    few, rest = text_anchors(old, new, test[:8]), text_anchors(old, new, test[8:])

    def cos(m: np.ndarray) -> float:
        return float(np.mean(np.sum(_unit(rest.old @ m) * rest.new, axis=1)))

    assert cos(fit_map(few.old, few.new, anchors)) > cos(fit_map(few.old, few.new)) + 0.05
