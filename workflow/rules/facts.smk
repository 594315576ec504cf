rule act_patch_facts:
    input:
        target="resources/models/{target}",
    output:
        "work/act_patch/facts/{target}.parquet",
    params:
        settings=settings_of("act_patch_facts"),
        code=code_of("act_patch_facts"),
    log:
        "logs/act_patch_facts/{target}.log",
    benchmark:
        "benchmarks/act_patch_facts/{target}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=60,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/act_patch_facts.py"


rule input_ablation_questions:
    input:
        question_sources,
    output:
        "work/input_ablation/questions.parquet",
    params:
        settings=settings_of("input_ablation_questions"),
        code=code_of("input_ablation_questions"),
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
