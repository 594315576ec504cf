"""act_patch tables: the pipeline layout, the paper's published layout, and bad input."""

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.act_patch import examples_from_rows, load_examples, token_positions
from pipeline.artifacts import ArtifactError, write_tensors
from pipeline.config import PromptConfig
from pipeline.facts import render_prompt


def published_rows(width: int = 8) -> pd.DataFrame:
    """Two rows shaped like the hub's Transluce/act_patch_* datasets (vectors inline)."""
    tokens = ["S", "ami", "ĠAbu", "ĠZ", "uh", "ri", "Ġbelongs", "Ġto", "Ġthe", "Ġorganization", "Ġof", "ĊĊ",
              "Response", ":"]
    rows = []
    for changed in (False, True):
        rows.append({
            "layer": [24, 25, 26, 27], "input_tokens": tokens, "original_continuation": [" Hamas"],
            "ablated_continuation": [" FIFA" if changed else " Hamas"], "is_different": changed,
            "patch_position": {"counterfact_pos": 5, "counterfact_text_token": "ĠDeath",
                               "intervention_vector": list(np.linspace(-1, 1, width)), "orig_pos": 5,
                               "orig_text_token": "ri"},
            "counterfactual_text": "Someone belongs to the organization of", "gt_original_target": "Hamas",
            "gt_counterfactual_target": "FIFA", "layer_hashable": [24, 25, 26, 27], "token_type": "last_subject_token",
        })
    return pd.DataFrame(rows)


def test_published_layout_with_inline_vectors(tmp_path):
    path = tmp_path / "published.parquet"
    published_rows().to_parquet(path)
    frame, vectors = load_examples(path)
    assert vectors.shape == (2, 8) and vectors.dtype == torch.float32
    questions, answers = examples_from_rows(frame)
    assert "<<<Sami Abu Zuhri belongs to the organization of\n\nResponse:>>>" in questions[0]
    assert "<vector>" in questions[0] and "layer 24-27" in questions[0] and "'ri'" in questions[0]
    assert answers == ["The output would remain unchanged from <<<Hamas>>>.",
                       "The most likely output would change to <<<FIFA>>>."]


def test_missing_vectors_and_columns_are_reported(tmp_path):
    rows = published_rows()
    rows["patch_position"] = [{k: v for k, v in p.items() if k != "intervention_vector"} for p in rows["patch_position"]]
    path = tmp_path / "novec.parquet"
    rows.to_parquet(path)
    with pytest.raises(ArtifactError, match="intervention_vector is missing and no vectors file"):
        load_examples(path)
    write_tensors({"intervention_vector": torch.zeros(1, 8)}, tmp_path / "short.safetensors", {})
    rows["row_id"] = [0, 1]
    rows.to_parquet(path)
    with pytest.raises(ArtifactError, match="holds 1 vectors but .* refers to row 1"):
        load_examples(path, tmp_path / "short.safetensors")
    published_rows().drop(columns=["token_type"]).to_parquet(tmp_path / "nocol.parquet")
    with pytest.raises(ArtifactError, match=r"nocol.parquet: missing column\(s\) \['token_type'\]"):
        load_examples(tmp_path / "nocol.parquet")


def test_token_positions_of_each_type(tiny):
    _, tokenizer = tiny
    prompt = render_prompt("{} is a country in the continent of", "South Korea", None, PromptConfig(), tokenizer, [])
    encoded = tokenizer(prompt.text, return_offsets_mapping=True)
    positions = token_positions(prompt, [tuple(o) for o in encoded["offset_mapping"]])
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens[positions["last_subject_token"]] == "ĠKorea"
    assert tokens[positions["relation_suffix"]] == "Ġis"
    assert positions["last_token"] == len(tokens) - 1 and tokens[-1] == "Ġof"


def test_constrained_chat_labels_on_tiny(tmp_path, tiny_dir):
    """The paper's 'Respond with one of ...' chat form, end to end through facts and batched patching."""
    from pipeline.act_patch import build_labels, load_examples
    from pipeline.config import ActPatchConfig, FactsConfig
    from pipeline.facts import build_facts

    prompt = PromptConfig(format="constrained", n_options=4)
    facts = build_facts(FactsConfig(relations=("capital",), keep_only_correct=False, max_facts_per_relation=30),
                        prompt, tiny_dir, tmp_path / "facts.parquet")
    assert facts["prompt"].str.contains("Respond with one of").all()
    cfg = ActPatchConfig(prompt=prompt, window_size=2, window_stride=2, pairs={"train": 4, "test": 2}, batch_size=16)
    labels = build_labels(cfg, tmp_path / "facts.parquet", tiny_dir, "train", tmp_path / "l.parquet", tmp_path / "v.safetensors")
    assert len(labels) == 4 * 3 * 2  # pairs x token types x windows of a 4-layer model
    for row in labels.itertuples():
        # both prompts of a pair offer the same options, including both answers
        options = row.input_text.split("Respond with one of ")[1].split(" or unknown")[0].split(" or ")
        assert row.gt_original_target in options and row.gt_counterfactual_target in options
        assert row.counterfactual_text.split("Respond with one of ")[1] == row.input_text.split("Respond with one of ")[1]
    frame, vectors = load_examples(tmp_path / "l.parquet", tmp_path / "v.safetensors")
    assert vectors.shape == (len(frame), 64)
