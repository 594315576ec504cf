rule act_patch_labels:
    input:
        facts="work/act_patch/facts/{target}.parquet",
        target="resources/models/{target}",
    output:
        table="work/act_patch/labels/{target}/{split}.parquet",
        vectors="work/act_patch/labels/{target}/{split}.vectors.safetensors",
    params:
        settings=settings_of("act_patch_labels"),
        code=code_of("act_patch_labels"),
    log:
        "logs/act_patch_labels/{target}_{split}.log",
    benchmark:
        "benchmarks/act_patch_labels/{target}_{split}.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/act_patch_labels.py"


rule input_ablation_labels:
    input:
        questions="work/input_ablation/questions.parquet",
        target="resources/models/{target}",
    output:
        "work/input_ablation/labels/{target}/{split}.parquet",
    params:
        settings=settings_of("input_ablation_labels"),
        code=code_of("input_ablation_labels"),
    log:
        "logs/input_ablation_labels/{target}_{split}.log",
    benchmark:
        "benchmarks/input_ablation_labels/{target}_{split}.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/input_ablation_labels.py"
