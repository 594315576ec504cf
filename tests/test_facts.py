import json

import pandas as pd
import pytest

from pipeline.artifacts import ArtifactError
from pipeline.tasks.act_patch.settings import PromptConfig
from pipeline.tasks.facts import answer_matches, countryinfo_facts, read_counterfact, render_prompt, split_by_subject


def test_countryinfo_facts_are_counterfact_shaped():
    facts = countryinfo_facts(("capital", "continent", "currency", "demonym"))
    assert set(facts["relation"]) == {"capital", "continent", "currency", "demonym"}
    assert len(facts) > 900 and facts["fact_id"].is_unique
    japan = facts[(facts["subject"] == "Japan")].set_index("relation")["target_true"]
    assert japan["capital"] == "Tokyo" and japan["continent"] == "Asia"
    assert all("{}" in t for t in facts["template"])
    with pytest.raises(ValueError, match="unknown relation"):
        countryinfo_facts(("shoe_size",))


def test_split_by_subject_is_disjoint_and_seeded():
    subjects = pd.Series([f"s{i}" for i in range(200)] * 2)
    split = split_by_subject(subjects, 0.3, seed=0)
    assert not set(subjects[split == "train"]) & set(subjects[split == "test"])
    assert 0.15 < (split == "test").mean() < 0.45
    assert split.equals(split_by_subject(subjects, 0.3, seed=0))
    assert not split.equals(split_by_subject(subjects, 0.3, seed=1))


ROME_RECORDS = [
    {"case_id": 0, "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                                         "subject": "Danielle Darrieux", "target_new": {"str": "English", "id": "Q1860"},
                                         "target_true": {"str": "French", "id": "Q150"}},
     "paraphrase_prompts": ["..."], "neighborhood_prompts": ["..."]},
    {"case_id": 1, "requested_rewrite": {"prompt": "{}, developed by", "relation_id": "P176",
                                         "subject": "Porsche 959", "target_new": {"str": "Yamaha", "id": "Q1"},
                                         "target_true": {"str": "Porsche", "id": "Q2"}}},
]


def test_counterfact_loader_reads_rome_json_and_flat_parquet(tmp_path):
    path = tmp_path / "counterfact.json"
    path.write_text(json.dumps(ROME_RECORDS))
    facts = read_counterfact(path)
    assert facts[["relation", "subject", "target_true"]].values.tolist() == [
        ["P103", "Danielle Darrieux", "French"], ["P176", "Porsche 959", "Porsche"]]
    flat = pd.DataFrame({"prompt": ["{} is located in"], "subject": ["Eiffel Tower"], "target_true": ["Paris"],
                         "relation_id": ["P131"]})
    flat.to_parquet(tmp_path / "flat.parquet")
    assert read_counterfact(tmp_path / "flat.parquet")["target_true"].tolist() == ["Paris"]


def test_counterfact_loader_rejects_bad_files(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps([{"requested_rewrite": {"prompt": "{} is", "subject": "X"}}]))
    with pytest.raises(ArtifactError, match=r"bad.json: record 0 lacks \['target_true', 'relation_id'\]"):
        read_counterfact(tmp_path / "bad.json")
    (tmp_path / "nosubj.jsonl").write_text(json.dumps({"prompt": "no placeholder", "subject": "X", "target_true": "Y",
                                                       "relation_id": "P1"}) + "\n")
    with pytest.raises(ArtifactError, match="has no '{}' placeholder"):
        read_counterfact(tmp_path / "nosubj.jsonl")
    with pytest.raises(ArtifactError, match="CounterFact file not found"):
        read_counterfact(tmp_path / "absent.json")


def test_render_prompt_spans(tiny):
    _, tokenizer = tiny
    plain = render_prompt("The capital of {} is the city of", "Peru", None, PromptConfig(format="completion"), tokenizer,
                          ["The capital of France is the city of Paris."])
    assert plain.text.endswith("The capital of Peru is the city of")
    assert plain.text[slice(*plain.subject_span)] == "Peru"
    chat = render_prompt("{}, developed by", "Porsche 959", ["Yamaha", "Porsche"], PromptConfig(format="constrained"),
                         tokenizer, [])
    assert "Respond with one of Yamaha or Porsche or unknown and nothing else" in chat.text
    assert chat.text.startswith("<|im_start|>") and chat.text[slice(*chat.subject_span)] == "Porsche 959"
    assert not chat.add_special_tokens


def test_answer_matching():
    assert answer_matches(" Tok", "Tokyo") and answer_matches("Buenos", "Buenos Aires")
    assert not answer_matches(" Paris", "Tokyo") and not answer_matches("  ", "Tokyo")
