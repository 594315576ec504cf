rule toy_labels:
    input:
        target="resources/models/{target}",
    output:
        table="work/toy/labels/{target}/{split}.parquet",
        vectors="work/toy/labels/{target}/{split}.vectors.safetensors",
    params:
        settings=settings_of("toy_labels"),
        code=code_of("toy_labels"),
    log:
        "logs/toy_labels/{target}_{split}.log",
    benchmark:
        "benchmarks/toy_labels/{target}_{split}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "scripts/labels.py"
