rule act_patch_generate:
    input:
        unpack(generation_inputs),
    output:
        "work/act_patch/predictions/{explainer}_{target}/{variant}.parquet",
    params:
        settings=settings_of("act_patch_generate"),
        code=code_of("act_patch_generate"),
    log:
        "logs/act_patch_generate/{explainer}_{target}_{variant}.log",
    benchmark:
        "benchmarks/act_patch_generate/{explainer}_{target}_{variant}.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/act_patch_generate.py"


rule input_ablation_generate:
    input:
        unpack(input_ablation_generation_inputs),
    output:
        "work/input_ablation/predictions/{explainer}_{target}/{variant}.parquet",
    params:
        settings=settings_of("input_ablation_generate"),
        code=code_of("input_ablation_generate"),
    log:
        "logs/input_ablation_generate/{explainer}_{target}_{variant}.log",
    benchmark:
        "benchmarks/input_ablation_generate/{explainer}_{target}_{variant}.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/input_ablation_generate.py"
