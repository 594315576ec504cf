"""The answer format every task shares (the paper's "remain unchanged from / change to <<<...>>>"), its parsing,
and the seeded choice of a question's phrasing; each task's questions are its own."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

VECTOR = "<vector>"

UNCHANGED = "The output would remain unchanged from <<<{content}>>>."
CHANGED = "The most likely output would change to <<<{content}>>>."
# Only the untrained (zero-shot) explainer gets this; the trained one learns the format.
FORMAT_INSTRUCTION = (
    " Answer with one sentence, either \"The output would remain unchanged from <<<X>>>.\" or "
    "\"The most likely output would change to <<<Y>>>.\", where X or Y is the next token."
)

FORMAT_INSTRUCTION_CHOICE = (
    " Answer with one sentence, either \"The output would remain unchanged from <<<Answer: X>>>.\" or "
    "\"The most likely output would change to <<<Answer: Y>>>.\", where X or Y is the letter the assistant would answer."
)

# The paper's evaluator (evaluator/causal_exact_match_eval.py): searched in the lower-cased, stripped output,
# "remain unchanged from" first; an output matching neither is invalid and carries no verdict.
_UNCHANGED_PATTERN = re.compile(r".*remain\s+unchanged\s+from\s+<<<([^>]*(?:>[^>]*)*?)>>>")
_CHANGED_PATTERN = re.compile(r".*change\s+to\s+<<<([^>]*(?:>[^>]*)*?)>>>")
# The same, in an answer's own case (answer_content).
_ANY_CASE = tuple(re.compile(p.pattern, re.IGNORECASE) for p in (_UNCHANGED_PATTERN, _CHANGED_PATTERN))


def phrasing(row_key: str | int, count: int, seed: int = 0) -> int:
    """A seeded draw per row, so the wording carries nothing about the row's place in the table."""
    digest = hashlib.sha256(f"{seed}:{row_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def change_answer(changed: bool, content: str) -> str:
    return (CHANGED if changed else UNCHANGED).format(content=content)


@dataclass(frozen=True)
class ParsedAnswer:
    valid: bool  # one of the two answer forms was found (the paper's "valid")
    changed: bool | None  # the verdict of a valid answer; None for an invalid one
    content: str | None  # the text inside <<<...>>> of a valid answer, lower-cased and stripped


def paper_normalize(text: str | None) -> str:
    """The paper's normalisation before comparing whole answers: stripped, lower-cased, outer full stops removed."""
    return (text or "").strip().lower().strip(".")


def parse_answer(text: str | None) -> ParsedAnswer:
    """Verdict and content of an answer, as the paper's evaluator reads them."""
    normalized = paper_normalize(text)
    for pattern, changed in ((_UNCHANGED_PATTERN, False), (_CHANGED_PATTERN, True)):
        match = pattern.search(normalized)
        if match:
            return ParsedAnswer(True, changed, match.group(1).strip())
    return ParsedAnswer(False, None, None)


def answer_content(text: str | None) -> str | None:
    """The text inside <<<...>>> of a valid answer in the explainer's own case (parse_answer's is lower-cased, as
    the paper's evaluator compares it)."""
    for pattern in _ANY_CASE:
        match = pattern.search((text or "").strip().strip("."))
        if match:
            return match.group(1).strip()
    return None


# The end of an answer in either form: an in-context explainer writes one, then goes on to the next example.
_ANSWER_END = re.compile(r"(?:remain\s+unchanged\s+from|change\s+to)\s+<<<(?:(?!<<<).)*?>>>\.?",
                         re.S | re.IGNORECASE)


def first_answer(text: str) -> str:
    """An in-context explainer's output up to the end of its first answer ("... <<<X>>>."), as its examples end
    theirs; where it wrote none, up to the first blank line (the examples' separator). The continuation it writes
    after, a next question of its own, is not part of its answer."""
    match = _ANSWER_END.search(text)
    return text[:match.end()] if match else text.split("\n\n")[0]


def token_text(token: str) -> str:
    """A decoded token as shown in answers: surrounding whitespace dropped, unless that empties it."""
    return token.strip() or token


def in_context_prompt(solved: list[tuple[str, str]], question: str, tokenizer, prompt_format: str) -> str:
    """The untrained explainer's prompt with solved examples first (the field's in-context baseline): each example's
    question and answer, then the question, as the explainer is asked zero-shot (its chat template's turns where it
    has one: user, assistant, ..., user; otherwise "Answer:" lines). Every <vector> stays where it stands, one
    placeholder each."""
    if prompt_format == "chat":
        messages = [turn for q, a in solved for turn in ({"role": "user", "content": q},
                                                          {"role": "assistant", "content": a})]
        return tokenizer.apply_chat_template(messages + [{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    return "".join(f"{q}\nAnswer: {a}\n\n" for q, a in solved) + f"{question}\nAnswer:"


def in_context_examples(rows: int, pool: int, k: int, seed: int) -> list[list[int]]:
    """For each of `rows` questions, `k` distinct solved examples of the training pool (`pool` rows), drawn with a
    seed of its own: the same examples for the same question in every run."""
    import numpy as np

    if k > pool:
        raise ValueError(f"{k} solved examples asked for, but the training split holds {pool} rows")
    return [np.random.default_rng([seed, row]).choice(pool, size=k, replace=False).tolist() for row in range(rows)]
