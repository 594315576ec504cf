for task in TASKS:
    for layout, prefix in LAYOUTS.items():

        rule:
            name:
                f"{task}_score{layout}"
            input:
                unpack(score_inputs(task, prefix)),
            output:
                f"results/{task}/{prefix}{{explainer}}_{{target}}.json",
            params:
                task=task,
                settings=settings_of(f"{task}_score"),
                code=code_of(f"{task}_score"),
                upstream=upstream_of(f"{task}_score{layout}"),
            log:
                f"logs/{task}_score/{prefix}{{explainer}}_{{target}}.log",
            benchmark:
                f"benchmarks/{task}_score/{prefix}{{explainer}}_{{target}}.tsv"
            threads: 2
            # Heavy scoring (Task.heavy_score: judge API calls, the simulator LM) goes to the cluster like the GPU
            # stages; other scoring runs beside Snakemake instead of paying an sbatch round trip.
            localrule: not get_task(task).heavy_score
            resources:
                mem_mb=4000,
                runtime=60,
            conda:
                "../../envs/pipeline.yaml"
            script:
                "../scripts/score.py"

    rule:
        name:
            f"{task}_seeds"
        input:
            unpack(seed_results(task)),
        output:
            f"results/{task}/{{explainer}}_{{target}}.seeds.json",
        params:
            settings=settings_of("seeds"),
            code=code_of("seeds"),
            upstream=upstream_of(f"{task}_seeds"),
        log:
            f"logs/{task}_seeds/{{explainer}}_{{target}}.log",
        benchmark:
            f"benchmarks/{task}_seeds/{{explainer}}_{{target}}.tsv"
        threads: 1
        localrule: True
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            "../../envs/pipeline.yaml"
        script:
            "../scripts/seeds.py"
