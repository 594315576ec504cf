"""The features task: the explainer reads a feature direction of the target and says what it encodes.

Examples are the described SAE features (pipeline/describe.py): the question is one of the paper's six
phrasings (its `config/feature_descriptions/*.yaml`) with the decoder direction at the placeholder, the answer
the reference description. Variants: the fine-tuned explainer, the untrained one (zero-shot, with a format
instruction), the fine-tuned one given a zero vector, and SelfIE (the untrained target reads the vector at the
embedding of 'X' in "What is the meaning of the word 'X'? ...", at norms 1, 5, 10, 25 and 50). Baselines: the
nearest training feature's description (largest dot product, as the paper's code ranks them), over all layers
and within the query's layer; and the structure prior, the best single description per layer (the question
names only the layer). Scores: the offline embedding-similarity judge, the paper's LM judge when an API is
configured (pipeline/judge.py), and the simulator's correlation with the feature's activations on its
exemplars (pipeline/simulator.py); each a mean with a 95% bootstrap interval and standard error over
features, with paired differences of the fine-tuned explainer against every other variant. SelfIE is
reported at the scale chosen per feature by the offline judge (an oracle) and at the one best single scale.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.lazy import lazy_import, no_grad
from pipeline.artifacts import ArtifactError, check_same_run, read_table, read_tensors
from pipeline.ood import SETS as OOD_SETS
from pipeline.ood import set_paths
from pipeline.prompts import phrasing
from pipeline.tasks import Examples, Task, register

torch = lazy_import("torch")  # loaded on first use: parsing the workflow does not import torch

FEATURE_QUESTIONS = (
    "At layer {layer}, <vector> encodes",
    "<vector> activates at layer {layer} for",
    "We can describe <vector> at layer {layer} as encoding",
    "Generate a description of this feature at layer {layer}: <vector>.",
    "What does <vector> encode at layer {layer}?",
    "<vector> activates at layer {layer} for inputs with the following features:",
)
FORMAT_INSTRUCTION = " Answer with a short phrase that describes what this feature encodes."
SELFIE_SCALES = (1, 5, 10, 25, 50)
SELFIE_PLAIN = "What is the meaning of the word 'X'? The meaning of the word 'X' is "
SELFIE_CHAT = [{"role": "user", "content": "Briefly define the word 'X'."},
               {"role": "assistant", "content": "The meaning of the word 'X' is "}]
VARIANTS = ("finetuned", "untrained", "no_vector", "selfie")
EXAMPLES_SHOWN = 12  # random test features shown side by side in the report


def label_paths(target: str, split: str) -> dict[str, str]:
    """The features of a split ("train", "test") or of an out-of-distribution set (pipeline/ood.py)."""
    if split in OOD_SETS:
        return {k: v for k, v in set_paths(target, split).items() if k != "exemplars"}
    return {"labels": f"work/features/descriptions/{target}/{split}.parquet",
            "vectors": f"work/features/descriptions/{target}/{split}.vectors.safetensors"}


def load_features(paths: dict[str, str]) -> tuple[pd.DataFrame, torch.Tensor]:
    frame = read_table(paths["labels"], required=["row_id", "feature_id", "layer", "feature", "description"])
    check_same_run(paths["labels"], paths["vectors"])
    vectors = read_tensors(paths["vectors"]).get("vector")
    if vectors is None or len(vectors) != len(frame):
        raise ArtifactError(f"{paths['vectors']}: expected a 'vector' tensor with one row per feature of "
                            f"{paths['labels']} ({len(frame)})")
    return frame, vectors.float()


def examples(paths: dict[str, str], target_dir=None) -> Examples:
    frame, vectors = load_features(paths)
    keys = frame["feature_id"].astype(str).tolist()
    questions = [FEATURE_QUESTIONS[phrasing(key, len(FEATURE_QUESTIONS))].format(layer=int(layer))
                 for key, layer in zip(keys, frame["layer"])]
    columns = {"layer": frame["layer"].astype(int).tolist(), "feature": frame["feature"].astype(int).tolist()}
    if "context" in frame:
        columns["context"] = frame["context"].astype(str).tolist()
    # Vectors of one origin (an ood_diff pair, an ood_fw token) at several layers are resampled together.
    clusters = frame["cluster"].astype(str).tolist() if "cluster" in frame else keys
    return Examples(frame, questions, frame["description"].astype(str).tolist(), vectors, keys, clusters, None, columns)


def variant_vectors(variant: str, rows: Examples, seed: int) -> torch.Tensor:
    return torch.zeros_like(rows.vectors) if variant == "no_vector" else rows.vectors


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


def layer_prior(train_frame: pd.DataFrame) -> dict[int, str]:
    """Per layer, the training description the judge finds most similar on average to the layer's others: the
    best single answer the question's text (which names only the layer) allows."""
    from pipeline.judge import EmbeddingSimilarityJudge

    embedded = EmbeddingSimilarityJudge().embed(train_frame["description"].astype(str).tolist())
    prior = {}
    for layer, rows in train_frame.groupby("layer").indices.items():
        similarity = embedded[rows] @ embedded[rows].T
        prior[int(layer)] = str(train_frame["description"].iloc[rows[int(similarity.mean(axis=1).argmax())]])
    return prior


def baseline_frames(scored: pd.DataFrame, train_paths: dict[str, str], test_paths: dict[str, str],
                    target_dir=None) -> tuple[dict, dict]:
    """The structure prior (layer_prior), and the description of the training feature whose direction has the
    largest dot product with the query's, over all layers and within the query's layer."""
    train_frame, train_vectors = load_features(train_paths)
    test_frame, test_vectors = load_features(test_paths)
    position = {key: i for i, key in enumerate(test_frame["feature_id"].astype(str))}
    queries = test_vectors[[position[key] for key in scored["row_key"]]]
    similarity = queries @ train_vectors.T
    descriptions = train_frame["description"].astype(str).to_numpy()
    same_layer = torch.tensor(np.asarray(scored["layer"], dtype=np.int64))[:, None] == torch.tensor(
        train_frame["layer"].to_numpy(dtype=np.int64))[None, :]
    frames = {"nearest_neighbor": scored.assign(variant="nearest_neighbor",
                                                prediction=descriptions[similarity.argmax(1).numpy()])}
    within = similarity.masked_fill(~same_layer, float("-inf"))
    frames["nearest_neighbor_layer"] = scored.assign(variant="nearest_neighbor_layer",
                                                     prediction=descriptions[within.argmax(1).numpy()])
    prior = layer_prior(train_frame)
    fallback = max(prior.values(), key=lambda text: sum(text == v for v in prior.values()))
    frames["structure_prior"] = scored.assign(variant="structure_prior",
                                              prediction=[prior.get(int(layer), fallback) for layer in scored["layer"]])
    return frames, {"nearest_neighbor": f"{len(train_frame)} training features, all layers",
                    "nearest_neighbor_layer": f"{len(train_frame)} training features, the query's layer only",
                    "structure_prior": {str(layer): text for layer, text in prior.items()}}


def first_line(text: str) -> str:
    """Generation stops at the first line break (the stop string)."""
    return (text or "").strip().split("\n")[0].strip()


def _judged(frames: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], dict]:
    """Every frame with its offline judge score; SelfIE replaced by its oracle scale (chosen per feature by
    the offline judge) and its best single scale."""
    from pipeline.judge import EmbeddingSimilarityJudge

    judge = EmbeddingSimilarityJudge()
    scored = {}
    for name, frame in frames.items():
        frame = frame.reset_index(drop=True).assign(prediction=[first_line(p) for p in frame["prediction"]])
        scored[name] = frame.assign(**{judge.name: judge.score(frame["prediction"].tolist(),
                                                               frame["reference"].tolist())})
    by_scale = {}
    if "selfie" in scored:
        table = scored.pop("selfie")
        by_scale = table.groupby("scale")[judge.name].mean().to_dict()
        best = max(by_scale, key=by_scale.get)
        scored["selfie_oracle_scale"] = table.loc[table.groupby("row_key")[judge.name].idxmax()]
        scored[f"selfie_scale_{best}"] = table[table["scale"] == best]
    order = scored["finetuned"]["row_key"].tolist()
    aligned = {name: frame.set_index("row_key").loc[order].reset_index() for name, frame in scored.items()}
    return aligned, {"name": judge.name, "description": judge.description,
                     "selfie_mean_by_scale": {str(k): float(v) for k, v in by_scale.items()}}


def lm_judge_scores(aligned: dict[str, pd.DataFrame], cfg: dict) -> dict:
    """The paper's LM judge on every frame (a column `lm_judge`), when an API is configured: a key in
    OPENAI_API_KEY (environment or .env) or a `base_url`. Returns what the results file says about it."""
    from pipeline.judge import LMJudge
    from pipeline.llm import ChatSettings, LLMCallError
    from pipeline.secrets import get_secret

    key = get_secret("OPENAI_API_KEY")
    if not cfg.get("model") or (key is None and not cfg.get("base_url")):
        return {"configured": False, "reason": "no OPENAI_API_KEY in the environment or .env and no "
                "features.judge.base_url: the LM judge did not run; embedding_similarity is the offline judge"}
    settings = ChatSettings(**{k: cfg[k] for k in ("model", "base_url", "timeout", "concurrency", "retries", "reasks")
                               if k in cfg})
    judge = LMJudge(settings, cfg["cache"], key)
    try:
        for name, frame in aligned.items():
            ids = [f"{name}:{row}" for row in frame["row_key"]]
            frame[judge.name] = judge.score(frame["prediction"].tolist(), frame["reference"].tolist(), ids)
    except LLMCallError:
        print(f"lm judge accounting before the failure: {judge.accounting()}")
        raise
    finally:
        judge.chat.cache.close()
    return {"configured": True, "name": judge.name, "description": judge.description, "accounting": judge.accounting()}


SIMULATOR_COLUMNS = ("top", "top_signed", "top_random")


def open_simulator(cfg: dict, inputs: dict):
    """The simulator the score rule was given: a released checkpoint (config), or the model folder of its input."""
    from pipeline.simulator import Simulator

    return Simulator(cfg.get("checkpoint") or inputs["simulator"], cfg["batch_size"], cfg["cache"])


def simulate_frames(aligned: dict[str, pd.DataFrame], simulator, exemplars_path, cfg: dict, seed: int) -> dict:
    """Simulator correlations (columns `simulator_top`, `simulator_top_signed`, `simulator_top_random`) of every
    frame's descriptions, on a seeded sample of `cfg['max_features']` of its features that have exemplars.
    The paper's code scores an empty description 0 without simulating it."""
    from pipeline.simulator import read_windows, score_descriptions

    windows = read_windows(exemplars_path, cfg)
    base = aligned["finetuned"]
    keys = [(int(layer), int(feature)) for layer, feature in zip(base["layer"], base["feature"])]
    usable = [i for i, key in enumerate(keys) if key in windows]
    take = min(len(usable), cfg["max_features"] or len(usable))
    chosen = sorted(np.random.default_rng(seed).choice(usable, take, replace=False).tolist()) if usable else []
    for frame in aligned.values():
        described = [i for i in chosen if str(frame["prediction"].iloc[i]).strip()]
        scores = score_descriptions(simulator, [(frame["prediction"].iloc[i], keys[i]) for i in described], windows)
        for column in SIMULATOR_COLUMNS:
            values = np.full(len(frame), np.nan)
            values[chosen] = 0.0
            values[described] = scores[column].to_numpy()
            frame[f"simulator_{column}"] = values
    return {"features": take, "of": len(base), "without_exemplars": len(keys) - len(usable)}


def simulator_scores(aligned: dict[str, pd.DataFrame], cfg: dict, simulator, exemplars_path, seed: int) -> dict:
    """Simulator correlations of every frame and of the reference descriptions themselves (a frame `reference`:
    the ceiling a description reaches with this simulator on this data)."""
    base = aligned["finetuned"]
    aligned["reference"] = base.assign(prediction=base["reference"])
    sampled = simulate_frames(aligned, simulator, exemplars_path, cfg, seed)
    return {"model": simulator.source, "format": simulator.format} | sampled | {
        "windows": {"top": cfg["top"], "random": cfg["random"], "tokens_before": cfg["tokens_before"]},
        "readout": "expected value over the single-token numbers of '0'..'10'",
        "numbers": [int(v) for v in simulator.values.tolist()],
        "scores": {"simulator_top": "|pooled Pearson r| on the top exemplars (the paper's reported score)",
                   "simulator_top_signed": "pooled Pearson r on the top exemplars",
                   "simulator_top_random": "pooled Pearson r on top and random exemplars 1:1 (OpenAI's method)"}}


def ood_scores(name: str, inputs: dict, cfg: dict, simulator, selfie_scale, samples: int, seed: int) -> dict:
    """One out-of-distribution set: every variant's descriptions of its vectors (SelfIE at the best single scale
    on the test features) and the baselines that apply (nearest training feature, the layer prior), scored by
    the simulator against the vectors' own activations."""
    frames = {}
    for variant in VARIANTS:
        path = inputs.get(f"pred_{name}_{variant}")
        if path:
            frames[variant] = read_table(path, required=["row_key", "cluster", "prediction", "layer"])
    if "selfie" in frames:
        table = frames.pop("selfie")
        scale = selfie_scale if selfie_scale is not None else int(table["scale"].max())
        frames[f"selfie_scale_{scale}"] = table[table["scale"] == scale]
    paths = {"labels": inputs[f"{name}_labels"], "vectors": inputs[f"{name}_vectors"]}
    train = {"labels": inputs["train_labels"], "vectors": inputs["train_vectors"]}
    baselines, _ = baseline_frames(frames["finetuned"], train, paths)
    order = frames["finetuned"]["row_key"].tolist()
    aligned = {key: frame.assign(prediction=[first_line(p) for p in frame["prediction"]]).set_index("row_key")
               .loc[order].reset_index() for key, frame in (frames | baselines).items()}
    sampled = simulate_frames(aligned, simulator, inputs[f"{name}_exemplars"], cfg, seed)
    metrics, comparisons = summarise(aligned, samples, seed)
    return {"vectors": len(order), **sampled, "metrics": metrics, "comparisons": comparisons,
            "per_feature": per_feature(aligned)}


def summarise(aligned: dict[str, pd.DataFrame], samples: int, seed: int) -> tuple[dict, dict]:
    """Per frame and score column: mean with 95% bootstrap interval and standard error over the features that
    have the score; paired differences of the fine-tuned explainer against every other frame."""
    from pipeline.metrics import mean_with_interval, paired_mean_difference

    metrics, comparisons = {}, {}
    finetuned = aligned["finetuned"]
    for name, frame in aligned.items():
        metrics[name] = {"overall": {"n": int(len(frame)), "clusters": int(frame["cluster"].nunique())}}
        if name != "finetuned" and name != "reference":
            comparisons[f"finetuned - {name}"] = {"overall": {}}
        for column in SCORE_COLUMNS:
            if column not in frame or (name == "reference" and not column.startswith("simulator")):
                continue
            scored = frame[column].notna().to_numpy()
            values = frame[column].to_numpy(dtype=float)[scored]
            if not len(values):
                continue
            summary = mean_with_interval(values, frame["cluster"].to_numpy()[scored], samples, seed)
            summary["n"] = int(scored.sum())
            summary["stderr_mean"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
            metrics[name]["overall"][column] = summary
            if f"finetuned - {name}" in comparisons:
                comparisons[f"finetuned - {name}"]["overall"][column] = paired_mean_difference(
                    finetuned[column].to_numpy(dtype=float)[scored], values, frame["cluster"].to_numpy()[scored],
                    samples, seed)
    return metrics, comparisons


def per_feature(aligned: dict[str, pd.DataFrame]) -> dict:
    return {name: {column: {key: value for key, value in zip(frame["row_key"], frame[column].round(4))
                            if not np.isnan(value)} for column in SCORE_COLUMNS if column in frame}
            for name, frame in aligned.items()}


def ceiling_ratios(metrics: dict) -> dict:
    """Each frame's simulator score as a share of the reference descriptions' (the ceiling on this data)."""
    ceiling = metrics.get("reference", {}).get("overall", {})
    ratios = {}
    for name, entry in metrics.items():
        if name == "reference":
            continue
        for column, summary in entry["overall"].items():
            top = ceiling.get(column, {}).get("value") if isinstance(ceiling.get(column), dict) else None
            if column.startswith("simulator") and isinstance(summary, dict) and top:
                ratios.setdefault(name, {})[column] = summary["value"] / top
    return ratios


SCORE_COLUMNS = ("embedding_similarity", "lm_judge", "simulator_top", "simulator_top_signed", "simulator_top_random")


def score_frames(frames: dict[str, pd.DataFrame], samples: int, seed: int, settings: dict | None = None,
                 inputs: dict | None = None) -> dict:
    """Every variant and baseline scored by the offline judge, the LM judge (when configured) and the simulator
    (when enabled): mean with 95% bootstrap interval and standard error over features, and paired differences of
    the fine-tuned explainer against each; the simulator scores each out-of-distribution set given in `inputs`."""
    settings, inputs = settings or {}, inputs or {}
    aligned, offline = _judged(frames)
    lm_judge = lm_judge_scores(aligned, settings["judge"]) if settings.get("judge") else {"configured": False}
    simulator_cfg = settings.get("simulator", {})
    simulator, ood = {"enabled": False}, {}
    if simulator_cfg.get("enabled") and ("simulator" in inputs or simulator_cfg.get("checkpoint")):
        model = open_simulator(simulator_cfg, inputs)
        try:
            simulator = {"enabled": True} | simulator_scores(aligned, simulator_cfg, model, inputs["exemplars"], seed)
            by_scale = offline["selfie_mean_by_scale"]
            best = int(max(by_scale, key=by_scale.get)) if by_scale else None
            for name in OOD_SETS:
                if f"{name}_labels" in inputs:
                    ood[name] = ood_scores(name, inputs, simulator_cfg, model, best, samples, seed)
            simulator["calls"] = dict(model.calls)
        finally:
            if model.cache is not None:
                model.cache.close()
    metrics, comparisons = summarise(aligned, samples, seed)
    if simulator.get("enabled"):
        simulator["ratio_to_reference"] = ceiling_ratios(metrics)
    finetuned = aligned["finetuned"]
    order = finetuned["row_key"].tolist()
    shown = sorted(np.random.default_rng(seed).choice(order, min(EXAMPLES_SHOWN, len(order)), replace=False))
    base = finetuned.set_index("row_key")
    examples = [{"feature_id": key, "context": base.loc[key].get("context", ""), "reference": base.loc[key, "reference"],
                 "predictions": {name: frame.set_index("row_key").loc[key, "prediction"] for name, frame in aligned.items()
                                 if name != "reference"}}
                for key in shown]
    judges = {offline["name"]: offline["description"], "lm_judge": lm_judge, "simulator": simulator}
    return {"judge": {"name": offline["name"], "description": offline["description"]}, "judges": judges,
            "metrics": metrics, "examples": examples, "comparisons": comparisons,
            "selfie_mean_by_scale": offline["selfie_mean_by_scale"], "ood": ood, "per_feature": per_feature(aligned)}


def simulator_input(target: str, simulator: dict) -> dict[str, str]:
    """The simulator the score rule reads: a released checkpoint's local folder, the one trained for this target
    (rule features_simulator), or the untrained model; a hub id is no file (the job loads it)."""
    from pathlib import Path

    if simulator.get("checkpoint"):
        path = str(simulator["checkpoint"])
        local = Path(path).is_absolute() or path.startswith((".", "~")) or Path(path).exists()
        if local and not Path(path).expanduser().is_dir():
            raise ValueError(f"features.simulator.checkpoint: local folder {path} does not exist (a hub id is "
                             f"written owner/name)")
        return {"simulator": path} if Path(path).is_dir() else {}
    if simulator.get("train"):
        return {"simulator": f"work/features/simulator/{target}"}
    return {"simulator": f"resources/models/{simulator['model']}"}


def eval_sets(section: dict) -> tuple[str, ...]:
    """The out-of-distribution sets the run describes: configured, and only for the pipeline's own features."""
    if section.get("source", "pipeline") != "pipeline" or not section.get("simulator", {}).get("enabled"):
        return ()
    return tuple(section.get("ood", {}).get("sets") or ())


def score_inputs(target: str, section: dict) -> dict[str, str]:
    """The simulator, the target's exemplars (with per-token activations) and each out-of-distribution set's
    labels, vectors and exemplars (with the training features for its nearest-neighbour baseline), when the
    simulator is on and the features are the pipeline's own (the paper's archive is scored by the judges only)."""
    simulator = section.get("simulator", {})
    if not simulator.get("enabled") or section.get("source", "pipeline") != "pipeline":
        return {}
    paths = simulator_input(target, simulator) | {"exemplars": f"work/features/exemplars/{target}.parquet"}
    for name in eval_sets(section):
        paths |= {f"{name}_{kind}": path for kind, path in set_paths(target, name).items()}
    if eval_sets(section):
        paths |= {f"train_{kind}": path for kind, path in label_paths(target, "train").items()}
    return paths


TASK = register(Task(
    headline=("overall", "embedding_similarity"),
    name="features", variants=VARIANTS, format_instruction=FORMAT_INSTRUCTION, label_paths=label_paths,
    examples=examples, baselines=baseline_frames, variant_vectors=variant_vectors,
    figures=("metrics.png", "loss.png", "examples.html"), custom_variants={"selfie": selfie}, score_frames=score_frames,
    score_keys=("judge", "simulator", "ood"), score_inputs=score_inputs, eval_set_names=OOD_SETS, eval_sets=eval_sets,
    score_execution=("judge.concurrency", "judge.timeout", "judge.retries", "judge.cache", "simulator.batch_size",
                     "simulator.cache", "ood.batch_size"),
))
