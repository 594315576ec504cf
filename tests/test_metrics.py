import numpy as np
import pytest

from pipeline.metrics import change_metrics, f1
from pipeline.prompts import change_answer, parse_answer


def test_parse_answer_forms():
    assert parse_answer("The output would remain unchanged from <<<Paris>>>.") .changed is False
    changed = parse_answer("The most likely output would change to <<< Tokyo>>>.")
    assert changed.valid and changed.changed and changed.content == " Tokyo"
    loose = parse_answer("I think it becomes <<<Rome>>>")
    assert not loose.valid and loose.content == "Rome" and loose.changed is None
    worded = parse_answer("The output of the model would remain unchanged from the previous token.")
    assert not worded.valid and worded.changed is False and worded.content is None
    assert parse_answer("It would change to 'Rome'").changed is True
    assert not parse_answer("").valid


def test_perfect_and_wrong_predictions():
    refs = [change_answer(True, "Rome"), change_answer(False, "Paris"), change_answer(True, "Oslo")]
    changed = np.array([True, False, True])
    perfect = change_metrics(refs, refs, changed, samples=50)
    for name in ("exact_match", "content_match", "is_changed_f1", "is_unchanged_f1", "valid_format"):
        assert perfect[name]["value"] == pytest.approx(1.0)
    preds = [change_answer(True, "rome"), "The output would change to <<<Paris>>>", change_answer(False, "Oslo")]
    scored = change_metrics(preds, refs, changed, samples=200, seed=1)
    assert scored["exact_match"]["value"] == pytest.approx(1 / 3)  # case-insensitive match on the first
    assert scored["content_match"]["value"] == pytest.approx(1.0)  # content counts even off-format
    assert scored["valid_format"]["value"] == pytest.approx(2 / 3)
    # changed F1: truth [1,0,1], said changed [1,1,0] (the off-format one says "change") -> P=.5, R=.5
    assert scored["is_changed_f1"]["value"] == pytest.approx(0.5)
    # unchanged F1: truth [0,1,0], said unchanged [0,0,1]
    assert scored["is_unchanged_f1"]["value"] == pytest.approx(0.0)
    assert scored["exact_match"]["se"] == pytest.approx(np.sqrt((1 / 3) * (2 / 3) / 3))
    assert scored["is_changed_f1"]["se"] > 0


def test_f1_undefined_without_positives():
    assert f1(np.array([False, False]), np.array([False, False])) is None
