"""The LM judge against a real local OpenAI-compatible server: ratings, cache, faults, accounting, secrets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chat_server import ChatServer, rating
from pipeline.tasks.features.judge import JUDGE_PROMPT, LMJudge, parse_rating
from pipeline.tasks.features.llm import ChatSettings, LLMCallError

KEY = "sk-test-DO-NOT-LEAK-4242"
PAIRS = [("mentions of dogs", "mentions of dogs"), ("cooking recipes", "financial transactions"),
         ("words about kings", "references to kings and queens"), ("", "anything"),
         ("mentions of dogs", "mentions of dogs"), ("plays by Shakespeare", "works by Shakespeare"),
         ("the letter x", "the token x in words"), ("verbs of motion", "motion")]


def expected_scores(pairs):
    return np.array([0.0 if not p else (rating(JUDGE_PROMPT.format(predicted=p, expected=e)) - 1) / 4 for p, e in pairs])


def judge(server, cache, **settings):
    defaults = {"model": "judge-test", "base_url": server.base_url, "timeout": 1.0, "concurrency": 4,
                "retries": 4, "reasks": 2}
    return LMJudge(ChatSettings(**(defaults | settings)), cache, KEY)


def run(judged, pairs):
    return judged.score([p for p, _ in pairs], [e for _, e in pairs], [f"pair{i}" for i in range(len(pairs))])


def test_parse_rating_accepts_a_number_alone():
    assert [parse_rating(r) for r in ("5", " 3\n", "4.", "0", "6", "4/5", "rating: 4", "")] == [5, 3, 4, None, None,
                                                                                                 None, None, None]


def test_judge_rates_each_distinct_pair_once_and_a_rerun_asks_nothing(tmp_path):
    unique = {(p, e) for p, e in PAIRS if p}
    with ChatServer() as server:
        first = judge(server, tmp_path / "cache.sqlite")
        assert np.allclose(run(first, PAIRS), expected_scores(PAIRS))
        assert server.requests == len(unique) and max(server.answered.values()) == 1
        assert first.accounting()["answered"] == len(unique) and first.accounting()["cached"] == 0
        assert first.accounting()["prompt_tokens"] > 0
        assert all(h.get("authorization") == f"Bearer {KEY}" for h in server.headers)
        second = judge(server, tmp_path / "cache.sqlite")
        assert np.allclose(run(second, PAIRS), expected_scores(PAIRS))
        assert server.requests == len(unique)  # the second run made zero requests
        assert second.accounting()["cached"] == len(unique) and second.accounting()["requests"] == 0
    assert KEY.encode() not in (tmp_path / "cache.sqlite").read_bytes()
    assert KEY not in json.dumps(first.accounting()) + json.dumps(second.accounting())


def test_faults_are_retried_unparseable_replies_reasked_then_counted(tmp_path):
    unique = {(p, e) for p, e in PAIRS if p}
    with ChatServer(slow_seconds=1.5) as server:
        server.faults = ["429", "500", "timeout", "502"]
        server.always = {"verbs of motion": "garbage"}
        judged = judge(server, tmp_path / "cache.sqlite", concurrency=2)
        scores = run(judged, PAIRS)
        expected = expected_scores(PAIRS)
        expected[7] = 0.0  # unparseable after every re-ask: rated 1, as the paper's code does
        assert np.allclose(scores, expected)
        counts = judged.accounting()
        assert counts["retried"] == 4 and counts["reasked"] == 2 and counts["unparseable"] == 1
        assert counts["answered"] == len(unique) - 1 + 3 and counts["failed"] == 0
        assert server.requests == counts["requests"] == len(unique) - 1 + 3 + 4
        assert set(server.answered.values()) == {1}  # nothing that was answered was asked again
        before = server.requests
        again = judge(server, tmp_path / "cache.sqlite")
        assert np.allclose(run(again, PAIRS), expected)
        assert server.requests == before and again.accounting()["unparseable"] == 1


def test_a_final_failure_names_the_call_keeps_what_was_judged_and_resumes(tmp_path):
    pairs = [(f"description {i}", f"reference {i}") for i in range(10)]
    with ChatServer() as server:
        server.always = {"description 6": "500"}
        failing = judge(server, tmp_path / "cache.sqlite", concurrency=1, retries=2)
        with pytest.raises(LLMCallError, match=r"pair6: HTTP 500 after 3 requests"):
            run(failing, pairs)
        kept = failing.chat.cache.__len__()
        assert 6 <= kept < 10 and failing.accounting()["failed"] == 1
        server.always = {}
        before = server.requests
        resumed = judge(server, tmp_path / "cache.sqlite")
        assert np.allclose(run(resumed, pairs), expected_scores(pairs))
        assert server.requests - before == 10 - kept  # only what was never answered is asked
        assert set(server.answered.values()) == {1}


def test_a_client_error_fails_at_once_without_retries(tmp_path):
    with ChatServer() as server:
        server.always = {"mentions of dogs": "401"}
        judged = judge(server, tmp_path / "cache.sqlite", concurrency=1)
        with pytest.raises(LLMCallError, match=r"pair0: HTTP 401 .*not retried"):
            run(judged, PAIRS[:1])
        assert server.requests == 1


def test_another_server_with_a_model_of_the_same_name_is_asked_again(tmp_path):
    """The cache is keyed by the server too: a rerun against the same server is free, another server is asked."""
    unique = {(p, e) for p, e in PAIRS if p}
    with ChatServer() as first_server, ChatServer() as second_server:
        run(judge(first_server, tmp_path / "cache.sqlite"), PAIRS)
        run(judge(first_server, tmp_path / "cache.sqlite"), PAIRS)
        assert first_server.requests == len(unique)
        other = judge(second_server, tmp_path / "cache.sqlite")
        run(other, PAIRS)
        assert second_server.requests == len(unique) and other.accounting()["cached"] == 0


def test_a_malformed_server_address_is_refused_naming_the_setting(base_config):
    import copy

    from pipeline.config import ConfigError, validate_config

    config = copy.deepcopy(base_config)
    config["features"]["judge"]["base_url"] = "htp//127.0.0.1:8000 v1"
    with pytest.raises(ConfigError, match=r"features\.judge\.base_url: 'htp//127.0.0.1:8000 v1' does not match"):
        validate_config(config)


def test_identical_calls_in_one_batch_are_asked_once_and_answer_every_id(tmp_path):
    from pipeline.tasks.features.llm import CachedChat

    with ChatServer(reply=lambda prompt: f"about {prompt[-5:]}") as server:
        chat = CachedChat(ChatSettings(model="describer-test", base_url=server.base_url, concurrency=4),
                          tmp_path / "cache.sqlite", KEY)
        same = [{"role": "user", "content": "describe: kings"}]
        replies = chat.ask_many({"L1/F0": same, "L1/F1": same, "L2/F3": [{"role": "user", "content": "describe: ships"}]},
                                lambda text: text.strip() or None)
        chat.cache.close()
    assert replies == {"L1/F0": "about kings", "L1/F1": "about kings", "L2/F3": "about ships"}
    assert server.requests == 2 and max(server.answered.values()) == 1


def test_servers_are_asked_for_their_models_only_for_the_rules_about_to_run(tmp_path, monkeypatch, capsys):
    """The onstart check: the judge's server when features_score (or its seeded form) will run, the describer's when
    features_descriptions will; an unreachable one stops the run naming the setting and the address; a model the
    server does not list is a warning; `check_servers: false` asks nothing."""
    from pipeline.tasks.features.judge import check_servers as check
    from pipeline.tasks.features.settings import FeaturesConfig

    def check_servers(section, rules):  # the features settings, typed, as the workflow passes them
        return check(FeaturesConfig.from_dict(section), rules)

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env with a key
    with ChatServer(models=["judge-test"]) as server:
        section = {"judge": {"model": "judge-test", "base_url": server.base_url},
                   "descriptions": {"describer": "openai", "model": "describer-test", "base_url": server.base_url}}
        check_servers(section, {"act_patch_train"})
        assert server.listed == 0
        check_servers(section, {"features_score_seeded"})
        assert server.listed == 1 and server.requests == 0  # a models list, no chat call
        check_servers(section, {"features_score", "features_descriptions"})  # one server: asked once a check
        assert server.listed == 2 and "'describer-test' is not among the models" in capsys.readouterr().err
        check_servers(section | {"check_servers": False}, {"features_score"})
        assert server.listed == 2
    unreachable = {"judge": {"model": "judge-test", "base_url": "http://127.0.0.1:9/v1"}}
    with pytest.raises(ValueError, match=r"features.judge: the server at http://127.0.0.1:9/v1 did not list its "
                                         r"models \(APIConnectionError\)"):
        check_servers(unreachable, {"features_score"})
    check_servers({"judge": {"model": "judge-test", "base_url": None}}, {"features_score"})  # no key: judge off
