"""Text anchors in migrate's closed-form map (``licsearch.ops.anchors``).

Synthetic pairs check the algebra (the penalty against naive leave-one-out refits, anchors recover a known map that a
few pairs cannot, the weight makes the anchors' number irrelevant); the shipped world CLIPs check that anchors of real
text towers carry old vectors to new ones better than a handful of pairs alone, and the cap on their number.
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


def test_the_penalty_is_the_one_of_best_leave_one_out_cosine_refitted_naively() -> None:
    """The PRESS shortcut against refitting without each pair in turn (prior from the full pairs, as in the fit)."""
    from licsearch.ops.anchors import RIDGE_PENALTIES

    rng = np.random.default_rng(3)
    mix = np.eye(6) + 0.5 * rng.normal(size=(6, 6))  # not a rotation, so the Procrustes prior alone is not best
    x = _unit(rng.normal(size=(12, 6)))
    t = _unit(x @ mix + 0.2 * rng.normal(size=(12, 6)))
    a = _unit(rng.normal(size=(5, 6)))
    anchors = TextAnchors(a, _unit(a @ mix))
    w = len(x) / len(anchors)
    gram, cross = x.T @ x + w * anchors.old.T @ anchors.old, x.T @ t + w * anchors.old.T @ anchors.new
    u, _, vt = np.linalg.svd(cross)
    prior = u @ vt

    def solve(g: np.ndarray, c: np.ndarray, lam: float) -> np.ndarray:
        return np.linalg.solve(g + lam * np.eye(6), c + lam * prior)

    def loo_cos(lam: float) -> float:
        cos = []
        for i in range(len(x)):
            m = solve(gram - np.outer(x[i], x[i]), cross - np.outer(x[i], t[i]), lam)
            p = x[i] @ m
            cos.append(p @ t[i] / np.linalg.norm(p))
        return float(np.mean(cos))

    best = max(RIDGE_PENALTIES, key=loo_cos)
    np.testing.assert_allclose(fit_map(x, t, anchors), solve(gram, cross, best), rtol=1e-8, atol=1e-10)
    assert best not in (RIDGE_PENALTIES[0], RIDGE_PENALTIES[-1])  # an inner optimum: the choice is tested


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
    capped, reordered = text_anchors(old, new, train, limit=50), text_anchors(old, new, train[::-1], limit=50)
    assert len(capped) == 50
    np.testing.assert_allclose(capped.new, reordered.new, atol=1e-6)  # the same 50 texts, whatever the file's order
    test = list(dict.fromkeys(s.caption() for s in sample_specs(60, seed=12, split="test")))
    few, rest = text_anchors(old, new, test[:8]), text_anchors(old, new, test[8:])

    def cos(m: np.ndarray) -> float:
        return float(np.mean(np.sum(_unit(rest.old @ m) * rest.new, axis=1)))

    assert cos(fit_map(few.old, few.new, anchors)) > cos(fit_map(few.old, few.new)) + 0.05
