rule prepare_model:
    input:
        model_sources,
    output:
        directory("resources/models/{model}"),
    params:
        specs=model_specs,
    log:
        "logs/prepare_model/{model}.log",
    benchmark:
        "benchmarks/prepare_model/{model}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    script:
        "../scripts/prepare_model.py"
