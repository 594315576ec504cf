rule act_patch_generate:
    input:
        unpack(generation_inputs),
    output:
        "work/act_patch/predictions/{explainer}_{target}/{variant}.parquet",
    params:
        generation=config["generation"],
        explainer=config["explainer"],
    log:
        "logs/act_patch_generate/{explainer}_{target}_{variant}.log",
    benchmark:
        "benchmarks/act_patch_generate/{explainer}_{target}_{variant}.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    script:
        "../scripts/act_patch_generate.py"


rule input_ablation_generate:
    input:
        unpack(input_ablation_generation_inputs),
    output:
        "work/input_ablation/predictions/{explainer}_{target}/{variant}.parquet",
    params:
        generation=shared_settings("input_ablation", "generation"),
        explainer=config["explainer"],
    log:
        "logs/input_ablation_generate/{explainer}_{target}_{variant}.log",
    benchmark:
        "benchmarks/input_ablation_generate/{explainer}_{target}_{variant}.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    script:
        "../scripts/input_ablation_generate.py"
