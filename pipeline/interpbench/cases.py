"""InterpBench's cases rebuilt offline: compile each RASP program, train the low-level model by SIIT, write the
case in the benchmark's released layout, and read that layout back.

A case folder holds what InterpBench ships: `ll_model_{suffix}.pth` (a TransformerLens state dict),
`ll_model_cfg_{suffix}.pkl` (its config fields), `meta_{suffix}.json` (training args) and `edges.pkl` (the known
circuit: (upstream, downstream) node names in ACDC's hook naming). The suffix is the benchmark's
int(10·iit + 100·behavior + 1000·strict) weight code, so `510` for the usual weights. `load_case` reads any such
folder, the real InterpBench files included.
"""

from __future__ import annotations


import itertools
import json
import pickle
import random
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.lazy import lazy_import
from pipeline.settings import InterpbenchBuild
from pipeline.artifacts import ArtifactError, atomic_dir, write_json, write_table


torch = lazy_import("torch")  # loaded on first use: parsing the workflow does not import torch

# Cases that need more than tracr: GPT-2's config and tokenizer, and a GPU-sized training budget.
NEEDS = {"ioi": "GPT-2's config and tokenizer from the model hub and a GPU-sized SIIT budget (the IOI task's "
                "model is a 6-layer GPT-2-small variant)",
         "ioi_next_token": "GPT-2's config and tokenizer from the model hub and a GPU-sized SIIT budget"}
_NODE = re.compile(r"^(hook_embed|hook_pos_embed|blocks\.(\d+)\.([a-z_.]+?))(?:\[(\d+)\])?$")
_BLOCK_HOOKS = {"hook_resid_pre", "hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_out", "hook_resid_mid",
                "hook_mlp_in", "hook_mlp_out", "hook_resid_post", "attn.hook_q", "attn.hook_k", "attn.hook_v",
                "attn.hook_z", "attn.hook_pattern", "attn.hook_result", "mlp.hook_pre", "mlp.hook_post"}
_HEAD_HOOKS = {"hook_q_input", "hook_k_input", "hook_v_input", "attn.hook_q", "attn.hook_k", "attn.hook_v",
               "attn.hook_z", "attn.hook_result"}


class CaseError(ValueError):
    """A case id, metadata entry or case folder that cannot be used; the message names the case and the file."""


def read_metadata(path: str | Path) -> dict[str, dict[str, Any]]:
    try:
        cases = json.loads(Path(path).read_text())["cases"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CaseError(f"{path}: expected InterpBench's metadata JSON with a 'cases' list ({err})") from err
    return {str(case["case_id"]): case for case in cases}


def plan(metadata_path: str | Path, cases: list[Any]) -> tuple[list[str], dict[str, str]]:
    """(cases to build, {skipped case: what it needs}); an unknown id or an entry without `transformer_cfg` or
    `training_args` is an error naming the case and the metadata file."""
    from pipeline.interpbench.programs import PROGRAMS

    meta = read_metadata(metadata_path)
    build, skipped = [], {}
    for case in map(str, cases):
        if case not in meta:
            raise CaseError(f"interpbench.cases: unknown case {case!r}; {metadata_path} has {sorted(meta)}")
        if case in NEEDS:
            skipped[case] = NEEDS[case]
            continue
        for field in ("transformer_cfg", "training_args", "vocab", "max_seq_len"):
            if not meta[case].get(field):
                raise CaseError(f"{metadata_path}: case {case} has no {field!r}; a tracr case needs it to be built")
        if case not in PROGRAMS:
            raise CaseError(f"interpbench.cases: case {case} has no RASP program in pipeline/interpbench/programs.py")
        build.append(case)
    return build, skipped


def case_key(key: str) -> str | None:
    """The InterpBench case a model key names (`ib19` -> "19"), or None for any other key."""
    match = re.fullmatch(r"ib([0-9]+)", key)
    return match.group(1) if match else None


def weight_suffix(args: dict[str, Any]) -> str:
    """The benchmark's file suffix: int(10·iit + 100·behavior + 1000·strict), e.g. 510 for 1, 1, 0.4."""
    return str(int(args["iit_weight"] * 10 + args["behavior_weight"] * 100 + args["strict_weight"] * 1000))


def inputs(vocab: list[Any], length: int, count: int, seed: int) -> list[list[Any]]:
    """Every sequence of `length` tokens when there are at most `count`, else `count` distinct seeded samples."""
    rng = random.Random(seed)
    if len(vocab) ** length <= count:
        seqs = [list(s) for s in itertools.product(vocab, repeat=length)]
    else:
        seen: set[tuple] = set()
        while len(seen) < count:
            seen.add(tuple(rng.choice(vocab) for _ in range(length)))
        seqs = [list(s) for s in sorted(seen, key=repr)]
    rng.shuffle(seqs)
    return seqs


def circuit_edges(nodes: list[dict[str, Any]], sink: str, last_layer: int) -> list[tuple[str, str]]:
    """The known circuit as (upstream, downstream) node names in ACDC's hook naming: each component's output feeds
    the inputs that read the RASP node it writes (q/k/v inputs per head, MLP input), inputs feed their component,
    and the writer of the program's output feeds the last `hook_resid_post`."""
    writer = {"tokens": ["hook_embed"], "indices": ["hook_pos_embed"]}
    for node in nodes:
        out = (f"blocks.{node['layer']}.attn.hook_result[{node['head']}]" if node["kind"] == "attn"
               else f"blocks.{node['layer']}.hook_mlp_out")
        for label in node["writes"]:
            writer.setdefault(label, []).append(out)
    edges: list[tuple[str, str]] = []

    def before(up: str, into: str) -> bool:
        """Whether `up` writes the residual stream before `into` reads it (a node never feeds itself: tracr's
        selector-width MLP writes the attention output space it reads, to clean it)."""
        if not up.startswith("blocks."):
            return True
        up_layer, into_layer = int(up.split(".")[1]), int(into.split(".")[1])
        if into.endswith("hook_mlp_in"):
            return up_layer < into_layer or (up_layer == into_layer and ".attn." in up)
        return up_layer < into_layer or into.endswith("hook_resid_post")

    def feed(labels, into):
        for label in labels:
            edges.extend((up, into) for up in writer.get(label, []) if (up, into) not in edges and before(up, into))

    for node in nodes:
        layer = node["layer"]
        if node["kind"] == "mlp":
            feed(node["reads"], f"blocks.{layer}.hook_mlp_in")
            edges.append((f"blocks.{layer}.hook_mlp_in", f"blocks.{layer}.hook_mlp_out"))
            continue
        head = node["head"]
        for part in ("q", "k", "v"):
            into = f"blocks.{layer}.hook_{part}_input[{head}]"
            feed(node[f"reads_{part}"], into)
            if node[f"reads_{part}"]:
                edges.append((into, f"blocks.{layer}.attn.hook_result[{head}]"))
    feed([sink], f"blocks.{last_layer}.hook_resid_post")
    return edges


def check_node(name: str, cfg: dict[str, Any]) -> bool:
    """Whether a node name (ACDC naming, `[h]` after head nodes) exists in a model of config `cfg`."""
    match = _NODE.match(name)
    if not match:
        return False
    if match.group(2) is None:
        return match.group(4) is None
    layer, hook, head = int(match.group(2)), match.group(3), match.group(4)
    if layer >= cfg["n_layers"] or hook not in _BLOCK_HOOKS:
        return False
    if hook in _HEAD_HOOKS:
        return head is not None and int(head) < cfg["n_heads"]
    return head is None


def load_case(folder: str | Path) -> dict[str, Any]:
    """A case folder in InterpBench's released layout -> {model, cfg, meta, edges, suffix}. A folder with no model,
    a state dict that does not match its config, or edges naming nodes the model lacks is an error naming the case
    folder and the file."""
    from pipeline.engine.hooked import HookedTransformer, load_state_dict  # here: torch's modules load on use

    folder = Path(folder)
    models = sorted(folder.glob("ll_model_*.pth"))
    if len(models) != 1:
        raise CaseError(f"{folder}: expected one ll_model_{{suffix}}.pth, found {[m.name for m in models]}")
    suffix = models[0].stem.removeprefix("ll_model_")
    cfg_path, meta_path, edges_path = (folder / f"ll_model_cfg_{suffix}.pkl", folder / f"meta_{suffix}.json",
                                       folder / "edges.pkl")
    for path in (cfg_path, edges_path):
        if not path.is_file():
            raise CaseError(f"{folder}: missing {path.name}")
    with cfg_path.open("rb") as fh:
        cfg = pickle.load(fh)
    try:
        model = HookedTransformer(cfg)
        load_state_dict(model, torch.load(models[0], map_location="cpu", weights_only=True), str(models[0]))
    except (ValueError, KeyError) as err:
        raise CaseError(f"{folder}: {err}") from err
    with edges_path.open("rb") as fh:
        edges = [tuple(map(str, edge)) for edge in pickle.load(fh)]
    unknown = sorted({n for edge in edges for n in edge if not check_node(n, cfg)})
    if unknown:
        raise CaseError(f"{edges_path}: names nodes the model ({cfg['n_layers']} layers, {cfg['n_heads']} heads) "
                        f"does not have: {unknown[:6]}")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    model.eval()
    return {"model": model, "cfg": cfg, "meta": meta, "edges": edges, "suffix": suffix}


def _compile_agreement(compiled, program, sequences) -> dict[str, float]:
    """Share of sequences (and of positions) where the compiled model's output equals the RASP program's."""
    from pipeline.interpbench.tracr_torch import BOS, evaluate

    with torch.no_grad():
        got = compiled.decode(compiled.model(compiled.encode([[BOS] + s for s in sequences])))
    seq_ok = pos_ok = positions = 0
    for seq, out in zip(sequences, got):
        want = evaluate(program, seq)
        if compiled.categorical:
            same = [a == b for a, b in zip(out, want)]
        else:
            same = [abs(a - (b if b is not None else 0.0)) < 1e-3 for a, b in zip(out, want)]
        seq_ok += all(same)
        pos_ok += sum(same)
        positions += len(same)
    return {"compile_agreement": seq_ok / len(sequences), "compile_position_agreement": pos_ok / positions}


def build_case(case: str, metadata_path: str | Path, build: InterpbenchBuild, out_dir: str | Path,
               stats_path: str | Path, prov: dict[str, Any]) -> dict[str, Any]:
    """Compile, check, train by SIIT and write one case; returns (and writes to `stats_path`) its measurements."""
    from pipeline.interpbench import siit
    from pipeline.engine.hooked import HookedTransformer
    from pipeline.interpbench.programs import PROGRAMS
    from pipeline.interpbench.tracr_torch import BOS, compile_program

    start = time.perf_counter()
    plan(metadata_path, [case])
    entry = read_metadata(metadata_path)[case]
    tcfg, targs = dict(entry["transformer_cfg"]), dict(entry["training_args"])
    length = int(entry["max_seq_len"]) - 1
    causal = tcfg.get("attention_dir", "causal") == "causal"
    program = PROGRAMS[case]()
    compiled = compile_program(program, list(entry["vocab"]), length, causal=causal)
    for field, ours in (("d_vocab", compiled.model.cfg["d_vocab"]), ("d_vocab_out", compiled.model.cfg["d_vocab_out"])):
        if tcfg[field] != ours:
            raise CaseError(f"{metadata_path}: case {case} has {field} {tcfg[field]}, but the compiled program has "
                            f"{ours}; the program or the vocabulary does not match the benchmark's")
    seed = build.seed
    check_rng = random.Random(seed + 1)
    checks = [[check_rng.choice(entry["vocab"]) for _ in range(length)] for _ in range(build.compile_check)]
    agreement = _compile_agreement(compiled, program, checks)
    compile_seconds = time.perf_counter() - start

    deviations = []
    if compiled.model.cfg["n_layers"] > tcfg["n_layers"]:
        deviations.append(f"n_layers {tcfg['n_layers']} -> {compiled.model.cfg['n_layers']}: the compiled program "
                          f"has {compiled.model.cfg['n_layers']} layers and each node maps to the same layer")
        tcfg["n_layers"] = compiled.model.cfg["n_layers"]
    if compiled.model.cfg["n_heads"] > tcfg["n_heads"]:
        raise CaseError(f"{metadata_path}: case {case}'s compiled program has {compiled.model.cfg['n_heads']} heads "
                        f"per layer, more than transformer_cfg's n_heads {tcfg['n_heads']}")
    seqs = inputs(list(entry["vocab"]), length, build.inputs, seed)
    n_test = max(1, int(len(seqs) * build.test_fraction))
    test, train = seqs[:n_test], seqs[n_test:]
    rng = random.Random(seed + 2)
    if len(train) < build.min_train:   # as the benchmark does for small cases: repeat inputs
        train = train + [rng.choice(train) for _ in range(build.min_train - len(train))]
    x_train = compiled.encode([[BOS] + s for s in train])
    x_test = compiled.encode([[BOS] + s for s in test])

    torch.manual_seed(seed)
    ll = HookedTransformer(tcfg).init_weights(seed)
    circuit = [(n["hook"], n["head"]) for n in compiled.nodes]
    epochs = min(int(targs["epochs"]), build.max_epochs)
    args = siit.SIITArgs(lr=float(targs["lr"]), epochs=epochs, iit_weight=float(targs["iit_weight"]),
                         behavior_weight=float(targs["behavior_weight"]), strict_weight=float(targs["strict_weight"]),
                         atol=float(targs["atol"]), clip_grad_norm=float(targs.get("clip_grad_norm") or 0.0),
                         batch_size=build.batch_size, eval_every=build.eval_every, seed=seed)

    def progress(epoch, metrics):
        print(f"case {case} epoch {epoch}: behavior {metrics['behavior_accuracy']:.3f}, "
              f"IIA min {min(metrics['iia'].values(), default=1.0):.3f}, "
              f"strict min {min(metrics['strict_accuracy'].values(), default=1.0):.3f}", flush=True)

    trained = siit.train(compiled.model, ll, circuit, x_train, x_test, compiled.categorical, args, progress)
    metrics = trained["metrics"]
    edges = circuit_edges(compiled.nodes, sink=compiled.sink, last_layer=tcfg["n_layers"] - 1)
    suffix = weight_suffix(targs)
    with atomic_dir(out_dir) as tmp:
        torch.save(ll.state_dict(), tmp / f"ll_model_{suffix}.pth")
        with (tmp / f"ll_model_cfg_{suffix}.pkl").open("wb") as fh:
            pickle.dump(tcfg, fh)
        (tmp / f"meta_{suffix}.json").write_text(json.dumps({**targs, "epochs": epochs, "use_single_loss": False}))
        with (tmp / "edges.pkl").open("wb") as fh:
            pickle.dump(edges, fh)
    iia, strict = metrics["iia"], metrics["strict_accuracy"]
    stats = {
        "case": case, "status": "built", "task": entry.get("task_description", ""),
        "output": "categorical" if compiled.categorical else "numeric", "attention": tcfg.get("attention_dir"),
        **agreement, "compile_checked": len(checks),
        "circuit_nodes": [siit.node_name(n) for n in circuit], "circuit_size": len(circuit),
        "circuit_edges": len(edges), "ll_nodes": len(siit.all_nodes(ll)),
        "hl_layers": compiled.model.cfg["n_layers"], "ll_layers": tcfg["n_layers"], "d_model": tcfg["d_model"],
        "train_inputs": len(train), "distinct_train_inputs": len(seqs) - n_test, "test_inputs": len(test),
        "behavior_accuracy": metrics["behavior_accuracy"], "iia": iia, "strict_accuracy": strict,
        "iia_min": min(iia.values(), default=1.0), "iia_mean": sum(iia.values()) / max(len(iia), 1),
        "strict_min": min(strict.values(), default=1.0), "strict_mean": sum(strict.values()) / max(len(strict), 1),
        "epochs": trained["epochs"], "max_epochs": epochs, "train_seconds": trained["seconds"],
        "compile_seconds": compile_seconds, "build_seconds": time.perf_counter() - start,
        "deviations": deviations, "suffix": suffix, "provenance": prov,
    }
    low = [name for name, value in (("behavior", stats["behavior_accuracy"]), ("IIA", stats["iia_min"]),
                                    ("strict", stats["strict_min"])) if value < 0.95]
    stats["below_0.95"] = low
    write_json(stats, stats_path)
    return stats


def summarize(stats_paths: list[str | Path], skipped: dict[str, str], out_path: str | Path,
              prov: dict[str, Any]) -> pd.DataFrame:
    """One row per configured case (built or skipped, with what a skipped case needs) into a Parquet table."""
    rows = []
    for path in stats_paths:
        stats = json.loads(Path(path).read_text())
        rows.append({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in stats.items()
                     if k != "provenance"})
    for case, need in skipped.items():
        print(f"interpbench: case {case} skipped: it needs {need}", flush=True)
        rows.append({"case": case, "status": "skipped", "skip_reason": f"needs {need}"})
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise ArtifactError(f"{out_path}: no InterpBench case configured")
    write_table(frame, out_path, prov)
    return frame
