rule toy_labels:
    input:
        target="resources/models/{target}",
    output:
        table="work/toy/labels/{target}/{split}.parquet",
        vectors="work/toy/labels/{target}/{split}.vectors.safetensors",
    params:
        rows=lambda wildcards: {"train": 48, "test": 16}[wildcards.split],
        seed=lambda wildcards: {"train": 0, "test": 1}[wildcards.split],
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
