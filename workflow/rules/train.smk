rule act_patch_train:
    input:
        labels="work/act_patch/labels/{target}/train.parquet",
        vectors="work/act_patch/labels/{target}/train.vectors.safetensors",
        explainer="resources/models/{explainer}",
        target="resources/models/{target}",
    output:
        directory("work/act_patch/explainers/{explainer}_{target}"),
    params:
        settings=settings_of("act_patch_train"),
        code=code_of("act_patch_train"),
        checkpoint="work/act_patch/checkpoints/{explainer}_{target}",
    log:
        "logs/act_patch_train/{explainer}_{target}.log",
    benchmark:
        "benchmarks/act_patch_train/{explainer}_{target}.tsv"
    threads: 2
    resources:
        mem_mb=20000,
        runtime=600,
        gpu=stages.execution(config, "act_patch_train")["training"]["gpus"],
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/act_patch_train.py"


rule input_ablation_train:
    input:
        labels="work/input_ablation/labels/{target}/train.parquet",
        explainer="resources/models/{explainer}",
        target="resources/models/{target}",
    output:
        directory("work/input_ablation/explainers/{explainer}_{target}"),
    params:
        settings=settings_of("input_ablation_train"),
        code=code_of("input_ablation_train"),
        checkpoint="work/input_ablation/checkpoints/{explainer}_{target}",
    log:
        "logs/input_ablation_train/{explainer}_{target}.log",
    benchmark:
        "benchmarks/input_ablation_train/{explainer}_{target}.tsv"
    threads: 2
    resources:
        mem_mb=20000,
        runtime=600,
        gpu=stages.execution(config, "input_ablation_train")["training"]["gpus"],
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/input_ablation_train.py"
