"""Greedy, batched generation of explainer answers (vectors inserted as continuous tokens)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from pipeline.explainer.model import ContinuousTokenExplainer, collate, encode_example
from pipeline.models import input_device


@torch.no_grad()
def generate_answers(explainer: ContinuousTokenExplainer, tokenizer, questions: list[str],
                     vectors: torch.Tensor | None, prompt_format: str, max_new_tokens: int, batch_size: int,
                     desc: str = "generating", vector_layers: list[int] | None = None) -> list[str]:
    device = input_device(explainer.lm)
    wrap = getattr(explainer, "placeholder_wrap", None)
    encoded = [encode_example(tokenizer, q, None, prompt_format, explainer.placeholder_id, wrap=wrap) for q in questions]
    # Similar lengths share a batch, so less padding is computed.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    outputs: list[str] = [""] * len(encoded)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", mininterval=5):
        index = order[start:start + batch_size]
        batch = collate([encoded[i] for i in index], vectors[index] if vectors is not None else None,
                        tokenizer.pad_token_id, device,
                        [vector_layers[i] for i in index] if vector_layers is not None else None)
        generated = explainer.generate(batch["input_ids"], batch["attention_mask"], batch["vectors"],
                                       max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=tokenizer.eos_token_id, vector_layers=batch["vector_layers"])
        for i, ids in zip(index, generated.tolist()):
            outputs[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return outputs
