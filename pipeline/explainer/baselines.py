"""Baselines learned from the training split alone, scored with the same metrics as the explainers.

- structure prior: for each value of a key that the question's text reveals (act_patch: token type x layer
  window; input_ablation: whether the hint names the target's own unhinted answer), the training rows'
  majority verdict and, among rows with that verdict, their most frequent answer content;
- majority class: the same with a single key, i.e. the training split's majority verdict and answer.
A key never seen in training falls back to the majority class. Ties go to "unchanged" and to the
alphabetically first content, so the baselines are deterministic.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Sequence


@dataclass(frozen=True)
class Guess:
    changed: bool
    content: str
    support: int  # training rows behind it


def _fit(changed: Sequence[bool], contents: Sequence[str]) -> Guess:
    votes = Counter(bool(c) for c in changed)
    verdict = votes[True] > votes[False]
    matching = Counter(content for c, content in zip(changed, contents) if bool(c) == verdict)
    content = min(matching.items(), key=lambda item: (-item[1], item[0]))[0] if matching else ""
    return Guess(verdict, content, len(changed))


def fit_prior(keys: Sequence[Hashable], changed: Sequence[bool], contents: Sequence[str]) -> dict:
    """key -> Guess from the training rows, plus the majority class under key None."""
    if not len(keys):
        raise ValueError("a prior needs at least one training row")
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    prior = {key: _fit([changed[i] for i in rows], [contents[i] for i in rows]) for key, rows in groups.items()}
    prior[None] = _fit(changed, contents)
    return prior


def predict(prior: dict, keys: Sequence[Hashable]) -> list[Guess]:
    return [prior.get(key, prior[None]) for key in keys]


def describe(prior: dict) -> list[dict]:
    """The prior as a table for the results file (key, verdict, content, training rows)."""
    return [{"key": "all (majority class)" if key is None else str(key),
             "verdict": "changed" if guess.changed else "unchanged", "content": guess.content,
             "training_rows": guess.support}
            for key, guess in sorted(prior.items(), key=lambda item: (item[0] is not None, str(item[0])))]
