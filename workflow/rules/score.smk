for task in TASKS:

    rule:
        name:
            f"{task}_score"
        input:
            unpack(score_inputs(task)),
        output:
            f"results/{task}/{{explainer}}_{{target}}.json",
        params:
            task=task,
            settings=settings_of(f"{task}_score"),
            code=code_of(f"{task}_score"),
        log:
            f"logs/{task}_score/{{explainer}}_{{target}}.log",
        benchmark:
            f"benchmarks/{task}_score/{{explainer}}_{{target}}.tsv"
        threads: 2
        localrule: task not in HEAVY_SCORE_TASKS
        resources:
            mem_mb=4000,
            runtime=60,
        conda:
            "../../envs/pipeline.yaml"
        script:
            "../scripts/score.py"
