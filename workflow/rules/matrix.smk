rule matrix:
    input:
        unpack(matrix_inputs),
    output:
        table="results/matrix/{task}.parquet",
        figure=report(
            "report/matrix/{task}.png",
            caption="../report/matrix.rst",
            category="{task}",
            subcategory="self versus other",
            labels={"figure": "explainer x target"},
        ),
    params:
        settings=settings_of("matrix"),
        code=code_of("matrix"),
        upstream=upstream_of("matrix"),
    log:
        "logs/matrix/{task}.log",
    benchmark:
        "benchmarks/matrix/{task}.tsv"
    threads: 1
    localrule: True
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/matrix.py"
