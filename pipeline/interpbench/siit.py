"""Strict interchange-intervention training (SIIT), as InterpBench trains its low-level models.

A high-level model (the compiled RASP program) and a low-level model share a correspondence: each high-level node
(an MLP, or one head's output) maps to the low-level node at the same layer and head. Each batch takes three
optimiser steps, as the benchmark's `StrictIITModelPair` does with `use_single_loss: false`:
- IIT: resample one high-level node and its low-level image from another input; the patched outputs must agree;
- strict: resample one low-level node outside the circuit; the output must stay the high-level output;
- behaviour: the plain output must match the high-level output.
Cross-entropy against the high-level argmax for categorical cases, MSE for numeric ones, on positions after BOS.
Accuracies: argmax agreement (categorical) or |difference| < atol (numeric), averaged over positions after BOS.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch
import torch.nn.functional as F

from pipeline.engine.hooked import HookedTransformer

Node = tuple[str, "int | None"]   # (hook name, head index or None)


def node_name(node: Node) -> str:
    hook, head = node
    return hook if head is None else f"{hook}[{head}]"


@dataclasses.dataclass
class SIITArgs:
    lr: float
    epochs: int
    iit_weight: float = 1.0
    behavior_weight: float = 1.0
    strict_weight: float = 0.4
    atol: float = 0.05
    clip_grad_norm: float = 1.0
    batch_size: int = 512
    eval_every: int = 5
    seed: int = 0


def all_nodes(model: HookedTransformer) -> list[Node]:
    cfg = model.cfg
    nodes: list[Node] = []
    for layer in range(cfg["n_layers"]):
        nodes += [(f"blocks.{layer}.attn.hook_result", h) for h in range(cfg["n_heads"])]
        nodes.append((f"blocks.{layer}.mlp.hook_post", None))
    return nodes


def _run(model: HookedTransformer, x: torch.Tensor, nodes: list[Node] = (), source: torch.Tensor | None = None):
    """Output on x with each node's activation replaced by its value on `source`."""
    if not nodes:
        return model(x)
    _, cache = model.run_with_cache(source, names={hook for hook, _ in nodes})

    def patch(node):
        hook, head = node

        def fn(out):
            out = out.clone()
            if head is None:
                out[:] = cache[hook]
            else:
                out[:, :, head] = cache[hook][:, :, head]
            return out
        return hook, fn

    return model.run_with_hooks(x, [patch(node) for node in nodes])


class _Objective:
    def __init__(self, categorical: bool, atol: float):
        self.categorical, self.atol = categorical, atol

    def loss(self, ll_out: torch.Tensor, hl_out: torch.Tensor) -> torch.Tensor:
        ll_out, hl_out = ll_out[:, 1:], hl_out[:, 1:]
        if self.categorical:
            return F.cross_entropy(ll_out.reshape(-1, ll_out.shape[-1]), hl_out.argmax(-1).reshape(-1))
        return F.mse_loss(ll_out[..., 0], hl_out[..., 0])

    def accuracy(self, ll_out: torch.Tensor, hl_out: torch.Tensor) -> float:
        ll_out, hl_out = ll_out[:, 1:], hl_out[:, 1:]
        if self.categorical:
            return (ll_out.argmax(-1) == hl_out.argmax(-1)).float().mean().item()
        return ((ll_out[..., 0] - hl_out[..., 0]).abs() < self.atol).float().mean().item()


@torch.no_grad()
def evaluate(hl: HookedTransformer, ll: HookedTransformer, circuit: list[Node], x: torch.Tensor, categorical: bool,
             atol: float) -> dict:
    """Behaviour accuracy, interchange-intervention accuracy per circuit node and strict accuracy per node outside
    the circuit, each ablation taken from the next input of x (rolled by one)."""
    obj = _Objective(categorical, atol)
    source = x.roll(1, 0)
    hl_base = hl(x)
    iia = {node_name(n): obj.accuracy(_run(ll, x, [n], source), _run(hl, x, [n], source)) for n in circuit}
    outside = [n for n in all_nodes(ll) if n not in circuit]
    strict = {node_name(n): obj.accuracy(_run(ll, x, [n], source), hl_base) for n in outside}
    return {"behavior_accuracy": obj.accuracy(ll(x), hl_base), "iia": iia, "strict_accuracy": strict}


def _done(metrics: dict) -> bool:
    return min([metrics["behavior_accuracy"], *metrics["iia"].values(), *metrics["strict_accuracy"].values()]) >= 1.0


def train(hl: HookedTransformer, ll: HookedTransformer, circuit: list[Node], x_train: torch.Tensor,
          x_test: torch.Tensor, categorical: bool, args: SIITArgs,
          progress: Callable[[int, dict], None] | None = None) -> dict:
    """Train `ll` in place; stop early once every accuracy on the test inputs is 1.0. Returns the final test metrics,
    the epochs run, the wall time and the loss history."""
    known = set(all_nodes(ll))
    if any(node not in known for node in circuit):
        raise ValueError(f"circuit nodes {[node_name(n) for n in circuit if n not in known]} are not in the "
                         f"low-level model ({ll.cfg['n_layers']} layers, {ll.cfg['n_heads']} heads)")
    outside = [n for n in all_nodes(ll) if n not in circuit]
    obj = _Objective(categorical, args.atol)
    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.Adam(ll.parameters(), lr=args.lr)
    hl.eval()
    with torch.no_grad():
        hl_train = hl(x_train)
    weights = {"iit": args.iit_weight, "strict": args.strict_weight, "behavior": args.behavior_weight}
    history, start, epoch, metrics = [], time.perf_counter(), 0, None

    def step(loss: torch.Tensor) -> float:
        optimizer.zero_grad()
        loss.backward()
        if args.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(ll.parameters(), args.clip_grad_norm)
        optimizer.step()
        return loss.item()

    for epoch in range(1, args.epochs + 1):
        ll.train()
        order = torch.randperm(len(x_train), generator=generator)
        sources = torch.randperm(len(x_train), generator=generator)
        totals = {"iit": 0.0, "strict": 0.0, "behavior": 0.0}
        batches = 0
        for lo in range(0, len(x_train), args.batch_size):
            base, src = order[lo:lo + args.batch_size], sources[lo:lo + args.batch_size]
            xb, xs = x_train[base], x_train[src]
            if circuit and weights["iit"]:
                node = circuit[int(torch.randint(len(circuit), (1,), generator=generator))]
                with torch.no_grad():
                    target = _run(hl, xb, [node], xs)
                totals["iit"] += step(weights["iit"] * obj.loss(_run(ll, xb, [node], xs), target))
            if outside and weights["strict"]:
                node = outside[int(torch.randint(len(outside), (1,), generator=generator))]
                totals["strict"] += step(weights["strict"] * obj.loss(_run(ll, xb, [node], xs), hl_train[base]))
            if weights["behavior"]:
                totals["behavior"] += step(weights["behavior"] * obj.loss(ll(xb), hl_train[base]))
            batches += 1
        history.append({"epoch": epoch, **{k: v / max(batches, 1) for k, v in totals.items()}})
        if epoch % args.eval_every == 0 or epoch == args.epochs:
            ll.eval()
            metrics = evaluate(hl, ll, circuit, x_test, categorical, args.atol)
            if progress:
                progress(epoch, metrics)
            if _done(metrics):
                break
    ll.eval()
    if metrics is None:
        metrics = evaluate(hl, ll, circuit, x_test, categorical, args.atol)
    return {"metrics": metrics, "epochs": epoch, "seconds": time.perf_counter() - start, "history": history}
