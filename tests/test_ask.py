"""Asking a trained explainer about one's own prompts (pipeline.ask): the API, the command and the workflow target
give the label stage's truth and the generation stage's answers for a pair the run itself labelled and answered."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from workflow_runs import REPO, copy_tree, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def asked_run(tmp_path_factory, tiny_act_patch_run):
    return copy_tree(tiny_act_patch_run, tmp_path_factory.mktemp("ask") / "run")


def answered_pair(run) -> dict:
    """A test pair of the run whose rows the fine-tuned explainer answered (generation answers a sample of rows)."""
    labels = pd.read_parquet(run / "work/act_patch/labels/tiny/test.parquet")
    answered = set(pd.read_parquet(run / "work/act_patch/predictions/tiny_tiny/finetuned.parquet")["row_key"])
    labels = labels[labels["row_id"].astype(str).isin(answered)]
    return labels.iloc[0].to_dict()


def test_an_asked_pair_gets_the_labels_truth_and_the_generation_stages_answers(asked_run):
    from pipeline.ask import Asker

    pair = answered_pair(asked_run)
    asker = Asker.load("act_patch", "tiny_tiny", asked_run)
    table = asker.act_patch(pair["input_text"], pair["subject"], pair["counterfactual_subject"],
                            pair["counterfactual_text"], pair_id=pair["pair_id"])
    labels = pd.read_parquet(asked_run / "work/act_patch/labels/tiny/test.parquet")
    labels = labels[labels["pair_id"] == pair["pair_id"]]
    assert len(table) == len(labels) == 2 * 2  # token types x windows of the run's settings
    for row, label in zip(table.itertuples(), labels.itertuples()):
        assert (row.token_type, row.layer) == (label.token_type, list(label.layer))
        assert row.clean_token == label.original_continuation[0] and row.patched_token == label.ablated_continuation[0]
        assert row.changed == label.is_different
    predictions = pd.read_parquet(asked_run / "work/act_patch/predictions/tiny_tiny/finetuned.parquet")
    same = table.merge(predictions, on="question")
    assert len(same) > 0  # the questions are worded as the generation stage worded them
    assert (same["answer"] == same["prediction"]).all() and (same["reference_x"] == same["reference_y"]).all()
    assert table["agrees"].tolist() == [a == r for a, r in zip(table["answer"], table["reference"])]

    one = asker.act_patch(pair["input_text"], pair["subject"], pair["counterfactual_subject"],
                          pair["counterfactual_text"], token_types=["last_token"], layers=[[2, 3]],
                          pair_id=pair["pair_id"])
    assert len(one) == 1 and one.iloc[0]["answer"] == table.iloc[-1]["answer"]
    with pytest.raises(ValueError, match=r"this run's windows are \[\[0, 1\], \[2, 3\]\]"):
        asker.act_patch(pair["input_text"], pair["subject"], pair["counterfactual_subject"], layers=[[1, 2]])
    with pytest.raises(ValueError, match="is not in the prompt"):
        asker.act_patch("No subject here", "Japan", "Italy")



def test_a_token_by_index_is_patched_as_the_token_type_at_that_position(asked_run):
    """The subject's last token by index is the last_subject_token row itself (truth and answer); the prompt's last
    token by index (-1) gets last_token's truth; an index past the prompt is refused (inside the subject:
    tests/test_facts.py)."""
    from pipeline.ask import Asker

    pair = answered_pair(asked_run)
    asker = Asker.load("act_patch", "tiny_tiny", asked_run)
    ask = lambda **how: asker.act_patch(pair["input_text"], pair["subject"], pair["counterfactual_subject"],  # noqa: E731
                                        pair["counterfactual_text"], pair_id=pair["pair_id"], **how)
    grid = ask()
    labels = pd.read_parquet(asked_run / "work/act_patch/labels/tiny/test.parquet")
    labels = labels[labels["pair_id"] == pair["pair_id"]]
    subject_end = int(labels[labels["token_type"] == "last_subject_token"].iloc[0]["patch_position"]["orig_pos"])
    by_index = ask(token_index=subject_end)
    by_type = grid[grid["token_type"] == "last_subject_token"].reset_index(drop=True)
    assert by_index.equals(by_type)
    last = ask(token_index=-1)
    assert last["token_type"].str.startswith("subject_end+").all()
    expected = grid[grid["token_type"] == "last_token"].reset_index(drop=True)
    for column in ("layer", "clean_token", "patched_token", "counterfactual_token", "changed", "reference"):
        assert last[column].tolist() == expected[column].tolist(), column
    with pytest.raises(ValueError, match="the prompt has"):
        ask(token_index=10_000)

def test_the_command_prints_what_the_api_returns(asked_run):
    from pipeline.ask import Asker

    pair = answered_pair(asked_run)
    args = ["act_patch", "tiny_tiny", "--workdir", str(asked_run), "--prompt", pair["input_text"],
            "--subject", pair["subject"], "--counterfactual-subject", pair["counterfactual_subject"],
            "--counterfactual", pair["counterfactual_text"]]
    command = subprocess.run([sys.executable, "-m", "pipeline.ask", *args, "--json"], cwd=REPO, capture_output=True,
                             text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert command.returncode == 0, command.stderr[-3000:]
    printed = [json.loads(line) for line in command.stdout.splitlines() if line.strip()]
    api = Asker.load("act_patch", asked_run / "work/act_patch/explainers/tiny_tiny").act_patch(
        pair["input_text"], pair["subject"], pair["counterfactual_subject"], pair["counterfactual_text"])
    assert [p["answer"] for p in printed] == api["answer"].tolist()
    assert [p["patched_token"] for p in printed] == api["patched_token"].tolist()
    table = subprocess.run([sys.executable, "-m", "pipeline.ask", *args], cwd=REPO, capture_output=True, text=True,
                           env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert table.returncode == 0 and f"{int(api['agrees'].sum())} of 4 answers agree" in table.stdout
    missing = subprocess.run([sys.executable, "-m", "pipeline.ask", "act_patch", "nosuch_run", "--workdir",
                              str(asked_run), "--prompt", "x", "--subject", "x", "--counterfactual-subject", "y"],
                             cwd=REPO, capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})
    assert missing.returncode != 0 and "no trained explainer of run 'nosuch_run'" in missing.stderr


def test_a_file_of_questions_is_one_workflow_target_that_reruns_when_the_file_changes(asked_run, tmp_path):
    from pipeline.artifacts import read_provenance
    from pipeline.ask import Asker

    run = copy_tree(asked_run, tmp_path / "run")
    pair = answered_pair(run)
    (run / "asks").mkdir()
    rows = [{"prompt": pair["input_text"], "subject": pair["subject"],
             "counterfactual_subject": pair["counterfactual_subject"], "token_type": None, "layer": None},
            {"prompt": pair["input_text"], "subject": pair["subject"],
             "counterfactual_subject": pair["counterfactual_subject"], "token_type": "last_token", "layer": "2,3"}]
    pd.DataFrame(rows).to_csv(run / "asks/mine.csv", index=False)
    target = "results/ask/act_patch/tiny_tiny/mine.parquet"
    made = snakemake(run, target)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    table = pd.read_parquet(run / target)
    assert table["ask"].tolist() == [0, 0, 0, 0, 1]
    api = Asker.load("act_patch", "tiny_tiny", run).act_patch(pair["input_text"], pair["subject"],
                                                               pair["counterfactual_subject"])
    assert table["answer"].tolist()[:4] == api["answer"].tolist() and table.iloc[4]["answer"] == api.iloc[3]["answer"]
    prov = read_provenance(run / target)
    assert prov["settings"]["run"] == "tiny_tiny" and len(prov["settings"]["questions"]["sha256"]) == 64
    again = snakemake(run, target)
    assert "Nothing to be done" in again.stdout + again.stderr
    pd.DataFrame(rows[:1]).to_csv(run / "asks/mine.csv", index=False)
    rerun = snakemake(run, target)
    assert rerun.returncode == 0 and pd.read_parquet(run / target)["ask"].tolist() == [0, 0, 0, 0]
