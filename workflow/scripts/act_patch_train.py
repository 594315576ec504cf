"""Snakemake script: fine-tune the explainer on the training labels (resumes from its checkpoint)."""
from pipeline import act_patch
from pipeline.config import ExplainerConfig, TrainingConfig
from pipeline.runtime import stage

params = snakemake.params
with stage(snakemake.log[0], snakemake.threads):
    act_patch.train(TrainingConfig.from_dict(params.training), ExplainerConfig.from_dict(params.explainer),
                    snakemake.input.labels, snakemake.input.vectors, snakemake.input.explainer,
                    snakemake.input.target, snakemake.output[0], params.checkpoint,
                    {"training": params.training, "explainer": params.explainer})
