for task in TASKS:
    for layout, prefix in LAYOUTS.items():

        rule:
            name:
                f"{task}_train{layout}"
            input:
                unpack(train_inputs(task)),
            output:
                directory(f"work/{task}/{prefix}explainers/{{explainer}}_{{target}}"),
            params:
                task=task,
                settings=seeded_settings(f"{task}_train", layout),
                code=code_of(f"{task}_train"),
                upstream=upstream_of(f"{task}_train{layout}"),
                checkpoint=f"work/{task}/{prefix}checkpoints/{{explainer}}_{{target}}",
            log:
                f"logs/{task}_train/{prefix}{{explainer}}_{{target}}.log",
            benchmark:
                f"benchmarks/{task}_train/{prefix}{{explainer}}_{{target}}.tsv"
            threads: JOB_THREADS
            resources:
                mem_mb=20000,
                runtime=600,
                gpu=shared("training", task).gpus,
            conda:
                "../../envs/pipeline.yaml"
            script:
                "../scripts/train.py"


    # The frozen-explainer baselines of the run of training.seed (map_only, affine): the same rows and steps with
    # only the vector's map (or an affine adapter after it) trained.
    rule:
        name:
            f"{task}_train_baseline"
        input:
            unpack(train_inputs(task)),
        output:
            directory(f"work/{task}/baselines/{{baseline}}/{{explainer}}_{{target}}"),
        params:
            task=task,
            settings=baseline_settings(task),
            code=code_of(f"{task}_train"),
            upstream=upstream_of(f"{task}_train_baseline"),
            checkpoint=f"work/{task}/baselines/{{baseline}}/checkpoints/{{explainer}}_{{target}}",
        log:
            f"logs/{task}_train_baseline/{{baseline}}_{{explainer}}_{{target}}.log",
        benchmark:
            f"benchmarks/{task}_train_baseline/{{baseline}}_{{explainer}}_{{target}}.tsv"
        threads: JOB_THREADS
        resources:
            mem_mb=20000,
            runtime=600,
            gpu=shared("training", task).gpus,
        conda:
            "../../envs/pipeline.yaml"
        script:
            "../scripts/train.py"
