rule act_patch_diagnostics:
    input:
        unpack(diagnostic_inputs),
    output:
        "results/diagnostics/act_patch/{explainer}_{target}.json",
    params:
        settings=settings_of("act_patch_diagnostics"),
        code=code_of("act_patch_diagnostics"),
    log:
        "logs/act_patch_diagnostics/{explainer}_{target}.log",
    benchmark:
        "benchmarks/act_patch_diagnostics/{explainer}_{target}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=12000,
        runtime=60,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/act_patch_diagnostics.py"
