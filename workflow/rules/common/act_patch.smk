# Input functions of the act_patch task's own rules (act_patch.smk).


def label_chunks(wildcards):
    """The act_patch label chunks of a split (act_patch.pairs over act_patch.chunk_pairs of them) and its pairs; or,
    with act_patch.released_labels for this target, the released table's files and the target (its width)."""
    from pipeline.tasks.act_patch import chunk_count
    from pipeline.config import ActPatchConfig

    released = released_label_files("act_patch", wildcards)
    if released is not None:
        return {"released": released, "target": f"resources/models/{wildcards.target}"}
    chunks = range(chunk_count(ActPatchConfig.from_dict(config["act_patch"]), wildcards.split))
    stem = f"work/act_patch/labels/{wildcards.target}/{wildcards.split}"
    return {"pairs": f"work/act_patch/pairs/{wildcards.target}/{wildcards.split}.parquet",
            "tables": [f"{stem}/chunk{c}.parquet" for c in chunks],
            "vectors": [f"{stem}/chunk{c}.vectors.safetensors" for c in chunks]}


def diagnostic_inputs(wildcards):
    """The act_patch test labels, both models, the trained explainer and, where fitted, the alignment it started from."""
    run = f"{known_model(wildcards.explainer)}_{known_model(wildcards.target)}"
    return (get_task("act_patch").label_paths(wildcards.target, "test") | _models(wildcards, "act_patch")
            | {"trained": f"work/act_patch/explainers/{run}"} | alignment_input(wildcards, "act_patch"))
