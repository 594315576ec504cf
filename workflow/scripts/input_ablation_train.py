"""Snakemake script: fine-tune the explainer on the input_ablation training labels (resumes from its checkpoint)."""
from pipeline import launch
from pipeline.config import ExplainerConfig, InputAblationConfig, TrainingConfig
from pipeline.runtime import stage, stage_settings

params = snakemake.params
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(params, snakemake.config, snakemake.rule)
    training = TrainingConfig.from_dict(run["training"])
    launch.run("pipeline.input_ablation.train", dict(
        cfg=InputAblationConfig.from_dict(run["input_ablation"]), training_cfg=training,
        explainer_cfg=ExplainerConfig.from_dict(run["explainer"]), labels_path=snakemake.input.labels,
        explainer_dir=snakemake.input.explainer, out_dir=snakemake.output[0], checkpoint_dir=params.checkpoint,
        settings=prov),
        launch.process_count(snakemake.resources.get("gpu", 0), training.cpu_processes), snakemake.threads)
