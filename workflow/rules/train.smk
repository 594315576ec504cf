for task in TASKS:

    rule:
        name:
            f"{task}_train"
        input:
            unpack(train_inputs(task)),
        output:
            directory(f"work/{task}/explainers/{{explainer}}_{{target}}"),
        params:
            task=task,
            settings=settings_of(f"{task}_train"),
            code=code_of(f"{task}_train"),
            checkpoint=f"work/{task}/checkpoints/{{explainer}}_{{target}}",
        log:
            f"logs/{task}_train/{{explainer}}_{{target}}.log",
        benchmark:
            f"benchmarks/{task}_train/{{explainer}}_{{target}}.tsv"
        threads: JOB_THREADS
        resources:
            mem_mb=20000,
            runtime=600,
            gpu=stages.execution(config, f"{task}_train")["training"]["gpus"],
        conda:
            "../../envs/pipeline.yaml"
        script:
            "../scripts/train.py"
