rule act_patch_facts:
    input:
        target="resources/models/{target}",
    output:
        "work/act_patch/facts/{target}.parquet",
    params:
        settings=settings_of("act_patch_facts"),
        code=code_of("act_patch_facts"),
        upstream=upstream_of("act_patch_facts"),
    log:
        "logs/act_patch_facts/{target}.log",
    benchmark:
        "benchmarks/act_patch_facts/{target}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=60,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/act_patch_facts.py"


rule act_patch_pairs:
    input:
        facts="work/act_patch/facts/{target}.parquet",
        target="resources/models/{target}",
    output:
        "work/act_patch/pairs/{target}/{split}.parquet",
    params:
        settings=settings_of("act_patch_pairs"),
        code=code_of("act_patch_pairs"),
        upstream=upstream_of("act_patch_pairs"),
    log:
        "logs/act_patch_pairs/{target}_{split}.log",
    benchmark:
        "benchmarks/act_patch_pairs/{target}_{split}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=60,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/act_patch_pairs.py"


rule act_patch_label_chunk:
    input:
        pairs="work/act_patch/pairs/{target}/{split}.parquet",
        target="resources/models/{target}",
    output:
        table="work/act_patch/labels/{target}/{split}/chunk{chunk}.parquet",
        vectors="work/act_patch/labels/{target}/{split}/chunk{chunk}.vectors.safetensors",
    params:
        settings=settings_of("act_patch_label_chunk"),
        code=code_of("act_patch_label_chunk"),
        upstream=upstream_of("act_patch_label_chunk"),
    log:
        "logs/act_patch_label_chunk/{target}_{split}_{chunk}.log",
    benchmark:
        "benchmarks/act_patch_label_chunk/{target}_{split}_{chunk}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/act_patch_label_chunk.py"


rule act_patch_labels:
    input:
        unpack(label_chunks),
    output:
        table="work/act_patch/labels/{target}/{split}.parquet",
        vectors="work/act_patch/labels/{target}/{split}.vectors.safetensors",
    params:
        settings=label_settings("act_patch_labels"),
        code=code_of("act_patch_labels"),
        upstream=upstream_of("act_patch_labels"),
    log:
        "logs/act_patch_labels/{target}_{split}.log",
    benchmark:
        "benchmarks/act_patch_labels/{target}_{split}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/act_patch_labels.py"


rule act_patch_diagnostics:
    input:
        unpack(diagnostic_inputs),
    output:
        "results/diagnostics/act_patch/{explainer}_{target}.json",
    params:
        settings=settings_of("act_patch_diagnostics"),
        code=code_of("act_patch_diagnostics"),
        upstream=upstream_of("act_patch_diagnostics"),
    log:
        "logs/act_patch_diagnostics/{explainer}_{target}.log",
    benchmark:
        "benchmarks/act_patch_diagnostics/{explainer}_{target}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=12000,
        runtime=60,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/act_patch_diagnostics.py"


rule act_patch_patch_effect:
    input:
        train="work/act_patch/labels/{target}/train.parquet",
        test="work/act_patch/labels/{target}/test.parquet",
    output:
        report(
            "report/act_patch/patch_effect_{target}.png",
            caption="../report/patch_effect.rst",
            category="act_patch",
            subcategory="patch effect",
            labels={"target": "{target}", "figure": "patch effect"},
        ),
    params:
        code=code_of("act_patch_patch_effect"),
        upstream=upstream_of("act_patch_patch_effect"),
    log:
        "logs/act_patch_patch_effect/{target}.log",
    benchmark:
        "benchmarks/act_patch_patch_effect/{target}.tsv"
    threads: 1
    localrule: True
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/act_patch_patch_effect.py"


rule act_patch_budget:
    input:
        unpack(budget_inputs),
    output:
        result="results/act_patch/{explainer}_{target}.budget.json",
        figure=report(
            "report/act_patch/{explainer}_{target}/budget.png",
            caption="../report/budget.rst",
            category="act_patch",
            subcategory="{explainer} explains {target}",
            labels={"run": "{explainer}_{target}", "figure": "training budget"},
        ),
    params:
        settings=settings_of("act_patch_budget"),
        code=code_of("act_patch_budget"),
        upstream=upstream_of("act_patch_budget"),
        points=budget_points,
    log:
        "logs/act_patch_budget/{explainer}_{target}.log",
    benchmark:
        "benchmarks/act_patch_budget/{explainer}_{target}.tsv"
    threads: 1
    localrule: True
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/act_patch_budget.py"
