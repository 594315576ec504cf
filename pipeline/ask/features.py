"""Ask a features explainer what an SAE latent of its target encodes: the question as the run asks it, the
explainer's description, the reference description where the run described the latent, the latent's top exemplars
with the firing token marked, and the simulator's score of both descriptions where the run has a simulator.

The latent's vector is the run's own where the run described it (the descriptions stage's table and vectors), and
otherwise the SAE's decoder direction, unit-normed as that stage makes it; the simulator scores on the exemplars'
top windows the describer did not read, as the score stage does."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.artifacts import ArtifactError

EXEMPLAR_MARK = "[[{}]]"  # how a window's firing token is marked in its text


def feature_key(layer: int, feature: int) -> str:
    return f"L{int(layer)}/F{int(feature)}"


def _once(asker, name: str, make):
    """What `make()` returns, made once per Asker (its models' cache holds it): a run's files are read once for a
    file of many asks."""
    if name not in asker._loaded:
        asker._loaded[name] = make()
    return asker._loaded[name]


def scored_settings(workdir: Path, task: str, run: str) -> dict:
    """The settings the run's results were scored with (results/{task}/{run}.json), or none before scoring."""
    path = workdir / "results" / task / f"{run}.json"
    return json.loads(path.read_text()).get("provenance", {}).get("settings", {}) if path.is_file() else {}


def features_config(asker):
    """The run's features section as its results recorded it (typed; the defaults before scoring)."""
    from pipeline.settings import section_of
    from pipeline.tasks.features.settings import FeaturesConfig

    return _once(asker, "features_config",
                 lambda: section_of(scored_settings(asker.workdir, "features", asker.run), FeaturesConfig))


def described_latent(workdir: Path, target: str, key: str, splits: dict | None = None):
    """(split, label row, vector) of a latent the run described, or None; `splits`: the splits' (table, vectors)
    already read (described_splits)."""
    for split, (frame, vectors) in (splits if splits is not None else described_splits(workdir, target)).items():
        hits = (frame["feature_id"] == key).to_numpy().nonzero()[0]
        if len(hits):
            return split, frame.iloc[int(hits[0])], vectors[int(hits[0])]
    return None


def described_splits(workdir: Path, target: str) -> dict:
    """The run's described latents per split (test first): (table, vectors)."""
    from pipeline.tasks.features.labels import label_paths, load_features

    splits = {}
    for split in ("test", "train"):
        paths = {kind: workdir / path for kind, path in label_paths(target, split).items()}
        if all(p.is_file() for p in paths.values()):
            splits[split] = load_features({kind: str(p) for kind, p in paths.items()})
    return splits


def decoder_direction(workdir: Path, target: str, layer: int, feature: int, width: int):
    """The SAE's decoder direction of a latent, unit-normed as the descriptions stage makes the run's vectors."""
    from pipeline.tasks.features.sae import load_decoder

    sae_dir = workdir / "work" / "features" / "sae" / target
    folder = sae_dir / f"layers.{layer}"
    if not folder.is_dir():
        layers = sorted(int(p.name.split(".")[1]) for p in sae_dir.glob("layers.*")) if sae_dir.is_dir() else []
        raise ValueError(f"layer {layer}: the run has no SAE there (layers with SAEs in {sae_dir}: {layers or 'none'})")
    decoder = load_decoder(folder, width)
    if not 0 <= feature < len(decoder):
        raise ValueError(f"feature {feature}: the SAE of layer {layer} has latents 0..{len(decoder) - 1}")
    direction = decoder[feature]
    return direction / direction.norm().clamp_min(1e-8)


def exemplars_table(path: Path):
    """The run's exemplars table (None where there is none)."""
    from pipeline.artifacts import read_table

    if not path.is_file():
        return None
    return read_table(path, required=["layer", "feature", "kind", "rank", "tokens", "window_index", "activation",
                                      "activations"])


def exemplar_rows(table, layer: int, feature: int, count: int) -> list[dict]:
    """The latent's top exemplars by rank in `table` (exemplars_table): each window's tokens, its text with the
    firing token marked, the firing token and its activation, and every token's activation (none for a latent that
    never fired on the corpus)."""
    if table is None:
        return []
    top = table[(table["layer"] == layer) & (table["feature"] == feature) & (table["kind"] == "top")]
    rows = []
    for row in top.sort_values("rank").head(count).itertuples(index=False):
        tokens, at = [str(t) for t in row.tokens], int(row.window_index)
        marked = "".join(EXEMPLAR_MARK.format(t) if i == at else t for i, t in enumerate(tokens))
        rows.append({"rank": int(row.rank), "text": marked, "firing_token": tokens[at],
                     "activation": float(row.activation), "tokens": tokens,
                     "activations": [float(a) for a in row.activations], "firing_index": at})
    return rows


def simulator_scores(asker, target: str, layer: int, feature: int, descriptions: dict[str, str]) -> dict:
    """The simulator's pooled correlations (top: |r| as the paper reports it, top_signed, top_random) of each
    description on the latent's exemplar windows, as the run's score stage sets the simulator; {"enabled": False, ...}
    where the run has none or the latent has no windows."""
    from pipeline.tasks.features.simulator import Simulator, feature_windows, score_descriptions
    from pipeline.tasks.features.summary import first_line
    from pipeline.tasks.features.task import exemplars_path, simulator_input

    cfg = features_config(asker)
    if not cfg.simulator.enabled:
        return {"enabled": False, "why": "the run's features.simulator is off"}
    model = simulator_input(target, cfg.simulator).get("simulator")
    model_dir = (asker.workdir / model) if model and not Path(model).is_absolute() else model
    if model_dir is None or not Path(model_dir).exists():
        return {"enabled": False, "why": f"no simulator at {model_dir or cfg.simulator.checkpoint}"}
    table = run_exemplars(asker, target)
    if table is None:
        path = asker.workdir / exemplars_path(target, cfg.source)
        raise ArtifactError(f"{path}: no exemplars table, which the simulator scores on; `snakemake --cores all "
                            f"{exemplars_path(target, cfg.source)}` makes it")
    windows = _once(asker, "windows", lambda: feature_windows(
        table, cfg.simulator.top, cfg.simulator.random, cfg.simulator.tokens_before, cfg.described_every))
    if (layer, feature) not in windows:
        return {"enabled": False, "why": "the latent has no exemplar windows the simulator scores"}
    simulator = _once(asker, "simulator", lambda: Simulator(model_dir, cfg.simulator.batch_size, None,
                                                           cfg.simulator.format))
    named = {name: first_line(text) for name, text in descriptions.items() if first_line(text or "")}
    scored = score_descriptions(simulator, [(text, (layer, feature)) for text in named.values()], windows)
    return {"enabled": True, "model": str(model_dir)} | {
        name: {column: float(scored[column].iloc[i]) for column in scored.columns} for i, name in enumerate(named)}


def read_vector(path: str | Path, width: int):
    """One direction from a file: a .safetensors file holding one tensor, or .npy / .pt; of the target's width."""
    import numpy as np
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if len(tensors) != 1:
            raise ValueError(f"{path}: expected one tensor, found {sorted(tensors)}")
        vector = next(iter(tensors.values()))
    elif path.suffix == ".npy":
        vector = torch.from_numpy(np.load(path))
    elif path.suffix == ".pt":
        vector = torch.load(path, weights_only=True)
    else:
        raise ValueError(f"{path}: a vector comes as .safetensors, .npy or .pt")
    vector = vector.float().reshape(-1) if vector.dim() > 1 and vector.shape[0] == 1 else vector.float()
    if vector.dim() != 1 or vector.shape[0] != width:
        raise ValueError(f"{path}: expected one vector of the target's width {width}, got shape {tuple(vector.shape)}")
    return vector


def run_exemplars(asker, target: str):
    """The run's exemplars table (the SAEs' or the paper's archive's, as its features.source says), read once."""
    from pipeline.tasks.features.task import exemplars_path

    return _once(asker, "exemplars", lambda: exemplars_table(
        asker.workdir / exemplars_path(target, features_config(asker).source)))


def ask_feature(asker, layer: int, feature: int | None, exemplars: int = 5, simulate: bool = True,
                vector_file: str | Path | None = None) -> dict:
    """What the run's explainer says latent `feature` of layer `layer` encodes (see the module's docstring); or, with
    `vector_file`, a direction of one's own read at `layer` (unit-normed as the run's vectors are; no reference,
    exemplars or simulator score: those belong to a latent)."""
    from pipeline.explainer.prompts import phrasing
    from pipeline.models import read_manifest
    from pipeline.tasks.features.summary import first_line
    from pipeline.tasks.features.task import FEATURE_QUESTIONS

    layer, target = int(layer), asker.target_model.name
    width = read_manifest(asker.target_model)["hidden_size"]
    reference = split = None
    if vector_file is not None:
        vector = read_vector(vector_file, width)
        vector, key = vector / vector.norm().clamp_min(1e-8), f"L{layer}/{Path(vector_file).name}"
    else:
        feature = int(feature)
        key = feature_key(layer, feature)
        splits = _once(asker, "described", lambda: described_splits(asker.workdir, target))
        described = described_latent(asker.workdir, target, key, splits)
        if described is not None:
            split, row, vector = described
            reference = str(row["description"])
        else:
            vector = decoder_direction(asker.workdir, target, layer, feature, width)
    question = FEATURE_QUESTIONS[phrasing(key, len(FEATURE_QUESTIONS))].format(layer=layer)
    answer = asker.answer([question], vector[None].float(), [layer])[0]
    result = {"feature_id": key, "layer": layer, "feature": feature if vector_file is None else None,
              "question": asker.as_asked([question])[0],  # as the explainer reads it
              "answer": answer, "description": first_line(answer), "reference": reference, "split": split}
    if vector_file is not None:
        return result | {"exemplars": [], "simulator": {"enabled": False,
                                                        "why": "a vector of one's own has no exemplars"}}
    result["exemplars"] = exemplar_rows(run_exemplars(asker, target), layer, feature, exemplars)
    if simulate:
        result["simulator"] = simulator_scores(asker, target, layer, feature,
                                               {"description": answer} | ({"reference": reference} if reference else {}))
    return result


def features_table(asker, questions: pd.DataFrame, exemplars: int = 3) -> pd.DataFrame:
    """Many asks: one latent per row of `questions` (columns layer, feature), the rows numbered by `ask`: the
    description, the reference, the firing tokens of the top exemplars and the simulator's scores."""
    missing = {"layer", "feature"} - set(questions.columns)
    if missing:
        raise ValueError(f"questions need columns layer and feature; they have {list(questions.columns)}")
    rows = []
    for number, row in enumerate(questions.to_dict("records")):
        asked = ask_feature(asker, int(row["layer"]), int(row["feature"]), exemplars)
        simulator = asked["simulator"]
        rows.append({"ask": number, "feature_id": asked["feature_id"], "layer": asked["layer"],
                     "feature": asked["feature"], "question": asked["question"], "answer": asked["answer"],
                     "description": asked["description"], "reference": asked["reference"], "split": asked["split"],
                     "firing_tokens": [e["firing_token"] for e in asked["exemplars"]],
                     "simulator_top": simulator.get("description", {}).get("top"),
                     "reference_simulator_top": simulator.get("reference", {}).get("top")})
    return pd.DataFrame(rows)
