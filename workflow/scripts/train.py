"""Snakemake script: fine-tune the explainer on a task's training labels (resumes from its checkpoint)."""
from pipeline import launch
from pipeline.explainer.explain import Run
from pipeline.runtime import stage, usable_threads

with stage(snakemake.log[0], snakemake.threads):
    run = Run.from_job(snakemake)
    launch.run("pipeline.explainer.explain.train",
               dict(run=run, out_dir=snakemake.output[0], checkpoint_dir=snakemake.params.checkpoint),
               launch.process_count(snakemake.resources.get("gpu", 0), run.config("training").cpu_processes),
               usable_threads(snakemake.threads))
