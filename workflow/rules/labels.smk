rule act_patch_pairs:
    input:
        facts="work/act_patch/facts/{target}.parquet",
        target="resources/models/{target}",
    output:
        "work/act_patch/pairs/{target}/{split}.parquet",
    params:
        settings=settings_of("act_patch_pairs"),
        code=code_of("act_patch_pairs"),
    log:
        "logs/act_patch_pairs/{target}_{split}.log",
    benchmark:
        "benchmarks/act_patch_pairs/{target}_{split}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=60,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/act_patch_pairs.py"


rule act_patch_label_chunk:
    input:
        pairs="work/act_patch/pairs/{target}/{split}.parquet",
        target="resources/models/{target}",
    output:
        table="work/act_patch/labels/{target}/{split}/chunk{chunk}.parquet",
        vectors="work/act_patch/labels/{target}/{split}/chunk{chunk}.vectors.safetensors",
    params:
        settings=settings_of("act_patch_label_chunk"),
        code=code_of("act_patch_label_chunk"),
    log:
        "logs/act_patch_label_chunk/{target}_{split}_{chunk}.log",
    benchmark:
        "benchmarks/act_patch_label_chunk/{target}_{split}_{chunk}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/act_patch_label_chunk.py"


rule act_patch_labels:
    input:
        unpack(label_chunks),
    output:
        table="work/act_patch/labels/{target}/{split}.parquet",
        vectors="work/act_patch/labels/{target}/{split}.vectors.safetensors",
    params:
        settings=label_settings("act_patch_labels"),
        code=code_of("act_patch_labels"),
    log:
        "logs/act_patch_labels/{target}_{split}.log",
    benchmark:
        "benchmarks/act_patch_labels/{target}_{split}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/act_patch_labels.py"


rule input_ablation_labels:
    input:
        unpack(hint_label_inputs),
    output:
        "work/input_ablation/labels/{target}/{split}.parquet",
    params:
        settings=label_settings("input_ablation_labels"),
        code=code_of("input_ablation_labels"),
    log:
        "logs/input_ablation_labels/{target}_{split}.log",
    benchmark:
        "benchmarks/input_ablation_labels/{target}_{split}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/input_ablation_labels.py"
