"""Circuit discovery by activation patching, checked against InterpBench's known circuits.

Nodes: each component (one head's output `blocks.L.attn.hook_result[h]`, one MLP's output `blocks.L.hook_mlp_out`)
is resample-ablated at every position: its output is replaced by its value on another input (each input's
source is another input of the same batch), and the component is scored by how much the model's output moves on
the positions after BOS: mean KL(clean ‖ patched) for categorical cases, mean |Δ| for numeric ones. Edges: the
path from an upstream component's output into one downstream input (a head's q, k or v input, an MLP's input, the
last residual stream that the unembedding reads) is patched alone, by adding the upstream component's change
(its value on the source input minus its clean value) to that one input; with no layer norm the residual stream is
a sum, so this changes exactly that path. Both are scored against the case's `edges.pkl`: ROC AUC over all
components (edges), and precision / recall of the components (edges) that change the output on more than
`found_above` of the positions (categorical: the argmax; numeric: by more than the case's atol). The patching runs
through the workflow's own engine (pipeline.engine.patching, nnsight).
"""

from __future__ import annotations


import json
import random
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from pipeline.settings import InterpbenchPatching
from pipeline.artifacts import write_json
from pipeline.engine.patching import Patch, Traced, run_components, wrap


_NAME = re.compile(r"^(.*?)(?:\[(\d+)\])?$")
FINAL = "hook_resid_post"


def split_name(name: str) -> tuple[str, int | None]:
    """ACDC node name -> (hook point, head index or None): `blocks.1.attn.hook_result[2]` -> (..., 2)."""
    hook, head = _NAME.match(name).groups()
    return hook, None if head is None else int(head)


def components(cfg: dict[str, Any]) -> list[str]:
    """Every head's output and every MLP's output, in execution order."""
    names = []
    for layer in range(cfg["n_layers"]):
        names += [f"blocks.{layer}.attn.hook_result[{h}]" for h in range(cfg["n_heads"])]
        names.append(f"blocks.{layer}.hook_mlp_out")
    return names


def candidate_edges(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (component output, downstream input) path of the residual stream, in ACDC's naming: the embeddings
    and every earlier component into each head's q/k/v input and each MLP's input (which also reads its own layer's
    heads), and everything into the last `hook_resid_post`."""
    writers_before = ["hook_embed", "hook_pos_embed"]
    edges = []
    for layer in range(cfg["n_layers"]):
        heads = [f"blocks.{layer}.attn.hook_result[{h}]" for h in range(cfg["n_heads"])]
        for h in range(cfg["n_heads"]):
            for part in "qkv":
                edges += [(up, f"blocks.{layer}.hook_{part}_input[{h}]") for up in writers_before]
        edges += [(up, f"blocks.{layer}.hook_mlp_in") for up in writers_before + heads]
        writers_before = writers_before + heads + [f"blocks.{layer}.hook_mlp_out"]
    edges += [(up, f"blocks.{cfg['n_layers'] - 1}.{FINAL}") for up in writers_before]
    return edges


def circuit_components(edges: list[tuple[str, str]]) -> set[str]:
    """The components (head and MLP outputs) that the known circuit's edges name."""
    return {n for edge in edges for n in edge if n.endswith("hook_mlp_out") or ".attn.hook_result[" in n}


def effect(clean: torch.Tensor, patched: torch.Tensor, categorical: bool, atol: float) -> tuple[float, float]:
    """(score, change rate) of patched against clean outputs [batch, pos, out] on the positions after BOS."""
    clean, patched = clean[:, 1:].double(), patched[:, 1:].double()
    if categorical:
        log_p, log_q = F.log_softmax(clean, -1), F.log_softmax(patched, -1)
        score = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
        changed = (clean.argmax(-1) != patched.argmax(-1)).double().mean()
    else:
        diff = (clean - patched).abs().amax(-1)
        score, changed = diff.mean(), (diff > atol).double().mean()
    return float(score), float(changed)


def _component_values(traced: Traced, x: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out, saved = run_components(traced, x, save=sorted({split_name(n)[0] for n in names}))
    values = {}
    for name in names:
        hook, head = split_name(name)
        values[name] = saved[hook][:, :, head] if head is not None else saved[hook]
    return out, values


def node_scores(traced: Traced, x: torch.Tensor, source: torch.Tensor, names: list[str], categorical: bool,
                atol: float) -> dict[str, tuple[float, float]]:
    """{component: (score, change rate)} when that component alone takes its value on `source`."""
    clean, _ = run_components(traced, x)
    _, patched_values = _component_values(traced, source, names)
    scores = {}
    for name in names:
        hook, head = split_name(name)
        out, _ = run_components(traced, x, [Patch(hook, head, patched_values[name])])
        scores[name] = effect(clean, out, categorical, atol)
    return scores


def edge_scores(traced: Traced, x: torch.Tensor, source: torch.Tensor, edges: list[tuple[str, str]],
                categorical: bool, atol: float) -> dict[tuple[str, str], tuple[float, float]]:
    """{(upstream, downstream): (score, change rate)} when only that path carries the upstream's source value."""
    ups = sorted({up for up, _ in edges})
    clean, clean_values = _component_values(traced, x, ups)
    _, source_values = _component_values(traced, source, ups)
    scores = {}
    for up, down in edges:
        hook, head = split_name(down)
        delta = source_values[up] - clean_values[up]
        out, _ = run_components(traced, x, [Patch(hook, head, delta, add=True)])
        scores[(up, down)] = effect(clean, out, categorical, atol)
    return scores


def recovery(scores: dict, truth: set, found_above: float) -> dict[str, Any]:
    """ROC AUC of the scores against membership in `truth`, and precision / recall of the found ones."""
    keys = list(scores)
    labels = np.array([k in truth for k in keys])
    values = np.array([scores[k][0] for k in keys])
    found = np.array([scores[k][1] > found_above for k in keys])
    auroc = float(roc_auc_score(labels, values)) if 0 < labels.sum() < len(labels) else None
    hits = int((found & labels).sum())
    return {"auroc": auroc, "precision": hits / int(found.sum()) if found.sum() else None,
            "recall": hits / int(labels.sum()) if labels.sum() else None, "found": int(found.sum()),
            "in_circuit": int(labels.sum()), "candidates": len(keys)}


def compile_case(case: str, metadata_path: str | Path):
    """(the case's metadata entry, its compiled RASP program): the encoder of its inputs and the labels of its
    outputs, under the metadata's attention direction."""
    from pipeline.interpbench.cases import read_metadata
    from pipeline.interpbench.programs import PROGRAMS
    from pipeline.interpbench.tracr_torch import compile_program

    entry = read_metadata(metadata_path)[case]
    causal = entry["transformer_cfg"].get("attention_dir", "causal") == "causal"
    return entry, compile_program(PROGRAMS[case](), list(entry["vocab"]), int(entry["max_seq_len"]) - 1, causal=causal)


def case_inputs(case: str, metadata_path: str | Path, count: int, seed: int):
    """(token ids [count, n_ctx] with BOS first, whether the output is categorical, the compiled program)."""
    from pipeline.interpbench.cases import inputs
    from pipeline.interpbench.tracr_torch import BOS

    entry, compiled = compile_case(case, metadata_path)
    seqs = inputs(list(entry["vocab"]), int(entry["max_seq_len"]) - 1, count, seed)
    return compiled.encode([[BOS] + s for s in seqs]), compiled.categorical, compiled


def derangement(count: int, seed: int) -> torch.Tensor:
    """A permutation with no fixed point: each input's source is another input."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    source = [0] * count
    for i in range(count):
        source[order[i]] = order[(i + 1) % count]
    return torch.tensor(source)


def discover(case: str, case_dir: str | Path, metadata_path: str | Path, patching: InterpbenchPatching,
             out_path: str | Path, prov: dict[str, Any]) -> dict[str, Any]:
    """Node- and edge-level patching of one case, scored against its known circuit, into `out_path`."""
    from pipeline.interpbench.cases import load_case

    start = time.perf_counter()
    loaded = load_case(case_dir)
    cfg, edges = loaded["cfg"], loaded["edges"]
    atol = float(loaded["meta"].get("atol", patching.atol))
    x, categorical, _ = case_inputs(case, metadata_path, patching.inputs, patching.seed)
    if x.shape[1] > cfg["n_ctx"]:
        raise ValueError(f"{case_dir}: inputs of length {x.shape[1]} exceed the model's n_ctx {cfg['n_ctx']}")
    source = x[derangement(len(x), patching.seed)]
    traced = wrap(loaded["model"])
    names = components(cfg)
    nodes = node_scores(traced, x, source, names, categorical, atol)
    node_seconds = time.perf_counter() - start
    candidates = candidate_edges(cfg)
    known = set(edges)
    missing = sorted(e for e in known if e not in set(candidates) and not _inner(e))
    if missing:
        raise ValueError(f"{case_dir}/edges.pkl: edges outside the residual-stream graph: {missing[:4]}")
    edge = edge_scores(traced, x, source, candidates, categorical, atol)
    found_above = patching.found_above
    result = {
        "case": case, "output": "categorical" if categorical else "numeric", "inputs": len(x),
        "score": "mean KL(clean || patched)" if categorical else "mean |change|", "found_above": found_above,
        "atol": atol, "nodes": recovery(nodes, circuit_components(edges), found_above),
        "edges": recovery(edge, known, found_above),
        # Resampling the tokens never moves the position embeddings, so no patch can find their edges.
        "edges_without_position": recovery({k: v for k, v in edge.items() if k[0] != "hook_pos_embed"},
                                           {e for e in known if e[0] != "hook_pos_embed"}, found_above),
        "node_scores": [{"node": n, "score": s, "change_rate": c, "in_circuit": n in circuit_components(edges)}
                        for n, (s, c) in nodes.items()],
        "edge_scores": [{"upstream": u, "downstream": d, "score": s, "change_rate": c, "in_circuit": (u, d) in known}
                        for (u, d), (s, c) in edge.items()],
        "seconds": {"nodes": node_seconds, "total": time.perf_counter() - start},
        "provenance": prov,
    }
    write_json(result, out_path)
    return result


def _inner(edge: tuple[str, str]) -> bool:
    """An input-to-its-own-component edge (`hook_q_input[h]` -> `hook_result[h]`, `hook_mlp_in` -> `hook_mlp_out`):
    part of ACDC's graph, always present with its component, so not a path that patching scores."""
    return "_input[" in edge[0] or edge[0].endswith("hook_mlp_in")


def summarize(paths: list[str | Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        rows.append({"case": result["case"], "output": result["output"],
                     **{f"node_{k}": v for k, v in result["nodes"].items()},
                     **{f"edge_{k}": v for k, v in result["edges"].items()},
                     **{f"edge_nopos_{k}": v for k, v in result["edges_without_position"].items()},
                     "patching_seconds": result["seconds"]["total"]})
    return rows


def circuits_figure(results: list[dict[str, Any]], out_path, explainer: dict[str, dict] | None = None) -> None:
    """One panel per case: layers (rows) x heads and MLP (columns), coloured by the patching score (scaled to the
    case's largest), the known circuit framed, the components patching finds marked with a dot, and those the
    explainer says change the output on at least half of its questions about them marked with a cross."""
    from pipeline.artifacts import pyplot, save_figure

    plt = pyplot()
    columns = 4
    rows = max(1, -(-len(results) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.7 * rows), squeeze=False,
                                gridspec_kw={"hspace": 0.45, "wspace": 0.25})
    for axis in axes.flat[len(results):]:
        axis.axis("off")
    for axis, result in zip(axes.flat, results):
        scores = {n["node"]: n for n in result["node_scores"]}
        layers = 1 + max(int(n.split(".")[1]) for n in scores)
        heads = sum(1 for n in scores if n.startswith("blocks.0.attn"))
        grid = np.zeros((layers, heads + 1))
        top = max((n["score"] for n in scores.values()), default=0.0) or 1.0
        for name, node in scores.items():
            layer = int(name.split(".")[1])
            col = heads if name.endswith("hook_mlp_out") else split_name(name)[1]
            grid[layer, col] = node["score"] / top
            if node["in_circuit"]:
                axis.add_patch(plt.Rectangle((col - 0.5, layer - 0.5), 1, 1, fill=False, lw=2.5, color="black"))
            if node["change_rate"] > result["found_above"]:
                axis.plot(col, layer, "o", color="white", markeredgecolor="black", markersize=6)
            said = (explainer or {}).get(str(result["case"]), {}).get(name)
            if said is not None and said["said_changed"] >= 0.5:
                axis.plot(col, layer, "x", color="blue", markersize=9, markeredgewidth=2)
        axis.imshow(grid, vmin=0, vmax=1, cmap="Reds", aspect="auto")
        axis.set_xticks(range(heads + 1), [f"h{h}" for h in range(heads)] + ["MLP"])
        axis.set_yticks(range(layers), [f"L{layer}" for layer in range(layers)])
        auroc = result["nodes"]["auroc"]
        axis.set_title(f"case {result['case']}: node AUROC {auroc:.2f}" if auroc is not None else
                       f"case {result['case']}", fontsize=9)
    figure.suptitle("Known circuit (frame) vs patching (colour: score; dot: found) vs the explainer (cross: says "
                    "changed on at least half its questions)")
    save_figure(figure, out_path)


def per_case(result_path) -> dict[str, dict[str, Any]]:
    """The explainer's figures of each case from a circuits results file, for results/interpbench/summary.parquet."""
    result = json.loads(Path(result_path).read_text())
    cases: dict[str, dict[str, Any]] = {}
    for split, by_variant in result.get("circuit_recovery", {}).items():
        for variant, by_case in by_variant.items():
            for case, auroc in by_case.items():
                cases.setdefault(case, {})[f"recovery_auroc_{variant}"] = auroc
    for split, by_variant in result.get("per_case_f1", {}).items():
        for variant, by_case in by_variant.items():
            for case, f1 in by_case.items():
                cases.setdefault(case, {})[f"is_changed_f1_{variant}"] = f1
                cases[case]["explainer_set"] = split
    return cases


def write_summary(paths: list[str | Path], out_path, figure_path, prov: dict[str, Any],
                  explainer_result: str | Path | None = None) -> pd.DataFrame:
    """results/interpbench/summary.parquet (one row per case: patching's node and edge recovery and, given a
    circuits results file, the explainer's is_changed F1 and circuit-recovery AUROC on that case) and the report's
    circuit figure."""
    from pipeline.artifacts import write_table

    frame = pd.DataFrame(summarize(paths))
    rates = None
    if explainer_result:
        explainer = pd.DataFrame.from_dict(per_case(explainer_result), orient="index")
        frame = frame.merge(explainer, left_on="case", right_index=True, how="left")
        rates = json.loads(Path(explainer_result).read_text()).get("component_rates")
    write_table(frame, out_path, prov)
    circuits_figure([json.loads(Path(p).read_text()) for p in paths], figure_path, rates)
    print(frame.to_string(), flush=True)
    return frame
