rule report_figures:
    wildcard_constraints:
        task=CHANGE_TASKS,
    input:
        unpack(run_figure_inputs),
    output:
        metrics=report(
            "report/{task}/{explainer}_{target}/metrics.png",
            caption="../report/metrics.rst",
            category="{task}",
            subcategory="{explainer} explains {target}",
            labels={"run": "{explainer}_{target}", "figure": "metrics"},
        ),
        confusion=report(
            "report/{task}/{explainer}_{target}/confusion.png",
            caption="../report/confusion.rst",
            category="{task}",
            subcategory="{explainer} explains {target}",
            labels={"run": "{explainer}_{target}", "figure": "confusion"},
        ),
        loss=report(
            "report/{task}/{explainer}_{target}/loss.png",
            caption="../report/loss.rst",
            category="{task}",
            subcategory="{explainer} explains {target}",
            labels={"run": "{explainer}_{target}", "figure": "training loss"},
        ),
    params:
        code=code_of("report_figures"),
        upstream=upstream_of("report_figures"),
    log:
        "logs/report_figures/{task}_{explainer}_{target}.log",
    benchmark:
        "benchmarks/report_figures/{task}_{explainer}_{target}.tsv"
    threads: 1
    localrule: True
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/report_figures.py"


rule summary_table:
    input:
        all_results(),
    output:
        "results/summary.parquet",
    params:
        code=code_of("summary_table"),
        upstream=upstream_of("summary_table"),
    log:
        "logs/summary_table/summary.log",
    benchmark:
        "benchmarks/summary_table/summary.tsv"
    threads: 1
    localrule: True
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/summary_table.py"


rule results_tables:
    input:
        all_results(),
    output:
        "results/tables.md",
    params:
        code=code_of("results_tables"),
        upstream=upstream_of("results_tables"),
    log:
        "logs/results_tables/tables.log",
    benchmark:
        "benchmarks/results_tables/tables.tsv"
    threads: 1
    localrule: True
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/results_tables.py"
