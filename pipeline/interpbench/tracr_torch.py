"""Compile a RASP program with tracr and assemble the weights in torch, without JAX.

`tracr-pypi` compiles RASP to tracr's craft model with numpy alone; only its last step (`compiler/assemble.py`)
imports JAX and haiku, and `tracr.compiler`'s package `__init__` imports that step. `_tracr()` registers the package
without running its `__init__`, so the numpy stages import alone. `assemble` then does tracr's assembly in torch: the
residual space joins the craft model's space with the token, position and output spaces (tracr's basis order);
per head Q = P(left)·W_QK, K = P(right), V = P(OV in)·W_OV, O = P(OV out)ᵀ, each padded to the key size; MLPs from
their two linear maps; ReLU; no biases, no layer norm; a `one` direction in every token's embedding; position 0
(BOS) with no position embedding. The result is a `hooked.HookedTransformer` whose blocks hold tracr's layers, so
circuit nodes carry TransformerLens names.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.engine.hooked import HookedTransformer

BOS, PAD = "BOS", "PAD"


def _tracr():
    """tracr's numpy-only modules, importable without JAX."""
    if "tracr.compiler" not in sys.modules:
        spec = importlib.util.find_spec("tracr")
        if spec is None or spec.origin is None:
            raise ImportError("InterpBench needs tracr: pip install --no-deps tracr-pypi==1.0.0 (see envs/setup.sh)")
        package = types.ModuleType("tracr.compiler")
        package.__path__ = [str(Path(spec.origin).parent / "compiler")]
        sys.modules["tracr.compiler"] = package
    from tracr.compiler import basis_inference, craft_graph_to_model, expr_to_craft_graph, nodes, rasp_to_graph
    from tracr.compiler import validating
    from tracr.craft import bases, transformers, vectorspace_fns
    from tracr.rasp import rasp

    return types.SimpleNamespace(basis_inference=basis_inference, craft_graph_to_model=craft_graph_to_model,
                                 expr_to_craft_graph=expr_to_craft_graph, nodes=nodes, rasp_to_graph=rasp_to_graph,
                                 validating=validating, bases=bases, transformers=transformers,
                                 vectorspace_fns=vectorspace_fns, rasp=rasp)


def rasp_module():
    return _tracr().rasp


@dataclasses.dataclass
class Compiled:
    """A compiled case: the torch model and what is needed to encode inputs, decode outputs and name its circuit."""

    model: HookedTransformer
    vocab: list[Any]                 # token id -> token (BOS and PAD included)
    outputs: list[Any]               # output index -> value (categorical); [label] for a numeric output
    categorical: bool
    nodes: list[dict[str, Any]]      # per tracr block: hook, head, layer, kind, the RASP nodes it writes and reads
    sink: str                        # the RASP node the program outputs

    def encode(self, sequences: list[list[Any]]) -> torch.Tensor:
        index = {token: i for i, token in enumerate(self.vocab)}
        return torch.tensor([[index[token] for token in seq] for seq in sequences])

    def decode(self, output: torch.Tensor) -> list[list[Any]]:
        """Model outputs -> values per position after BOS (categorical: None where no output direction is on)."""
        rows = []
        for row in output[:, 1:]:
            if self.categorical:
                best = row.argmax(-1)
                rows.append([self.outputs[int(i)] if float(v.max()) > 0.5 else None for i, v in zip(best, row)])
            else:
                rows.append([float(v) for v in row[:, 0]])
        return rows


def _layer_slots(blocks, transformers) -> list[tuple[int, str]]:
    """tracr's placement of craft blocks into (layer, attn|mlp) slots: each block takes the next slot of its kind."""
    slots, layer, last = [], 0, None
    for block in blocks:
        kind = "mlp" if isinstance(block, transformers.MLP) else "attn"
        if last is not None and (kind == last or kind == "attn"):
            layer += 1
        slots.append((layer, kind))
        last = kind
    return slots


def compile_program(program, vocab: list[Any], max_seq_len: int, causal: bool, mlp_exactness: int = 100) -> Compiled:
    """Compile `program` for sequences of up to `max_seq_len` tokens after BOS and assemble it in torch."""
    t = _tracr()
    unsupported = t.validating.static_validate(program)
    if unsupported:
        raise NotImplementedError("unsupported RASP expressions: " + "; ".join(
            f"{u.expr.name}: {u.reason}" for u in unsupported))
    extracted = t.rasp_to_graph.extract_rasp_graph(program)
    graph, sources, sink = extracted.graph, extracted.sources, extracted.sink
    t.basis_inference.infer_bases(graph, sink, set(vocab), max_seq_len)
    t.expr_to_craft_graph.add_craft_components_to_rasp_graph(
        graph, bos_dir=t.bases.BasisDirection(t.rasp.tokens.label, BOS), mlp_exactness=mlp_exactness)
    craft = t.craft_graph_to_model.craft_graph_to_model(graph, sources)

    tokens_space = t.bases.VectorSpaceWithBasis.from_values(
        t.rasp.tokens.label, graph.nodes[t.rasp.tokens.label][t.nodes.VALUE_SET].union({BOS, PAD}))
    indices_space = t.bases.VectorSpaceWithBasis.from_values(t.rasp.indices.label, range(max_seq_len))
    output_space = t.bases.VectorSpaceWithBasis(sink[t.nodes.OUTPUT_BASIS])
    categorical = t.rasp.is_categorical(sink[t.nodes.EXPR])
    residual = t.bases.join_vector_spaces(craft.residual_space, tokens_space, indices_space, output_space)

    def project(space) -> np.ndarray:
        return t.vectorspace_fns.project(residual, space).matrix

    heads = [list(b.as_multi().heads()) for b in craft.blocks if not isinstance(b, t.transformers.MLP)]
    mlps = [b for b in craft.blocks if isinstance(b, t.transformers.MLP)]
    slots = _layer_slots(craft.blocks, t.transformers)
    all_heads = sum(heads, [])
    d_head = max((max(h.w_qk.matrix.shape) for h in all_heads), default=1)
    cfg = {"n_layers": slots[-1][0] + 1 if slots else 1, "d_model": residual.num_dims,
           "n_heads": max((len(h) for h in heads), default=1), "d_head": d_head,
           "d_mlp": max((m.fst.output_space.num_dims for m in mlps), default=1), "d_vocab": tokens_space.num_dims,
           "d_vocab_out": output_space.num_dims, "n_ctx": max_seq_len + 1, "act_fn": "relu",
           "attention_dir": "causal" if causal else "bidirectional", "use_attn_scale": True,
           "normalization_type": None, "model_name": "tracr"}
    model = HookedTransformer(cfg)
    sd = {k: v.clone() for k, v in model.state_dict().items()}

    embed = t.vectorspace_fns.project(tokens_space, residual).matrix
    one = t.bases.BasisDirection("one")
    if one in residual:
        embed = embed + residual.vector_from_basis_direction(one).magnitudes[None, :]
    sd["embed.W_E"] = torch.tensor(embed, dtype=torch.float32)
    sd["pos_embed.W_pos"] = torch.tensor(np.concatenate(
        [np.zeros((1, residual.num_dims)), t.vectorspace_fns.project(indices_space, residual).matrix]),
                                         dtype=torch.float32)
    sd["unembed.W_U"] = torch.tensor(t.vectorspace_fns.project(residual, output_space).matrix, dtype=torch.float32)

    nodes = []
    for block, (layer, kind) in zip(craft.blocks, slots):
        prefix = f"blocks.{layer}"
        if kind == "mlp":
            hidden = block.fst.output_space.num_dims
            sd[f"{prefix}.mlp.W_in"][:, :hidden] = torch.tensor(project(block.fst.input_space) @ block.fst.matrix)
            sd[f"{prefix}.mlp.W_out"][:hidden, :] = torch.tensor(block.snd.matrix @ project(block.snd.output_space).T)
            nodes.append({"layer": layer, "kind": "mlp", "head": None, "hook": f"{prefix}.mlp.hook_post",
                          "writes": _labels(block.snd.output_space), "reads": _labels(block.fst.input_space)})
            continue
        for h, head in enumerate(block.as_multi().heads()):
            k = head.w_qk.matrix.shape[1]
            sd[f"{prefix}.attn.W_Q"][h, :, :k] = torch.tensor(project(head.w_qk.left_space) @ head.w_qk.matrix)
            sd[f"{prefix}.attn.W_K"][h, :, :k] = torch.tensor(project(head.w_qk.right_space))
            v = head.w_ov.matrix.shape[1]
            sd[f"{prefix}.attn.W_V"][h, :, :v] = torch.tensor(project(head.w_ov.input_space) @ head.w_ov.matrix)
            sd[f"{prefix}.attn.W_O"][h, :v, :] = torch.tensor(project(head.w_ov.output_space).T)
            nodes.append({"layer": layer, "kind": "attn", "head": h, "hook": f"{prefix}.attn.hook_result",
                          "writes": _labels(head.w_ov.output_space),
                          "reads_q": _labels(head.w_qk.left_space), "reads_k": _labels(head.w_qk.right_space),
                          "reads_v": _labels(head.w_ov.input_space)})
    model.load_state_dict(sd)
    model.eval()
    outputs = [d.value for d in output_space.basis] if categorical else [sink[t.nodes.ID]]
    return Compiled(model=model, vocab=[d.value for d in tokens_space.basis], outputs=outputs,
                    categorical=categorical, nodes=nodes, sink=sink[t.nodes.ID])


def _labels(space) -> list[str]:
    """The RASP nodes a vector space carries, without the `one` direction and the BOS token (InterpBench's rule)."""
    return sorted({d.name for d in space.basis if d.name != "one" and not (d.name == "tokens" and d.value == BOS)})


def evaluate(program, sequence: list[Any]) -> list[Any]:
    """The RASP program's own output on one sequence (without BOS)."""
    return rasp_module().evaluate(program, sequence)
