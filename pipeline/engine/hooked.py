"""A small transformer with TransformerLens's parameter and hook names, for InterpBench's models.

InterpBench ships TransformerLens `HookedTransformer` state dicts and names circuit nodes by TransformerLens hook
names (`blocks.1.attn.hook_result` with a head index, `blocks.0.mlp.hook_post`, `hook_embed`). This module is the
subset those models use: learned token and position embeddings, attention with per-head split inputs
(`use_split_qkv_input`) and per-head results (`use_attn_result`), an MLP, no layer norm, causal or bidirectional
attention. It is a few dozen lines where TransformerLens would add plotly, datasets pins and a second model
framework. Hook points are `nn.Identity` modules, so PyTorch forward hooks (and nnsight) reach every node.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable

import torch
from torch import nn
import torch.nn.functional as F

# The config fields a model needs; everything else in a TransformerLens config is carried along untouched.
REQUIRED = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "d_vocab_out", "n_ctx", "act_fn")
# TransformerLens state dicts also hold these buffers; they carry no learned values.
BUFFERS = ("attn.mask", "attn.IGNORE")


class HookPoint(nn.Identity):
    """A named place in the forward pass; forward hooks on it read or replace the activation."""


class Attention(nn.Module):
    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        h, d, k = cfg["n_heads"], cfg["d_model"], cfg["d_head"]
        self.W_Q, self.W_K, self.W_V = (nn.Parameter(torch.zeros(h, d, k)) for _ in range(3))
        self.W_O = nn.Parameter(torch.zeros(h, k, d))
        self.b_Q, self.b_K, self.b_V = (nn.Parameter(torch.zeros(h, k)) for _ in range(3))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.causal = cfg.get("attention_dir", "causal") == "causal"
        self.scale = math.sqrt(k) if cfg.get("use_attn_scale", True) else 1.0
        for name in ("hook_q", "hook_k", "hook_v", "hook_pattern", "hook_z", "hook_result"):
            setattr(self, name, HookPoint())

    def forward(self, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        # q_in, k_in, v_in: [batch, pos, head, d_model]
        q = self.hook_q(torch.einsum("bphd,hdk->bphk", q_in, self.W_Q) + self.b_Q)
        k = self.hook_k(torch.einsum("bphd,hdk->bphk", k_in, self.W_K) + self.b_K)
        v = self.hook_v(torch.einsum("bphd,hdk->bphk", v_in, self.W_V) + self.b_V)
        scores = torch.einsum("bqhk,bshk->bhqs", q, k) / self.scale
        if self.causal:
            n = scores.shape[-1]
            scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=scores.device).tril(), float("-inf"))
        pattern = self.hook_pattern(scores.softmax(-1))
        z = self.hook_z(torch.einsum("bhqs,bshk->bqhk", pattern, v))
        return self.hook_result(torch.einsum("bqhk,hkd->bqhd", z, self.W_O))  # [batch, pos, head, d_model]


class MLP(nn.Module):
    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.W_in = nn.Parameter(torch.zeros(cfg["d_model"], cfg["d_mlp"]))
        self.b_in = nn.Parameter(torch.zeros(cfg["d_mlp"]))
        self.W_out = nn.Parameter(torch.zeros(cfg["d_mlp"], cfg["d_model"]))
        self.b_out = nn.Parameter(torch.zeros(cfg["d_model"]))
        act = cfg["act_fn"]
        if act not in ("relu", "gelu"):
            raise ValueError(f"act_fn: expected relu or gelu, got {act!r}")
        self.act = F.relu if act == "relu" else F.gelu
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        post = self.hook_post(self.act(self.hook_pre(x @ self.W_in + self.b_in)))
        return post @ self.W_out + self.b_out


class Block(nn.Module):
    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.n_heads = cfg["n_heads"]
        self.attn, self.mlp = Attention(cfg), MLP(cfg)
        for name in ("hook_resid_pre", "hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_out",
                     "hook_resid_mid", "hook_mlp_in", "hook_mlp_out", "hook_resid_post"):
            setattr(self, name, HookPoint())

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        # Each input is its own tensor, as TransformerLens makes them, so a hook that edits one in place (an
        # edge patch) changes only that input, not the residual stream or the other heads' inputs.
        per_head = lambda: resid.unsqueeze(2).repeat(1, 1, self.n_heads, 1)  # noqa: E731
        result = self.attn(self.hook_q_input(per_head()), self.hook_k_input(per_head()), self.hook_v_input(per_head()))
        resid = self.hook_resid_mid(resid + self.hook_attn_out(result.sum(2) + self.attn.b_O))
        return self.hook_resid_post(resid + self.hook_mlp_out(self.mlp(self.hook_mlp_in(resid.clone()))))


class HookedTransformer(nn.Module):
    """Token ids [batch, pos] -> outputs [batch, pos, d_vocab_out] (logits, or the value of a numeric case)."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        missing = [key for key in REQUIRED if key not in cfg]
        if missing:
            raise ValueError(f"transformer config lacks {missing}")
        if cfg.get("normalization_type") not in (None, "None"):
            raise ValueError(f"normalization_type: only None is supported, got {cfg['normalization_type']!r}")
        self.cfg = dict(cfg)
        self.embed = nn.Module()
        self.embed.W_E = nn.Parameter(torch.zeros(cfg["d_vocab"], cfg["d_model"]))
        self.pos_embed = nn.Module()
        self.pos_embed.W_pos = nn.Parameter(torch.zeros(cfg["n_ctx"], cfg["d_model"]))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg["n_layers"]))
        self.unembed = nn.Module()
        self.unembed.W_U = nn.Parameter(torch.zeros(cfg["d_model"], cfg["d_vocab_out"]))
        self.unembed.b_U = nn.Parameter(torch.zeros(cfg["d_vocab_out"]))
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()

    def init_weights(self, seed: int) -> "HookedTransformer":
        """TransformerLens's GPT-2 initialisation: weights ~ N(0, initializer_range), biases zero."""
        std = self.cfg.get("initializer_range") or 0.8 / math.sqrt(self.cfg["d_model"])
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.split(".")[-1].startswith("W_"):
                    param.copy_(torch.randn(param.shape, generator=generator) * std)
                else:
                    param.zero_()
        return self

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        resid = self.hook_embed(self.embed.W_E[tokens]) + self.hook_pos_embed(self.pos_embed.W_pos[positions])
        for block in self.blocks:
            resid = block(resid)
        return resid @ self.unembed.W_U + self.unembed.b_U

    def hook_names(self) -> list[str]:
        return [name for name, module in self.named_modules() if isinstance(module, HookPoint)]

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str, Callable[[torch.Tensor], torch.Tensor | None]]]):
        """Within the block, each named hook point's output passes through its function (None keeps it)."""
        modules = dict(self.named_modules())
        handles = []
        try:
            for name, fn in fwd_hooks:
                if not isinstance(modules.get(name), HookPoint):
                    raise KeyError(f"no hook point {name!r} in this model")
                handles.append(modules[name].register_forward_hook(lambda _m, _i, out, fn=fn: fn(out)))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks) -> torch.Tensor:
        with self.hooks(fwd_hooks):
            return self(tokens)

    def run_with_cache(self, tokens: torch.Tensor, names: Iterable[str] | None = None):
        """(output, {hook name: activation}) for the named hook points (all of them when names is None)."""
        cache: dict[str, torch.Tensor] = {}

        def keep(name):
            def fn(out):
                cache[name] = out
            return fn

        with self.hooks((name, keep(name)) for name in (self.hook_names() if names is None else names)):
            return self(tokens), cache


def load_state_dict(model: HookedTransformer, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a TransformerLens state dict, ignoring its mask buffers; a missing, extra or misshaped weight is an
    error naming `source`."""
    state = {key: value for key, value in state.items() if not key.endswith(BUFFERS)}
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [f"{key} {tuple(state[key].shape)} != {tuple(own[key].shape)}"
             for key in own if key in state and state[key].shape != own[key].shape]
    if missing or extra or wrong:
        raise ValueError(f"{source}: the state dict does not match its config "
                         f"(missing {missing[:4]}, unexpected {extra[:4]}, shapes {wrong[:4]})")
    model.load_state_dict(state)
