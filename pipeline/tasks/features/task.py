"""The features task: the explainer reads a feature direction of the target and says what it encodes.

Examples are the described SAE features (pipeline/tasks/features/descriptions.py): the question is one of the paper's six
phrasings (its `config/feature_descriptions/*.yaml`) with the decoder direction at the placeholder, the answer
the reference description. Variants: the fine-tuned explainer, the untrained one (zero-shot, with a format
instruction), the fine-tuned one given a zero vector, and SelfIE (the untrained target reads the vector at the
embedding of 'X' in "What is the meaning of the word 'X'? ...", at norms 1, 5, 10, 25 and 50). Baselines: the
nearest training feature's description (largest dot product, as the paper's code ranks them), over all layers
and within the query's layer; and the structure prior, the best single description per layer (the question
names only the layer). Scores: the offline embedding-similarity judge, the paper's LM judge when an API is
configured (pipeline/tasks/features/judge.py), and the simulator's correlation with the feature's activations on its
exemplars (pipeline/tasks/features/simulator.py); each a mean with a 95% bootstrap interval and standard error over
features, with paired differences of the fine-tuned explainer against every other variant, and of every
variant against two floors that do not depend on the feature (the fine-tuned descriptions shuffled among
features, one constant description). SelfIE is scored at every scale by every scorer and reported as the
paper's code reports it (per feature the best of its scales, `selfie_max`) and at one scale chosen out of
sample (`selfie_single_scale`: on the other half of the features; for the OOD sets, on the test features).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.lazy import lazy_import, no_grad
from pipeline.artifacts import ArtifactError, check_same_run, read_table, read_tensors
from pipeline.tasks.features.ood import SETS as OOD_SETS
from pipeline.tasks.features.ood import set_paths
from pipeline.tasks.features.judge import check_servers
from pipeline.tasks.features.settings import (CorpusConfig, DescriptionsConfig, ExemplarsConfig, FeaturesConfig,
                                              JudgeConfig, OodConfig, SaeConfig, SimulatorConfig,
                                              SimulatorTrainingConfig)
from pipeline.explainer.prompts import phrasing
from pipeline.tasks import Examples, Stage, Task, register

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
    """The features of a split ("train", "test") or of an out-of-distribution set (pipeline/tasks/features/ood.py)."""
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
    if "label_score" in frame:  # the paper's archive: its stored simulator score of each reference
        columns["label_score"] = frame["label_score"].astype(float).tolist()
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


def _central(embedded: np.ndarray, rows) -> int:
    """The row (of `rows`) whose description is most similar on average to the others'."""
    similarity = embedded[rows] @ embedded[rows].T
    return int(np.asarray(rows)[int(similarity.mean(axis=1).argmax())])


def layer_prior(train_frame: pd.DataFrame) -> tuple[dict[int, str], str]:
    """Per layer, the training description the judge finds most similar on average to the layer's others: the
    best single answer the question's text (which names only the layer) allows; and the same over all layers
    (the constant description, a floor that does not depend on the feature)."""
    from pipeline.tasks.features.judge import EmbeddingSimilarityJudge

    descriptions = train_frame["description"].astype(str)
    embedded = EmbeddingSimilarityJudge().embed(descriptions.tolist())
    prior = {int(layer): str(descriptions.iloc[_central(embedded, rows)])
             for layer, rows in train_frame.groupby("layer").indices.items()}
    return prior, str(descriptions.iloc[_central(embedded, np.arange(len(descriptions)))])


def derangement(count: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(count) that moves every index (none when count < 2)."""
    order = np.random.default_rng(seed).permutation(count)
    for i in range(count if count > 1 else 0):
        if order[i] == i:  # swapping with the next index fixes neither of the two
            j = (i + 1) % count
            order[i], order[j] = order[j], order[i]
    return order


FLOORS = ("shuffled_descriptions", "constant_description")  # scores a description gets without its feature


def baseline_frames(scored: pd.DataFrame, train_paths: dict[str, str], test_paths: dict[str, str],
                    target_dir=None, seed: int = 0) -> tuple[dict, dict]:
    """The structure prior (layer_prior), the description of the training feature whose direction has the
    largest dot product with the query's, over all layers and within the query's layer, and two floors: the
    fine-tuned explainer's descriptions shuffled among the features, and one constant description."""
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
    prior, constant = layer_prior(train_frame)
    frames["structure_prior"] = scored.assign(variant="structure_prior",
                                              prediction=[prior.get(int(layer), constant) for layer in scored["layer"]])
    frames["shuffled_descriptions"] = scored.assign(
        variant="shuffled_descriptions", prediction=scored["prediction"].to_numpy()[derangement(len(scored), seed)])
    frames["constant_description"] = scored.assign(variant="constant_description", prediction=constant)
    return frames, {"nearest_neighbor": f"{len(train_frame)} training features, all layers",
                    "nearest_neighbor_layer": f"{len(train_frame)} training features, the query's layer only",
                    "structure_prior": {str(layer): text for layer, text in prior.items()},
                    "shuffled_descriptions": "the fine-tuned explainer's descriptions, each given to another feature "
                                             "(a seeded derangement): a floor",
                    "constant_description": {"text": constant, "what": "the training description closest on "
                                             "average to all others, given to every feature: a floor"}}


def first_line(text: str) -> str:
    """Generation stops at the first line break (the stop string)."""
    return (text or "").strip().split("\n")[0].strip()


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


def _judged(frames: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], dict]:
    """Every frame with its offline judge score, SelfIE as one frame per scale, aligned to the fine-tuned rows."""
    from pipeline.tasks.features.judge import EmbeddingSimilarityJudge

    judge = EmbeddingSimilarityJudge()
    scored = {}
    for name, frame in selfie_by_scale(frames).items():
        frame = frame.reset_index(drop=True).assign(prediction=[first_line(p) for p in frame["prediction"]])
        scored[name] = frame.assign(**{judge.name: judge.score(frame["prediction"].tolist(),
                                                               frame["reference"].tolist())})
    order = scored["finetuned"]["row_key"].tolist()
    aligned = {name: frame.set_index("row_key").loc[order].reset_index() for name, frame in scored.items()}
    return aligned, {"name": judge.name, "description": judge.description}


def lm_judge_scores(aligned: dict[str, pd.DataFrame], cfg: JudgeConfig) -> dict:
    """The paper's LM judge on every frame (a column `lm_judge`), when an API is configured: a key in
    OPENAI_API_KEY (environment or .env) or a `base_url`. Returns what the results file says about it."""
    from pipeline.tasks.features.judge import LMJudge
    from pipeline.tasks.features.llm import ChatSettings, LLMCallError
    from pipeline.secrets import get_secret

    key = get_secret("OPENAI_API_KEY")
    if not cfg.model or (key is None and not cfg.base_url):
        return {"configured": False, "reason": "no OPENAI_API_KEY in the environment or .env and no "
                "features.judge.base_url: the LM judge did not run; embedding_similarity is the offline judge"}
    settings = ChatSettings(model=cfg.model, base_url=cfg.base_url, timeout=cfg.timeout, concurrency=cfg.concurrency,
                            retries=cfg.retries, reasks=cfg.reasks)
    judge = LMJudge(settings, cfg.cache, key)
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


def open_simulator(cfg: SimulatorConfig, inputs: dict):
    """The simulator the score rule was given: a released checkpoint (config), or the model folder of its input."""
    from pipeline.tasks.features.simulator import Simulator

    return Simulator(cfg.checkpoint or inputs["simulator"], cfg.batch_size, cfg.cache, cfg.format)


def simulate_frames(aligned: dict[str, pd.DataFrame], simulator, exemplars_path, cfg: SimulatorConfig, seed: int,
                    describe_every: int = 1) -> dict:
    """Simulator correlations (columns `simulator_top`, `simulator_top_signed`, `simulator_top_random`) of every
    frame's descriptions, on a seeded sample of `cfg.max_features` of its features that have exemplars, on the top
    ranks the describer did not read (`describe_every`).
    The paper's code scores an empty description 0 without simulating it."""
    from pipeline.tasks.features.simulator import read_windows, score_descriptions

    windows = read_windows(exemplars_path, cfg, describe_every)
    base = aligned["finetuned"]
    keys = [(int(layer), int(feature)) for layer, feature in zip(base["layer"], base["feature"])]
    usable = [i for i, key in enumerate(keys) if key in windows]
    take = min(len(usable), cfg.max_features or len(usable))
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


def simulator_scores(aligned: dict[str, pd.DataFrame], cfg: SimulatorConfig, describe_every: int, simulator,
                     exemplars_path, seed: int) -> dict:
    """Simulator correlations of every frame and of the reference descriptions themselves (a frame `reference`:
    the ceiling a description reaches with this simulator on this data)."""
    base = aligned["finetuned"]
    aligned["reference"] = base.assign(prediction=base["reference"])
    sampled = simulate_frames(aligned, simulator, exemplars_path, cfg, seed, describe_every)
    return {"model": simulator.source, "format": simulator.format, "format_from": simulator.format_evidence} | sampled | {
        "windows": {"top": cfg.top, "random": cfg.random, "tokens_before": cfg.tokens_before,
                    "scored_top_ranks": "all" if describe_every == 1 else
                    f"those not divisible by {describe_every} (the describer read the others)"},
        "readout": "expected value over vocabulary ids 0..10 (the classes)" if simulator.format == "finetuned" else
                   "expected value over the single-token numbers of '0'..'10'",
        "numbers": [int(v) for v in simulator.values.tolist()],
        "scores": {"simulator_top": "|pooled Pearson r| on the top exemplars (the paper's reported score)",
                   "simulator_top_signed": "pooled Pearson r on the top exemplars",
                   "simulator_top_random": "pooled Pearson r on top and random exemplars 1:1 (OpenAI's method)"}}


def ood_scores(name: str, inputs: dict, cfg: SimulatorConfig, simulator, selfie_scales: dict | None, samples: int,
               seed: int) -> dict:
    """One out-of-distribution set: every variant's descriptions of its vectors and the baselines that apply
    (nearest training feature, the layer prior, the floors), scored by the simulator against the vectors' own
    activations; SelfIE as its best scale per vector and at the single scale chosen on the test features."""
    frames = {}
    for variant in VARIANTS:
        path = inputs.get(f"pred_{name}_{variant}")
        if path:
            frames[variant] = read_table(path, required=["row_key", "cluster", "prediction", "layer"])
    frames = selfie_by_scale(frames)
    paths = {"labels": inputs[f"{name}_labels"], "vectors": inputs[f"{name}_vectors"]}
    train = {"labels": inputs["train_labels"], "vectors": inputs["train_vectors"]}
    baselines, _ = baseline_frames(frames["finetuned"], train, paths, seed=seed)
    order = frames["finetuned"]["row_key"].tolist()
    aligned = {key: frame.assign(prediction=[first_line(p) for p in frame["prediction"]]).set_index("row_key")
               .loc[order].reset_index() for key, frame in (frames | baselines).items()}
    sampled = simulate_frames(aligned, simulator, inputs[f"{name}_exemplars"], cfg, seed)
    selfie = collapse_selfie(aligned, seed, selfie_scales or {})
    metrics, comparisons = summarise(aligned, samples, seed)
    return {"vectors": len(order), **sampled, "selfie": selfie, "metrics": metrics, "comparisons": comparisons,
            "per_feature": per_feature(aligned)}


def summarise(aligned: dict[str, pd.DataFrame], samples: int, seed: int) -> tuple[dict, dict]:
    """Per frame and score column: mean with 95% bootstrap interval and standard error over the features that
    have the score; paired differences of the fine-tuned explainer against every other frame."""
    from pipeline.explainer.metrics import mean_with_interval, paired_mean_difference

    metrics, comparisons = {}, {}
    pairs = [("finetuned", name) for name in aligned if name not in ("finetuned", "reference")]
    pairs += [(name, floor) for floor in FLOORS if floor in aligned for name in aligned
              if name not in FLOORS and name != "finetuned"]  # every variant against each floor
    finetuned_texts = aligned["finetuned"]["prediction"].astype(str).to_numpy()
    for name, frame in aligned.items():
        texts = frame["prediction"].astype(str)
        metrics[name] = {"overall": {"n": int(len(frame)), "clusters": int(frame["cluster"].nunique()),
                                     "distinct_descriptions": int(texts.nunique()),
                                     "distinct_share": float(texts.nunique() / max(len(frame), 1))}}
        if name != "finetuned" and len(frame) == len(aligned["finetuned"]):  # how often the text itself differs
            metrics[name]["overall"]["differs_from_finetuned"] = float(
                (texts.to_numpy() != finetuned_texts).mean())
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
    for left, right in pairs:
        entry = comparisons.setdefault(f"{left} - {right}", {"overall": {}})
        for column in SCORE_COLUMNS:
            if column not in metrics[left]["overall"] or column not in metrics[right]["overall"]:
                continue
            a, b = (aligned[left][column].to_numpy(dtype=float), aligned[right][column].to_numpy(dtype=float))
            both = ~np.isnan(a) & ~np.isnan(b)
            entry["overall"][column] = paired_mean_difference(a[both], b[both],
                                                              aligned[left]["cluster"].to_numpy()[both], samples, seed)
    return metrics, comparisons


def per_feature(aligned: dict[str, pd.DataFrame]) -> dict:
    return {name: {column: {key: value for key, value in zip(frame["row_key"], frame[column].round(4))
                            if not np.isnan(value)} for column in SCORE_COLUMNS if column in frame}
            for name, frame in aligned.items()}


def paper_ratios(aligned: dict[str, pd.DataFrame], samples: int, seed: int) -> dict:
    """The paper's `simulator_correlation_ratio`: per feature, its simulator score (|r| on the top exemplars)
    divided by the reference description's score, the score itself where that is 0 or missing; the mean over
    features with its interval. The reference's score is the archive's stored one (`label_score`) where the
    features come with it, else the reference description's own simulator score measured here."""
    from pipeline.explainer.metrics import mean_with_interval

    base = aligned["finetuned"]
    if "label_score" in base and base["label_score"].notna().any():
        label, source = base["label_score"].to_numpy(dtype=float), "the archive's stored label scores (all_label_scores)"
    elif "reference" in aligned and "simulator_top" in aligned["reference"]:
        label, source = aligned["reference"]["simulator_top"].to_numpy(dtype=float), (
            "the reference description's simulator_top on the same exemplars")
    else:
        return {}
    bare = np.isnan(label) | (label == 0)
    divisor = np.where(bare, 1.0, label)  # no label score: the score itself, as the paper's code does
    ratios = {}
    for name, frame in aligned.items():
        if name == "reference" or "simulator_top" not in frame:
            continue
        score = frame["simulator_top"].to_numpy(dtype=float)
        scored = ~np.isnan(score)
        if not scored.any():
            continue
        ratio = (score / divisor)[scored]
        ratios[name] = mean_with_interval(ratio, frame["cluster"].to_numpy()[scored], samples, seed) | {
            "n": int(scored.sum())}
    return {"label_scores": source, "ratios": ratios}


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


# What score_frames runs without settings: the offline judge only.
OFFLINE = FeaturesConfig(judge=None, simulator=SimulatorConfig(enabled=False))


def score_frames(frames: dict[str, pd.DataFrame], samples: int, seed: int, settings: dict | None = None,
                 inputs: dict | None = None) -> dict:
    """Every variant and baseline scored by the offline judge, the LM judge (when configured) and the simulator
    (when enabled): mean with 95% bootstrap interval and standard error over features, and paired differences of
    the fine-tuned explainer against each and of every variant against each floor; SelfIE scored at every scale
    and reported as its best scale per feature and as one scale chosen out of sample; the simulator scores each
    out-of-distribution set given in `inputs`. `settings`: the task's section as the score stage's settings hold it
    (judge, simulator, ood, descriptions.describe_every); None: the offline judge only."""
    cfg, inputs = FeaturesConfig.from_dict(settings) if settings else OFFLINE, inputs or {}
    aligned, offline = _judged(frames)
    lm_judge = lm_judge_scores(aligned, cfg.judge) if cfg.judge else {"configured": False}
    simulator, ood, model = {"enabled": False}, {}, None
    if cfg.simulator.enabled and ("simulator" in inputs or cfg.simulator.checkpoint):
        model = open_simulator(cfg.simulator, inputs)
    try:
        if model is not None:  # the target's features: on the top ranks the describer did not read (archive: all)
            simulator = {"enabled": True} | simulator_scores(aligned, cfg.simulator, cfg.described_every, model,
                                                             inputs["exemplars"], seed)
        selfie = collapse_selfie(aligned, seed)
        if model is not None:  # the OOD sets' single SelfIE scale: per score, the scale best on the test features
            for name in OOD_SETS:
                if f"{name}_labels" in inputs:
                    ood[name] = ood_scores(name, inputs, cfg.simulator, model, selfie.get("best_scale"), samples, seed)
            simulator["calls"] = dict(model.calls)
    finally:
        if model is not None and model.cache is not None:
            model.cache.close()
    metrics, comparisons = summarise(aligned, samples, seed)
    if simulator.get("enabled"):
        simulator["ratio_to_reference"] = ceiling_ratios(metrics)  # mean score / the reference's mean score
        simulator["paper_ratio"] = paper_ratios(aligned, samples, seed)  # mean of per-feature ratios
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
            "metrics": metrics, "examples": examples, "comparisons": comparisons, "selfie": selfie, "ood": ood,
            "per_feature": per_feature(aligned)}


def simulator_input(target: str, simulator: SimulatorConfig) -> dict[str, str]:
    """The simulator the score rule reads: a released checkpoint's local folder, the one trained for this target
    (rule features_simulator), or the untrained model; a hub id is no file (the job loads it)."""
    from pipeline.artifacts import local_folder

    if simulator.checkpoint:
        path = str(simulator.checkpoint)
        return {"simulator": path} if local_folder(path, "features.simulator.checkpoint") else {}
    if simulator.train:
        return {"simulator": f"work/features/simulator/{target}"}
    return {"simulator": f"resources/models/{simulator.model}"}


def exemplars_path(target: str, source: str) -> str:
    """The exemplars table the simulator reads: the SAEs' (features_exemplars) or the paper's archive's
    (features_archive_exemplars)."""
    return f"work/features/exemplars/{target}{'.archive' if source == 'paper' else ''}.parquet"


def eval_sets(cfg: FeaturesConfig) -> tuple[str, ...]:
    """The out-of-distribution sets the run describes: configured, with the simulator on."""
    return cfg.scored_sets


def score_inputs(target: str, cfg: FeaturesConfig) -> dict[str, str]:
    """The simulator, the target's exemplars (with per-token activations: the SAEs', or the paper's archive's) and
    each out-of-distribution set's labels, vectors and exemplars (with the training features for its
    nearest-neighbour baseline), when the simulator is on."""
    if not cfg.simulator.enabled:
        return {}
    paths = simulator_input(target, cfg.simulator) | {"exemplars": exemplars_path(target, cfg.source)}
    for name in cfg.scored_sets:
        paths |= {f"{name}_{kind}": path for kind, path in set_paths(target, name).items()}
    if cfg.scored_sets:
        paths |= {f"train_{kind}": path for kind, path in label_paths(target, "train").items()}
    return paths


TASK = register(Task(
    headline=("overall", "embedding_similarity"),
    name="features", variants=VARIANTS, format_instruction=FORMAT_INSTRUCTION, label_paths=label_paths,
    examples=examples, baselines=baseline_frames, variant_vectors=variant_vectors,
    figures=("metrics.png", "loss.png", "examples.html"), custom_variants={"selfie": selfie}, score_frames=score_frames,
    heavy_score=True, check_servers=check_servers, settings=FeaturesConfig,
    score_keys=(FeaturesConfig.key("source"), JudgeConfig, SimulatorConfig, OodConfig,
                DescriptionsConfig.key("describe_every")),
    score_inputs=score_inputs, eval_set_names=OOD_SETS, eval_sets=eval_sets,
    stages={  # the task's own stages: the function each calls and the settings its result depends on
        "features_corpus": Stage("pipeline.tasks.features.corpus:build_corpus", (CorpusConfig,)),
        "features_sae": Stage("pipeline.tasks.features.sae:train_saes", (SaeConfig,)),
        "features_exemplars": Stage("pipeline.tasks.features.exemplars:build_exemplars", (
            ExemplarsConfig, *(SaeConfig.key(k) for k in ("layers", "context", "always_on_fraction")))),
        "features_descriptions": Stage("pipeline.tasks.features.descriptions:build_descriptions", (
            FeaturesConfig.key("source"), FeaturesConfig.key("paper_dir"), DescriptionsConfig)),
        "features_archive_exemplars": Stage("pipeline.tasks.features.exemplars:archive_exemplars", (
            FeaturesConfig.key("source"), FeaturesConfig.key("paper_dir"), ExemplarsConfig.key("top"),
            ExemplarsConfig.key("random"), *(SimulatorConfig.key(k) for k in ("enabled", "train", "checkpoint")))),
        "features_simulator": Stage("pipeline.tasks.features.simulator:train_simulator", (
            FeaturesConfig.key("source"), SimulatorTrainingConfig, DescriptionsConfig.key("describe_every"),
            *(SimulatorConfig.key(k) for k in ("model", "top", "random", "tokens_before")))),
        "features_ood": Stage("pipeline.tasks.features.ood:build_ood", (
            OodConfig, SaeConfig.key("layers"), SaeConfig.key("context"),
            ExemplarsConfig.key("window_before"), ExemplarsConfig.key("window_after"))),
        "features_figures": Stage("pipeline.tasks.features.figures:features_figures"),
    },
))
