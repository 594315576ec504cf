"""Snakemake script: fine-tune the explainer on a task's training labels (resumes from its checkpoint)."""
from pipeline import launch
from pipeline.config import ExplainerConfig, TrainingConfig
from pipeline.runtime import named_inputs, stage, stage_settings, usable_threads

params, inputs = snakemake.params, snakemake.input
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(params, snakemake.config, snakemake.rule)
    training = TrainingConfig.from_dict(run["training"])
    launch.run("pipeline.explainer.explain.train", dict(
        task=params.task, training_cfg=training, explainer_cfg=ExplainerConfig.from_dict(run["explainer"]),
        task_settings=run.get(params.task, {}), label_paths=named_inputs(inputs, exclude=("explainer", "target", "alignment")),
        explainer_dir=inputs.explainer, target_dir=inputs.target, out_dir=snakemake.output[0],
        checkpoint_dir=params.checkpoint, settings=prov, alignment=inputs.get("alignment")),
        launch.process_count(snakemake.resources.get("gpu", 0), training.cpu_processes), usable_threads(snakemake.threads))
