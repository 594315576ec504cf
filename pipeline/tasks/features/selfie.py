"""SelfIE: the untrained target reads a vector written at the embedding of 'X' in "What is the meaning of the
word 'X'? ...", at norms 1, 5, 10, 25 and 50; scored at every scale and reported as the paper's code reports it
(per feature the best of its scales, `selfie_max`) and at one scale chosen out of sample (`selfie_single_scale`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.lazy import lazy_import, no_grad
from pipeline.tasks import Examples
from pipeline.tasks.features.summary import SCORE_COLUMNS

torch = lazy_import("torch")  # loaded on first use: parsing the workflow does not import torch

SELFIE_SCALES = (1, 5, 10, 25, 50)


SELFIE_PLAIN = "What is the meaning of the word 'X'? The meaning of the word 'X' is "


SELFIE_CHAT = [{"role": "user", "content": "Briefly define the word 'X'."},
               {"role": "assistant", "content": "The meaning of the word 'X' is "}]


@no_grad
def selfie(rows: Examples, generation_cfg, explainer_cfg, explainer_dir, target_dir) -> pd.DataFrame:
    """The untrained target's own reading of each vector, written at the embedding of 'X' at every scale."""
    from pipeline.models import input_device, load_model

    model, tokenizer = load_model(target_dir)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(SELFIE_CHAT, tokenize=False, continue_final_message=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        text = SELFIE_PLAIN
        ids = tokenizer(text)["input_ids"]
    positions = [i for i, token in enumerate(ids) if tokenizer.decode([token]).strip() == "X"]
    if not positions:
        raise ValueError(f"SelfIE: no 'X' token in the prompt {text!r} as {target_dir}'s tokenizer splits it")
    device = input_device(model)
    base = model.get_input_embeddings()(torch.tensor([ids], device=device))
    jobs = [(i, scale) for i in range(len(rows.questions)) for scale in SELFIE_SCALES]
    unit = rows.vectors / rows.vectors.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    outputs = []
    for start in range(0, len(jobs), generation_cfg.batch_size):
        chunk = jobs[start:start + generation_cfg.batch_size]
        embeds = base.repeat(len(chunk), 1, 1).clone()
        for row, (i, scale) in enumerate(chunk):
            embeds[row, positions] = (unit[i] * scale).to(device, embeds.dtype)
        generated = model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], device=device,
                                                                                   dtype=torch.long),
                                   max_new_tokens=generation_cfg.max_new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)
        outputs += [tokenizer.decode(g, skip_special_tokens=True).strip() for g in generated.tolist()]
    return pd.DataFrame({"row_key": [rows.row_keys[i] for i, _ in jobs], "cluster": [rows.clusters[i] for i, _ in jobs],
                         "scale": [scale for _, scale in jobs], "question": text, "prediction": outputs,
                         "reference": [rows.answers[i] for i, _ in jobs],
                         "layer": [rows.columns["layer"][i] for i, _ in jobs]})


SELFIE_MAX, SELFIE_SINGLE = "selfie_max", "selfie_single_scale"


def selfie_by_scale(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """`frames` with the SelfIE table (one row per feature and scale) split into one frame per scale
    (`selfie_scale_{s}`), so that every scorer scores every scale as the paper's code does."""
    frames = dict(frames)
    table = frames.pop("selfie", None)
    if table is not None:
        for scale, part in table.groupby("scale"):
            frames[f"selfie_scale_{int(scale)}"] = part.drop(columns="scale")
    return frames


def collapse_selfie(aligned: dict[str, pd.DataFrame], seed: int, chosen: dict[str, int] | None = None) -> dict:
    """Replace the per-scale SelfIE frames with two: `selfie_max`, per feature and score the best of its scales
    (the paper's `evaluate_item`: every prediction scored, the maximum kept), and `selfie_single_scale`, per score
    one scale for all features, chosen out of sample: on the other half of the features (a seeded split by
    cluster), or the scale in `chosen` (picked on other features, e.g. the test split for an OOD set). Returns the
    mean of each score at each scale and the scales chosen."""
    names = sorted((k for k in aligned if k.startswith("selfie_scale_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    if not names:
        return {}
    frames = [aligned.pop(name) for name in names]
    scales = [int(name.rsplit("_", 1)[1]) for name in names]
    columns = [c for c in SCORE_COLUMNS if c in frames[0]]
    clusters = frames[0]["cluster"].astype(str).to_numpy()
    unique = np.unique(clusters)
    half = np.isin(clusters, unique[np.random.default_rng(seed).permutation(len(unique))[: len(unique) // 2]])
    best, single, means, picked = frames[0].copy(), frames[0].copy(), {}, {}
    for column in columns:
        values = np.stack([f[column].to_numpy(dtype=float) for f in frames])  # [scales, features]
        best[column] = np.fmax.reduce(values, axis=0)
        means[column] = {str(scale): float(np.nanmean(v)) if (~np.isnan(v)).any() else None
                         for scale, v in zip(scales, values)}
        shown = column == columns[0]  # the text shown for selfie_single_scale: the first scorer's scale
        if chosen is not None:
            index = scales.index(chosen[column]) if chosen.get(column) in scales else len(scales) - 1
            single[column] = values[index]
            picked[column] = scales[index]
            if shown:
                single["prediction"] = frames[index]["prediction"].to_numpy()
            continue
        out = np.full(values.shape[1], np.nan)
        picked[column] = {}
        for name, rows in (("first_half", half), ("second_half", ~half)):
            other = values[:, ~rows]
            score = [np.nanmean(v) if (~np.isnan(v)).any() else -np.inf for v in other]
            index = int(np.argmax(score))
            out[rows] = values[index, rows]
            picked[column][name] = scales[index]
            if shown:
                text = single["prediction"].to_numpy(dtype=object)
                text[rows] = frames[index]["prediction"].to_numpy(dtype=object)[rows]
                single["prediction"] = text
        single[column] = out
    judge = columns[0] if columns else None
    if judge:  # the text shown for selfie_max: the scale that the first scorer ranks best for that feature
        top = np.nan_to_num(np.stack([f[judge].to_numpy(dtype=float) for f in frames]), nan=-np.inf).argmax(0)
        best["prediction"] = [frames[i]["prediction"].iloc[row] for row, i in enumerate(top)]
    aligned[SELFIE_MAX], aligned[SELFIE_SINGLE] = best, single
    best_scale = {column: int(max((k for k, v in by.items() if v is not None), key=by.get))
                  for column, by in means.items() if any(v is not None for v in by.values())}
    return {"mean_by_scale": means, "best_scale": best_scale, "single_scale_chosen": picked,
            "single_scale_rule": "given" if chosen is not None else "chosen on the other half of the features"}
