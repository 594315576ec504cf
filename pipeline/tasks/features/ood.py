"""Out-of-distribution vectors for the features task, as the paper's `ood_fw` and `ood_diff` sets.

The explainer, trained on SAE decoder directions, describes vectors that are not SAE features; with no
reference description, the simulator scores each description against the vector's own activations.
- `ood_fw`: the target's residual stream at random tokens of held-out text (the corpus's eval split, which
  the SAEs never saw), at each SAE layer.
- `ood_diff`: the difference of the residual streams at the subject's last token between the two facts of a
  counterfactual pair (act_patch's kept facts: same relation, answers that differ), at each SAE layer.
Vectors are scaled to unit norm, as the decoder directions the explainer was trained on. A vector's
activation at a token is the projection of that token's residual stream (same layer) onto it; its exemplars,
in the layout of the SAE exemplars (pipeline/tasks/features/exemplars.py), are its top-projecting corpus tokens and random
corpus tokens, with the projection at every window token. Per set the workflow writes a label table in the
features task's columns (empty description, the vector's origin as `context`), its vectors and exemplars.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from pipeline.lazy import lazy_import
from pipeline.artifacts import ArtifactError, provenance, read_table, write_table, write_tensors
from pipeline.tasks.features.exemplars import EXEMPLAR_COLUMNS, window_bounds, window_tokens
from pipeline.tasks.features.sae import corpus_texts, residual_states, separator_id, token_chunks
from pipeline.tasks.features.settings import ExemplarsConfig, FeaturesConfig, OodConfig

torch = lazy_import("torch")  # loaded on first use: parsing the workflow does not import torch

SETS = ("ood_fw", "ood_diff")


def set_paths(target: str, name: str) -> dict[str, str]:
    base = f"work/features/ood/{target}/{name}"
    return {"labels": f"{base}.parquet", "vectors": f"{base}.vectors.safetensors", "exemplars": f"{base}.exemplars.parquet"}


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def full_activation_vectors(model, tokenizer, corpus_path, layers: list[int], count: int, context: int,
                            seed: int) -> tuple[dict[int, torch.Tensor], list[str]]:
    """Per layer, the residual stream at `count` random tokens of held-out text (the same tokens at every layer),
    and each token in its context."""
    chunks = token_chunks(tokenizer, corpus_texts(corpus_path, "eval"), context, None, seed)
    rng = np.random.default_rng(seed)
    separator = int(chunks[0, 0])
    cells = [(int(s), int(p)) for s, p in zip(rng.integers(0, len(chunks), 4 * count), rng.integers(1, context, 4 * count))
             if int(chunks[s, p]) != separator]
    cells = list(dict.fromkeys(cells))[:count]
    if len(cells) < count:
        raise ArtifactError(f"{corpus_path}: the eval split holds too few tokens for {count} ood_fw vectors")
    picked = chunks[[s for s, _ in cells]]
    states = next(residual_states(model, picked, layers, len(picked), "ood_fw"))[1]
    rows = torch.arange(len(cells))
    positions = torch.tensor([p for _, p in cells])
    contexts = []
    for row, (_, position) in enumerate(cells):
        tokens, index = window_tokens(tokenizer, picked[row].tolist(), position, 8, 0)
        contexts.append("".join(tokens[:index]) + f"<<{tokens[index]}>>")
    return {layer: states[layer][rows, positions] for layer in layers}, contexts


def difference_vectors(model, tokenizer, facts_path, layers: list[int], count: int,
                       seed: int) -> tuple[dict[int, torch.Tensor], list[str]]:
    """Per layer, residual(counterfactual fact) - residual(original fact) at the subject's last token, for `count`
    counterfactual pairs of kept facts (the fact sentences after the separator token, no few-shot prefix)."""
    from pipeline.tasks.facts import make_pairs, token_positions
    from pipeline.tasks.facts import RenderedPrompt
    from pipeline.engine.patching import encode, pad_left

    facts = read_table(facts_path, required=["relation", "subject", "template", "target_true", "kept"])
    pairs = make_pairs(facts[facts["kept"]].reset_index(drop=True), seed, tokenizer)[:count]
    if len(pairs) < count:
        raise ArtifactError(f"{facts_path}: {len(pairs)} counterfactual pairs of kept facts, ood_diff needs {count}")
    prompts = []
    for pair in pairs:
        for fact in pair:
            start = fact["template"].index("{}")
            text = fact["template"].replace("{}", fact["subject"])
            prompts.append(RenderedPrompt(text, (start, start + len(fact["subject"])), len(text), True))
    # Each sentence opens with the separator the SAEs' chunks open with: a subject at position 0 would sit on the
    # attention sink, whose residual norm is tens of times any other token's.
    encoded = encode(tokenizer, [p.text for p in prompts], add_special_tokens=False)
    sep = separator_id(tokenizer)
    ids, mask, shifts = pad_left([[sep] + e["input_ids"] for e in encoded], tokenizer.pad_token_id)
    subject = torch.tensor([token_positions(p, e["offsets"])["last_subject_token"] + 1 + shift
                            for p, e, shift in zip(prompts, encoded, shifts)])
    from pipeline.models import input_device

    with torch.no_grad():
        hidden = model(input_ids=ids.to(input_device(model)), attention_mask=mask.to(input_device(model)),
                       output_hidden_states=True, logits_to_keep=1).hidden_states
    rows = torch.arange(len(prompts))
    vectors = {}
    for layer in layers:
        at = hidden[layer + 1].float()[rows, subject.to(hidden[0].device)].cpu()
        vectors[layer] = at[1::2] - at[0::2]
    contexts = [f"{o['template'].replace('{}', o['subject'])} -> {c['subject']} ({o['target_true']} -> "
                f"{c['target_true']})" for o, c in pairs]
    return vectors, contexts


def projection_exemplars(model, tokenizer, chunks: torch.Tensor, vectors: dict[int, torch.Tensor], cfg: OodConfig,
                         window: ExemplarsConfig) -> pd.DataFrame:
    """Per layer and vector: its `cfg.top` largest-projection tokens and `cfg.random` other tokens of `chunks`, each
    with its window (the exemplars' `window_before`/`window_after`) and the projection at every window token."""
    layers = list(vectors)
    projections = {layer: [] for layer in layers}
    for _, states in residual_states(model, chunks, layers, cfg.batch_size, "projections"):
        for layer in layers:
            projections[layer].append(states[layer].cpu() @ vectors[layer].T)  # [B, T, n]
    rng = np.random.default_rng(cfg.seed)
    length, rows = chunks.shape[1], []
    for layer in layers:
        values = torch.cat(projections[layer])  # [chunks, T, n]
        values[:, 0] = float("-inf")  # the opening separator is never an exemplar
        flat = values.flatten(0, 1)
        for feature in range(values.shape[2]):
            column = flat[:, feature]
            top = torch.topk(column, cfg.top).indices.numpy()
            others = np.setdiff1d(np.flatnonzero(np.isfinite(column.numpy())), top)
            picks = [("top", top), ("random", rng.choice(others, min(cfg.random, len(others)), replace=False))]
            for kind, cells in picks:
                for rank, cell in enumerate(cells):
                    sequence, position = divmod(int(cell), length)
                    start, end = (int(v) for v in window_bounds(position, window.window_before, window.window_after,
                                                                 length))
                    tokens, index = window_tokens(tokenizer, chunks[sequence].tolist(), position, window.window_before,
                                                  window.window_after)
                    rows.append({"layer": layer, "feature": feature, "kind": kind, "rank": rank, "sequence": sequence,
                                 "token_index": position, "tokens": tokens, "window_index": index,
                                 "activation": float(values[sequence, position, feature]),
                                 "activations": values[sequence, start:end, feature].tolist()})
    return pd.DataFrame(rows, columns=EXEMPLAR_COLUMNS)


def build_ood(model_dir, corpus_path, facts_path, features: FeaturesConfig, outputs: dict[str, dict[str, str]],
              settings: dict) -> dict:
    """Write every configured set's labels, vectors and exemplars (`outputs`: set -> set_paths) at the SAE layers,
    over chunks of `features.sae.context` tokens, with the exemplars' windows."""
    from pipeline.models import load_model, read_manifest

    cfg, context, layers = features.ood, features.sae.context, list(features.sae.layers)
    model, tokenizer = load_model(model_dir)
    manifest = read_manifest(model_dir)
    chunks = token_chunks(tokenizer, corpus_texts(corpus_path, "train"), context, cfg.tokens, cfg.seed)
    made = {}
    for name in outputs:
        if name == "ood_fw":
            made[name] = full_activation_vectors(model, tokenizer, corpus_path, layers, cfg.vectors_per_layer,
                                                 context, cfg.seed)
        elif name == "ood_diff":
            if not facts_path:
                raise ValueError("features.ood.sets: ood_diff needs act_patch's facts of the target")
            made[name] = difference_vectors(model, tokenizer, facts_path, layers, cfg.vectors_per_layer, cfg.seed)
        else:
            raise ValueError(f"features.ood.sets: unknown set '{name}'; expected some of {SETS}")
    # One pass over the corpus measures every set's projections; feature f of set i is column i * n + f.
    n = cfg.vectors_per_layer
    stacked = {layer: torch.cat([_unit(made[name][0][layer]) for name in made]) for layer in layers}
    exemplars = projection_exemplars(model, tokenizer, chunks, stacked, cfg, features.exemplars)
    counts = {}
    for i, (name, paths) in enumerate(outputs.items()):
        raw, contexts = made[name]
        mine = exemplars[(exemplars["feature"] >= i * n) & (exemplars["feature"] < (i + 1) * n)]
        mine = mine.assign(feature=mine["feature"] - i * n).reset_index(drop=True)
        frame = pd.DataFrame([{"row_id": j * n + f, "feature_id": f"{name}:{layer}:{f}", "layer": layer, "feature": f,
                               "split": name, "description": "", "describer": "none", "context": contexts[f],
                               "cluster": f"{name}:{f}", "norm": float(raw[layer][f].norm())}
                              for j, layer in enumerate(layers) for f in range(n)])
        prov = provenance(settings | {"set": name}, {"target": manifest["source"]})
        counts[name] = {"vectors": len(frame), "exemplars": len(mine), "layers": layers,
                        "mean_norm_before_scaling": {str(layer): round(float(raw[layer].norm(dim=-1).mean()), 3)
                                                     for layer in layers}}
        prov["counts"] = counts[name]
        write_tensors({"vector": torch.cat([_unit(raw[layer]) for layer in layers]),
                       "row_id": torch.tensor(frame["row_id"].to_numpy())}, paths["vectors"], prov)
        write_table(mine, paths["exemplars"], prov)
        write_table(frame, paths["labels"], prov)
    print(f"ood sets: {json.dumps(counts)}")
    return counts
