"""The batched activation-patching engine: the only module that uses nnsight.

`capture_states` runs source prompts once, keeps chosen layers' outputs at chosen tokens and
the greedy next token. `patched_next_tokens` runs a batch of prompts where every row may write
one vector (the intervention, as the paper's published tables define it) into its own token
position at every layer of its own set of layers, and returns the greedy next token of every
row; rows with no patch give the clean answer. One forward pass serves many pairs and windows.

`clean_prefix` and `patched_suffix_next_tokens` do the same without repeating the clean run's work: under
causal attention every column before a row's patched token is the clean run's at every layer, so a patched
row starts from the clean run's keys and values (a transformers cache) and computes only the columns from
its batch's first patched token on. Greedy tokens equal the full patched forward's (logits to about 1e-5).

A target adapter says how the engine reaches a model: `HFDecoder` (a Hugging Face decoder LM: layers at
`model.layers`, logits kept for the last position) or `HookedTarget` (pipeline.engine.hooked's TransformerLens-style
models: layers are `blocks`, components are hook points by name). `wrap` picks one, so both kinds go through
the same functions. `run_components` is the component-level form for hooked models: save named hook points,
replace (or add to) a component's output with another input's, return every position's output.
"""

from __future__ import annotations

from dataclasses import dataclass
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


class HFDecoder:
    """A Hugging Face decoder LM: decoder layers at `model.layers`, logits computed for the last position only."""

    def __init__(self, model):
        config = getattr(model, "config", None)
        text = getattr(config, "text_config", None) or config
        self.depth, self.width = text.num_hidden_layers, text.hidden_size

    def inputs(self, ids: torch.Tensor, mask: torch.Tensor | None) -> dict:
        return {"input_ids": ids, "attention_mask": mask, "logits_to_keep": 1}

    def layer(self, traced: NNsight, index: int):
        return traced.model.layers[index]

    def next_logits(self, traced: NNsight):
        return traced.output.logits[:, -1]

    def suffix_inputs(self, ids: torch.Tensor, mask: torch.Tensor, cache, start: int) -> dict:
        """Columns `start`.. of `ids` on top of `cache` (the clean keys and values of the columns before)."""
        return {"input_ids": ids[:, start:], "attention_mask": mask, "past_key_values": cache, "logits_to_keep": 1,
                "cache_position": torch.arange(start, ids.shape[1], device=ids.device)}


class HookedTarget:
    """pipeline.engine.hooked's TransformerLens-style model: layers are `blocks`, components are hook points by name
    (`blocks.1.attn.hook_result`, `blocks.0.hook_mlp_out`, ...). It has no padding: every row has the same length."""

    # The order in which a block runs its hook points (nnsight must reach modules in execution order).
    BLOCK_ORDER = ("hook_resid_pre", "hook_q_input", "hook_k_input", "hook_v_input", "attn.hook_q", "attn.hook_k",
                   "attn.hook_v", "attn.hook_pattern", "attn.hook_z", "attn.hook_result", "hook_attn_out",
                   "hook_resid_mid", "hook_mlp_in", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out",
                   "hook_resid_post")

    def __init__(self, model):
        self.depth, self.width = model.cfg["n_layers"], model.cfg["d_model"]

    def inputs(self, ids: torch.Tensor, mask: torch.Tensor | None) -> dict:
        if mask is not None and not bool(mask.all()):
            raise ValueError("a TransformerLens-style target takes no padding: give rows of equal length")
        return {"tokens": ids}

    def layer(self, traced: NNsight, index: int):
        return traced.blocks[index]

    def next_logits(self, traced: NNsight):
        return traced.output[:, -1]

    def module(self, traced: NNsight, hook: str):
        envoy = traced
        for part in hook.split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy

    def rank(self, hook: str) -> tuple:
        """Execution order of a hook point: embeddings first, then block by block in BLOCK_ORDER."""
        if not hook.startswith("blocks."):
            return (-1, ("hook_embed", "hook_pos_embed").index(hook))
        _, layer, rest = hook.split(".", 2)
        return (int(layer), self.BLOCK_ORDER.index(rest))


@dataclass
class Traced:
    """A model wrapped for patching: the nnsight wrapper and the adapter that finds its parts."""

    nn: NNsight
    target: HFDecoder | HookedTarget
    model: torch.nn.Module  # the wrapped model itself, for plain forwards


def wrap(model) -> Traced:
    from pipeline.engine.hooked import HookedTransformer

    target = HookedTarget(model) if isinstance(model, HookedTransformer) else HFDecoder(model)
    return Traced(NNsight(model), target, model)


@torch.no_grad()
def capture_states(traced: Traced, layers: Sequence[int], ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor,
                   positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs of `layers` at (rows[i], positions[i]), a tensor [len(rows), len(layers), d], and each
    prompt's greedy next-token id."""
    saved, nn, target = [], traced.nn, traced.target
    with nn.trace(**target.inputs(ids, mask)):
        for layer in sorted(set(layers)):  # module accesses follow execution order
            saved.append((layer, target.layer(nn, layer).output[rows, positions].save()))
        next_ids = target.next_logits(nn).argmax(-1).save()
    by_layer = {layer: value.detach() for layer, value in saved}
    return torch.stack([by_layer[layer] for layer in layers], dim=1), next_ids.detach()


@torch.no_grad()
def patched_next_tokens(traced: Traced, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                        layer_mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Greedy next-token ids when row b's output at positions[b] is replaced by the one vector values[b]
    at every layer k with layer_mask[b, k]; rows without any patch run clean."""
    return _patched_trace(traced, traced.target.inputs(ids, mask), positions, layer_mask, values)


def _patched_trace(traced: Traced, inputs: dict, positions: torch.Tensor, layer_mask: torch.Tensor,
                   values: torch.Tensor) -> torch.Tensor:
    """One traced forward of `inputs` writing values[b] at column positions[b] of every layer in layer_mask[b];
    the greedy next-token ids."""
    nn, target = traced.nn, traced.target
    with nn.trace(**inputs):
        for layer in range(layer_mask.shape[1]):
            rows = layer_mask[:, layer].nonzero().squeeze(-1)
            if rows.numel():
                output = target.layer(nn, layer).output
                output[rows, positions[rows]] = values[rows].to(output.dtype)
        next_ids = target.next_logits(nn).argmax(-1).save()
    return next_ids.detach()


@dataclass
class Prefix:
    """A clean batch run once: its inputs, greedy next-token ids and every layer's keys and values."""

    ids: torch.Tensor
    mask: torch.Tensor
    next_ids: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values [rows, kv heads, columns, head dim]


@torch.no_grad()
def clean_prefix(traced: Traced, ids: torch.Tensor, mask: torch.Tensor) -> Prefix:
    """Run a left-padded batch clean, keeping the cache the patched rows start from."""
    output = traced.model(**traced.target.inputs(ids, mask), use_cache=True)
    kv = [(layer.keys, layer.values) for layer in output.past_key_values.layers]
    return Prefix(ids, mask, output.logits[:, -1].argmax(-1), kv)


@torch.no_grad()
def patched_suffix_next_tokens(traced: Traced, prefix: Prefix, rows: torch.Tensor, positions: torch.Tensor,
                               layer_mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`patched_next_tokens` for copies of the prefix's rows (`rows[b]` is the clean row patched row b
    starts from), computing only the columns from min(positions) on."""
    from transformers import DynamicCache

    start = int(positions.min())
    if start < 1:
        raise ValueError("a suffix run needs at least one clean column before the first patched token")
    cache = DynamicCache(ddp_cache_data=[(k[rows, :, :start], v[rows, :, :start]) for k, v in prefix.kv],
                         config=traced.model.config)
    inputs = traced.target.suffix_inputs(prefix.ids[rows], prefix.mask[rows], cache, start)
    return _patched_trace(traced, inputs, positions - start, layer_mask, values)


@dataclass(frozen=True)
class Patch:
    """Replace (or, with add=True, add to) a hook point's output: the head slice `head` of a per-head hook, or
    the whole output where head is None. `value` has the hook output's shape (without the head axis for a head)."""

    hook: str
    head: int | None
    value: torch.Tensor
    add: bool = False


@torch.no_grad()
def run_components(traced: Traced, ids: torch.Tensor, patches: Sequence[Patch] = (),
                   save: Sequence[str] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Every position's output with `patches` applied, and the (patched-run) outputs of the hook points in `save`."""
    nn, target = traced.nn, traced.target
    by_hook: dict[str, list[Patch]] = {}
    for patch in patches:
        by_hook.setdefault(patch.hook, []).append(patch)
    saved = {}
    with nn.trace(**target.inputs(ids, None)):
        for hook in sorted(set(by_hook) | set(save), key=target.rank):
            output = target.module(nn, hook).output
            for patch in by_hook.get(hook, ()):
                where = (slice(None), slice(None), patch.head) if patch.head is not None else (...,)
                if patch.add:
                    output[where] += patch.value
                else:
                    output[where] = patch.value
            if hook in save:
                saved[hook] = output.save()
        out = nn.output.save()
    return out.detach(), {hook: value.detach() for hook, value in saved.items()}
