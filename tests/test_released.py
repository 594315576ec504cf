"""The paper's released explainers, read in the layout its code saves them (`model/continuous_*.py`): tiny models
saved exactly that way stand in for the 8B checkpoints, which cannot be downloaded here."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

TOKENS = ("<|begin_vec|>", "<|vec|>", "<|end_vec|>")


def released(tiny, folder, target_width=None, layers=(0, 2)):
    """A transformers folder as the paper's save_pretrained writes it: its tokenizer has the continuous tokens, and
    (for a target of another width) its weights hold one map per target layer, `embed_projs.{L}.weight`."""
    model, tokenizer = tiny
    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path) if tokenizer.name_or_path else tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": list(TOKENS)})
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    maps = {}
    if target_width is not None:
        generator = torch.Generator().manual_seed(0)
        width = model.get_input_embeddings().weight.shape[1]
        maps = {layer: torch.randn(width, target_width, generator=generator) for layer in layers}
        weights = load_file(str(folder / "model.safetensors"))
        weights |= {f"embed_projs.{layer}.weight": w for layer, w in maps.items()}
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return maps


@pytest.fixture
def tiny_copy(tiny_dir):
    from pipeline.models import load_model

    return load_model(tiny_dir)


def test_a_released_explainer_of_its_own_width_reads_the_raw_vector_between_its_tokens(tiny_copy, tiny_dir, tmp_path):
    from pipeline.explainer.model import encode_example, load_explainer
    from pipeline.explainer.generation import generate_answers

    released(tiny_copy, tmp_path / "released")
    width = tiny_copy[0].get_input_embeddings().weight.shape[1]
    explainer, tokenizer = load_explainer(tmp_path / "released", tiny_dir, width, continuous_tokens=TOKENS)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in TOKENS]
    assert explainer.placeholder_id == ids[1] and explainer.placeholder_wrap == (ids[0], ids[2])
    vector = torch.randn(2, width) * 40  # a residual state, far from the embeddings' scale
    assert torch.allclose(explainer.project(vector), vector)  # the paper injects it as it is when widths match
    encoded = encode_example(tokenizer, "At layer 3, <vector> encodes ", None, "paper", explainer.placeholder_id,
                             wrap=explainer.placeholder_wrap)
    at = encoded.input_ids.index(ids[1])
    assert encoded.input_ids[at - 1:at + 2] == ids and tokenizer.decode(encoded.input_ids[at + 2:]) == " encodes "
    answers = generate_answers(explainer, tokenizer, ["At layer 3, <vector> encodes"] * 2, vector, "paper", 4, 2)
    assert len(answers) == 2


def test_a_released_explainer_of_another_width_maps_each_layer_with_its_embed_projs(tiny_copy, tiny_dir, tmp_path):
    from pipeline.explainer.model import load_explainer

    maps = released(tiny_copy, tmp_path / "released", target_width=12)
    explainer, _ = load_explainer(tmp_path / "released", tiny_dir, 12, continuous_tokens=TOKENS)
    vector = torch.randn(3, 12) * 40
    projected = explainer.project(vector, [0, 2, 0])
    expected = torch.stack([maps[0] @ vector[0], maps[2] @ vector[1], maps[0] @ vector[2]])
    assert torch.allclose(projected, expected, atol=1e-4)  # the raw vector through its layer's map, no normalising


def test_a_layout_that_is_not_recognised_or_a_missing_token_is_refused_naming_what_was_expected(tiny_copy, tiny_dir,
                                                                                               tmp_path):
    from pipeline.explainer.model import WidthError, load_explainer

    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "adapter.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"not an explainer layout this workflow reads: expected this workflow's "
                                         r"trained explainer \(explainer.json\) or a transformers model folder"):
        load_explainer(tmp_path / "weights", tiny_dir, 64, continuous_tokens=TOKENS)
    released(tiny_copy, tmp_path / "released")
    with pytest.raises(ValueError, match="set explainer.continuous_tokens"):
        load_explainer(tmp_path / "released", tiny_dir, 64)
    text_only, _ = load_explainer(tmp_path / "released", tiny_dir, 64, text_only=True)  # input_ablation: no vector
    assert text_only.placeholder_wrap is None
    with pytest.raises(ValueError, match=r"continuous_tokens.rep: '<\|nope\|>' is not a token"):
        load_explainer(tmp_path / "released", tiny_dir, 64, continuous_tokens=(TOKENS[0], "<|nope|>", TOKENS[2]))
    with pytest.raises(WidthError, match="hold no embed_projs"):
        load_explainer(tmp_path / "released", tiny_dir, 12, continuous_tokens=TOKENS)
    with pytest.raises(ValueError, match="explainer.checkpoint: local folder ./no/such/folder does not exist"):
        load_explainer("./no/such/folder", tiny_dir, 64, continuous_tokens=TOKENS)


@pytest.mark.slow
def test_a_released_explainer_is_generated_and_scored_without_training(tiny_copy, tmp_path, tiny_act_patch_run):
    """The act_patch workflow on tiny with explainer.checkpoint: no training job is planned, and the fine-tuned
    variants are the released model's answers (on a copy of the session's tiny run without its trained explainer:
    labels are the explainer's inputs, whoever trained it)."""
    import json
    import shutil

    from workflow_runs import copy_tree, override, planned_jobs, snakemake

    released(tiny_copy, tmp_path / "released")
    config = override(tmp_path, "released.yaml", {"act_patch": {"explainer": {
        "alignment": "identity", "checkpoint": str(tmp_path / "released"), "prompt_format": "paper",
        "continuous_tokens": dict(zip(("begin", "rep", "end"), TOKENS))}}})
    work = copy_tree(tiny_act_patch_run, tmp_path / "work")
    shutil.rmtree(work / "work/act_patch/explainers")
    plan = planned_jobs(snakemake(work, "-n", "results/act_patch/tiny_tiny.json", configfiles=[config]))
    assert "act_patch_train" not in plan and plan["act_patch_generate"] == 4
    run = snakemake(work, "results/act_patch/tiny_tiny.json", configfiles=[config], timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((work / "results/act_patch/tiny_tiny.json").read_text())
    assert result["training"] == {"trained_here": False, "released_checkpoint": str(tmp_path / "released")}
    assert not (work / "work/act_patch/explainers").exists()
    finetuned = pd.read_parquet(work / "work/act_patch/predictions/tiny_tiny/finetuned.parquet")
    assert finetuned["question"].str.contains("<vector>").all() and len(finetuned) > 0
    # Asked about one of its own test pairs, the released explainer answers as the generation stage did.
    from pipeline.ask import Asker
    from test_ask import answered_pair

    pair = answered_pair(work)
    asker = Asker.load("act_patch", "tiny_tiny", work)
    assert asker.released == str(tmp_path / "released")
    table = asker.act_patch(pair["input_text"], pair["subject"], pair["counterfactual_subject"],
                            pair["counterfactual_text"], pair_id=pair["pair_id"])
    same = table.merge(finetuned, on="question")
    assert len(same) > 0 and (same["answer"] == same["prediction"]).all()
    (work / "asks").mkdir()
    pd.DataFrame([{"prompt": pair["input_text"], "subject": pair["subject"], "pair_id": pair["pair_id"],
                   "counterfactual_subject": pair["counterfactual_subject"],
                   "counterfactual": pair["counterfactual_text"]}]).to_csv(work / "asks/one.csv", index=False)
    asked = snakemake(work, "results/ask/act_patch/tiny_tiny/one.parquet", configfiles=[config])
    assert asked.returncode == 0, asked.stdout[-3000:] + asked.stderr[-3000:]
    written = pd.read_parquet(work / "results/ask/act_patch/tiny_tiny/one.parquet")
    assert written["answer"].tolist() == table["answer"].tolist()
    assert not (work / "work/act_patch/explainers").exists()  # asking trained nothing
    missing = override(tmp_path, "missing.yaml", {"act_patch": {"explainer": {"checkpoint": "./not/here"}}})
    refused = snakemake(work, "-n", "results/act_patch/tiny_tiny.json", configfiles=[config, missing])
    assert refused.returncode != 0 and "explainer.checkpoint (act_patch): local folder ./not/here does not exist" in (
        refused.stdout + refused.stderr)


@pytest.mark.slow
def test_released_label_tables_are_trained_generated_and_scored_in_place_of_labels_built_here(tmp_path,
                                                                                             tiny_act_patch_run):
    """act_patch.released_labels: the session's tiny labels written in the published layout (only its columns, the
    vectors inline, as the hub's data/{split}-*.parquet) are read in place of facts, pairs and patching; the run
    trains, generates and scores on them, and its label artifacts hold the same rows and vectors."""
    import json
    import shutil

    import numpy as np

    from pipeline.tasks.act_patch.labels import LABEL_COLUMNS, load_examples
    from workflow_runs import copy_tree, override, planned_jobs, snakemake

    built = tiny_act_patch_run / "work/act_patch/labels/tiny"
    (tmp_path / "released/data").mkdir(parents=True)
    for split in ("train", "test"):
        frame, vectors = load_examples(built / f"{split}.parquet", built / f"{split}.vectors.safetensors")
        frame = frame[LABEL_COLUMNS].copy()
        frame["patch_position"] = [p | {"intervention_vector": v.tolist()} for p, v in zip(frame["patch_position"],
                                                                                            vectors)]
        frame.to_parquet(tmp_path / f"released/data/{split}-00000-of-00001.parquet")
    config = override(tmp_path, "released.yaml", {"act_patch": {
        "released_labels": {"tiny": str(tmp_path / "released")},
        "training_rows": {"oversample_counterfactual": 1, "reading": {"fraction": 0}}}})
    work = copy_tree(tiny_act_patch_run, tmp_path / "work")
    shutil.rmtree(work / "work/act_patch")
    shutil.rmtree(work / "results")
    plan = planned_jobs(snakemake(work, "-n", "results/act_patch/tiny_tiny.json", configfiles=[config]))
    assert plan["act_patch_labels"] == 2 and plan["act_patch_train"] == 1 and plan["act_patch_score"] == 1
    assert not {"act_patch_facts", "act_patch_pairs", "act_patch_label_chunk"} & set(plan)
    run = snakemake(work, "results/act_patch/tiny_tiny.json", configfiles=[config], timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for split in ("train", "test"):
        original, original_vectors = load_examples(built / f"{split}.parquet", built / f"{split}.vectors.safetensors")
        imported, vectors = load_examples(work / f"work/act_patch/labels/tiny/{split}.parquet",
                                          work / f"work/act_patch/labels/tiny/{split}.vectors.safetensors")
        assert np.array_equal(vectors.numpy(), original_vectors.numpy())
        assert imported["is_different"].tolist() == original["is_different"].tolist()
    result = json.loads((work / "results/act_patch/tiny_tiny.json").read_text())
    assert result["counts"]["labels_test"] == {"rows": len(original), "changed": int(original["is_different"].sum()),
                                               "pairs": int(original["pair_id"].nunique()),
                                               "released": str(tmp_path / "released")}
    assert "facts" not in result["counts"] and {"finetuned", "shuffled_vector"} <= set(result["metrics"])


def test_the_released_config_plans_the_papers_explainers_with_no_training_job(tmp_path):
    from workflow_runs import REPO, planned_jobs, snakemake

    plan = planned_jobs(snakemake(tmp_path, "-n", "results/act_patch/llama_llama.json",
                                  "results/features/llama_llama.json", "results/input_ablation/instruct_instruct.json",
                                  configfiles=[REPO / "config.paper.yaml", REPO / "config.released.yaml"]))
    assert not any(job.endswith("_train") for job in plan)
    # The released label tables are the labels: nothing is patched or asked here.
    assert plan["act_patch_labels"] == plan["input_ablation_labels"] == 2
    assert not {"act_patch_pairs", "act_patch_label_chunk", "input_ablation_questions"} & set(plan)
    assert plan["act_patch_facts"] == 1 and plan["features_ood"] == 1  # the facts only for features' ood_diff set
    assert plan["act_patch_generate"] == plan["features_generate"] == 4 and plan["input_ablation_generate"] == 2
