"""The features score stage: every variant and baseline scored by the offline judge, the paper's LM judge (when an
API is configured, pipeline/tasks/features/judge.py) and the simulator (pipeline/tasks/features/simulator.py),
on the test features and on each out-of-distribution set."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.artifacts import read_table
from pipeline.tasks import ScoreInputs
from pipeline.tasks.features.baselines import baseline_frames
from pipeline.tasks.features.ood import SETS as OOD_SETS
from pipeline.tasks.features.selfie import collapse_selfie, selfie_by_scale
from pipeline.tasks.features.settings import FeaturesConfig, JudgeConfig, SimulatorConfig
from pipeline.tasks.features.summary import ceiling_ratios, first_line, paper_ratios, per_feature, summarise

EXAMPLES_SHOWN = 12  # random test features shown side by side in the report


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


def ood_scores(name: str, inputs: ScoreInputs, cfg: SimulatorConfig, simulator, selfie_scales: dict | None, samples: int,
               seed: int, variants: tuple[str, ...]) -> dict:
    """One out-of-distribution set: every variant's descriptions of its vectors and the baselines that apply
    (nearest training feature, the layer prior, the floors), scored by the simulator against the vectors' own
    activations; SelfIE as its best scale per vector and at the single scale chosen on the test features."""
    frames = {variant: read_table(path, required=["row_key", "cluster", "prediction", "layer"])
              for variant, path in inputs.evals.get(name, {}).items() if variant in variants}
    frames = selfie_by_scale(frames)
    paths = {"labels": inputs.own[f"{name}_labels"], "vectors": inputs.own[f"{name}_vectors"]}
    train = {"labels": inputs.train["labels"], "vectors": inputs.train["vectors"]}
    baselines, _ = baseline_frames(frames["finetuned"], train, paths, seed=seed)
    order = frames["finetuned"]["row_key"].tolist()
    aligned = {key: frame.assign(prediction=[first_line(p) for p in frame["prediction"]]).set_index("row_key")
               .loc[order].reset_index() for key, frame in (frames | baselines).items()}
    sampled = simulate_frames(aligned, simulator, inputs.own[f"{name}_exemplars"], cfg, seed)
    selfie = collapse_selfie(aligned, seed, selfie_scales or {})
    metrics, comparisons = summarise(aligned, samples, seed)
    return {"vectors": len(order), **sampled, "selfie": selfie, "metrics": metrics, "comparisons": comparisons,
            "per_feature": per_feature(aligned)}


# What score_frames runs without settings: the offline judge only.
OFFLINE = FeaturesConfig(judge=None, simulator=SimulatorConfig(enabled=False))


def score_frames(frames: dict[str, pd.DataFrame], samples: int, seed: int, section: FeaturesConfig | None = None,
                 inputs: ScoreInputs | None = None) -> dict:
    """Every variant and baseline scored by the offline judge, the LM judge (when configured) and the simulator
    (when enabled): mean with 95% bootstrap interval and standard error over features, and paired differences of
    the fine-tuned explainer against each and of every variant against each floor; SelfIE scored at every scale
    and reported as its best scale per feature and as one scale chosen out of sample; the simulator scores each
    out-of-distribution set given in `inputs` (its own: the simulator, the exemplars, each set's labels, vectors
    and exemplars; its training labels; each set's predictions: ScoreInputs.evals). `section`: the task's section as
    the score stage's settings hold it (judge, simulator, ood, descriptions.describe_every); None: the offline judge
    only."""
    cfg, inputs = section or OFFLINE, inputs or ScoreInputs()
    aligned, offline = _judged(frames)
    lm_judge = lm_judge_scores(aligned, cfg.judge) if cfg.judge else {"configured": False}
    simulator, ood, model = {"enabled": False}, {}, None
    if cfg.simulator.enabled and ("simulator" in inputs.own or cfg.simulator.checkpoint):
        model = open_simulator(cfg.simulator, inputs.own)
    try:
        if model is not None:  # the target's features: on the top ranks the describer did not read (archive: all)
            simulator = {"enabled": True} | simulator_scores(aligned, cfg.simulator, cfg.described_every, model,
                                                             inputs.own["exemplars"], seed)
        selfie = collapse_selfie(aligned, seed)
        if model is not None:  # the OOD sets' single SelfIE scale: per score, the scale best on the test features
            for name in OOD_SETS:
                if f"{name}_labels" in inputs.own:
                    ood[name] = ood_scores(name, inputs, cfg.simulator, model, selfie.get("best_scale"), samples, seed,
                                           variants=tuple(frames))
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
