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
