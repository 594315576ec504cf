"""The train / generate / score stages every task shares (the task says how to read its labels).

For a registered task (pipeline/tasks/__init__.py): fine-tune the explainer on its training rows, answer
its test questions with each variant (the fine-tuned explainer, the untrained one, and the task's
vector controls), and score every variant and baseline into `results/{task}/{explainer}_{target}.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.tasks import CONTEXT, ROLE_SEP, Examples, ScoreInputs, Task, get_task, of_role

_MODEL_INPUTS = ("explainer", "target", "trained", "alignment")


@dataclass(frozen=True)
class Run:
    """One job of a task's run (explainer x target), as the train, generate and score stages read it: the models'
    folders, the settings it runs with (config sections: `training`, `explainer`, `generation`, `scoring`, the task's
    own) and what its artifacts record, and its input files by name. `labels`: the label artifacts the stage reads
    (train: the training split; generate: the split or evaluation set it answers; score reads its inputs by role:
    ScoreInputs). `trained_dir`: the fine-tuned (or released) explainer; `alignment`: the fitted maps."""
    task: str
    explainer_dir: str
    target_dir: str
    settings: dict
    provenance: dict
    labels: dict[str, str] = field(default_factory=dict)
    trained_dir: str | None = None
    alignment: str | None = None
    names: dict[str, str] = field(default_factory=dict)  # {"explainer": key, "target": key}
    inputs: dict[str, str] = field(default_factory=dict)  # every named input file of the job
    predictions: tuple[str, ...] = ()  # score: each variant's predictions, in the task's variant order

    @classmethod
    def from_job(cls, job) -> "Run":
        """The run a Snakemake job describes (`snakemake` in a rule's script: params.task, settings and code; inputs
        named as the shared rules name them)."""
        from pipeline.runtime import named_inputs, stage_settings

        settings, prov = stage_settings(job.params, job.config, job.rule)
        files = named_inputs(job.input)
        labels = {name: path for name, path in named_inputs(job.input, exclude=_MODEL_INPUTS).items()
                  if ROLE_SEP not in name}
        return cls(task=job.params.task, explainer_dir=files["explainer"], target_dir=files["target"],
                   settings=settings, provenance=prov, labels=labels,
                   trained_dir=files.get("trained"), alignment=files.get("alignment"),
                   names={k: str(getattr(job.wildcards, k)) for k in ("explainer", "target") if hasattr(job.wildcards, k)},
                   inputs=files, predictions=tuple(map(str, job.input.get("predictions", []))))

    @property
    def spec(self) -> Task:
        return get_task(self.task)

    @property
    def task_section(self):
        """The task's config section, typed (Task.settings), as far as this stage's settings hold it (the rest takes
        its defaults); None for a task without one."""
        from pipeline.settings import section_of

        model = self.spec.settings
        return section_of(self.settings, model) if model is not None else None

    def config(self, head: str):
        """A settings section as its dataclass (training, explainer, generation, scoring)."""
        from pipeline.settings import ExplainerConfig, GenerationConfig, ScoringConfig, TrainingConfig, section_of

        classes = {"training": TrainingConfig, "explainer": ExplainerConfig, "generation": GenerationConfig,
                   "scoring": ScoringConfig}
        return section_of(self.settings, classes[head])


def training_inputs(paths: dict[str, str | Path]) -> dict:
    """What a training run's checkpoint is keyed on besides its settings: the input artifacts and the models."""
    from pipeline.artifacts import fingerprint
    from pipeline.models import read_manifest

    return {name: (fingerprint(path) if Path(path).is_file() else read_manifest(path)["source"])
            for name, path in paths.items()}


def _explainer_width(examples: Examples, explainer_dir, target_dir) -> tuple[int, str | None]:
    """The width of the vectors the explainer reads; text-only tasks read none (no projection)."""
    from pipeline.artifacts import ArtifactError
    from pipeline.models import read_manifest

    if examples.vectors is None:
        return read_manifest(explainer_dir)["hidden_size"], "none"
    width = read_manifest(target_dir)["hidden_size"]
    if examples.vectors.shape[1] != width:
        raise ArtifactError(f"vectors have width {examples.vectors.shape[1]}, but target model {target_dir} has "
                            f"hidden size {width}")
    return width, None


def vector_layers(examples: Examples, explainer_cfg, explainer_dir, target_dir) -> list[int] | None:
    """The layer each row's vector was taken from (the first of an act_patch window; a feature's layer), for an
    explainer that needs it: `explainer.inject: layer` (after checking that the explainer is the target model) or
    one projection per layer (`explainer.alignment: fitted`, any pair); None otherwise."""
    from pipeline.models import read_manifest

    layered = explainer_cfg.inject == "layer"
    needed = layered or explainer_cfg.alignment == "fitted"
    if examples.vectors is None or not (needed or explainer_cfg.checkpoint):  # a released one may map per layer
        return None
    setting = "explainer.inject is 'layer'" if layered else "explainer.alignment is 'fitted'"
    if layered and read_manifest(explainer_dir)["source"] != read_manifest(target_dir)["source"]:
        raise ValueError(f"{setting}, but explainer {explainer_dir} is not target {target_dir}: a layer reads only its "
                         f"own model's states; use inject: embedding for this pair")
    if "layer" not in examples.columns:
        if not needed:
            return None
        raise ValueError(f"{setting}, but this task's rows do not say which layer a vector came from")
    return [int(layer[0]) if isinstance(layer, (list, tuple)) else int(layer) for layer in examples.columns["layer"]]


def asked(questions: list[str], explainer_cfg, spec) -> list[str]:
    """The questions as the explainer is asked them: with `prompt_format: paper`, each ends as the paper's string
    template of its task does."""
    return [q + spec.paper_suffix for q in questions] if explainer_cfg.prompt_format == "paper" else questions


def train(run: Run, out_dir, checkpoint_dir) -> dict:
    """Fine-tune the explainer on the task's training rows (`run.labels`: the training split); the checkpoint key
    names the inputs too. With `run.alignment` (explainer.alignment: fitted) the projections start from those maps."""
    from pipeline.explainer.training import train_explainer

    spec, training_cfg, explainer_cfg = run.spec, run.config("training"), run.config("explainer")
    examples = spec.training_rows(spec.examples(run.labels, run.target_dir), run.task_section, training_cfg.seed,
                                  run.target_dir)
    width, projection = _explainer_width(examples, run.explainer_dir, run.target_dir)
    if projection:
        explainer_cfg = explainer_cfg.replaced(projection=projection)
    inputs = dict(run.labels) | {"explainer": run.explainer_dir, "target": run.target_dir}
    key = run.provenance | {"inputs": training_inputs(inputs | ({"alignment": run.alignment} if run.alignment else {}))}
    questions = asked(examples.questions, explainer_cfg, spec)
    return train_explainer(training_cfg, explainer_cfg, run.explainer_dir, width, questions, examples.answers,
                           examples.vectors, out_dir, checkpoint_dir, key,
                           vector_layers=vector_layers(examples, explainer_cfg, run.explainer_dir, run.target_dir),
                           alignment=run.alignment if projection is None else None)


def prediction_frame(examples: Examples, questions: list[str], predictions: list[str], variant: str) -> pd.DataFrame:
    verdict = {} if examples.labels is None else {"is_different": examples.labels.astype(bool)}
    return pd.DataFrame({"row_key": examples.row_keys, "cluster": examples.clusters, "variant": variant,
                         "question": questions, "prediction": predictions, "reference": examples.answers}
                        | verdict | examples.columns)


def generate(run: Run, variant: str, out_path) -> pd.DataFrame:
    """Answers of one explainer variant on `run.labels` (the test split or an evaluation set): the fine-tuned
    explainer; the untrained one (zero-shot, with the task's format instruction, in its chat template if it has one);
    and the task's vector controls."""
    from pipeline.artifacts import provenance, write_table
    from pipeline.explainer.model import load_explainer
    from pipeline.runtime import resolve_precision, torch_dtype
    from pipeline.explainer.generation import generate_answers
    from pipeline.sampling import seeded_subset
    from pipeline.models import read_manifest

    from pipeline.tasks import IN_CONTEXT

    spec, generation_cfg, explainer_cfg = run.spec, run.config("generation"), run.config("explainer")
    explainer_dir, target_dir = run.explainer_dir, run.target_dir
    if variant not in spec.variants + spec.baseline_variants:
        raise ValueError(f"unknown {run.task} variant '{variant}'; expected one of "
                         f"{spec.variants + spec.baseline_variants}")
    examples = spec.examples(run.labels, target_dir)
    examples.vectors = spec.variant_vectors(variant, examples, generation_cfg.seed)
    examples = examples.subset(seeded_subset(len(examples.questions), generation_cfg.max_examples, generation_cfg.seed))
    models = {"explainer": read_manifest(explainer_dir)["source"], "target": read_manifest(target_dir)["source"]}
    if variant in spec.own_variants:
        out = spec.answer(variant, examples, generation_cfg, explainer_cfg, explainer_dir, target_dir)
        write_table(out.assign(variant=variant), out_path, provenance(run.provenance, models))
        return out
    width, projection = _explainer_width(examples, explainer_dir, target_dir)
    # A released explainer (explainer.checkpoint) stands where this workflow's trained one would.
    untrained = variant == "untrained" or variant in IN_CONTEXT
    trained = None if untrained else (explainer_cfg.checkpoint or run.trained_dir)
    tokens = explainer_cfg.continuous_tokens
    explainer, tokenizer = load_explainer(
        trained, explainer_dir, width, projection=projection or explainer_cfg.projection, inject=explainer_cfg.inject,
        alignment=run.alignment if projection is None else None, scale=explainer_cfg.scale,
        center=explainer_cfg.center, continuous_tokens=tokens.ordered if tokens else None,
        text_only=examples.vectors is None, dtype=torch_dtype(generation_cfg.precision))
    questions, prompt_format = asked(examples.questions, explainer_cfg, spec), explainer_cfg.prompt_format
    layers = vector_layers(examples, explainer_cfg, explainer_dir, target_dir)
    vectors = examples.vectors
    if untrained:
        questions = [q + spec.format_instruction for q in questions]
        # Zero-shot, an instruct model is asked as it was trained to be asked: in its chat template.
        prompt_format = "chat" if getattr(tokenizer, "chat_template", None) else prompt_format
    if variant in IN_CONTEXT:
        questions, vectors, layers, prompt_format = _in_context(run, examples, questions, layers, IN_CONTEXT[variant],
                                                                 prompt_format, tokenizer, generation_cfg.seed)
    predictions = generate_answers(explainer, tokenizer, questions, vectors, prompt_format,
                                   generation_cfg.max_new_tokens, generation_cfg.batch_size, desc=variant,
                                   vector_layers=layers)
    if variant in IN_CONTEXT:  # its examples end where its answer does; what it writes after is a next example
        from pipeline.explainer.prompts import first_answer

        predictions = [first_answer(p) for p in predictions]
    out = prediction_frame(examples, questions, predictions, variant)
    write_table(out, out_path, provenance(run.provenance | {"precision": resolve_precision(generation_cfg.precision)},
                                          models))
    return out


def _in_context(run: Run, examples: Examples, questions: list[str], layers, k: int, prompt_format: str, tokenizer,
                seed: int):
    """The in-context baseline's prompts: before each question (as the untrained explainer is asked it), k solved
    examples of the training split (`run`'s context_* inputs), each asked the same way and answered; their vectors
    at their own placeholders, then the question's ([rows, k + 1, width], each slot's layer)."""
    import torch

    from pipeline.explainer.prompts import in_context_examples, in_context_prompt

    explainer_cfg, spec = run.config("explainer"), run.spec
    pool = spec.examples(of_role(run.inputs, CONTEXT), run.target_dir)
    solved_questions = [q + spec.format_instruction for q in asked(pool.questions, explainer_cfg, spec)]
    pool_layers = vector_layers(pool, explainer_cfg, run.explainer_dir, run.target_dir)
    picks = in_context_examples(len(questions), len(pool.questions), k, seed)
    prompts = [in_context_prompt([(solved_questions[j], pool.answers[j]) for j in pick], question, tokenizer,
                                 prompt_format) for pick, question in zip(picks, questions)]
    vectors = None
    if examples.vectors is not None:
        vectors = torch.stack([torch.cat([pool.vectors[pick], examples.vectors[row:row + 1]])
                               for row, pick in enumerate(picks)])
    if layers is not None:
        layers = [[pool_layers[j] for j in pick] + [layers[row]] for row, pick in enumerate(picks)]
    return prompts, vectors, layers, "templated" if prompt_format == "chat" else "paper"


def score(run: Run, out_path) -> dict:
    """Metrics of every variant (`run.predictions`) and baseline, paired comparisons, counts and provenance in one
    results file; the labels, the artifacts whose counts are reported and the task's own scoring inputs are
    `run.inputs` by role (ScoreInputs)."""
    from pipeline.artifacts import read_provenance, read_table, write_json
    from pipeline.explainer.metrics import run_summary, score_variants

    spec, scoring_cfg, inputs = run.spec, run.config("scoring"), ScoreInputs.of(run.inputs)
    prediction_paths = {Path(path).stem: path for path in run.predictions}  # {variant}.parquet: the task's, baselines
    frames = {v: read_table(p, required=["row_key", "cluster", "prediction", "reference"])
              for v, p in prediction_paths.items()}
    baselines, described = spec.baselines(frames["finetuned"], inputs.train, inputs.test, run.target_dir)
    if spec.scores_own:
        scores = spec.score_frames(frames | baselines, scoring_cfg.bootstrap_samples, scoring_cfg.seed,
                                   section=run.task_section, inputs=inputs)
    else:
        scores = score_variants(frames | baselines, scoring_cfg.bootstrap_samples, scoring_cfg.seed,
                                prior_cell=spec.prior_cell)
    counts = {name: read_provenance(path).get("counts", {}) for name, path in inputs.counts.items()}
    for split, paths in (("train", inputs.train), ("test", inputs.test)):
        counts[f"labels_{split}"] = read_provenance(next(iter(paths.values()))).get("counts", {})
    result = {"task": run.task, "explainer": run.names["explainer"], "target": run.names["target"], **scores,
              "baselines": described, "counts": counts} | run_summary(
        scoring_cfg, prediction_paths, run.trained_dir, run.explainer_dir, run.target_dir, run.provenance)
    write_json(result, out_path)
    return result
