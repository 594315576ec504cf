rule prepare_model:
    input:
        model_sources,
    output:
        directory("resources/models/{model}"),
    params:
        settings=model_settings,
        code=code_of("prepare_model"),
        upstream=upstream_of("prepare_model"),
    log:
        "logs/prepare_model/{model}.log",
    benchmark:
        "benchmarks/prepare_model/{model}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/prepare_model.py"
