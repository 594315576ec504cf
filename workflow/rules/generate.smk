for task in TASKS:

    rule:
        name:
            f"{task}_generate"
        input:
            unpack(generation_inputs(task)),
        output:
            f"work/{task}/predictions/{{explainer}}_{{target}}/{{variant}}.parquet",
        params:
            task=task,
            settings=settings_of(f"{task}_generate"),
            code=code_of(f"{task}_generate"),
        log:
            f"logs/{task}_generate/{{explainer}}_{{target}}_{{variant}}.log",
        benchmark:
            f"benchmarks/{task}_generate/{{explainer}}_{{target}}_{{variant}}.tsv"
        threads: JOB_THREADS
        resources:
            mem_mb=16000,
            runtime=120,
            gpu=1,
        conda:
            "../../envs/pipeline.yaml"
        script:
            "../scripts/generate.py"


for task in TASKS:
    for eval_set in get_task(task).eval_set_names:

        rule:
            name:
                f"{task}_generate_{eval_set}"
            input:
                unpack(generation_inputs(task, eval_set)),
            output:
                f"work/{task}/predictions/{{explainer}}_{{target}}/{eval_set}/{{variant}}.parquet",
            params:
                task=task,
                settings=settings_of(f"{task}_generate"),
                code=code_of(f"{task}_generate"),
            log:
                f"logs/{task}_generate/{{explainer}}_{{target}}_{eval_set}_{{variant}}.log",
            benchmark:
                f"benchmarks/{task}_generate/{{explainer}}_{{target}}_{eval_set}_{{variant}}.tsv"
            threads: JOB_THREADS
            resources:
                mem_mb=16000,
                runtime=120,
                gpu=1,
            conda:
                "../../envs/pipeline.yaml"
            script:
                "../scripts/generate.py"
