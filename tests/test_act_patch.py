"""act_patch tables: the pipeline layout, the paper's published layout, and what the explainer is shown."""

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.tasks.act_patch.labels import load_examples
from pipeline.tasks.act_patch.task import examples_from_rows, shuffled_vectors
from pipeline.tasks.facts import token_positions
from pipeline.artifacts import ArtifactError, provenance, write_tensors
from pipeline.settings import FactsConfig
from pipeline.tasks.act_patch.settings import ActPatchConfig, PromptConfig
from pipeline.tasks.facts import render_prompt
from pipeline.explainer.prompts import phrasing
from pipeline.tasks.act_patch.prompts import ACT_PATCH_QUESTIONS


def published_rows(tokenizer, width: int = 8) -> pd.DataFrame:
    """Two rows shaped like the hub's Transluce/act_patch_* datasets: byte-level BPE token strings, vectors inline."""
    text = "The capital of Bavaria is München. People from Zürich speak"
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    position = next(i for i, t in enumerate(tokens) if t.startswith("ĠZ"))
    rows = []
    for changed in (False, True):
        rows.append({
            "layer": [24, 25, 26, 27], "input_tokens": tokens, "original_continuation": ["ĠGerman"],
            "ablated_continuation": ["ĠFrench" if changed else "ĠGerman"], "is_different": changed,
            "patch_position": {"counterfact_pos": 5, "counterfact_text_token": "ĠParis",
                               "intervention_vector": list(np.linspace(-1, 1, width)), "orig_pos": position,
                               "orig_text_token": tokens[position]},
            "counterfactual_text": "People from Paris speak", "gt_original_target": "German",
            "gt_counterfactual_target": "French", "layer_hashable": [24, 25, 26, 27], "token_type": "last_subject_token",
        })
    return pd.DataFrame(rows)


def test_published_layout_decodes_tokens_with_the_tokenizer(tmp_path, tiny):
    _, tokenizer = tiny
    path = tmp_path / "published.parquet"
    published_rows(tokenizer).to_parquet(path)
    frame, vectors = load_examples(path)
    assert vectors.shape == (2, 8) and vectors.dtype == torch.float32
    assert "Ã" in "".join(frame["input_tokens"][0])  # byte-level BPE strings, as published
    questions, answers = examples_from_rows(frame, tokenizer)
    # Non-ASCII text arrives as text, not as byte-level mojibake ('MÃ¼nchen').
    assert "<<<The capital of Bavaria is München. People from Zürich speak>>>" in questions[0]
    assert "<vector>" in questions[0] and "24, 25, 26, 27" in questions[0] and "< Z" in questions[0]
    assert answers == ["The output would remain unchanged from <<<German>>>.",
                       "The most likely output would change to <<<French>>>."]


def test_question_wording_is_a_seeded_draw_per_row_not_its_place(tiny):
    _, tokenizer = tiny
    frame = pd.concat([published_rows(tokenizer)] * 30, ignore_index=True)
    frame["row_id"] = np.arange(len(frame))
    questions, _ = examples_from_rows(frame, tokenizer)
    reordered, _ = examples_from_rows(frame.iloc[::-1], tokenizer)
    assert questions == reordered[::-1]  # a row's wording does not depend on where it sits in the table
    used = [phrasing(i, len(ACT_PATCH_QUESTIONS)) for i in range(60)]
    assert set(used) == set(range(len(ACT_PATCH_QUESTIONS)))
    # Not the row index modulo the number of phrasings (which encoded token type and window in training).
    assert used != [i % len(ACT_PATCH_QUESTIONS) for i in range(60)]


def test_missing_vectors_columns_and_mismatched_files_are_reported(tmp_path, tiny):
    _, tokenizer = tiny
    rows = published_rows(tokenizer)
    rows["patch_position"] = [{k: v for k, v in p.items() if k != "intervention_vector"} for p in rows["patch_position"]]
    path = tmp_path / "novec.parquet"
    rows.to_parquet(path)
    with pytest.raises(ArtifactError, match="intervention_vector is missing and no vectors file"):
        load_examples(path)
    published_rows(tokenizer).drop(columns=["token_type"]).to_parquet(tmp_path / "nocol.parquet")
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


@pytest.fixture(scope="module")
def constrained_labels(tmp_path_factory, tiny_dir):
    """The paper's 'Respond with one of ...' chat form, end to end through facts and batched patching."""
    from pipeline.tasks.act_patch.labels import build_labels
    from pipeline.tasks.facts import build_facts

    folder = tmp_path_factory.mktemp("constrained")
    prompt = PromptConfig(format="constrained", n_options=4)
    facts = build_facts(FactsConfig(relations=("capital",), keep_only_correct=False, max_facts_per_relation=40),
                        prompt, tiny_dir, folder / "facts.parquet")
    cfg = ActPatchConfig(prompt=prompt, patch={"window_size": 2, "window_stride": 2}, pairs={"train": 4, "test": 2},
                         batch_size=16)
    for split in ("train", "test"):
        build_labels(cfg, folder / "facts.parquet", tiny_dir, split, folder / f"{split}.parquet",
                     folder / f"{split}.vectors.safetensors", {"act_patch": "test"}, keep_only_correct=False)
    return folder, facts, cfg


def test_constrained_chat_labels_on_tiny(constrained_labels):
    from pipeline.artifacts import read_provenance

    folder, facts, cfg = constrained_labels
    assert facts["prompt"].str.contains("Respond with one of").all()
    labels, vectors = load_examples(folder / "train.parquet", folder / "train.vectors.safetensors")
    assert len(labels) == 4 * 3 * 2  # pairs x token types x windows of a 4-layer model
    for row in labels.itertuples():
        # both prompts of a pair offer the same options, including both answers
        options = row.input_text.split("Respond with one of ")[1].split(" or unknown")[0].split(" or ")
        assert row.gt_original_target in options and row.gt_counterfactual_target in options
        assert row.counterfactual_text.split("Respond with one of ")[1] == row.input_text.split("Respond with one of ")[1]
    assert vectors.shape == (len(labels), 64)
    counts = read_provenance(folder / "train.parquet")["counts"]
    assert counts["pairs"] == 4 and counts["clean_check_failed"] == 0  # keep_only_correct is off here
    assert read_provenance(folder / "train.parquet")["run_id"] == read_provenance(folder / "train.vectors.safetensors")["run_id"]


def test_clean_check_runs_on_the_patched_prompt(tmp_path, constrained_labels, tiny_dir):
    """With keep_only_correct a random model's pairs all fail the check on the prompt that is patched."""
    from pipeline.tasks.act_patch.labels import build_labels

    folder, _, cfg = constrained_labels
    with pytest.raises(ArtifactError, match=r"give (\d+) candidate pairs .* \1 of them fail the clean check .* leaving 0"):
        build_labels(cfg, folder / "facts.parquet", tiny_dir, "train", tmp_path / "t.parquet",
                     tmp_path / "t.safetensors", {}, keep_only_correct=True)
    assert not (tmp_path / "t.parquet").exists() and not (tmp_path / "t.safetensors").exists()


def test_train_and_test_share_no_subject(constrained_labels):
    folder, _, _ = constrained_labels
    subjects = {}
    for split in ("train", "test"):
        frame, _ = load_examples(folder / f"{split}.parquet", folder / f"{split}.vectors.safetensors")
        subjects[split] = set(frame["subject"]) | set(frame["counterfactual_subject"])
    assert subjects["train"] and subjects["test"] and not subjects["train"] & subjects["test"]


def test_table_and_vectors_of_different_runs_are_refused(tmp_path, constrained_labels):
    folder, _, _ = constrained_labels
    _, vectors = load_examples(folder / "train.parquet", folder / "train.vectors.safetensors")
    write_tensors({"intervention_vector": vectors}, tmp_path / "other.safetensors", provenance({"act_patch": "test"}))
    with pytest.raises(ArtifactError, match="not written by the same stage run"):
        load_examples(folder / "train.parquet", tmp_path / "other.safetensors")


def test_shuffled_vectors_come_from_another_pair_of_the_same_group(constrained_labels):
    folder, _, _ = constrained_labels
    frame, vectors = load_examples(folder / "train.parquet", folder / "train.vectors.safetensors")
    shuffled = shuffled_vectors(frame, vectors, seed=0)
    assert torch.equal(shuffled_vectors(frame, vectors, seed=0), shuffled)  # seeded
    for i, row in frame.iterrows():
        source = [j for j in range(len(frame)) if torch.equal(vectors[j], shuffled[i])]
        assert source, "every shuffled vector is one of the table's vectors"
        donor = frame.iloc[source[0]]
        assert donor["pair_id"] != row["pair_id"]
        assert (donor["relation"], donor["token_type"], list(donor["layer"])) == (
            row["relation"], row["token_type"], list(row["layer"]))


def test_label_chunks_gather_into_the_same_labels_and_a_shortfall_is_said(tmp_path, constrained_labels, tiny_dir):
    """Chunks of one pair give the table and vectors of one chunk; asking for more pairs than the facts give is
    logged and kept in the provenance, and below pairs.min_fraction it is an error."""

    from pipeline.tasks.act_patch.labels import build_labels
    from pipeline.artifacts import read_provenance

    folder, _, cfg = constrained_labels
    chunked = cfg.replaced(chunk_pairs=1)
    build_labels(chunked, folder / "facts.parquet", tiny_dir, "train", tmp_path / "c.parquet",
                 tmp_path / "c.safetensors", {"act_patch": "test"}, keep_only_correct=False)
    whole, vectors = load_examples(folder / "train.parquet", folder / "train.vectors.safetensors")
    parts, part_vectors = load_examples(tmp_path / "c.parquet", tmp_path / "c.safetensors")
    pd.testing.assert_frame_equal(whole, parts)
    assert torch.allclose(vectors, part_vectors, atol=1e-5)  # other batches: other padding, the last bits differ
    assert read_provenance(tmp_path / "c.parquet")["counts"]["chunks"] == 4
    assert not list(tmp_path.glob(".labels-*"))  # the scratch folder is gone

    candidates = read_provenance(folder / "train.parquet")["counts"]["candidate_pairs"]
    short = cfg.replaced(pairs={"train": candidates + 5, "test": 2, "min_fraction": 0.0}, chunk_pairs=8)
    build_labels(short, folder / "facts.parquet", tiny_dir, "train", tmp_path / "s.parquet",
                 tmp_path / "s.safetensors", {}, keep_only_correct=False)
    counts = read_provenance(tmp_path / "s.parquet")["counts"]
    assert counts["pairs"] == candidates and counts["shortfall"] == 5 and counts["asked"] == candidates + 5
    assert counts["chunks"] > -(-candidates // 8)  # the chunks past the pairs are empty and gathered as such
    strict = short.replaced(pairs__min_fraction=1.0)
    with pytest.raises(ArtifactError, match=rf"leaving {candidates} pairs of the {candidates + 5} .*pairs.min_fraction 1.0\)"):
        build_labels(strict, folder / "facts.parquet", tiny_dir, "train", tmp_path / "r.parquet",
                     tmp_path / "r.safetensors", {}, keep_only_correct=False)
    assert not (tmp_path / "r.parquet").exists()


def released_folder(root, frames: dict) -> None:
    """Splits written as `huggingface-cli download --repo-type dataset` lays a hub dataset out."""
    (root / "data").mkdir(parents=True)
    for split, frame in frames.items():
        frame.to_parquet(root / "data" / f"{split}-00000-of-00001.parquet")


def test_released_labels_become_the_workflows_label_artifacts(tmp_path, tiny, tiny_dir):
    from pipeline.tasks.act_patch.labels import import_released_labels
    from pipeline.artifacts import read_provenance

    _, tokenizer = tiny
    published = pd.concat([published_rows(tokenizer, width=64)] * 3, ignore_index=True)
    published.loc[2:, "counterfactual_text"] = "People from Oslo speak"  # a second pair
    released_folder(tmp_path / "released", {"train": published})
    out = tmp_path / "labels"
    frame = import_released_labels(str(tmp_path / "released"), "train", tiny_dir, out / "train.parquet",
                                   out / "train.vectors.safetensors", {"act_patch": {}})
    rows, vectors = load_examples(out / "train.parquet", out / "train.vectors.safetensors")
    inline = np.stack([np.asarray(p["intervention_vector"], dtype=np.float32) for p in published["patch_position"]])
    assert torch.equal(vectors, torch.from_numpy(inline))  # row i's vector is row i's inline vector
    assert rows["row_id"].tolist() == list(range(6)) and rows["pair_id"].tolist() == [0, 0, 1, 1, 1, 1]
    assert not any("intervention_vector" in p for p in rows["patch_position"])
    assert examples_from_rows(rows, tokenizer) == examples_from_rows(published, tokenizer)
    assert read_provenance(out / "train.parquet")["models"] == {"released_labels": str(tmp_path / "released")}
    assert len(frame) == 6
    with pytest.raises(ArtifactError, match=r"holds no 'test' split; expected one of data/test-\*\.parquet"):
        import_released_labels(str(tmp_path / "released"), "test", tiny_dir, out / "test.parquet",
                               out / "test.vectors.safetensors", {})
    released_folder(tmp_path / "wide", {"train": published_rows(tokenizer, width=4096)})
    with pytest.raises(ArtifactError, match=r"vectors of width \[4096\], but the target .* has hidden size 64"):
        import_released_labels(str(tmp_path / "wide"), "train", tiny_dir, out / "w.parquet", out / "w.safetensors", {})
    assert not (out / "w.parquet").exists() and not (out / "test.parquet").exists()
