"""The paper's metric definitions, their edge cases, cluster-bootstrap intervals and paired differences."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from pipeline.explainer.baselines import fit_prior, predict
from pipeline.explainer.metrics import change_metrics, paired_differences, score_rows
from pipeline.explainer.prompts import change_answer, parse_answer

ROME, PARIS = change_answer(True, "Rome"), change_answer(False, "Paris")


def frame(predictions, references, changed, clusters=None):
    return pd.DataFrame({"prediction": predictions, "reference": references, "is_different": changed,
                         "cluster": clusters if clusters is not None else list(range(len(predictions))),
                         "row_key": [str(i) for i in range(len(predictions))]})


def test_parse_answer_follows_the_paper():
    assert parse_answer(PARIS) == parse_answer("the output would REMAIN unchanged from <<<paris>>>")
    changed = parse_answer("The most likely output would change to <<< Tokyo>>>.")
    assert changed.valid and changed.changed and changed.content == "tokyo"
    # Off-format wording carries no verdict (our old keyword reading called this one "unchanged").
    worded = parse_answer("The output would change, it is not the same")
    assert not worded.valid and worded.changed is None and worded.content is None
    assert parse_answer("I think it becomes <<<Rome>>>") == parse_answer("") == parse_answer(None)
    # Two answer sentences: the paper looks for "remain unchanged from" first.
    both = parse_answer("The most likely output would change to <<<Rome>>>. The output would remain unchanged "
                        "from <<<Paris>>>.")
    assert both.valid and both.changed is False and both.content == "paris"


def test_punctuation_and_two_sentence_edge_cases():
    refs = [change_answer(True, "."), change_answer(False, "Paris"), change_answer(True, "Rome")]
    preds = [change_answer(True, ","),  # punctuation content is compared as it is: ',' is not '.'
             PARIS.rstrip("."),  # only the outer full stop goes
             ROME + " " + PARIS]  # two sentences: read as "unchanged from Paris"
    rows = score_rows(preds, refs, [True, False, True])
    assert rows["valid"].tolist() == [True, True, True]
    assert rows["content_match"].tolist() == [False, True, False]
    assert rows["exact_match"].tolist() == [False, True, False]
    assert rows["said_unchanged"].tolist() == [False, True, True]


def test_f1_over_valid_outputs_equals_scikit_learn():
    rng = np.random.default_rng(0)
    truth = rng.random(60) < 0.4
    said = rng.random(60) < 0.5
    refs = [change_answer(bool(t), "x") for t in truth]
    preds = [change_answer(bool(s), "x") if i % 5 else "no idea" for i, s in enumerate(said)]
    scored = change_metrics(frame(preds, refs, truth), samples=200)["overall"]
    valid = np.arange(60) % 5 != 0
    assert scored["is_changed_f1"]["value"] == pytest.approx(f1_score(truth[valid], said[valid]))
    assert scored["is_unchanged_f1"]["value"] == pytest.approx(f1_score(~truth[valid], ~said[valid]))
    assert scored["valid_format"]["value"] == pytest.approx(valid.mean())
    low, high = scored["is_changed_f1"]["ci"]
    assert low < scored["is_changed_f1"]["value"] < high
    confusion = np.array(scored["confusion"])
    assert confusion[:, 2].sum() == (~valid).sum() and confusion.sum() == 60


def test_cluster_bootstrap_is_wider_than_a_row_bootstrap_for_correlated_rows():
    """Five identical rows per pair carry one pair's worth of evidence, not five."""
    rng = np.random.default_rng(1)
    hit = np.repeat(rng.random(40) < 0.5, 5)
    refs = [ROME] * 200
    preds = [ROME if h else change_answer(True, "Oslo") for h in hit]
    by_pair = change_metrics(frame(preds, refs, [True] * 200, np.repeat(np.arange(40), 5)), samples=500)
    by_row = change_metrics(frame(preds, refs, [True] * 200), samples=500)
    width = {name: np.diff(m["overall"]["exact_match"]["ci"])[0] for name, m in (("pair", by_pair), ("row", by_row))}
    assert by_pair["overall"]["exact_match"]["value"] == by_row["overall"]["exact_match"]["value"]
    assert by_pair["overall"]["clusters"] == 40 and width["pair"] > 1.8 * width["row"]


def test_paired_difference_and_its_interval():
    refs = [ROME, PARIS] * 30
    changed = [True, False] * 30
    clusters = np.repeat(np.arange(20), 3)
    perfect = frame(refs, refs, changed, clusters)
    noisy = frame([r if i % 3 else "unsure" for i, r in enumerate(refs)], refs, changed, clusters)
    same = paired_differences(perfect, perfect, samples=200)["overall"]["exact_match"]
    assert same["difference"] == 0 and same["ci"] == [0.0, 0.0]
    better = paired_differences(perfect, noisy, samples=500)
    assert better["overall"]["exact_match"]["difference"] == pytest.approx(1 / 3)
    assert better["overall"]["exact_match"]["ci"][0] > 0  # excludes zero
    assert set(better) == {"overall", "is_different=True", "is_different=False"}
    with pytest.raises(ValueError, match="same rows"):
        paired_differences(perfect, perfect.iloc[::-1].reset_index(drop=True))


def test_references_must_be_answers_that_agree_with_the_label():
    with pytest.raises(ValueError, match="not in the answer format"):
        score_rows([ROME], ["Rome"], [True])
    with pytest.raises(ValueError, match="disagree with is_different"):
        score_rows([ROME], [ROME], [False])


def test_structure_prior_learns_majority_verdict_and_answer_per_key():
    keys = [("last", (0, 1))] * 3 + [("subject", (0, 1))] * 3
    prior = fit_prior(keys, [True, True, False, False, False, True], ["Rome", "Rome", "x", "Paris", "Oslo", "y"])
    assert predict(prior, [("last", (0, 1))])[0].changed and predict(prior, [("last", (0, 1))])[0].content == "Rome"
    guess = predict(prior, [("subject", (0, 1))])[0]
    assert not guess.changed and guess.content == "Oslo"  # a tie between contents goes to the first alphabetically
    unseen = predict(prior, [("other", (9,))])[0]
    assert unseen == prior[None] and unseen.support == 6  # an unseen key falls back to the majority class


def test_verdict_vs_prior_counts_agreement_and_who_is_right_where_they_differ():
    from pipeline.explainer.metrics import score_variants, verdict_vs_prior

    truth = [True, True, False, False, True, False]
    prior = [True, True, False, False, False, True]  # right on 4 of 6
    said = [True, False, False, True, True, True]  # differs from the prior on rows 1, 3, 4
    frame = lambda verdicts, name: pd.DataFrame({  # noqa: E731
        "row_key": [str(i) for i in range(6)], "cluster": [str(i) for i in range(6)], "variant": name,
        "prediction": [change_answer(v, "x") for v in verdicts], "reference": [change_answer(t, "x") for t in truth],
        "is_different": truth})
    frames = {"finetuned": frame(said, "finetuned"), "structure_prior": frame(prior, "structure_prior"),
              "copy": frame(prior, "copy").iloc[::-1]}  # the prior's verdicts in another row order
    result = verdict_vs_prior(frames)
    assert result["finetuned"] == {"rows": 6, "agreement": 0.5, "disagreements": 3, "variant_right": 1,
                                   "prior_right": 2, "variant_missed_changes": 1, "variant_false_changes": 2,
                                   "prior_missed_changes": 1, "prior_false_changes": 1}
    assert result["copy"] == {"rows": 6, "agreement": 1.0, "disagreements": 0, "variant_right": 0, "prior_right": 0,
                              "variant_missed_changes": 1, "variant_false_changes": 1, "prior_missed_changes": 1,
                              "prior_false_changes": 1}
    paired = {name: frames[name] for name in ("finetuned", "structure_prior")}
    assert score_variants(paired, 20, 0)["verdict_vs_prior"] == {"finetuned": result["finetuned"]}
    assert "verdict_vs_prior" not in score_variants({"finetuned": frames["finetuned"]}, 20, 0)
    # Rows that carry the prior's cell (token type, layer window) are also counted per cell.
    frames["finetuned"] = frames["finetuned"].assign(token_type=["a"] * 3 + ["b"] * 3,
                                                     layer=[[0, 1]] * 3 + [[2, 3]] * 3)
    assert "by_cell" not in verdict_vs_prior(frames)["finetuned"]  # the shared metrics know no task's columns
    cells = verdict_vs_prior(frames, cell=("token_type", "layer"))["finetuned"]["by_cell"]
    assert set(cells) == {"a L0-1", "b L2-3"}
    assert cells["a L0-1"] | {"agreement": pytest.approx(2 / 3)} == {"rows": 3, "agreement": 2 / 3, "disagreements": 1, "variant_right": 0,
                               "prior_right": 1, "variant_missed_changes": 1, "variant_false_changes": 0,
                               "prior_missed_changes": 0, "prior_false_changes": 0, "changed_share": 2 / 3,
                               "prior_says_changed": 2 / 3}
    assert cells["b L2-3"] | {"agreement": pytest.approx(1 / 3)} == {
        "rows": 3, "agreement": 1 / 3, "disagreements": 2, "variant_right": 1, "prior_right": 1,
        "variant_missed_changes": 0, "variant_false_changes": 2, "prior_missed_changes": 1, "prior_false_changes": 1,
        "changed_share": 1 / 3, "prior_says_changed": 1 / 3}


def test_answer_content_keeps_the_explainers_case_where_parse_answer_lowers_it():
    from pipeline.explainer.prompts import answer_content, parse_answer

    answers = ["The most likely output would change to <<<Paris>>>.", "the output would Remain unchanged from <<< Tokyo>>>",
               "It would change to <<<New York>>> I think", "no verdict here", None]
    for text in answers:
        parsed, content = parse_answer(text), answer_content(text)
        assert (content is None) == (not parsed.valid)
        assert content is None or content.lower() == parsed.content
    assert answer_content(answers[0]) == "Paris" and answer_content(answers[1]) == "Tokyo"
