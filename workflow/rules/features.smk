rule features_corpus:
    input:
        corpus_sources,
    output:
        "work/features/corpus.parquet",
    params:
        settings=settings_of("features_corpus"),
        code=code_of("features_corpus"),
        upstream=upstream_of("features_corpus"),
    log:
        "logs/features_corpus/corpus.log",
    benchmark:
        "benchmarks/features_corpus/corpus.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/features_corpus.py"


rule features_sae:
    input:
        corpus="work/features/corpus.parquet",
        target=sae_target,
    output:
        sae=directory("work/features/sae/{target}"),
        quality="work/features/sae/{target}.quality.parquet",
    params:
        settings=settings_of("features_sae"),
        code=code_of("features_sae"),
        upstream=upstream_of("features_sae"),
    log:
        "logs/features_sae/{target}.log",
    benchmark:
        "benchmarks/features_sae/{target}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/features_sae.py"


rule features_exemplars:
    input:
        corpus="work/features/corpus.parquet",
        sae="work/features/sae/{target}",
        target="resources/models/{target}",
    output:
        exemplars="work/features/exemplars/{target}.parquet",
        stats="work/features/exemplars/{target}.stats.parquet",
    params:
        settings=settings_of("features_exemplars"),
        code=code_of("features_exemplars"),
        upstream=upstream_of("features_exemplars"),
    log:
        "logs/features_exemplars/{target}.log",
    benchmark:
        "benchmarks/features_exemplars/{target}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/features_exemplars.py"


rule features_archive_exemplars:
    input:
        unpack(archive_exemplar_inputs),
    output:
        exemplars="work/features/exemplars/{target}.archive.parquet",
    params:
        settings=settings_of("features_archive_exemplars"),
        code=code_of("features_archive_exemplars"),
        upstream=upstream_of("features_archive_exemplars"),
    log:
        "logs/features_archive_exemplars/{target}.log",
    benchmark:
        "benchmarks/features_archive_exemplars/{target}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/features_archive_exemplars.py"


rule features_descriptions:
    input:
        unpack(description_inputs),
    output:
        train="work/features/descriptions/{target}/train.parquet",
        train_vectors="work/features/descriptions/{target}/train.vectors.safetensors",
        test="work/features/descriptions/{target}/test.parquet",
        test_vectors="work/features/descriptions/{target}/test.vectors.safetensors",
    params:
        settings=settings_of("features_descriptions"),
        code=code_of("features_descriptions"),
        upstream=upstream_of("features_descriptions"),
    log:
        "logs/features_descriptions/{target}.log",
    benchmark:
        "benchmarks/features_descriptions/{target}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/features_descriptions.py"


rule features_simulator:
    input:
        unpack(simulator_training_inputs),
    output:
        directory("work/features/simulator/{target}"),
    params:
        settings=settings_of("features_simulator"),
        code=code_of("features_simulator"),
        upstream=upstream_of("features_simulator"),
    log:
        "logs/features_simulator/{target}.log",
    benchmark:
        "benchmarks/features_simulator/{target}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/features_simulator.py"


rule features_ood:
    input:
        unpack(ood_inputs),
    output:
        **ood_outputs(),
    params:
        settings=settings_of("features_ood"),
        code=code_of("features_ood"),
        upstream=upstream_of("features_ood"),
    log:
        "logs/features_ood/{target}.log",
    benchmark:
        "benchmarks/features_ood/{target}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=60,
        gpu=1,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/features_ood.py"


rule features_figures:
    input:
        result="results/features/{explainer}_{target}.json",
        trained="work/features/explainers/{explainer}_{target}",
    output:
        metrics=report(
            "report/features/{explainer}_{target}/metrics.png",
            caption="../report/features_metrics.rst",
            category="features",
            subcategory="{explainer} explains {target}",
            labels={"run": "{explainer}_{target}", "figure": "judge scores"},
        ),
        loss=report(
            "report/features/{explainer}_{target}/loss.png",
            caption="../report/loss.rst",
            category="features",
            subcategory="{explainer} explains {target}",
            labels={"run": "{explainer}_{target}", "figure": "training loss"},
        ),
        examples=report(
            "report/features/{explainer}_{target}/examples.html",
            caption="../report/features_examples.rst",
            category="features",
            subcategory="{explainer} explains {target}",
            labels={"run": "{explainer}_{target}", "figure": "examples"},
        ),
    params:
        code=code_of("features_figures"),
        upstream=upstream_of("features_figures"),
    log:
        "logs/features_figures/{explainer}_{target}.log",
    benchmark:
        "benchmarks/features_figures/{explainer}_{target}.tsv"
    threads: 1
    localrule: True
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/features_figures.py"
