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


def described_by_rank(rank, every: int):
    """Whether a top exemplar of this rank (an int or an array of ranks) is one the describer reads: ranks 0, k, 2k, ...
    for k = `every`. The simulator scores the other top ranks, so a reference description is scored out of sample
    (with k = 1 the describer reads them all and nothing is held out)."""
    return rank % every == 0


def top_rank_counts(kept: int, every: int) -> tuple[int, int]:
    """Of `kept` top exemplars (ranks 0 .. kept - 1): how many the describer reads, and how many the simulator can
    score (those the describer did not read, or all of them when `every` is 1)."""
    read = -(-kept // every)
    return read, (kept - read if every > 1 else kept)
