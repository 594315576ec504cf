rule ask:
    input:
        unpack(ask_inputs),
    output:
        "results/ask/{task}/{explainer}_{target}/{name}.parquet",
    params:
        settings=settings_of("ask"),
        code=code_of("ask"),
        upstream=upstream_of("ask"),
    log:
        "logs/ask/{task}/{explainer}_{target}_{name}.log",
    benchmark:
        "benchmarks/ask/{task}/{explainer}_{target}_{name}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/ask.py"
