rule input_ablation_questions:
    input:
        question_sources,
    output:
        "work/input_ablation/questions.parquet",
    params:
        settings=settings_of("input_ablation_questions"),
        code=code_of("input_ablation_questions"),
        upstream=upstream_of("input_ablation_questions"),
    log:
        "logs/input_ablation_questions/questions.log",
    benchmark:
        "benchmarks/input_ablation_questions/questions.tsv"
    threads: 1
    localrule: True
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/input_ablation_questions.py"


rule input_ablation_labels:
    input:
        unpack(hint_label_inputs),
    output:
        "work/input_ablation/labels/{target}/{split}.parquet",
    params:
        settings=label_settings("input_ablation_labels"),
        code=code_of("input_ablation_labels"),
        upstream=upstream_of("input_ablation_labels"),
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
