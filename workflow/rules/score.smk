rule act_patch_score:
    input:
        unpack(score_inputs),
    output:
        "results/act_patch/{explainer}_{target}.json",
    params:
        settings=settings_of("act_patch_score"),
        code=code_of("act_patch_score"),
    log:
        "logs/act_patch_score/{explainer}_{target}.log",
    benchmark:
        "benchmarks/act_patch_score/{explainer}_{target}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/act_patch_score.py"


rule input_ablation_score:
    input:
        unpack(input_ablation_score_inputs),
    output:
        "results/input_ablation/{explainer}_{target}.json",
    params:
        settings=settings_of("input_ablation_score"),
        code=code_of("input_ablation_score"),
    log:
        "logs/input_ablation_score/{explainer}_{target}.log",
    benchmark:
        "benchmarks/input_ablation_score/{explainer}_{target}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/input_ablation_score.py"
