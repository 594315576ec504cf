rule alignment:
    input:
        unpack(alignment_inputs),
    output:
        maps="work/alignment/{explainer}_{target}.safetensors",
        quality="work/alignment/{explainer}_{target}.quality.parquet",
    params:
        settings=settings_of("alignment"),
        code=code_of("alignment"),
        upstream=upstream_of("alignment"),
    log:
        "logs/alignment/{explainer}_{target}.log",
    benchmark:
        "benchmarks/alignment/{explainer}_{target}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=12000,
        runtime=60,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/alignment.py"
