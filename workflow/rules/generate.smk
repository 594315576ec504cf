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
