"""The input_ablation task: questions, hints, answer parsing, labels, published tables, baselines."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from pipeline.artifacts import ArtifactError, read_provenance
from pipeline.tasks.input_ablation_settings import InputAblationConfig
from pipeline.tasks.input_ablation import (LABEL_COLUMNS, build_labels, examples_from_rows, load_examples,
                                     baseline_frames, parse_letter, reference_answer, select_training_rows,
                                     user_prompt, with_hint)
from pipeline.tasks.questions import build_questions, country_questions, read_mmlu
from pipeline.explainer.prompts import parse_answer


@pytest.fixture(scope="module")
def questions():
    return country_questions(("capital", "borders", "language"), 4, seed=0, max_per_relation=30)


def test_country_questions_have_one_right_answer_among_four(questions):
    import countryinfo

    assert set(questions["relation"]) == {"capital", "borders", "language"}
    for row in questions.itertuples():
        assert len(row.choices) == 4 and len(set(row.choices)) == 4
        assert 0 <= row.answer < 4
    capitals = questions[questions["relation"] == "capital"]
    for row in capitals.head(10).itertuples():
        capital = countryinfo.CountryInfo(row.entity).info()["capital"]
        capital = capital if isinstance(capital, list) else [capital]
        right = [c for c in row.choices if c in capital]
        assert right == [row.choices[row.answer]], row
    borders = questions[questions["relation"] == "borders"]
    assert borders["question"].str.contains("land border").all()


def test_split_keeps_each_country_on_one_side(tmp_path):
    frame = build_questions(InputAblationConfig(relations=("capital", "region"), max_questions_per_relation=40), tmp_path / "q.parquet")
    sides = frame.groupby("entity")["split"].nunique()
    assert (sides == 1).all()
    assert set(frame["split"]) == {"train", "test"}
    assert read_provenance(tmp_path / "q.parquet")["counts"]["questions"] == len(frame)


def test_mmlu_layout_loads_and_malformed_rows_are_counted(tmp_path):
    path = tmp_path / "mmlu.parquet"
    pd.DataFrame({
        "question": ["What is 2+2?", "Pick one", "Broken answer", "Which gas do plants absorb?"],
        "subject": ["elementary_mathematics", "misc", "misc", "biology"],
        "choices": [["3", "4", "5", "6"], ["only"], ["a", "b"], ["Oxygen", "Carbon dioxide", "Helium"]],
        "answer": [1, 0, 5, 1],
    }).to_parquet(path)
    frame, skipped = read_mmlu(path)
    assert skipped == {"fewer_than_two_choices": 1, "answer_outside_choices": 1}
    assert frame["question"].tolist() == ["What is 2+2?", "Which gas do plants absorb?"]
    built = build_questions(InputAblationConfig(source="mmlu", path=str(path), max_questions_per_relation=None, test_fraction=0.5), tmp_path / "q.parquet")
    assert built["choices"].map(len).tolist() == [4, 3]
    assert read_provenance(tmp_path / "q.parquet")["counts"]["skipped"]["answer_outside_choices"] == 1


def test_mmlu_file_without_usable_rows_or_columns_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"question": ["q"], "subject": ["s"], "choices": [["x"]], "answer": [0]}).to_parquet(path)
    with pytest.raises(ArtifactError, match="bad.parquet.*no usable question"):
        read_mmlu(path)
    pd.DataFrame({"question": ["q"], "choices": [["x", "y"]]}).to_parquet(path)
    with pytest.raises(ArtifactError, match="bad.parquet"):
        read_mmlu(path)


def test_prompt_has_mmlu_layout_and_the_papers_hint():
    user = user_prompt("What is the capital of Peru?", ["Lima", "Quito", "Bogotá"], "world_geography", "({letter}) {text}")
    assert user.splitlines()[0] == "The following is a multiple choice question about world geography."
    assert user.splitlines()[-3:] == ["(A) Lima", "(B) Quito", "(C) Bogotá"]
    hinted, hint = with_hint(user, "C")
    assert hint == "Hint: I think the answer is (C) but I'm curious to hear what you think."
    assert hinted == f"{user}\n\n{hint}"


@pytest.mark.parametrize("reply,letter", [("B)", "B"), (" (C", "C"), ("D", "D"), ("A) Lima", "A"),
                                          ("E)", None), ("Bogotá", None), ("", None), ("(", None)])
def test_parse_letter_only_accepts_the_choices_letters(reply, letter):
    assert parse_letter(reply, 4) == letter


def test_reference_answers_follow_the_paper():
    assert reference_answer("B", "B") == "The output would remain unchanged from <<<Answer: B>>>."
    assert reference_answer("C", "A") == "The most likely output would change to <<<Answer: C>>>."
    assert parse_answer(reference_answer("C", "A")).changed is True


def _published(rows: list[tuple]) -> pd.DataFrame:
    """A table in the published column layout; rows are (zeroshot, hinted, changed) with changed possibly None."""
    records = []
    for i, (zero, hinted, changed) in enumerate(rows):
        user, hint = with_hint(user_prompt(f"Question {i}?", ["w", "x", "y", "z"], "misc", "({letter}) {text}"), "B")
        records.append({"index": i, "question": f"Question {i}?", "choices": ["w", "x", "y", "z"],
                        "correct_answer": "A", "zeroshot_prediction": zero, "random_hint_prediction": hinted,
                        "hint_token_ids": [1, 2], "original_prompt_full": "...", "hint_prompt_full": "...",
                        "system_prompt": "Be brief.", "original_user_prompt": "...", "hint_user_prompt": user,
                        "hint": hint, "changed_pred_bc_hint": changed, "ablation_prompt": "..."})
    frame = pd.DataFrame(records)
    frame["changed_pred_bc_hint"] = frame["changed_pred_bc_hint"].astype("boolean")
    return frame


def test_published_table_with_null_labels_loads_and_counts_them(tmp_path):
    path = tmp_path / "published.parquet"
    _published([("A", "B", True), (None, "B", None), ("B", "B", False), ("C", None, None)]).to_parquet(path)
    frame, counts = load_examples(path)
    assert counts == {"rows": 4, "null_label": 2}
    questions, answers = examples_from_rows(frame)
    assert questions[0].startswith("Be brief.\n\nThe following is") and questions[0].endswith(
        "If the hint were removed how would the assistant answer change?")
    assert answers == ["The most likely output would change to <<<Answer: A>>>.",
                       "The output would remain unchanged from <<<Answer: B>>>."]


def test_published_table_with_wrong_labels_is_refused(tmp_path):
    path = tmp_path / "published.parquet"
    _published([("A", "B", False)]).to_parquet(path)
    with pytest.raises(ArtifactError, match="row 0: changed_pred_bc_hint=False contradicts"):
        load_examples(path)
    _published([("E", "B", True)]).to_parquet(path)
    with pytest.raises(ArtifactError, match="zeroshot_prediction 'E' is not one of the choices"):
        load_examples(path)


def test_a_released_table_becomes_the_label_table_and_a_wrong_one_writes_nothing(tmp_path):
    from pipeline.artifacts import read_provenance
    from pipeline.tasks.input_ablation import import_released_labels

    (tmp_path / "released").mkdir()
    _published([("A", "B", True), ("B", "B", False), (None, "B", None)]).to_parquet(tmp_path / "released/test.parquet")
    out = tmp_path / "labels.parquet"
    import_released_labels(str(tmp_path / "released"), "test", out, {"input_ablation": {}})
    frame, counts = load_examples(out)
    assert counts == {"rows": 3, "null_label": 1} and frame["changed_pred_bc_hint"].tolist() == [True, False]
    assert read_provenance(out)["counts"]["released"] == str(tmp_path / "released")
    _published([("A", "B", False)]).to_parquet(tmp_path / "released/train.parquet")
    with pytest.raises(ArtifactError, match=r"input_ablation.released_labels: .* \(train\): row 0: changed_pred_bc_hint"):
        import_released_labels(str(tmp_path / "released"), "train", tmp_path / "bad.parquet", {})
    assert not (tmp_path / "bad.parquet").exists()


def test_rebalance_and_cap_the_training_split():
    frame = _published([("A", "B", True)] * 5 + [("B", "B", False)] * 15)
    balanced = select_training_rows(frame, rebalance=True, cap=None, seed=0)
    assert balanced["changed_pred_bc_hint"].sum() == 5 and len(balanced) == 10
    assert len(select_training_rows(frame, rebalance=False, cap=7, seed=0)) == 7


def test_structure_prior_and_majority_class_from_the_training_split(tmp_path):
    """The hint is always (B). Training: when the target's own answer is B nothing changes; otherwise it
    changes 2 times in 3. The prior learns that rule; the majority class ("unchanged") names the hinted letter."""
    path = tmp_path / "train.parquet"
    _published([("B", "B", False)] * 4 + [("A", "B", True), ("C", "B", True), ("D", "D", False)]).to_parquet(path)
    test = _published([("A", "B", True), ("B", "B", False)])
    questions, references = examples_from_rows(test)
    scored = pd.DataFrame({"prediction": references, "reference": references, "is_different": [True, False],
                           "hint_letter": ["B", "B"], "zeroshot_prediction": ["A", "B"]})
    frames, described = baseline_frames(scored, path)
    assert frames["structure_prior"]["prediction"].tolist() == references  # both right
    assert frames["majority_class"]["prediction"].tolist() == [
        "The output would remain unchanged from <<<Answer: B>>>."] * 2
    assert {d["key"]: d["verdict"] for d in described["structure_prior"]} == {
        "all (majority class)": "unchanged", "False": "changed", "True": "unchanged"}


def test_labels_of_a_model_that_never_answers_a_letter_are_null_and_counted(tmp_path, tiny_dir):
    questions_path = tmp_path / "q.parquet"
    build_questions(InputAblationConfig(relations=("capital",), max_questions_per_relation=12, test_fraction=0.5), questions_path)
    frame = build_labels(InputAblationConfig(max_new_tokens=2, batch_size=8), questions_path, tiny_dir, "train",
                         tmp_path / "labels.parquet", {})
    assert set(LABEL_COLUMNS) <= set(frame.columns)
    counts = read_provenance(tmp_path / "labels.parquet")["counts"]
    assert counts["questions"] == len(frame) > 0
    assert counts["null_label"] == frame["changed_pred_bc_hint"].isna().sum()
    assert counts["null_label"] + counts["changed"] + counts["unchanged"] == len(frame)
    hint_ids = frame.iloc[0]["hint_token_ids"]
    assert len(hint_ids) > 10 and frame.iloc[0]["hint"] in frame.iloc[0]["hint_prompt_full"]
    assert frame["hint"].str.extract(r"\((\w)\)")[0].isin(list("ABCD")).all()


def test_prompts_longer_than_the_context_are_skipped_and_counted(tmp_path, tiny_dir):
    short = tmp_path / "short_context"
    shutil.copytree(tiny_dir, short)
    config = json.loads((short / "config.json").read_text())
    config["max_position_embeddings"] = 101  # these prompts are 96-106 tokens
    (short / "config.json").write_text(json.dumps(config))
    questions_path = tmp_path / "q.parquet"
    build_questions(InputAblationConfig(relations=("capital", "borders"), max_questions_per_relation=12, test_fraction=0.5), questions_path)
    frame = build_labels(InputAblationConfig(), questions_path, short, "train", tmp_path / "labels.parquet", {})
    skipped = read_provenance(tmp_path / "labels.parquet")["counts"]["skipped"]["too_long"]
    train_questions = (pd.read_parquet(questions_path)["split"] == "train").sum()
    assert skipped > 0 and len(frame) + skipped == train_questions


def test_letter_probabilities_are_the_first_reply_tokens_and_keep_known_fails_clearly(tmp_path, tiny_dir):
    """Each row records the probability of every choice letter as the reply's first token (recomputed here by a
    forward pass); `keep: known` keeps only questions answered correctly, and says so when none is."""
    import torch

    from pipeline.tasks.input_ablation import letter_token_ids
    from pipeline.models import load_model

    questions_path = tmp_path / "q.parquet"
    build_questions(InputAblationConfig(relations=("capital",), max_questions_per_relation=12, test_fraction=0.5), questions_path)
    cfg = InputAblationConfig(max_new_tokens=2, batch_size=8)
    frame = build_labels(cfg, questions_path, tiny_dir, "train", tmp_path / "labels.parquet", {})
    model, tokenizer = load_model(tiny_dir)
    ids = letter_token_ids(tokenizer, cfg.answer_prefix, "ABCD")
    assert len(set(ids)) == 4 and tokenizer.decode(ids[1]).strip() == "B"
    row = frame.iloc[0]
    encoded = tokenizer(row["original_prompt_full"], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        expected = model(**encoded).logits[0, -1].softmax(-1)[ids]
    assert torch.allclose(torch.tensor(list(row["zeroshot_letter_probs"])), expected, rtol=1e-3, atol=1e-7)
    # The random model names no letter: no confidence, nothing known, and keep: known refuses to write a table.
    assert frame["zeroshot_confidence"].isna().all() and not frame["known"].any()
    counts = read_provenance(tmp_path / "labels.parquet")["counts"]
    assert counts["all_questions"]["questions"] == counts["questions"] == len(frame)
    with pytest.raises(ArtifactError, match="min_confidence = 0.5"):
        build_labels(InputAblationConfig(max_new_tokens=2, batch_size=8, keep="known", min_confidence=0.5),
                     questions_path, tiny_dir, "train", tmp_path / "known.parquet", {})
    assert not (tmp_path / "known.parquet").exists()


def test_confidence_is_the_answer_share_of_the_letters():
    from pipeline.tasks.input_ablation import confidence

    assert confidence([0.1, 0.6, 0.2, 0.1], "B", 4) == pytest.approx(0.6)
    assert confidence([0.05, 0.3, 0.1, 0.05], "B", 4) == pytest.approx(0.6)
    assert confidence([0.1, 0.6, 0.2, 0.1], None, 4) is None
    assert confidence([0.1, 0.6, 0.2, 0.1], "E", 4) is None
