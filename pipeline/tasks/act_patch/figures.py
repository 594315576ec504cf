"""The act_patch labels' figure: the share of the target's next tokens a patch changes, by layer window and token
type (PNG, written atomically)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.artifacts import pyplot, read_table, save_figure


def patch_effect(label_paths: list[str]) -> pd.DataFrame:
    """Share of rows whose next token the patch changed, by token type (rows) and layer window (columns)."""
    frame = pd.concat([read_table(p, required=["layer", "token_type", "is_different"]) for p in label_paths])
    frame["window"] = [f"{int(w[0])}-{int(w[-1])}" if len(w) > 1 else str(int(w[0])) for w in frame["layer"]]
    frame["first"] = [int(w[0]) for w in frame["layer"]]
    table = frame.pivot_table(index="token_type", columns="first", values="is_different", aggfunc="mean")
    table.columns = [frame.loc[frame["first"] == c, "window"].iloc[0] for c in table.columns]
    return table


def patch_effect_figure(label_paths: list[str], out_path, title: str) -> pd.DataFrame:
    plt = pyplot()
    table = patch_effect(label_paths)
    figure, axis = plt.subplots(figsize=(1.1 * len(table.columns) + 3, 0.7 * len(table) + 1.8))
    image = axis.imshow(table.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(table.columns)), table.columns)
    axis.set_yticks(range(len(table.index)), table.index)
    for (row, col), value in np.ndenumerate(table.to_numpy(dtype=float)):
        axis.text(col, row, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    axis.set_xlabel("patched layer window")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, label="share of next tokens changed")
    save_figure(figure, out_path)
    return table
