# Input functions of the input_ablation task's own rules (input_ablation.smk).


def question_sources(wildcards):
    """The MMLU Parquet file when questions come from MMLU, so a new file reruns the questions."""
    section = SETTINGS.input_ablation
    if section.source == "mmlu":
        if not section.path:
            raise ValueError("input_ablation.path: source 'mmlu' needs the path of a cais/mmlu Parquet file")
        return [section.path]
    return []


def hint_label_inputs(wildcards):
    """input_ablation labels: the questions and the target that answers them, or the released table's files."""
    released = released_label_files("input_ablation", wildcards)
    if released is not None:
        return {"released": released}
    return {"questions": "work/input_ablation/questions.parquet", "target": f"resources/models/{wildcards.target}"}
