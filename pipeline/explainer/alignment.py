"""Alignment: per target layer, a linear map from the target's residual states to the explainer's input embeddings.

The explainer reads a vector at a placeholder as if it were an input embedding, but a model's residual states are
nearly orthogonal to its token embeddings beyond the first layers (SmolLM2: cosine with the own token 0.02 at layer
0). This stage fits, for every layer of the target, a ridge map from the (unit, optionally centred) state at a token
to the explainer's embedding of the same text (divided by the mean embedding norm, the scale the explainer
multiplies back), on text the workflow already has: the act_patch pairs' prompts of the training split, or the
features corpus. Target and explainer tokens are matched by where they end in the text, so a cross-model pair
(other tokenizer) is aligned on the tokens both split at the same place. The explainer starts its per-layer
projections (the paper's `embed_projs`) from these maps (`explainer.alignment: fitted`).

Fit quality per layer, on held-out texts: R^2 of the map, and the own token's rank among all embeddings by cosine
before (the identity, where the widths match) and after the map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import ArtifactError, provenance, read_table, write_table, write_tensors
from pipeline.lazy import lazy_import
from pipeline.settings import AlignmentConfig

torch = lazy_import("torch")  # loaded on first use: parsing the workflow does not import torch


class AlignmentWidthError(ValueError):
    """States or embeddings of a layer do not have the widths the map was fitted for."""


def texts_of(path: str | Path, source: str) -> list[str]:
    """The texts the map is fitted on: both prompts of each act_patch pair, or the corpus passages."""
    frame = read_table(path)
    if source == "act_patch":
        if "text" not in frame or "counterfactual_text" not in frame:
            raise ArtifactError(f"{path}: expected act_patch pairs (columns text, counterfactual_text)")
        return list(dict.fromkeys(frame["text"].tolist() + frame["counterfactual_text"].tolist()))
    if "text" not in frame:
        raise ArtifactError(f"{path}: expected the features corpus (column text)")
    return frame["text"].tolist()


def matched_positions(target_offsets, explainer_offsets) -> list[tuple[int, int]]:
    """(target position, explainer position) of the tokens both tokenizers end at the same character (the first
    token of a text, an attention sink, and empty special tokens left out)."""
    ends = {}
    for position, (start, end) in enumerate(explainer_offsets):
        if end > start and position > 0:
            ends.setdefault(end, position)
    return [(position, ends[end]) for position, (start, end) in enumerate(target_offsets)
            if end > start and position > 0 and end in ends]


def fit_ridge(states: torch.Tensor, embeds: torch.Tensor, ridge: float) -> torch.Tensor:
    """W [explainer width, target width] minimising |states W^T - embeds|^2 + lambda |W|^2, in closed form;
    lambda = ridge x the mean diagonal of states^T states."""
    x, y = states.double(), embeds.double()
    gram = x.T @ x
    lam = ridge * float(gram.diagonal().mean())
    solution = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), x.T @ y)
    return solution.T.float()


def unit(x: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """The rows of x (less `mean`) at unit norm, as the explainer normalises a vector before its projection."""
    x = x.float() - (mean if mean is not None else 0)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def own_token_ranks(mapped: torch.Tensor, token_ids: torch.Tensor, table: torch.Tensor,
                    normalised: bool = False) -> torch.Tensor:
    """The rank (0 = nearest) of each row's own token among all rows of `table` by cosine similarity (`normalised`:
    the table's rows are unit already, as fit_alignment passes it once for every layer)."""
    scores = unit(mapped) @ (table if normalised else unit(table)).T
    own = scores.gather(1, token_ids[:, None])
    return (scores > own).sum(dim=1, dtype=torch.int32)


def r_squared(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    residual = ((truth - predicted) ** 2).sum()
    total = ((truth - truth.mean(dim=0)) ** 2).sum()
    return float(1 - residual / total.clamp_min(1e-12))


def collect(target_dir, explainer_dir, texts: list[str], max_tokens: int, batch_size: int, dtype=None):
    """Target states at every layer and the explainer's embedding row ids of the same tokens, per text:
    a list of (states [tokens, layers, d_target], explainer token ids [tokens]); `dtype`: the models' weights."""
    from pipeline.models import embedding_norm, load_model, load_tokenizer, read_manifest
    from pipeline.engine.patching import capture_states, encode, pad_left, wrap

    model, tokenizer = load_model(target_dir, dtype=dtype)
    explainer_tokenizer = load_tokenizer(explainer_dir)
    layers = list(range(read_manifest(target_dir)["num_layers"]))
    traced, device = wrap(model), model.get_input_embeddings().weight.device
    per_text, total = [], 0
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        target_enc = encode(tokenizer, chunk, True)
        explainer_enc = encode(explainer_tokenizer, chunk, True)
        matches = [matched_positions(t["offsets"], e["offsets"]) for t, e in zip(target_enc, explainer_enc)]
        ids, mask, shifts = pad_left([t["input_ids"] for t in target_enc], tokenizer.pad_token_id, device)
        rows = torch.tensor([r for r, m in enumerate(matches) for _ in m], dtype=torch.long, device=device)
        positions = torch.tensor([shifts[r] + t for r, m in enumerate(matches) for t, _ in m], dtype=torch.long,
                                 device=device)
        if not len(rows):
            continue
        states, _ = capture_states(traced, layers, ids, mask, rows, positions)
        states = states.float().cpu()
        offset = 0
        for r, m in enumerate(matches):
            token_ids = torch.tensor([explainer_enc[r]["input_ids"][e] for _, e in m], dtype=torch.long)
            per_text.append((states[offset:offset + len(m)], token_ids))
            offset += len(m)
            total += len(m)
        if total >= max_tokens:
            break
    del model
    explainer, _ = load_model(explainer_dir)  # its embedding rows only: no products
    table = explainer.get_input_embeddings()
    norm = float(embedding_norm(explainer))
    with torch.no_grad():
        embeddings = table(torch.arange(table.weight.shape[0], device=table.weight.device)).float().cpu() / norm
    return per_text, embeddings, layers


def fit_alignment(cfg: AlignmentConfig, target_dir, explainer_dir, text_path, out_maps, out_quality,
                  settings: dict) -> pd.DataFrame:
    """Fit one map per target layer; write the maps (`layers.{L}.weight`, `layers.{L}.mean`) and their quality."""
    from pipeline.models import read_manifest

    texts = texts_of(text_path, cfg.text)
    if len(texts) < 4:
        raise ArtifactError(f"{text_path}: {len(texts)} texts; the alignment needs at least 4")
    order = np.random.default_rng(cfg.seed).permutation(len(texts))
    held = set(order[:max(1, int(round(cfg.test_fraction * len(texts))))].tolist())
    from pipeline.runtime import torch_dtype

    per_text, embeddings, layers = collect(target_dir, explainer_dir, [texts[i] for i in order], cfg.max_tokens,
                                           cfg.batch_size, torch_dtype(cfg.precision))
    is_held = [int(order[i]) in held for i in range(len(per_text))]
    pick = lambda flag: [p for p, h in zip(per_text, is_held) if h == flag]  # noqa: E731
    train, test = pick(False), pick(True)
    if not train or not test:
        raise ArtifactError(f"{text_path}: too few aligned tokens to fit and test the alignment")
    x_train, ids_train = torch.cat([s for s, _ in train]), torch.cat([i for _, i in train])
    x_test, ids_test = torch.cat([s for s, _ in test]), torch.cat([i for _, i in test])
    y_train, y_test = embeddings[ids_train], embeddings[ids_test]
    same_width = x_train.shape[-1] == embeddings.shape[-1]
    ranked = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.rank_tokens]
    table = unit(embeddings)  # normalised once: a rank scores every embedding (Gemma: 262k rows)
    tensors, rows = {}, []
    for layer in layers:
        mean = x_train[:, layer].mean(dim=0) if cfg.center else torch.zeros(x_train.shape[-1])
        weight = fit_ridge(unit(x_train[:, layer], mean), y_train, cfg.ridge)
        tensors[f"layers.{layer}.weight"], tensors[f"layers.{layer}.mean"] = weight, mean
        mapped = unit(x_test[:, layer], mean) @ weight.T
        after = own_token_ranks(mapped[ranked], ids_test[ranked], table, normalised=True).float()
        before = (own_token_ranks(x_test[ranked, layer], ids_test[ranked], table, normalised=True).float()
                  if same_width else None)
        own = embeddings[ids_test]
        rows.append({"layer": layer, "train_tokens": len(x_train), "test_tokens": len(x_test),
                     "r2": r_squared(mapped, y_test),
                     "cosine_before": float((unit(x_test[:, layer]) * unit(own)).sum(-1).mean()) if same_width else None,
                     "cosine_after": float((unit(mapped) * unit(own)).sum(-1).mean()),
                     "rank_median_before": float(before.median()) if before is not None else None,
                     "top10_before": float((before < 10).float().mean()) if before is not None else None,
                     "rank_median_after": float(after.median()), "top10_after": float((after < 10).float().mean())})
    quality = pd.DataFrame(rows)
    prov = provenance(settings, {"target": read_manifest(target_dir)["source"],
                                 "explainer": read_manifest(explainer_dir)["source"]})
    prov["counts"] = {"texts": len(texts), "train_tokens": len(x_train), "test_tokens": len(x_test)}
    print(quality.to_string(index=False))
    write_tensors(tensors, out_maps, prov)
    write_table(quality, out_quality, prov)
    return quality


def load_alignment(path: str | Path, target_width: int, explainer_width: int, center: bool = True) -> dict[int, tuple]:
    """layer -> (weight [explainer width, target width], mean [target width]) from an alignment artifact, checked
    against the widths the explainer reads and writes; with `center` false the means are zero (for vectors that
    are directions, such as SAE decoder directions, not states: less a layer's mean state, every direction would
    point nearly the same way)."""
    from pipeline.artifacts import read_tensors

    tensors = read_tensors(path)
    maps = {}
    for name, weight in tensors.items():
        if not name.endswith(".weight"):
            continue
        layer = int(name.split(".")[1])
        if tuple(weight.shape) != (explainer_width, target_width):
            raise AlignmentWidthError(f"{path}: the map of layer {layer} is {tuple(weight.shape)}, but this explainer "
                                      f"maps width {target_width} to {explainer_width}")
        mean = tensors[f"layers.{layer}.mean"].float()
        maps[layer] = (weight.float(), mean if center else torch.zeros_like(mean))
    if not maps:
        raise ArtifactError(f"{path}: no per-layer maps (layers.L.weight)")
    return maps
