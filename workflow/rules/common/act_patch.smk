# Input functions of the act_patch task's own rules (act_patch.smk).


def label_chunks(wildcards):
    """The act_patch label chunks of a split (act_patch.pairs over act_patch.chunk_pairs of them) and its pairs; or,
    with act_patch.released_labels for this target, the released table's files and the target (its width)."""
    from pipeline.tasks.act_patch.pairs import chunk_count

    released = released_label_files("act_patch", wildcards)
    if released is not None:
        return {"released": released, "target": f"resources/models/{wildcards.target}"}
    chunks = range(chunk_count(SETTINGS.act_patch, wildcards.split))
    stem = f"work/act_patch/labels/{wildcards.target}/{wildcards.split}"
    return {"pairs": f"work/act_patch/pairs/{wildcards.target}/{wildcards.split}.parquet",
            "tables": [f"{stem}/chunk{c}.parquet" for c in chunks],
            "vectors": [f"{stem}/chunk{c}.vectors.safetensors" for c in chunks]}


def diagnostic_inputs(wildcards):
    """The act_patch test labels, both models, the trained explainer and, where fitted, the alignment it started from."""
    run = f"{known_model(wildcards.explainer)}_{known_model(wildcards.target)}"
    return (get_task("act_patch").label_paths(wildcards.target, "test") | _models(wildcards, "act_patch")
            | {"trained": f"work/act_patch/explainers/{run}"} | alignment_input(wildcards, "act_patch"))


def budget_points(wildcards):
    """Every run of a training budget (act_patch.budget): for the explainer and each of `others` on the same target,
    each point of rows x epochs with its seeds, where its results and fine-tuned answers are. The point of the
    training section's own rows and epochs is the run itself (training.seed) or its seeded runs, not trained again."""
    from pipeline.report.budget import grid

    section, training = SETTINGS.act_patch.budget, shared("training", "act_patch")
    own = (training.max_examples, int(training.epochs) if float(training.epochs).is_integer() else None)
    points = []
    for explainer in [wildcards.explainer, *[known_model(o) for o in section.others if o != wildcards.explainer]]:
        run = f"{known_model(explainer)}_{known_model(wildcards.target)}"
        for rows, epochs, seed in grid(section):
            if (rows, epochs) == own:
                layout = "" if seed == training.seed else "_seeded"
            else:
                layout = "_budget"
            where = LAYOUTS[layout].format(seed=seed, rows="all" if rows is None else rows, epochs=epochs)
            points.append({"explainer": explainer, "rows": rows, "epochs": epochs, "seed": seed,
                           "result": f"results/act_patch/{where}{run}.json",
                           "predictions": f"work/act_patch/{where}predictions/{run}/finetuned.parquet"})
    return points


def budget_inputs(wildcards):
    points = budget_points(wildcards)
    return {"results": [p["result"] for p in points], "predictions": [p["predictions"] for p in points]}
