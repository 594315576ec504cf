"""A simulator with no language model: 1 where a window token is one of the description's quoted tokens, else 0.

A check on the trained simulator, not a score of the workflow: it reads only what a description quotes (the offline
describer's references quote a feature's commonest firing tokens), so on a run's scored windows it gives a reader's
ceiling (the references) and floor (the references shuffled among features) that no layout shortcut can reach.

    python -m pipeline.tasks.features.quoted [WORKDIR]   # a finished features run (default: .), target smollm
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.tasks.features.simulator import pooled_correlations, read_windows

QUOTED = re.compile(r'"(.*?)"')


def quoted_tokens(description: str) -> set[str]:
    """The quoted strings of a description before any `, as in` example, stripped."""
    return {q.strip() for q in QUOTED.findall(str(description).split(", as in")[0]) if q.strip()}


def quoted_simulation(description: str, entry: dict) -> np.ndarray:
    """1.0 at each window token (stripped) that the description quotes, 0.0 elsewhere, in the windows' order."""
    quoted = quoted_tokens(description)
    return np.asarray([float(str(token).strip() in quoted) for window in entry["windows"] for token in window])


def quoted_scores(items: list[tuple[str, tuple[int, int]]], windows: dict) -> pd.DataFrame:
    """Per (description, feature): pooled correlations of the quoted-token simulation (a constant one counts 0)."""
    rows = []
    for description, key in items:
        score = pooled_correlations(quoted_simulation(description, windows[key]), windows[key])
        rows.append({name: 0.0 if np.isnan(value) else value for name, value in score.items()})
    return pd.DataFrame(rows, columns=["top", "top_signed", "top_random"])


def main(workdir: str = ".", target: str = "smollm", explainer: str = "smollm") -> None:
    from pipeline.config import load_config, typed_settings
    from pipeline.explainer.metrics import mean_with_interval

    root = Path(workdir)
    features = typed_settings(load_config(root / "config.yaml")).features
    cfg = features.simulator
    windows = read_windows(root / f"work/features/exemplars/{target}.parquet", cfg, features.described_every)
    folder = root / f"work/features/predictions/{explainer}_{target}"
    frames = {path.stem: pd.read_parquet(path) for path in sorted(folder.glob("*.parquet")) if path.stem != "selfie"}
    first = next(iter(frames.values()))
    keys = [(int(layer), int(feature)) for layer, feature in zip(first["layer"], first["feature"])]
    rows = {name: list(frame["prediction"]) for name, frame in frames.items()}
    rows["reference"] = list(first["reference"])
    rows["reference, shuffled"] = list(first["reference"].iloc[np.random.default_rng(0).permutation(len(first))])
    for name, descriptions in rows.items():
        scored = mean_with_interval(quoted_scores(list(zip(descriptions, keys)), windows)["top"], keys, 1000, 0)
        low, high = scored["ci"]
        print(f"{name}: |r| on the top exemplars {scored['value']:.3f} [{low:.3f}, {high:.3f}] over {len(keys)} features")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.tasks.features.quoted", description=(
        "Score a finished features run's descriptions with the quoted-token check (no LM): a description scores on "
        "the tokens it quotes."))
    parser.add_argument("workdir", nargs="?", default=".", help="the workflow folder (config.yaml, work/)")
    parser.add_argument("target", nargs="?", default="smollm")
    parser.add_argument("explainer", nargs="?", default="smollm")
    arguments = parser.parse_args()
    main(arguments.workdir, arguments.target, arguments.explainer)
