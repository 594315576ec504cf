rule circuits_labels:
    input:
        unpack(circuit_label_inputs),
    output:
        labels="work/circuits/labels/ib/{split}.parquet",
        vectors="work/circuits/labels/ib/{split}.vectors.safetensors",
    wildcard_constraints:
        split="train|test|heldout_cases",
    params:
        settings=settings_of("circuits_labels"),
        code=code_of("circuits_labels"),
        upstream=upstream_of("circuits_labels"),
        cases=circuit_split_cases,
    log:
        "logs/circuits_labels/{split}.log",
    benchmark:
        "benchmarks/circuits_labels/{split}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/circuits_labels.py"


rule circuits_target:
    input:
        cases=circuit_target_inputs,
    output:
        directory("work/circuits/target/ib"),
    params:
        settings=settings_of("circuits_target"),
        code=code_of("circuits_target"),
        upstream=upstream_of("circuits_target"),
        cases=circuit_target_cases,
    log:
        "logs/circuits_target/ib.log",
    benchmark:
        "benchmarks/circuits_target/ib.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/circuits_target.py"
