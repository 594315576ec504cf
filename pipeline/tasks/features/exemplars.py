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


def token_texts(tokenizer) -> dict[int, str]:
    """A memo of each token id's text as `tokenizer.decode([id], skip_special_tokens=True)` gives it, filled on
    use and kept on the tokenizer: whole-chunk windows hold millions of tokens but only thousands of distinct ids."""
    memo = getattr(tokenizer, "_pipeline_token_texts", None)
    if memo is None:
        memo = {}
        setattr(tokenizer, "_pipeline_token_texts", memo)
    return memo


def window_tokens(tokenizer, chunk: list[int], position: int, before: int, after: int) -> tuple[list[str], int]:
    """The tokens of the window around `position` as text, and the position's index in it; the separator
    between passages (a special token) reads as empty."""
    start, end = (int(v) for v in window_bounds(position, before, after, len(chunk)))
    memo = token_texts(tokenizer)
    texts = []
    for i in chunk[start:end]:
        if i not in memo:
            memo[i] = tokenizer.decode([i], skip_special_tokens=True)
        texts.append(memo[i])
    return texts, position - start


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


# The paper's archive (SAE_feature_explanations_*): exemplar sequences per layer, as its ExemplarsWrapper reads them
# (observatory_utils/exemplar.py): {split}/layer{L}/max_seq_acts.npy [rows, k, seq_len] and max_seq_ids.npy (token ids,
# left-padded with the id the paper's tokenizer gives its added <PAD>, the base vocabulary's size). Its simulator
# score reads exemplar split `train`, ranks 0..19 (exem_slice_to_score); random sequences are `random_train`.
ARCHIVE_FOLDERS = {"top": "train", "random": "random_train"}


def _archive_rows(features: list[int], rows: int, order: list[int] | None, listed_lengths: set[int]
                  ) -> dict[int, int]:
    """feature -> row of a layer's exemplar arrays. The paper's simulator evaluation reads a feature's row as its
    position among the layer's features in explanations/{split}_layer_feature_idxs.pkl (`layer_to_indices_map`), and
    as the feature index for a layer that file does not list; here the position is used when the arrays have as many
    rows as the list, the index otherwise, unless the rows follow another split's list. A feature neither reading
    finds is left out (and counted)."""
    if order is not None and len(order) == rows:
        position = {feature: i for i, feature in enumerate(order)}
        return {f: position[f] for f in features if f in position}
    if rows in listed_lengths:  # the arrays are another split's features: none of these is in them
        return {}
    return {f: f for f in features if f < rows}


def _archive_row(layer: int, feature: int, kind: str, rank: int, ids, acts, pad: int, tokenizer, decoded: dict,
                 ids_path) -> dict | None:
    """One archived sequence as an exemplars-table row: left padding stripped, every token decoded alone (cached in
    `decoded`), centred at its largest activation; None for a sequence that is all padding."""
    from pipeline.artifacts import ArtifactError

    ids, acts = np.asarray(ids, dtype=np.int64), np.asarray(acts, dtype=np.float32)
    real = ids != pad
    if not real.any():
        return None
    start = int(np.argmax(real))
    ids, acts = ids[start:].tolist(), acts[start:]
    if max(ids) >= pad:
        raise ArtifactError(f"{ids_path}: token id {max(ids)} beyond the target's tokenizer ({pad} ids): the archive is "
                            f"of another model")
    for i in ids:
        if i not in decoded:
            decoded[i] = tokenizer.decode([i])
    centre = int(np.argmax(acts))
    return {"layer": layer, "feature": feature, "kind": kind, "rank": rank, "sequence": -1, "token_index": centre,
            "tokens": [decoded[i] for i in ids], "window_index": centre, "activation": float(acts[centre]),
            "activations": acts.tolist()}


def archive_exemplars(archive, model_dir, labels: dict, features: FeaturesConfig, out_exemplars, settings: dict
                      ) -> pd.DataFrame:
    """The archive's exemplars of its described features (both splits), in this workflow's exemplars table: per
    feature its top `features.exemplars.top` sequences of exemplar split train and `features.exemplars.random` of
    random_train, each whole (padding stripped), `window_index` at its largest activation. The simulator then
    scores them as the paper's code does (whole sequences: set features.simulator.tokens_before to null)."""
    from pathlib import Path

    from pipeline.artifacts import ArtifactError, read_table
    from pipeline.models import load_tokenizer, read_manifest
    from pipeline.tasks.features.descriptions import _load_pickle

    archive, cfg = Path(archive), features.exemplars
    tokenizer = load_tokenizer(model_dir)
    pad = len(tokenizer)  # the paper's tokenizer appends <PAD> to the base vocabulary (Llama 3.1: 128256)
    listed = {}  # split -> layer -> its features in the order of explanations/{split}_layer_feature_idxs.pkl
    for split in ("train", "test"):
        path = archive / "explanations" / f"{split}_layer_feature_idxs.pkl"
        if path.is_file():
            listed[split] = {}
            for layer, feature in _load_pickle(path):
                listed[split].setdefault(int(layer), []).append(int(feature))
    decoded: dict[int, str] = {}
    rows, counts = [], {"features": 0, "without_exemplars": {"train": 0, "test": 0}, "random_missing_layers": []}
    for split in ("train", "test") if features.simulator_trains else ("test",):  # training features: to train it
        frame = read_table(labels[split], required=["layer", "feature"])
        for layer, group in frame.groupby("layer"):
            layer, wanted, found = int(layer), [int(f) for f in group["feature"]], set()
            order = listed.get(split, {}).get(layer)
            lengths = {len(by_layer[layer]) for by_layer in listed.values() if layer in by_layer}
            for kind, folder in ARCHIVE_FOLDERS.items():
                base = archive / folder / f"layer{layer}"
                acts_path, ids_path = base / "max_seq_acts.npy", base / "max_seq_ids.npy"
                if not acts_path.is_file() or not ids_path.is_file():
                    if kind == "top":
                        raise ArtifactError(f"{acts_path}: not found; the paper's archive keeps each layer's exemplar "
                                            f"sequences in {{train,random_train}}/layer{{L}}/max_seq_acts.npy and "
                                            f"max_seq_ids.npy")
                    counts["random_missing_layers"].append(layer)
                    continue
                acts, ids = np.load(acts_path, mmap_mode="r"), np.load(ids_path, mmap_mode="r")
                if acts.ndim != 3 or acts.shape != ids.shape:
                    raise ArtifactError(f"{acts_path}: shape {acts.shape} with ids {ids.shape}; expected the same "
                                        f"[features, sequences, tokens] in both")
                ranks = range(min(cfg.top if kind == "top" else cfg.random, acts.shape[1]))
                for feature, row in _archive_rows(wanted, acts.shape[0], order, lengths).items():
                    if kind == "top":
                        found.add(feature)
                    for rank in ranks:
                        record = _archive_row(layer, feature, kind, rank, ids[row, rank], acts[row, rank], pad,
                                              tokenizer, decoded, ids_path)
                        if record is not None:
                            rows.append(record)
            counts["features"] += len(found)
            counts["without_exemplars"][split] += len(wanted) - len(found)
    if not any(r["kind"] == "top" for r in rows):
        raise ArtifactError(f"{archive}: no exemplars for any described feature (rows of train/layer{{L}}/"
                            f"max_seq_acts.npy are read as positions in explanations/{{split}}_layer_feature_idxs.pkl "
                            f"when their numbers agree, else as feature indices)")
    frame = pd.DataFrame(rows, columns=EXEMPLAR_COLUMNS).sort_values(["layer", "feature", "kind", "rank"],
                                                                     ignore_index=True)
    prov = provenance(settings, {"target": read_manifest(model_dir)["source"]}) | {"counts": counts}
    print(f"archive exemplars: {counts}")
    write_table(frame, out_exemplars, prov)
    return frame
