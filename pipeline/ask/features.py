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

EXEMPLAR_MARK = "[[{}]]"  # how a window's firing token is marked in its text


def feature_key(layer: int, feature: int) -> str:
    return f"L{int(layer)}/F{int(feature)}"


def scored_settings(workdir: Path, task: str, run: str) -> dict:
    """The settings the run's results were scored with (results/{task}/{run}.json), or none before scoring."""
    path = workdir / "results" / task / f"{run}.json"
    return json.loads(path.read_text()).get("provenance", {}).get("settings", {}) if path.is_file() else {}


def described_latent(workdir: Path, target: str, key: str):
    """(split, label row, vector) of a latent the run described, or None."""
    from pipeline.tasks.features.labels import label_paths, load_features

    for split in ("test", "train"):
        paths = {kind: workdir / path for kind, path in label_paths(target, split).items()}
        if not all(p.is_file() for p in paths.values()):
            continue
        frame, vectors = load_features({kind: str(p) for kind, p in paths.items()})
        hits = (frame["feature_id"] == key).to_numpy().nonzero()[0]
        if len(hits):
            return split, frame.iloc[int(hits[0])], vectors[int(hits[0])]
    return None


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


def exemplar_rows(path: Path, layer: int, feature: int, count: int) -> list[dict]:
    """The latent's top exemplars by rank: each window's tokens, its text with the firing token marked, the firing
    token and its activation, and every token's activation (none for a latent that never fired on the corpus)."""
    from pipeline.artifacts import read_table

    if not path.is_file():
        return []
    table = read_table(path, required=["layer", "feature", "kind", "rank", "tokens", "window_index", "activation",
                                       "activations"])
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
    from pipeline.settings import section_of
    from pipeline.tasks.features.settings import FeaturesConfig
    from pipeline.tasks.features.simulator import Simulator, read_windows, score_descriptions
    from pipeline.tasks.features.summary import first_line
    from pipeline.tasks.features.task import exemplars_path, simulator_input

    cfg = section_of(scored_settings(asker.workdir, "features", asker.run), FeaturesConfig)
    if not cfg.simulator.enabled:
        return {"enabled": False, "why": "the run's features.simulator is off"}
    model = simulator_input(target, cfg.simulator).get("simulator")
    model_dir = (asker.workdir / model) if model and not Path(model).is_absolute() else model
    if model_dir is None or not Path(model_dir).exists():
        return {"enabled": False, "why": f"no simulator at {model_dir or cfg.simulator.checkpoint}"}
    windows = read_windows(asker.workdir / exemplars_path(target, cfg.source), cfg.simulator, cfg.described_every)
    if (layer, feature) not in windows:
        return {"enabled": False, "why": "the latent has no exemplar windows the simulator scores"}
    if "simulator" not in asker._loaded:
        asker._loaded["simulator"] = Simulator(model_dir, cfg.simulator.batch_size, None, cfg.simulator.format)
    named = {name: first_line(text) for name, text in descriptions.items() if first_line(text or "")}
    scored = score_descriptions(asker._loaded["simulator"], [(text, (layer, feature)) for text in named.values()],
                                windows)
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


def ask_feature(asker, layer: int, feature: int | None, exemplars: int = 5, simulate: bool = True,
                vector_file: str | Path | None = None) -> dict:
    """What the run's explainer says latent `feature` of layer `layer` encodes (see the module's docstring); or, with
    `vector_file`, a direction of one's own read at `layer` (unit-normed as the run's vectors are; no reference,
    exemplars or simulator score: those belong to a latent)."""
    from pipeline.explainer.prompts import phrasing
    from pipeline.models import read_manifest
    from pipeline.settings import section_of
    from pipeline.tasks.features.settings import FeaturesConfig
    from pipeline.tasks.features.summary import first_line
    from pipeline.tasks.features.task import FEATURE_QUESTIONS, exemplars_path

    layer, target = int(layer), asker.target_model.name
    if vector_file is not None:
        vector = read_vector(vector_file, read_manifest(asker.target_model)["hidden_size"])
        vector = vector / vector.norm().clamp_min(1e-8)
        key = f"L{layer}/{Path(vector_file).name}"
        question = FEATURE_QUESTIONS[phrasing(key, len(FEATURE_QUESTIONS))].format(layer=layer)
        answer = asker.answer([question], vector[None], [layer])[0]
        return {"feature_id": key, "layer": layer, "feature": None, "question": asker.as_asked([question])[0],
                "answer": answer, "description": first_line(answer), "reference": None, "split": None,
                "exemplars": [], "simulator": {"enabled": False, "why": "a vector of one's own has no exemplars"}}
    feature = int(feature)
    key = feature_key(layer, feature)
    described = described_latent(asker.workdir, target, key)
    if described is not None:
        split, row, vector = described
        reference = str(row["description"])
    else:
        width = read_manifest(asker.target_model)["hidden_size"]
        vector, reference, split = decoder_direction(asker.workdir, target, layer, feature, width), None, None
    question = FEATURE_QUESTIONS[phrasing(key, len(FEATURE_QUESTIONS))].format(layer=layer)
    answer = asker.answer([question], vector[None].float(), [layer])[0]
    source = section_of(scored_settings(asker.workdir, "features", asker.run), FeaturesConfig).source
    shown = exemplar_rows(asker.workdir / exemplars_path(target, source), layer, feature, exemplars)
    question = asker.as_asked([question])[0]  # as the explainer reads it
    result = {"feature_id": key, "layer": layer, "feature": feature, "question": question, "answer": answer,
              "description": first_line(answer), "reference": reference, "split": split, "exemplars": shown}
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
