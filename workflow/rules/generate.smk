# One rule per task, layout (the run of training.seed, or one of training.seeds) and evaluation set (the test split,
# or the task's other sets, such as the features task's out-of-distribution vectors).
for task in TASKS:
    for layout, prefix in LAYOUTS.items():
        for eval_set in ("", *get_task(task).eval_set_names):
            folder, tag = (f"{eval_set}/", f"{eval_set}_") if eval_set else ("", "")
            generate_rule = "_".join(part for part in (f"{task}_generate", eval_set, layout.strip("_")) if part)

            rule:
                name:
                    generate_rule
                input:
                    unpack(generation_inputs(task, eval_set or "test", prefix)),
                output:
                    f"work/{task}/{prefix}predictions/{{explainer}}_{{target}}/{folder}{{variant}}.parquet",
                params:
                    task=task,
                    settings=settings_of(f"{task}_generate"),
                    code=code_of(f"{task}_generate"),
                    upstream=upstream_of(generate_rule),
                log:
                    f"logs/{task}_generate/{prefix}{{explainer}}_{{target}}_{tag}{{variant}}.log",
                benchmark:
                    f"benchmarks/{task}_generate/{prefix}{{explainer}}_{{target}}_{tag}{{variant}}.tsv"
                threads: JOB_THREADS
                resources:
                    mem_mb=16000,
                    runtime=120,
                    gpu=1,
                conda:
                    "../../envs/pipeline.yaml"
                script:
                    "../scripts/generate.py"
