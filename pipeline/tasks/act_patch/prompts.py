"""The act_patch questions the explainer is asked and the text of the target's tokens in them: the paper's five
phrasings, the reading rows' question, and token strings turned back into text."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from pipeline.explainer.prompts import phrasing, token_text


# The paper's five phrasings (config/act_patch/*.yaml of its code), with one placeholder token for the vector.
ACT_PATCH_QUESTIONS = (
    "If feature <vector> at layer {layers} is added to tokens {tokens} when processing the text <<<{input}>>>, "
    "how would the output change?",
    "When feature <vector> at layer {layers} is added at tokens {tokens} in the input <<<{input}>>>, what happens "
    "to the model's output?",
    "Consider the input text: <<<{input}>>>. If we steer layer {layers} towards feature <vector> at tokens "
    "{tokens}, how does this affect the generated continuation?",
    "Given the text <<<{input}>>>, what would be the effect on the output if feature <vector> at layer {layers} "
    "is added to tokens {tokens}?",
    "If we steer towards feature <vector> at layer {layers} and tokens {tokens} when processing <<<{input}>>>, "
    "how would the model's response differ?",
)


def layers_text(layers) -> str:
    """A layer window as the paper writes it: "24, 25, 26, 27"."""
    return ", ".join(str(int(x)) for x in layers)


def act_patch_question(row_key: str | int, layers, token: str, input_text: str, seed: int = 0) -> str:
    template = ACT_PATCH_QUESTIONS[phrasing(row_key, len(ACT_PATCH_QUESTIONS), seed)]
    return template.format(layers=layers_text(layers), tokens=f"<{token}>", input=input_text)


@functools.lru_cache(maxsize=4)
def _vocabulary(tokenizer) -> frozenset:
    """The tokenizer's token strings, built once per tokenizer: `get_vocab()` builds a new dict on every call (0.09 s
    for SmolLM2, 0.53 s for Gemma's 262k tokens), which per row of a label table took minutes."""
    return frozenset(tokenizer.get_vocab())


def tokens_text(tokenizer, tokens) -> str:
    """Text of token strings from a table: byte-level BPE or SentencePiece tokens go through the tokenizer's own
    decoder ('ĠMÃ¼nchen' -> ' München'); strings that are not tokens of its vocabulary are already text."""
    tokens = [str(t) for t in (tokens.tolist() if isinstance(tokens, np.ndarray) else tokens)]
    vocab = _vocabulary(tokenizer)
    if tokens and all(t in vocab for t in tokens):
        return tokenizer.convert_tokens_to_string(tokens)
    return "".join(tokens)


def answer_contents(frame: pd.DataFrame, tokenizer) -> list[str]:
    """The content of each row's reference answer: the patched next token if it changed, else the clean one."""
    return [token_text(tokens_text(tokenizer, row.ablated_continuation if row.is_different else row.original_continuation))
            for row in frame.itertuples(index=False)]


READING_QUESTION = "At layer {layer}, <vector> ="


def reading_answer(row, target: str, tokenizer) -> str:
    """What a reading row asks the vector for: the counterfactual prompt's own next token (`answer`) or the token
    the vector was taken at (`token`)."""
    if target == "token":
        return token_text(tokens_text(tokenizer, [row.patch_position["counterfact_text_token"]]))
    return token_text(tokens_text(tokenizer, row.counterfactual_continuation))
