"""Explainer questions and answers in the paper's wording, and parsing of generated answers."""

from __future__ import annotations

import re
from dataclasses import dataclass

VECTOR = "<vector>"

ACT_PATCH_QUESTIONS = (
    "If feature <vector> at layer {layers} is added to tokens {tokens} when processing the text "
    "<<<{input}>>>, how would the output change?",
    "Suppose the hidden state <vector> is patched into layers {layers} at token {tokens} while the model "
    "reads <<<{input}>>>. How would its next token change?",
    "At layers {layers}, the activation of token {tokens} in the text <<<{input}>>> is replaced by <vector>. "
    "What would the model output next?",
)
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

_ANSWER = re.compile(
    r"^\s*The (?:output would remain (?P<unchanged>unchanged) from|most likely output would (?P<changed>change) to)"
    r" <<<(?P<content>.*?)>>>\.?\s*$",
    re.DOTALL,
)


def layers_text(layers) -> str:
    layers = [int(x) for x in layers]
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])


def act_patch_question(index: int, layers, token: str, input_text: str) -> str:
    template = ACT_PATCH_QUESTIONS[index % len(ACT_PATCH_QUESTIONS)]
    return template.format(layers=layers_text(layers), tokens=repr(token), input=input_text)


def change_answer(changed: bool, content: str) -> str:
    return (CHANGED if changed else UNCHANGED).format(content=content)


_SAYS_UNCHANGED = re.compile(r"\b(unchanged|remains?|stays?|same)\b", re.IGNORECASE)
_SAYS_CHANGED = re.compile(r"\bchange", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedAnswer:
    valid: bool  # exactly one of the two answer sentences
    changed: bool | None  # the verdict; read from the wording when the format is off, None if there is none
    content: str | None


def parse_answer(text: str) -> ParsedAnswer:
    """The change/unchanged verdict and the <<<content>>> of an answer."""
    match = _ANSWER.match(text or "")
    if match:
        return ParsedAnswer(True, match.group("changed") is not None, match.group("content"))
    content = re.search(r"<<<(.*?)>>>", text or "", re.DOTALL)
    verdict = False if _SAYS_UNCHANGED.search(text or "") else True if _SAYS_CHANGED.search(text or "") else None
    return ParsedAnswer(False, verdict, content.group(1) if content else None)


def normalize(text: str | None) -> str:
    """Case-, whitespace- and edge-punctuation-insensitive form used by exact and content match."""
    return re.sub(r"\s+", " ", (text or "")).strip().strip(".,;:!?\"'").strip().lower()


def token_text(token: str) -> str:
    """A decoded token as shown in answers: surrounding whitespace dropped, unless that empties it."""
    return token.strip() or token


def tokens_to_text(tokens) -> str:
    """Text of byte-level BPE (Ġ, Ċ) or SentencePiece (▁) token strings from a published table."""
    return "".join(tokens).replace("Ġ", " ").replace("Ċ", "\n").replace("▁", " ")
