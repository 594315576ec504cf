"""Reference descriptions of SAE features, and the tables the features task trains and tests on.

Describers (which one wrote a description is the `describer` column):
- `offline`: deterministic; states what the top exemplars share: their most frequent activating tokens
  and the context of the strongest one, e.g. `"thee", "thou" and "thy", as in "I do beseech thee"`.
- `openai`: any OpenAI-compatible chat model (`base_url`, `model`; key from OPENAI_API_KEY or `.env`), given
  the exemplars with the activating token marked and asked for a short phrase, at temperature 0; its calls are
  cached in SQLite, retried and counted by pipeline/tasks/features/llm.py.
`build_descriptions` picks a seeded sample of live features per layer, splits them into train and test by a
hash of (layer, feature) so no feature is in both, and writes per split a table and the features' decoder
directions (unit norm) keyed by row id. `paper_descriptions` reads the paper's released archive instead
(`features/layer_{L}.pkl`: a d_model x n_features matrix; `explanations/{split}_explanations.pkl`: a list of
((layer, feature), {chosen_label, all_labels, all_label_scores, ...})) into the same tables, with each
description's stored simulator score (`label_score`) for the paper's ratio.
"""

from __future__ import annotations

import hashlib
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.artifacts import ArtifactError, provenance, read_table, write_table, write_tensors
from pipeline.sampling import described_by_rank
from pipeline.tasks.features.settings import DescriptionsConfig

DESCRIPTION_COLUMNS = ["row_id", "feature_id", "layer", "feature", "split", "description", "describer"]
SPLITS = ("train", "test")
DESCRIBE_PROMPT = (
    "Here are text excerpts where one feature of a language model is active. The token where it is most active "
    "in each excerpt is marked like <<this>>.\n\n{examples}\n\nDescribe what this feature detects in a short phrase. "
    "Reply with the phrase only."
)


def _snippet(tokens, index: int, before: int = 8, mark: bool = False, after: int = 3) -> str:
    """The text of a window up to its firing token (`before` tokens of context); marked, the token in <<>> and
    `after` tokens of what follows (a whole-chunk window holds up to 62 more)."""
    tokens = [str(t) for t in tokens]
    start = max(0, index - before)
    token = f"<<{tokens[index]}>>" if mark else tokens[index]
    return ("".join(tokens[start:index]) + token + "".join(tokens[index + 1:index + 1 + after] if mark else [])).strip()


def offline_description(top: pd.DataFrame) -> str:
    """What the top exemplars share: their most frequent activating tokens and the strongest one's context."""
    activating = [str(t[i]).strip() or str(t[i]) for t, i in zip(top["tokens"], top["window_index"])]
    counts = Counter(activating)
    strongest = top.sort_values("activation", ascending=False).iloc[0]
    order = sorted(counts, key=lambda tok: (-counts[tok], activating.index(tok)))[:3]
    quoted = [f'"{tok}"' for tok in order]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
    return f'{listed}, as in "{_snippet(strongest["tokens"], int(strongest["window_index"]))}"'


def openai_descriptions(exemplars: dict, model: str, base_url: str | None, cache_path, max_tokens: int = 40,
                        concurrency: int = 8) -> dict:
    """{key: description} from an OpenAI-compatible chat model, one call per feature at temperature 0, through
    pipeline/tasks/features/llm.py (cached in SQLite at `cache_path`, retried, bounded; an empty reply is asked again)."""
    from pipeline.tasks.features.llm import CachedChat, ChatSettings
    from pipeline.secrets import get_secret

    key = get_secret("OPENAI_API_KEY")
    if key is None and base_url is None:
        raise ValueError("features.descriptions.describer is 'openai' but OPENAI_API_KEY is set neither in the "
                         "environment nor in .env; set it, or point features.descriptions.base_url at a local "
                         "OpenAI-compatible server")
    chat = CachedChat(ChatSettings(model=model, base_url=base_url, max_tokens=max_tokens, concurrency=concurrency),
                      cache_path, key)
    calls = {}
    for name, top in exemplars.items():
        examples = "\n".join(f"{i + 1}. {_snippet(t, int(w), before=12, mark=True)}"
                             for i, (t, w) in enumerate(zip(top["tokens"], top["window_index"])))
        calls[name] = [{"role": "user", "content": DESCRIBE_PROMPT.format(examples=examples)}]
    ids = {f"L{layer}/F{feature}": (layer, feature) for layer, feature in calls}
    try:
        replies = chat.ask_many({call: calls[name] for call, name in ids.items()},
                                lambda text: text.strip().strip('"').strip() or None, "describer")
    finally:
        chat.cache.close()
    print(f"describer calls: {chat.report()}")
    return {name: replies[call] or "" for call, name in ids.items()}


def described_exemplars(exemplars: pd.DataFrame, every: int) -> pd.DataFrame:
    """The top exemplars a describer reads: ranks 0, k, 2k, ... (k = `every`); the simulator scores the other top
    ranks (simulator.feature_windows), so a reference description is scored out of sample."""
    return exemplars[(exemplars["kind"] == "top") & described_by_rank(exemplars["rank"], every)]


def feature_split(layer: int, feature: int, test_fraction: float, seed: int) -> str:
    digest = hashlib.sha256(f"{seed}:{layer}:{feature}".encode()).hexdigest()
    return "test" if int(digest[:8], 16) / 0xFFFFFFFF < test_fraction else "train"


def _write_splits(frame: pd.DataFrame, vectors: torch.Tensor, out: dict, prov: dict) -> None:
    """Per split: the table (row ids from 0) and its vectors, all files with one run id."""
    for split in SPLITS:
        part = frame[frame["split"] == split].reset_index(drop=True)
        if part.empty:
            raise ArtifactError(f"no {split} feature (of {len(frame)}); lower or raise features.descriptions."
                                f"test_fraction or describe more features")
        index = torch.from_numpy(frame.index[frame["split"] == split].to_numpy())
        part["row_id"] = np.arange(len(part))
        write_tensors({"vector": vectors[index].contiguous(), "row_id": torch.arange(len(part))},
                      out[f"{split}_vectors"], prov)
        write_table(part, out[split], prov)


def build_descriptions(exemplars_path, stats_path, sae_dir, quality_path, cfg: DescriptionsConfig, width: int, out: dict,
                       settings: dict):
    """Describe a seeded sample of live features per layer from their top exemplars of ranks 0, k, 2k, ... (k =
    `describe_every`); write train/test tables and decoder directions.
    Their provenance carries the SAEs' quality and the live/dead/always-on counts, for the results file."""
    from pipeline.artifacts import read_provenance
    from pipeline.tasks.features.sae import load_decoder

    exemplars = read_table(exemplars_path, required=["layer", "feature", "kind", "rank", "tokens", "window_index",
                                                     "activation"])
    stats = read_table(stats_path, required=["layer", "feature", "frequency", "status"])
    rng = np.random.default_rng(cfg.seed)
    top = described_exemplars(exemplars, cfg.describe_every)
    enough = top.groupby(["layer", "feature"]).size()
    enough = set(enough[enough >= cfg.min_exemplars].index)
    chosen = []
    for layer, group in stats[stats["status"] == "live"].groupby("layer"):
        candidates = [f for f in group["feature"] if (layer, f) in enough]
        take = min(len(candidates), cfg.features_per_layer)
        chosen += [(int(layer), int(f)) for f in sorted(rng.choice(candidates, take, replace=False))]
    if not chosen:
        raise ArtifactError(f"{exemplars_path}: no live feature has {cfg.min_exemplars} top exemplars")
    by_feature = {key: part for key, part in top.groupby(["layer", "feature"]) if key in set(chosen)}
    if cfg.describer == "openai":
        texts = openai_descriptions({k: by_feature[k] for k in chosen}, cfg.model, cfg.base_url, cfg.cache)
        describer = f"openai:{cfg.model}"
    else:
        texts = {k: offline_description(by_feature[k]) for k in chosen}
        describer = "offline"
    frequency = stats.set_index(["layer", "feature"])["frequency"]
    decoders = {layer: load_decoder(Path(sae_dir) / f"layers.{layer}", width) for layer in {k[0] for k in chosen}}
    rows, vectors = [], []
    for layer, feature in chosen:
        strongest = by_feature[(layer, feature)].sort_values("activation", ascending=False).iloc[0]
        rows.append({"feature_id": f"L{layer}/F{feature}", "layer": layer, "feature": feature,
                     "split": feature_split(layer, feature, cfg.test_fraction, cfg.seed),
                     "description": texts[(layer, feature)], "describer": describer,
                     "frequency": float(frequency[(layer, feature)]),
                     "context": _snippet(strongest["tokens"], int(strongest["window_index"]), before=12, mark=True)})
        direction = decoders[layer][feature]
        vectors.append(direction / direction.norm().clamp_min(1e-8))
    frame = pd.DataFrame(rows)
    quality = read_table(quality_path, required=["layer", "fraction_variance_explained"]).to_dict("records")
    prov = provenance(settings) | {"counts": {
        "features": len(frame), "by_split": frame["split"].value_counts().to_dict(),
        "by_layer": frame["layer"].value_counts().sort_index().to_dict(), "sae_quality": quality,
        "exemplars": read_provenance(stats_path).get("counts", {})}}
    _write_splits(frame, torch.stack(vectors), out, prov)
    return frame


def _load_pickle(path: Path):
    if not path.is_file():
        raise ArtifactError(f"{path}: not found; expected the paper's archive layout (features/layer_{{L}}.pkl, "
                            f"explanations/{{train,test}}_explanations.pkl)")
    with open(path, "rb") as handle:
        return pickle.load(handle)


def label_score(label: dict | None, text: str) -> float:
    """The archive's stored simulator score of its chosen description, as the paper's `evaluate_item` reads it:
    `all_label_scores[chosen_label]`, the first stored score when that label has none, NaN when none is stored."""
    scores = (label or {}).get("all_label_scores") or {}
    value = scores.get(text, scores.get(str((label or {}).get("chosen_label")), next(iter(scores.values()), None)))
    return float("nan") if value is None else float(value)


def paper_descriptions(archive: str | Path, width: int, out: dict, settings: dict) -> pd.DataFrame:
    """The paper's released features and descriptions in this workflow's tables (split as released)."""
    archive = Path(archive)
    if not archive.is_dir():
        raise ArtifactError(
            f"{archive}: the paper's feature archive is not here (features.paper_dir). Download and unpack it: "
            f"wget https://transluce-public.s3.us-east-1.amazonaws.com/introspective-interp/"
            f"SAE_feature_explanations_llama3.1_8b.tar.gz && tar -xzf SAE_feature_explanations_llama3.1_8b.tar.gz")
    records = {split: _load_pickle(archive / "explanations" / f"{split}_explanations.pkl") for split in SPLITS}
    matrices, rows, vectors = {}, [], []
    skipped = {"no_such_feature": 0, "in_both_splits": 0, "no_description": 0}
    test_keys = {tuple(int(x) for x in key) for key, _ in records["test"]}
    for split in SPLITS:
        for index, item in enumerate(records[split]):
            try:
                (layer, feature), label = item
                layer, feature = int(layer), int(feature)
            except (TypeError, ValueError) as error:
                raise ArtifactError(f"{archive}/explanations/{split}_explanations.pkl: entry {index} is not "
                                    f"((layer, feature), {{chosen_label, ...}})") from error
            if split == "train" and (layer, feature) in test_keys:
                skipped["in_both_splits"] += 1
                continue
            if layer not in matrices:
                path = archive / "features" / f"layer_{layer}.pkl"
                matrix = torch.as_tensor(np.asarray(_load_pickle(path)), dtype=torch.float32)
                if matrix.ndim != 2 or matrix.shape[0] != width:
                    hint = " (it looks transposed)" if matrix.ndim == 2 and matrix.shape[1] == width else ""
                    raise ArtifactError(f"{path}: shape {tuple(matrix.shape)}, expected d_model x n_features with "
                                        f"d_model = {width} rows{hint}")
                matrices[layer] = matrix
            if not 0 <= feature < matrices[layer].shape[1]:
                skipped["no_such_feature"] += 1
                continue
            text = str((label or {}).get("chosen_label") or "").strip()
            if not text:
                skipped["no_description"] += 1
                continue
            rows.append({"feature_id": f"L{layer}/F{feature}", "layer": layer, "feature": feature, "split": split,
                         "description": text, "describer": "paper archive", "label_score": label_score(label, text)})
            direction = matrices[layer][:, feature]
            vectors.append(direction / direction.norm().clamp_min(1e-8))
    if skipped["no_such_feature"] or skipped["in_both_splits"] or skipped["no_description"]:
        print(f"{archive}: skipped {skipped}")
    if not rows:
        raise ArtifactError(f"{archive}: no usable feature description (skipped {skipped})")
    frame = pd.DataFrame(rows)
    prov = provenance(settings) | {"counts": {"features": len(frame), "skipped": skipped,
                                              "by_split": frame["split"].value_counts().to_dict()}}
    _write_splits(frame, torch.stack(vectors), out, prov)
    return frame
