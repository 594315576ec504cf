"""The field's baselines beside the fine-tuned explainer on the tiny models: the in-context explainer (solved examples
of the training split in the untrained explainer's prompt, each vector at its own placeholder) and the frozen
explainer with only the vector's map (or an affine adapter) trained, scored with paired differences."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from workflow_runs import copy_tree, override, planned_jobs, snakemake

pytestmark = pytest.mark.slow


def test_in_context_prompts_hold_each_solved_examples_vector_at_its_own_placeholder(tiny_dir):
    from pipeline.explainer.model import collate, encode_example, load_explainer
    from pipeline.explainer.prompts import in_context_examples, in_context_prompt

    explainer, tokenizer = load_explainer(None, tiny_dir, 64)
    picks = in_context_examples(3, 10, 4, seed=0)
    assert all(len(set(p)) == 4 for p in picks) and picks == in_context_examples(3, 10, 4, seed=0) != \
        in_context_examples(3, 10, 4, seed=1)
    solved = [(f"What does <vector> say about {i}?", f"It says {i}.") for i in range(4)]
    prompt = in_context_prompt(solved, "And <vector>?", tokenizer, "plain")
    assert prompt.count("<vector>") == 5 and prompt.endswith("And <vector>?\nAnswer:")
    encoded = encode_example(tokenizer, prompt, None, "paper", explainer.placeholder_id)
    vectors = torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(0))
    batch = collate([encoded], vectors, tokenizer.pad_token_id, "cpu")
    embeds = explainer.embed(batch["input_ids"], batch["vectors"])
    at = (batch["input_ids"][0] == explainer.placeholder_id).nonzero().squeeze(-1)
    assert len(at) == 5
    for slot, position in enumerate(at):  # in order: the examples' vectors, then the question's
        assert torch.allclose(embeds[0, position], explainer.project(vectors[0, slot:slot + 1])[0], atol=1e-5)
    with pytest.raises(ValueError, match=r"4 vector\(s\) must hold the placeholder token \(id \d+\) 4 times; found counts \[5\]"):
        explainer.embed(batch["input_ids"], vectors[:, :4])


def test_both_baselines_run_and_are_compared_with_the_fine_tuned_explainer(tmp_path, tiny_act_patch_run):
    workdir = copy_tree(tiny_act_patch_run, tmp_path / "run")
    target = "results/act_patch/tiny_tiny.json"
    baselines = override(tmp_path, "baselines.yaml", {"act_patch": {"baselines": [
        "in_context_4", "in_context_8", "map_only", "affine"]}})
    plan = planned_jobs(snakemake(workdir, "-n", target, configfiles=[baselines]))
    assert plan == {"act_patch_train_baseline": 2, "act_patch_generate": 4, "act_patch_score": 1}  # nothing else again
    run = snakemake(workdir, target, configfiles=[baselines])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((workdir / target).read_text())
    for variant in ("in_context_4", "in_context_8", "map_only", "affine"):
        assert result["metrics"][variant]["overall"]["n"] == result["metrics"]["finetuned"]["overall"]["n"]
        assert f"finetuned - {variant}" in result["comparisons"]
    prompts = pd.read_parquet(workdir / "work/act_patch/predictions/tiny_tiny/in_context_8.parquet")["question"]
    # the tiny model has SmolLM2's chat template: eight answered turns, then the question's
    assert all(p.count("<vector>") == 9 and p.count("<|im_start|>assistant\n") == 9 for p in prompts)
    assert (workdir / "work/act_patch/baselines/map_only/tiny_tiny/projection.safetensors").is_file()
    refused = snakemake(workdir, "-n", "results/input_ablation/tiny_smollm.json", configfiles=[override(
        tmp_path, "wrong.yaml", {"input_ablation": {"baselines": ["map_only"]}})])
    assert refused.returncode != 0 and "is not one of ['in_context_4', 'in_context_8']" in refused.stdout + refused.stderr


def test_an_in_context_answer_ends_where_its_examples_answers_do():
    """The in-context explainer writes its answer and then a next example of its own: its answer is the text up to the
    end of its first <<<...>>> answer (a newline inside one kept), else up to the first blank line."""
    from pipeline.explainer.prompts import first_answer, parse_answer

    wrote = "The most likely output would change to <<<French>>>.\n\nConsider the input text: <<<People from"
    assert first_answer(wrote) == "The most likely output would change to <<<French>>>."
    assert first_answer("The output would remain unchanged from <<<\n\n>>>.\n\nGiven") == \
        "The output would remain unchanged from <<<\n\n>>>."
    assert first_answer("The most likely output would change to <<<Java.\n\nthe next <<<Oman>>>") == \
        "The most likely output would change to <<<Java."  # an unclosed answer does not reach into the next one
    assert first_answer("I cannot tell.\n\nQuestion: ...") == "I cannot tell."
    assert parse_answer(first_answer(wrote)).content == "french"
