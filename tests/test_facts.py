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


def test_a_token_by_index_names_the_same_token_of_a_counterfactual_with_another_subject_length():
    from pipeline.tasks.facts import RenderedPrompt, index_token_type, token_positions

    def prompt(words: list[str], subject: str) -> tuple[RenderedPrompt, list[tuple[int, int]]]:
        text, offsets = "".join(words), []
        for word in words:
            start = sum(b - a for a, b in offsets)
            offsets.append((start, start + len(word)))
        at = text.rindex(subject)
        return RenderedPrompt(text, (at, at + len(subject)), len(text), True), offsets

    original = prompt(["The", " capital", " of", " New", " York", " is", " the", " city"], "New York")
    counterfactual = prompt(["The", " capital", " of", " Peru", " is", " the", " city"], "Peru")
    named = {index: index_token_type(*original, index) for index in (0, 2, 4, 5, -1)}
    assert named == {0: "token_0", 2: "token_2", 4: "last_subject_token", 5: "subject_end+1", -1: "subject_end+3"}
    there = token_positions(*counterfactual, named.values())
    assert [there[named[i]] for i in (0, 2, 4, 5, -1)] == [0, 2, 3, 4, 6]  # the same words of the counterfactual
    with pytest.raises(ValueError, match="inside the subject"):
        index_token_type(*original, 3)  # " New": the counterfactual's subject has one token
    with pytest.raises(ValueError, match="the prompt has 8 tokens"):
        index_token_type(*original, 8)
