rule interpbench_case:
    input:
        metadata=interpbench_case_metadata,
    output:
        case=directory("resources/interpbench/{case}"),
        stats="work/interpbench/{case}.json",
    params:
        settings=settings_of("interpbench_case"),
        code=code_of("interpbench_case"),
        upstream=upstream_of("interpbench_case"),
    log:
        "logs/interpbench_case/{case}.log",
    benchmark:
        "benchmarks/interpbench_case/{case}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/interpbench_case.py"


rule interpbench_cases:
    input:
        stats=expand("work/interpbench/{case}.json", case=INTERPBENCH_BUILD),
    output:
        "results/interpbench/cases.parquet",
    params:
        settings=settings_of("interpbench_cases"),
        code=code_of("interpbench_cases"),
        upstream=upstream_of("interpbench_cases"),
        skipped=INTERPBENCH_SKIPPED,
    log:
        "logs/interpbench_cases/cases.log",
    benchmark:
        "benchmarks/interpbench_cases/cases.tsv"
    threads: 1
    localrule: True
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/interpbench_cases.py"


rule interpbench_patching:
    input:
        case="resources/interpbench/{case}",
        metadata=INTERPBENCH_METADATA,
    output:
        "results/interpbench/{case}.json",
    wildcard_constraints:
        case=r"\d+",
    params:
        settings=settings_of("interpbench_patching"),
        code=code_of("interpbench_patching"),
        upstream=upstream_of("interpbench_patching"),
    log:
        "logs/interpbench_patching/{case}.log",
    benchmark:
        "benchmarks/interpbench_patching/{case}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/interpbench_patching.py"


rule interpbench_summary:
    input:
        unpack(interpbench_summary_inputs),
    output:
        table="results/interpbench/summary.parquet",
        figure=report(
            "report/interpbench/circuits.png",
            caption="../report/interpbench.rst",
            category="InterpBench",
            labels={"figure": "circuits"},
        ),
    params:
        settings=settings_of("interpbench_summary"),
        code=code_of("interpbench_summary"),
        upstream=upstream_of("interpbench_summary"),
    log:
        "logs/interpbench_summary/summary.log",
    benchmark:
        "benchmarks/interpbench_summary/summary.tsv"
    threads: 1
    localrule: True
    resources:
        mem_mb=2000,
        runtime=5,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/interpbench_summary.py"
