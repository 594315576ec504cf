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
Modules: labels (where the features are), selfie, baselines, scoring (the score stage), summary (means,
intervals, paired differences, ratios).
"""

from __future__ import annotations

from pipeline.lazy import lazy_import
from pipeline.tasks.features.baselines import baseline_frames
from pipeline.tasks.features.judge import check_servers
from pipeline.tasks.features.labels import label_paths, load_features
from pipeline.tasks.features.ood import SETS as OOD_SETS
from pipeline.tasks.features.ood import set_paths
from pipeline.tasks.features.scoring import score_frames
from pipeline.tasks.features.selfie import selfie
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


VARIANTS = ("finetuned", "untrained", "no_vector", "selfie")


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


class Features(Task):
    """Describe an SAE feature's direction in words, scored by an LM judge and a simulator."""

    name, variants, format_instruction, settings = "features", VARIANTS, FORMAT_INSTRUCTION, FeaturesConfig
    headline = ("overall", "embedding_similarity")
    figures = ("metrics.png", "loss.png", "examples.html")
    own_variants = ("selfie",)
    heavy_score = True
    eval_set_names = OOD_SETS
    score_keys = (FeaturesConfig.key("source"), JudgeConfig, SimulatorConfig, OodConfig,
                  DescriptionsConfig.key("describe_every"))
    stages = {  # the task's own stages: the function each calls and the settings its result depends on
        "features_corpus": Stage("pipeline.tasks.features.corpus:build_corpus", (CorpusConfig,)),
        "features_sae": Stage("pipeline.tasks.features.sae:train_saes", (SaeConfig,)),
        "features_exemplars": Stage("pipeline.tasks.features.exemplars:build_exemplars", (
            ExemplarsConfig, *(SaeConfig.key(k) for k in ("layers", "context", "always_on_fraction")))),
        "features_descriptions": Stage("pipeline.tasks.features.descriptions:build_descriptions", (
            FeaturesConfig.key("source"), FeaturesConfig.key("paper_dir"), DescriptionsConfig)),
        "features_archive_exemplars": Stage("pipeline.tasks.features.exemplars:archive_exemplars", (
            FeaturesConfig.key("source"), FeaturesConfig.key("paper_dir"), ExemplarsConfig.key("top"),
            ExemplarsConfig.key("random"), *(SimulatorConfig.key(k) for k in ("enabled", "train", "checkpoint")))),
        "features_simulator": Stage("pipeline.tasks.features.simulator_training:train_simulator", (
            FeaturesConfig.key("source"), SimulatorTrainingConfig, DescriptionsConfig.key("describe_every"),
            *(SimulatorConfig.key(k) for k in ("model", "top", "random", "tokens_before")))),
        "features_ood": Stage("pipeline.tasks.features.ood:build_ood", (
            OodConfig, SaeConfig.key("layers"), SaeConfig.key("context"),
            ExemplarsConfig.key("window_before"), ExemplarsConfig.key("window_after"))),
        "features_figures": Stage("pipeline.tasks.features.figures:features_figures"),
    }

    label_paths = staticmethod(label_paths)
    examples = staticmethod(examples)
    variant_vectors = staticmethod(variant_vectors)
    check_servers = staticmethod(check_servers)

    def baselines(self, scored, train, test, target_dir):
        return baseline_frames(scored, train, test, target_dir)

    def answer(self, variant, examples, generation_cfg, explainer_cfg, explainer_dir, target_dir):
        if variant != "selfie":
            return super().answer(variant, examples, generation_cfg, explainer_cfg, explainer_dir, target_dir)
        return selfie(examples, generation_cfg, explainer_cfg, explainer_dir, target_dir)

    def score_frames(self, frames, samples, seed, section, inputs):
        return score_frames(frames, samples, seed, section=section, inputs=inputs)

    def eval_sets(self, section: FeaturesConfig) -> tuple[str, ...]:
        """The out-of-distribution sets the run describes: configured, with the simulator on."""
        return section.scored_sets

    def score_inputs(self, target: str, section: FeaturesConfig) -> dict[str, str]:
        """The simulator, the target's exemplars (with per-token activations: the SAEs', or the paper's archive's)
        and each out-of-distribution set's labels, vectors and exemplars, when the simulator is on."""
        if not section.simulator.enabled:
            return {}
        paths = simulator_input(target, section.simulator) | {"exemplars": exemplars_path(target, section.source)}
        for name in section.scored_sets:
            paths |= {f"{name}_{kind}": path for kind, path in set_paths(target, name).items()}
        return paths


TASK = register(Features())
