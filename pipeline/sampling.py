"""Seeded samples of rows: which training examples, test rows and scored features a stage takes.

Its own module, so the stages that draw a sample (training, generation, scoring, the diagnostic) depend on this
and not on each other's code."""

from __future__ import annotations

import numpy as np


def seeded_subset(count: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of `limit` out of `count` rows (all rows when `limit` is unset or larger)."""
    if limit and count > limit:
        return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))
    return np.arange(count)
