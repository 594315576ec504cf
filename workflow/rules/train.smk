rule act_patch_train:
    input:
        labels="work/act_patch/labels/{target}/train.parquet",
        vectors="work/act_patch/labels/{target}/train.vectors.safetensors",
        explainer="resources/models/{explainer}",
        target="resources/models/{target}",
    output:
        directory("work/act_patch/explainers/{explainer}_{target}"),
    params:
        training=config["training"],
        explainer=config["explainer"],
        checkpoint="work/act_patch/checkpoints/{explainer}_{target}",
    log:
        "logs/act_patch_train/{explainer}_{target}.log",
    benchmark:
        "benchmarks/act_patch_train/{explainer}_{target}.tsv"
    threads: 2
    resources:
        mem_mb=20000,
        runtime=600,
        gpu=1,
    script:
        "../scripts/act_patch_train.py"
