rule act_patch_labels:
    input:
        facts="work/act_patch/facts/{target}.parquet",
        target="resources/models/{target}",
    output:
        table="work/act_patch/labels/{target}/{split}.parquet",
        vectors="work/act_patch/labels/{target}/{split}.vectors.safetensors",
    params:
        act_patch=config["act_patch"],
    log:
        "logs/act_patch_labels/{target}_{split}.log",
    benchmark:
        "benchmarks/act_patch_labels/{target}_{split}.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    script:
        "../scripts/act_patch_labels.py"


rule input_ablation_labels:
    input:
        questions="work/input_ablation/questions.parquet",
        target="resources/models/{target}",
    output:
        "work/input_ablation/labels/{target}/{split}.parquet",
    params:
        input_ablation=label_settings("input_ablation"),
    log:
        "logs/input_ablation_labels/{target}_{split}.log",
    benchmark:
        "benchmarks/input_ablation_labels/{target}_{split}.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    script:
        "../scripts/input_ablation_labels.py"
