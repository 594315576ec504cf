"""Feature exemplars: where each SAE feature fires in the corpus, for describers and for people.

The target reads `features.exemplars.tokens` tokens of corpus chunks; every layer's SAE encodes its
residual stream. Per feature: its firing frequency and largest activation (the stats table), and for
each live feature its top-activating contexts and a seeded sample of other contexts: where it also fires, or
with `random_from: corpus` any tokens read, as OpenAI's random sample (the exemplars table: layer, feature, kind,
rank, sequence, token_index, tokens, window_index, activation, and `activations`, the feature's activation at every
token of the window, which the simulator is scored against).
Features that never fire (dead) or fire on more than `always_on_fraction` of tokens are dropped from
the exemplars and counted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.lazy import lazy_import
from pipeline.tasks.features.settings import FeaturesConfig
from pipeline.artifacts import provenance, write_table
from pipeline.tasks.features.sae import corpus_texts, encode_layers, load_saes, token_chunks

torch = lazy_import("torch")  # loaded on first use: parsing the workflow does not import torch

EXEMPLAR_COLUMNS = ["layer", "feature", "kind", "rank", "sequence", "token_index", "tokens", "window_index", "activation",
                    "activations"]


def _firings(model, saes: dict, chunks: torch.Tensor, batch_size: int) -> dict[int, pd.DataFrame]:
    """Per layer: one row per (sequence, token_index, feature) with a non-zero activation (position 0 left out)."""
    collected: dict[int, list] = {layer: [] for layer in saes}
    for start, _, codes in encode_layers(model, saes, chunks, batch_size, "exemplars"):
        for layer, (acts, indices) in codes.items():
            acts, indices = acts[:, 1:], indices[:, 1:]
            b, t, k = acts.shape
            sequence = torch.arange(start, start + b).view(b, 1, 1).expand(b, t, k)
            position = torch.arange(1, t + 1).view(1, t, 1).expand(b, t, k)
            keep = acts > 0
            collected[layer].append(pd.DataFrame({
                "sequence": sequence[keep].numpy(), "token_index": position[keep].numpy(),
                "feature": indices[keep].numpy(), "activation": acts[keep].float().numpy()}))
    return {layer: pd.concat(parts, ignore_index=True) for layer, parts in collected.items()}


def window_bounds(positions, before: int, after: int, length: int):
    """[start, end) of the window around each token position of a chunk: `before` tokens before it and `after`
    after it, never the chunk's opening separator (position 0) nor past its `length`."""
    positions = np.asarray(positions)
    return np.maximum(1, positions - before), np.minimum(length, positions + after + 1)


def window_tokens(tokenizer, chunk: list[int], position: int, before: int, after: int) -> tuple[list[str], int]:
    """The tokens of the window around `position` as text, and the position's index in it; the separator
    between passages (a special token) reads as empty."""
    start, end = (int(v) for v in window_bounds(position, before, after, len(chunk)))
    return [tokenizer.decode([i], skip_special_tokens=True) for i in chunk[start:end]], position - start


def _window_activations(frame: pd.DataFrame, fired: pd.DataFrame, before: int, after: int, length: int) -> list:
    """Per exemplar row (of one layer): its feature's activation at each token of its window (0 where it did
    not fire), the window being the one `window_tokens` cuts."""
    if frame.empty:
        return []
    starts, ends = window_bounds(frame["token_index"].to_numpy(), before, after, length)
    sizes = ends - starts
    row = np.repeat(np.arange(len(frame)), sizes)
    offset = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    cells = pd.DataFrame({"row": row, "sequence": np.repeat(frame["sequence"].to_numpy(), sizes),
                          "token_index": np.repeat(starts, sizes) + offset,
                          "feature": np.repeat(frame["feature"].to_numpy(), sizes)})
    cells = cells.merge(fired, on=["sequence", "token_index", "feature"], how="left").fillna({"activation": 0.0})
    cells = cells.sort_values(["row", "token_index"])
    values = cells["activation"].to_numpy(dtype=np.float32)
    bounds = np.cumsum(sizes)[:-1]
    return [part.tolist() for part in np.split(values, bounds)]


def corpus_sample(fired: pd.DataFrame, features, count: int, shape: tuple[int, int], rng) -> pd.DataFrame:
    """OpenAI's random exemplars: per feature `count` token positions drawn uniformly from the chunks read (never
    position 0), whatever the feature does there, with its activation at each (0 where it did not fire)."""
    features = np.asarray(features)
    sequence = rng.integers(0, shape[0], size=(len(features), count)).ravel()
    position = rng.integers(1, shape[1], size=(len(features), count)).ravel()
    drawn = pd.DataFrame({"sequence": sequence, "token_index": position, "feature": np.repeat(features, count)})
    drawn = drawn.merge(fired, on=["sequence", "token_index", "feature"], how="left").fillna({"activation": 0.0})
    return drawn.sort_values(["feature"], kind="stable")


def build_exemplars(model_dir, sae_dir, corpus_path, features: FeaturesConfig, out_exemplars, out_stats,
                    settings: dict) -> pd.DataFrame:
    """Each live feature's top-activating and random contexts (`features.exemplars`) at the SAE layers, over chunks
    of `features.sae.context` tokens, and every feature's firing statistics (dead, live, always on)."""
    from pipeline.models import load_model, read_manifest

    cfg, sae, layers = features.exemplars, features.sae, features.sae.layers

    model, tokenizer = load_model(model_dir)
    saes = load_saes(sae_dir, layers, read_manifest(model_dir)["hidden_size"])
    chunks = token_chunks(tokenizer, corpus_texts(corpus_path, "train"), sae.context, cfg.tokens, cfg.seed)
    tokens = chunks[:, 1:].numel()
    firings = _firings(model, saes, chunks, cfg.batch_size)
    rng = np.random.default_rng(cfg.seed)
    stats, picked, counts = [], [], {}
    for layer, fired in firings.items():
        latents = saes[layer].num_latents
        frequency = np.bincount(fired["feature"], minlength=latents) / tokens
        largest = np.zeros(latents)
        np.maximum.at(largest, fired["feature"].to_numpy(), fired["activation"].to_numpy())
        status = np.where(frequency == 0, "dead", np.where(frequency > sae.always_on_fraction, "always_on", "live"))
        stats.append(pd.DataFrame({"layer": layer, "feature": np.arange(latents), "frequency": frequency,
                                   "max_activation": largest, "status": status}))
        counts[f"layer_{layer}"] = {s: int((status == s).sum()) for s in ("live", "dead", "always_on")}
        live = fired[status[fired["feature"].to_numpy()] == "live"]
        top = live.sort_values(["feature", "activation"], ascending=[True, False]).groupby("feature").head(cfg.top)
        if cfg.random_from == "corpus":
            rest = corpus_sample(fired, live["feature"].unique(), cfg.random, chunks.shape, rng)
        else:
            rest = live.drop(top.index)
            rest = rest.assign(_draw=rng.random(len(rest))).sort_values(["feature", "_draw"]).groupby("feature").head(
                cfg.random).drop(columns="_draw")
        for kind, part in (("top", top), ("random", rest)):
            part = part.assign(layer=layer, kind=kind)
            part["rank"] = part.groupby("feature").cumcount()
            part["activations"] = _window_activations(part, fired, cfg.window_before, cfg.window_after,
                                                      chunks.shape[1])
            picked.append(part)
    frame = pd.concat(picked, ignore_index=True).sort_values(["layer", "feature", "kind", "rank"], ignore_index=True)
    windows = [window_tokens(tokenizer, chunks[s].tolist(), p, cfg.window_before, cfg.window_after)
               for s, p in zip(frame["sequence"], frame["token_index"])]
    frame["tokens"] = [w[0] for w in windows]
    frame["window_index"] = [w[1] for w in windows]
    frame = frame[EXEMPLAR_COLUMNS]
    stats_frame = pd.concat(stats, ignore_index=True)
    prov = provenance(settings, {"target": read_manifest(model_dir)["source"]}) | {
        "counts": {"tokens": tokens, "features": counts}}
    print(f"exemplars: {prov['counts']}")
    write_table(stats_frame, out_stats, prov)
    write_table(frame, out_exemplars, prov)
    return frame
