rule act_patch_facts:
    input:
        target="resources/models/{target}",
    output:
        "work/act_patch/facts/{target}.parquet",
    params:
        facts=config["facts"],
        prompt=config["act_patch"]["prompt"],
        batch_size=config["act_patch"]["batch_size"],
    log:
        "logs/act_patch_facts/{target}.log",
    benchmark:
        "benchmarks/act_patch_facts/{target}.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=60,
        gpu=1,
    script:
        "../scripts/act_patch_facts.py"


rule input_ablation_questions:
    input:
        question_sources,
    output:
        "work/input_ablation/questions.parquet",
    params:
        questions=question_settings(),
    log:
        "logs/input_ablation_questions/questions.log",
    benchmark:
        "benchmarks/input_ablation_questions/questions.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/input_ablation_questions.py"
