"""The circuits task: the explainer on InterpBench's known circuits.

Labels are component-level patches of the rebuilt cases: "if the output of head h of layer L (or the MLP of
layer L) at position p is replaced by its value on input B, how does the output at position q change?". The
replaced value (the component's output at p on input B, zero-padded to `circuits.width`) reaches the explainer as
a continuous token; the answer is in act_patch's form ("unchanged from X" / "change to Y", X and Y the case's
output labels; numeric cases print the value to two decimals, and a change is one larger than the case's atol).
Every pair of inputs asks about every component once, with a seeded random p, and q = p for half the questions,
else a seeded later position (q >= p under causal attention). Splits: `train` and `test` take disjoint inputs of
`circuits.train_cases`; the evaluation set `heldout_cases` asks the same questions about `circuits.heldout_cases`, cases the explainer never saw.
The target key `ib` names this collection of cases (its folder, work/circuits/target/ib, says the vector width).
Scores: act_patch's change metrics on both sets, and circuit recovery per case: components ranked by how often
the explainer says that patching them changes the output, against the known circuit (ROC AUC), beside the same
ranking from the true labels of the same rows. Controls: the no-vector explainer and a prior that knows only the
component's name and the two positions, learned from the training cases.
"""

from __future__ import annotations


import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.lazy import lazy_import
from pipeline.tasks.circuits_settings import CircuitsConfig, PairsPerCase
from pipeline.artifacts import ArtifactError, provenance, read_table, read_tensors, write_table, write_tensors
from pipeline.explainer.prompts import FORMAT_INSTRUCTION, VECTOR, change_answer, parse_answer
from pipeline.tasks import Examples, ScoreInputs, Stage, Task, register


torch = lazy_import("torch")  # loaded on first use: parsing the workflow does not import torch

TARGET = "ib"
VARIANTS = ("finetuned", "untrained", "no_vector")
EVAL_SETS = ("heldout_cases",)
QUESTION = ("A transformer computes: {task} Input: <<<{tokens}>>>. If the output of {component} at position "
            "{position} is replaced by " + VECTOR + ", how would the output at position {output_position} change?")
LABEL_COLUMNS = ["row_id", "pair_id", "case", "component", "layer", "head", "position", "output_position",
                 "input_tokens", "task", "is_different", "clean_output", "patched_output", "in_circuit"]


def component_text(name: str) -> str:
    """`blocks.1.attn.hook_result[2]` -> "head 2 of layer 1"; `blocks.0.hook_mlp_out` -> "the MLP of layer 0"."""
    from pipeline.interpbench.discovery import split_name

    hook, head = split_name(name)
    layer = int(hook.split(".")[1])
    return f"head {head} of layer {layer}" if head is not None else f"the MLP of layer {layer}"


def _content(value: Any, categorical: bool) -> str:
    return str(value) if categorical else f"{round(float(value), 2) + 0.0:.2f}"   # + 0.0: no "-0.00"


def case_rows(case: str, case_dir: str | Path, metadata_path: str | Path, split: str, sizes: dict[str, int],
              width: int, seed: int) -> tuple[pd.DataFrame, torch.Tensor]:
    """One case's label rows of `split` (sizes[split] input pairs, each asking about every component) and their
    vectors [rows, width]. Train and test inputs are disjoint where the case has enough distinct inputs."""
    from pipeline.interpbench.discovery import circuit_components, compile_case, components, split_name
    from pipeline.interpbench.cases import inputs, load_case
    from pipeline.engine.patching import Patch, run_components, wrap
    from pipeline.interpbench.tracr_torch import BOS

    loaded = load_case(case_dir)
    model, cfg = loaded["model"], loaded["cfg"]
    if cfg["d_model"] > width:
        raise ValueError(f"{case_dir}: d_model {cfg['d_model']} is wider than circuits.width {width}")
    entry, compiled = compile_case(case, metadata_path)
    length = int(entry["max_seq_len"]) - 1
    causal = cfg.get("attention_dir", "causal") == "causal"
    atol = float(loaded["meta"].get("atol", 0.05))
    # One seeded draw of distinct inputs for train and test: train takes the first, test the next ones.
    train, test = 2 * int(sizes["train"]), 2 * int(sizes["test"])
    if split == "heldout_cases":
        chosen = inputs(list(entry["vocab"]), length, 2 * int(sizes["heldout_cases"]), seed)
    else:
        seqs = inputs(list(entry["vocab"]), length, train + test, seed)
        chosen = seqs[:train] if split == "train" else seqs[train:train + test]
    if len(chosen) < 4:
        raise ValueError(f"case {case}: too few distinct inputs for the {split} split ({len(chosen)})")
    x = compiled.encode([[BOS] + s for s in chosen[0::2]])
    source = compiled.encode([[BOS] + s for s in chosen[1::2]])[: len(x)]
    x = x[: len(source)]
    n, positions = len(x), x.shape[1]
    rng = random.Random(f"{seed}:{case}:{split}")
    traced = wrap(model)
    names = components(cfg)
    hooks = sorted({split_name(c)[0] for c in names})
    clean, clean_values = run_components(traced, x, save=hooks)
    _, source_values = run_components(traced, source, save=hooks)
    circuit = circuit_components(loaded["edges"])
    text = [" ".join(str(compiled.vocab[int(t)]) for t in row[1:]) for row in x]
    rows, vectors = [], []
    for name in names:
        hook, head = split_name(name)
        pos = [rng.randrange(1, positions) for _ in range(n)]
        # Half the questions ask about the patched position itself (where an MLP's or a head's write lands
        # first), the others about a seeded later position (any position under bidirectional attention).
        out_pos = [p if rng.random() < 0.5 else rng.randrange(p if causal else 1, positions) for p in pos]
        value = clean_values[hook].clone()
        index = torch.arange(n), torch.tensor(pos)
        if head is None:
            value[index] = source_values[hook][index]
            patched_vectors = source_values[hook][index]
        else:
            value[index[0], index[1], head] = source_values[hook][index[0], index[1], head]
            patched_vectors = source_values[hook][index[0], index[1], head]
        patched, _ = run_components(traced, x, [Patch(hook, head, value[:, :, head] if head is not None else value)])
        rows_q = torch.arange(n), torch.tensor(out_pos)
        before, after = clean[rows_q], patched[rows_q]
        if compiled.categorical:
            b, a = before.argmax(-1), after.argmax(-1)
            changed = (b != a).tolist()
            before_v, after_v = [compiled.outputs[int(i)] for i in b], [compiled.outputs[int(i)] for i in a]
        else:
            changed = ((before[:, 0] - after[:, 0]).abs() > atol).tolist()
            before_v, after_v = before[:, 0].tolist(), after[:, 0].tolist()
        for i in range(n):
            rows.append({"pair_id": f"{case}:{split}:{i}", "case": case, "component": name,
                         "layer": int(hook.split(".")[1]), "head": -1 if head is None else head,
                         "position": pos[i], "output_position": out_pos[i], "input_tokens": text[i],
                         "task": entry.get("task_description", "").strip(), "is_different": bool(changed[i]),
                         "clean_output": _content(before_v[i], compiled.categorical),
                         "patched_output": _content(after_v[i], compiled.categorical),
                         "in_circuit": name in circuit, "categorical": compiled.categorical})
        vectors.append(torch.nn.functional.pad(patched_vectors.float(), (0, width - cfg["d_model"])))
    return pd.DataFrame(rows), torch.cat(vectors)


def build_labels(split: str, cases: list[str], case_dirs: list[str], metadata_path: str | Path,
                 cfg: CircuitsConfig, out_labels, out_vectors, prov: dict[str, Any]) -> pd.DataFrame:
    """The label rows of one split (train / test: the training cases; heldout_cases: the held-out ones)."""
    frames, vectors = [], []
    for case, folder in zip(cases, case_dirs):
        frame, vecs = case_rows(str(case), folder, metadata_path, split, cfg.pairs_per_case.model_dump(), cfg.width, cfg.seed)
        frames.append(frame)
        vectors.append(vecs)
        print(f"circuits {split}: case {case}: {len(frame)} rows, {frame['is_different'].mean():.2f} changed, "
              f"{frame['in_circuit'].mean():.2f} in the circuit", flush=True)
    frame = pd.concat(frames, ignore_index=True)
    frame.insert(0, "row_id", np.arange(len(frame)))
    counts = {"rows": len(frame), "changed": int(frame["is_different"].sum()), "cases": [str(c) for c in cases],
              "changed_by_case": {str(k): float(v) for k, v in frame.groupby("case")["is_different"].mean().items()},
              "changed_in_circuit": float(frame.loc[frame["in_circuit"], "is_different"].mean()),
              "changed_outside_circuit": float(frame.loc[~frame["in_circuit"], "is_different"].mean())}
    prov = provenance(prov, {"split": split}) | {"counts": counts}
    write_table(frame, out_labels, prov)
    write_tensors({"intervention_vector": torch.cat(vectors), "row_id": torch.arange(len(frame))}, out_vectors, prov)
    return frame


def write_target(cases: list[str], width: int, out_dir) -> None:
    """The target folder the shared stages read: which cases, and the width of the vectors."""
    from pipeline.artifacts import atomic_dir

    with atomic_dir(out_dir) as tmp:
        (tmp / "manifest.json").write_text(json.dumps({"source": f"interpbench cases {','.join(map(str, cases))}",
                                                       "hidden_size": int(width), "location": "."}))


def label_paths(target: str, split: str) -> dict[str, str]:
    if target != TARGET:
        raise ValueError(f"circuits: the target is '{TARGET}' (the InterpBench cases of circuits.train_cases and "
                         f"circuits.heldout_cases), not '{target}'")
    return {"labels": f"work/circuits/labels/{target}/{split}.parquet",
            "vectors": f"work/circuits/labels/{target}/{split}.vectors.safetensors"}


def question(row) -> str:
    return QUESTION.format(task=row.task, tokens=row.input_tokens, component=component_text(row.component),
                           position=int(row.position), output_position=int(row.output_position))


def examples(paths: dict[str, str], target_dir) -> Examples:
    frame = read_table(paths["labels"], required=LABEL_COLUMNS)
    tensors = read_tensors(paths["vectors"])
    vectors = tensors["intervention_vector"][torch.tensor(frame["row_id"].to_numpy(dtype=np.int64))]
    if len(vectors) != len(frame):
        raise ArtifactError(f"{paths['vectors']}: {len(vectors)} vectors for {len(frame)} rows of {paths['labels']}")
    rows = list(frame.itertuples(index=False))
    answers = [change_answer(r.is_different, r.patched_output if r.is_different else r.clean_output) for r in rows]
    return Examples(frame, [question(r) for r in rows], answers, vectors.float(), [str(k) for k in frame["row_id"]],
                    frame["pair_id"].astype(str).tolist(), frame["is_different"].astype(bool).to_numpy(),
                    {"case": frame["case"].astype(str).tolist(), "component": frame["component"].tolist(),
                     "position": frame["position"].astype(int).tolist(),
                     "output_position": frame["output_position"].astype(int).tolist(),
                     "in_circuit": frame["in_circuit"].astype(bool).tolist()})


def training_rows(rows: Examples, section: CircuitsConfig, seed: int, target_dir: str | None = None) -> Examples:
    """Every changed row and up to `balance` unchanged rows per changed one (seeded): few patches change the
    output (none outside the circuit), and an explainer trained on the raw split learns to say "unchanged"."""
    balance = section.balance
    if not balance:
        return rows
    changed = np.flatnonzero(rows.labels)
    unchanged = np.flatnonzero(~rows.labels)
    keep = np.random.default_rng(seed).permutation(unchanged)[: int(round(balance * len(changed)))]
    return rows.subset(np.sort(np.concatenate([changed, keep])))


def variant_vectors(variant: str, rows: Examples, seed: int) -> torch.Tensor:
    return torch.zeros_like(rows.vectors) if variant == "no_vector" else rows.vectors


def prior_key(row) -> tuple:
    """What the prior knows: the component's name and the two positions (not the case, the input or the vector)."""
    return str(row.component), int(row.position), int(row.output_position)


def baseline_frames(scored: pd.DataFrame, train_paths: dict[str, str], test_paths, target_dir) -> tuple[dict, dict]:
    """The component-and-position prior and the majority class, learned from the training cases. Their answer
    content is the most frequent one of the key's training rows; only the verdict can be right across cases."""
    from pipeline.explainer.baselines import describe, fit_prior, predict

    train = read_table(train_paths["labels"], required=LABEL_COLUMNS)
    contents = [r.patched_output if r.is_different else r.clean_output for r in train.itertuples(index=False)]
    keys = [prior_key(r) for r in train.itertuples(index=False)]
    changed = train["is_different"].astype(bool).tolist()
    priors = {"structure_prior": fit_prior(keys, changed, contents),
              "majority_class": fit_prior([None] * len(keys), changed, contents)}
    test_keys = [prior_key(r) for r in scored.itertuples(index=False)]
    frames = {}
    for name, prior in priors.items():
        guesses = predict(prior, test_keys if name == "structure_prior" else [None] * len(test_keys))
        frames[name] = scored.assign(variant=name, prediction=[change_answer(g.changed, g.content) for g in guesses])
    return frames, {name: describe(prior)[:50] for name, prior in priors.items()}


def said_changed(frame: pd.DataFrame) -> np.ndarray:
    """1 where an answer says the output changes, 0 where it says unchanged or is invalid."""
    return np.array([1.0 if parse_answer(p).changed else 0.0 for p in frame["prediction"]])


def circuit_recovery(frame: pd.DataFrame, score: np.ndarray) -> dict[str, Any]:
    """Per case: components ranked by the mean of `score` over their rows, against the known circuit (ROC AUC)."""
    from sklearn.metrics import roc_auc_score

    out = {}
    table = frame.assign(score=score).groupby(["case", "component"]).agg(score=("score", "mean"),
                                                                          truth=("in_circuit", "first"))
    for case, part in table.groupby(level=0):
        truth = part["truth"].astype(bool).to_numpy()
        out[str(case)] = (float(roc_auc_score(truth, part["score"])) if 0 < truth.sum() < len(truth) else None)
    return out


def case_f1(frame: pd.DataFrame) -> dict[str, float]:
    """is_changed F1 of each case's rows (the paper's verdict F1: valid answers only; 0 when undefined)."""
    from sklearn.metrics import f1_score

    from pipeline.explainer.metrics import score_rows

    out = {}
    for case, part in frame.groupby("case"):
        rows = score_rows(part["prediction"].tolist(), part["reference"].tolist(), part["is_different"].to_numpy())
        valid = rows[rows["valid"]]
        out[str(case)] = float(f1_score(valid["truth"], valid["said_changed"], zero_division=0)) if len(valid) else 0.0
    return out


def score_frames(frames: dict[str, pd.DataFrame], samples: int, seed: int, inputs: ScoreInputs | None = None) -> dict:
    """Change metrics on held-out inputs of the training cases (the test split) and on the held-out cases (`inputs`'
    evaluation set heldout_cases, with the prior learned from its training labels), and circuit recovery per case
    from the explainer's verdicts, the controls' and the true labels."""
    from pipeline.explainer.metrics import score_variants

    inputs = inputs or ScoreInputs()
    result = score_variants(frames, samples, seed)
    recovery = {"test": {}, "heldout_cases": {}}
    truth = frames["finetuned"]["is_different"].astype(float).to_numpy()
    recovery["test"]["labels"] = circuit_recovery(frames["finetuned"], truth)
    for name, frame in frames.items():
        recovery["test"][name] = circuit_recovery(frame, said_changed(frame))
    held = {v: read_table(path) for v, path in inputs.evals.get("heldout_cases", {}).items() if v in VARIANTS}
    if held and "labels" in inputs.train:   # the training cases' prior, applied to cases it never saw
        held |= baseline_frames(held["finetuned"], inputs.train, None, None)[0]
    if held:
        scored = score_variants(held, samples, seed)
        result["heldout_cases"] = {"metrics": scored["metrics"], "comparisons": scored["comparisons"]}
        recovery["heldout_cases"]["labels"] = circuit_recovery(
            held["finetuned"], held["finetuned"]["is_different"].astype(float).to_numpy())
        for name, frame in held.items():
            recovery["heldout_cases"][name] = circuit_recovery(frame, said_changed(frame))
    result["circuit_recovery"] = recovery
    # Per case and component: how often the fine-tuned explainer says patching it changes the output, and how
    # often it truly does (the report draws these beside the known circuit).
    rates: dict[str, dict[str, dict[str, float]]] = {}
    for frame in [frames["finetuned"]] + ([held["finetuned"]] if "finetuned" in held else []):
        table = frame.assign(said=said_changed(frame)).groupby(["case", "component"])
        for (case, component), part in table:
            rates.setdefault(str(case), {})[component] = {"said_changed": float(part["said"].mean()),
                                                          "changed": float(part["is_different"].mean())}
    result["component_rates"] = rates
    result["per_case_f1"] = {"test": {v: case_f1(frames[v]) for v in frames},
                             "heldout_cases": {v: case_f1(held[v]) for v in held}}
    return result


class Circuits(Task):
    """Whether ablating a node of an InterpBench circuit changes the model's output (ground truth from the circuit)."""

    name, variants, format_instruction, settings = "circuits", VARIANTS, FORMAT_INSTRUCTION, CircuitsConfig
    training_keys = (CircuitsConfig.key("balance"),)
    eval_set_names = EVAL_SETS
    stages = {  # the task's own stages: the function each calls and the settings its result depends on
        "circuits_labels": Stage("pipeline.tasks.circuits:build_labels", (*(
            CircuitsConfig.key(k) for k in ("train_cases", "heldout_cases", "width", "seed")), PairsPerCase)),
        "circuits_target": Stage("pipeline.tasks.circuits:write_target", tuple(
            CircuitsConfig.key(k) for k in ("train_cases", "heldout_cases", "width"))),
    }

    label_paths = staticmethod(label_paths)
    examples = staticmethod(examples)
    training_rows = staticmethod(training_rows)
    variant_vectors = staticmethod(variant_vectors)
    baselines = staticmethod(baseline_frames)

    def score_frames(self, frames, samples, seed, section, inputs):
        return score_frames(frames, samples, seed, inputs)

    def eval_sets(self, section: CircuitsConfig) -> tuple[str, ...]:
        return EVAL_SETS if section.heldout_cases else ()

    def target_dir(self, target: str) -> str:
        return f"work/circuits/target/{target}"


TASK = register(Circuits())
