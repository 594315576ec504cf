"""The train / generate / score stages every task shares (the task says how to read its labels).

For a registered task (pipeline/tasks/__init__.py): fine-tune the explainer on its training rows, answer
its test questions with each variant (the fine-tuned explainer, the untrained one, and the task's
vector controls), and score every variant and baseline into `results/{task}/{explainer}_{target}.json`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.tasks import Examples, get_task


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


def train(task: str, training_cfg, explainer_cfg, task_settings: dict, label_paths: dict[str, str], explainer_dir,
          target_dir, out_dir, checkpoint_dir, settings: dict, alignment: str | None = None) -> dict:
    """Fine-tune the explainer on the task's training rows; the checkpoint key names the inputs too. `alignment`:
    the fitted per-layer maps the projections start from (`explainer.alignment: fitted`)."""
    from dataclasses import replace

    from pipeline.explainer.training import train_explainer

    spec = get_task(task)
    examples = spec.training_rows(spec.examples(label_paths, str(target_dir)), task_settings, training_cfg.seed,
                                str(target_dir))
    width, projection = _explainer_width(examples, explainer_dir, target_dir)
    if projection:
        explainer_cfg = replace(explainer_cfg, projection=projection)
    inputs = dict(label_paths) | {"explainer": explainer_dir, "target": target_dir}
    key = settings | {"inputs": training_inputs(inputs | ({"alignment": alignment} if alignment else {}))}
    questions = asked(examples.questions, explainer_cfg, spec)
    return train_explainer(training_cfg, explainer_cfg, explainer_dir, width, questions, examples.answers,
                           examples.vectors, out_dir, checkpoint_dir, key,
                           vector_layers=vector_layers(examples, explainer_cfg, explainer_dir, target_dir),
                           alignment=alignment if projection is None else None)


def prediction_frame(examples: Examples, questions: list[str], predictions: list[str], variant: str) -> pd.DataFrame:
    verdict = {} if examples.labels is None else {"is_different": examples.labels.astype(bool)}
    return pd.DataFrame({"row_key": examples.row_keys, "cluster": examples.clusters, "variant": variant,
                         "question": questions, "prediction": predictions, "reference": examples.answers}
                        | verdict | examples.columns)


def generate(task: str, variant: str, generation_cfg, explainer_cfg, label_paths: dict[str, str], explainer_dir,
             target_dir, trained_dir, out_path, settings: dict, alignment: str | None = None) -> pd.DataFrame:
    """Answers of one explainer variant on the test split: the fine-tuned explainer; the untrained one (zero-shot,
    with the task's format instruction, in its chat template if it has one); and the task's vector controls."""
    from pipeline.artifacts import provenance, write_table
    from pipeline.explainer.model import load_explainer
    from pipeline.explainer.generation import generate_answers
    from pipeline.sampling import seeded_subset
    from pipeline.models import read_manifest

    spec = get_task(task)
    if variant not in spec.variants:
        raise ValueError(f"unknown {task} variant '{variant}'; expected one of {spec.variants}")
    examples = spec.examples(label_paths, str(target_dir))
    examples.vectors = spec.variant_vectors(variant, examples, generation_cfg.seed)
    examples = examples.subset(seeded_subset(len(examples.questions), generation_cfg.max_examples, generation_cfg.seed))
    if variant in spec.custom_variants:
        out = spec.custom_variants[variant](examples, generation_cfg, explainer_cfg, explainer_dir, target_dir)
        write_table(out.assign(variant=variant), out_path, provenance(
            settings, {"explainer": read_manifest(explainer_dir)["source"], "target": read_manifest(target_dir)["source"]}))
        return out
    width, projection = _explainer_width(examples, explainer_dir, target_dir)
    # A released explainer (explainer.checkpoint) stands where this workflow's trained one would.
    trained = None if variant == "untrained" else (explainer_cfg.checkpoint or trained_dir)
    explainer, tokenizer = load_explainer(trained, explainer_dir, width, projection or explainer_cfg.projection,
                                          explainer_cfg.inject, alignment if projection is None else None,
                                          explainer_cfg.scale, explainer_cfg.center, explainer_cfg.continuous_tokens,
                                          text_only=examples.vectors is None)
    questions, prompt_format = asked(examples.questions, explainer_cfg, spec), explainer_cfg.prompt_format
    if variant == "untrained":
        questions = [q + spec.format_instruction for q in questions]
        # Zero-shot, an instruct model is asked as it was trained to be asked: in its chat template.
        prompt_format = "chat" if getattr(tokenizer, "chat_template", None) else prompt_format
    predictions = generate_answers(explainer, tokenizer, questions, examples.vectors, prompt_format,
                                   generation_cfg.max_new_tokens, generation_cfg.batch_size, desc=variant,
                                   vector_layers=vector_layers(examples, explainer_cfg, explainer_dir, target_dir))
    out = prediction_frame(examples, questions, predictions, variant)
    write_table(out, out_path, provenance(settings, {"explainer": read_manifest(explainer_dir)["source"],
                                                     "target": read_manifest(target_dir)["source"]}))
    return out


def score(task: str, scoring_cfg, prediction_paths: dict[str, str], train_paths: dict[str, str],
          test_paths: dict[str, str], count_paths: dict[str, str], trained_dir, explainer_dir, target_dir, out_path,
          names: dict[str, str], settings: dict, task_settings: dict | None = None,
          extra_inputs: dict[str, str] | None = None) -> dict:
    """Metrics of every variant and baseline, paired comparisons, counts and provenance in one results file."""
    from pipeline.artifacts import read_provenance, read_table, write_json
    from pipeline.explainer.metrics import run_summary, score_variants

    spec = get_task(task)
    frames = {v: read_table(p, required=["row_key", "cluster", "prediction", "reference"])
              for v, p in prediction_paths.items()}
    baselines, described = spec.baselines(frames["finetuned"], train_paths, test_paths, str(target_dir))
    if spec.score_frames:
        scores = spec.score_frames(frames | baselines, scoring_cfg.bootstrap_samples, scoring_cfg.seed,
                                   settings=task_settings or {}, inputs=extra_inputs or {})
    else:
        scores = score_variants(frames | baselines, scoring_cfg.bootstrap_samples, scoring_cfg.seed)
    counts = {name: read_provenance(path).get("counts", {}) for name, path in count_paths.items()}
    for split, paths in (("train", train_paths), ("test", test_paths)):
        counts[f"labels_{split}"] = read_provenance(next(iter(paths.values()))).get("counts", {})
    result = {"task": task, "explainer": names["explainer"], "target": names["target"], **scores,
              "baselines": described, "counts": counts} | run_summary(
        scoring_cfg, prediction_paths, trained_dir, explainer_dir, target_dir, settings)
    write_json(result, out_path)
    return result
