"""The batched activation-patching engine: the only module that uses nnsight.

`capture_states` runs source prompts once, keeps chosen layers' outputs at chosen tokens and
the greedy next token. `patched_next_tokens` runs a batch of prompts where every row may write
one vector (the intervention, as the paper's published tables define it) into its own token
position at every layer of its own set of layers, and returns the greedy next token of every
row; rows with no patch give the clean answer. One forward pass serves many pairs and windows.
"""

from __future__ import annotations

from typing import Sequence

import torch
from nnsight import NNsight
from tqdm.auto import tqdm

from pipeline.models import input_device


def encode(tokenizer, texts: Sequence[str], add_special_tokens: bool = True) -> list[dict]:
    """Token ids and character offsets of each text (unpadded)."""
    encoded = tokenizer(list(texts), add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return [{"input_ids": ids, "offsets": [tuple(o) for o in offs]}
            for ids, offs in zip(encoded["input_ids"], encoded["offset_mapping"])]


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Left-padded ids, attention mask, and each row's pad length (add it to a token index)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    shifts = []
    for row, seq in enumerate(sequences):
        shift = width - len(seq)
        ids[row, shift:] = torch.tensor(seq, dtype=torch.long)
        mask[row, shift:] = 1
        shifts.append(shift)
    return ids.to(device), mask.to(device), shifts


def _batches(count: int, size: int, desc: str | None):
    starts = range(0, count, size)
    return tqdm(starts, desc=desc, unit="batch", mininterval=5) if desc else starts


@torch.no_grad()
def greedy_next_tokens(model, tokenizer, prompts, batch_size: int = 64, desc: str | None = None) -> list[str]:
    """Decoded greedy next token of each rendered prompt (plain forward, no patch)."""
    device = input_device(model)
    answers: list[str] = []
    for start in _batches(len(prompts), batch_size, desc):
        chunk = prompts[start:start + batch_size]
        encoded = encode(tokenizer, [p.text for p in chunk], chunk[0].add_special_tokens)
        ids, mask, _ = pad_left([e["input_ids"] for e in encoded], tokenizer.pad_token_id, device)
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
        answers.extend(tokenizer.decode([t]) for t in logits.argmax(-1).tolist())
    return answers


def wrap(model) -> NNsight:
    return NNsight(model)


@torch.no_grad()
def capture_states(traced: NNsight, layers: Sequence[int], ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor,
                   positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs of `layers` at (rows[i], positions[i]), a tensor [len(rows), len(layers), d], and each
    prompt's greedy next-token id."""
    saved = []
    with traced.trace(input_ids=ids, attention_mask=mask, logits_to_keep=1):
        for layer in sorted(set(layers)):  # module accesses follow execution order
            saved.append((layer, traced.model.layers[layer].output[rows, positions].save()))
        next_ids = traced.output.logits[:, -1].argmax(-1).save()
    by_layer = {layer: value.detach() for layer, value in saved}
    return torch.stack([by_layer[layer] for layer in layers], dim=1), next_ids.detach()


@torch.no_grad()
def patched_next_tokens(traced: NNsight, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                        layer_mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Greedy next-token ids when row b's output at positions[b] is replaced by the one vector values[b]
    at every layer k with layer_mask[b, k]; rows without any patch run clean."""
    num_layers = layer_mask.shape[1]
    with traced.trace(input_ids=ids, attention_mask=mask, logits_to_keep=1):
        for layer in range(num_layers):
            rows = layer_mask[:, layer].nonzero().squeeze(-1)
            if rows.numel():
                output = traced.model.layers[layer].output
                output[rows, positions[rows]] = values[rows].to(output.dtype)
        next_ids = traced.output.logits[:, -1].argmax(-1).save()
    return next_ids.detach()
