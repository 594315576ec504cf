"""What a run will cost before it runs: each act_patch or input_ablation job's FLOPs, peak memory and time on a named
device, from the models' shapes (their config.json, or the published shapes of the paper's models), the settings'
counts (the labels' or questions' recorded counts where they exist) and the device's peak rate times an assumed
utilisation.

    python -m pipeline.plan --configfile config.paper.yaml --run llama_llama --device h100 --gpus 2

The figures are estimates with their assumptions printed beside them: FLOPs count 2 per parameter per token forward
(4 with LoRA's backward through frozen weights, 6 for full fine-tuning), attention's quadratic term and the patching
engine's reuse of the clean prefix left out (so label FLOPs are an upper bound); activation memory follows Korthikanti
et al. 2022 (34 bytes per token per layer per unit of width in bf16 with fused attention, no recomputation), plus the
fp32 logits of the loss."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.tasks import IN_CONTEXT, get_task

# Published shapes (each model's config.json on the hub) of the models the paper's configs name, for planning where
# the weights are not here.
KNOWN_SHAPES = {
    "meta-llama/Llama-3.1-8B": dict(layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128,
                                    vocab=128256, tied=False),
    "meta-llama/Llama-3.1-8B-Instruct": dict(layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8,
                                             head_dim=128, vocab=128256, tied=False),
    "meta-llama/Meta-Llama-3-8B": dict(layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128,
                                       vocab=128256, tied=False),
    "Qwen/Qwen3-8B": dict(layers=36, hidden=4096, intermediate=12288, heads=32, kv_heads=8, head_dim=128,
                          vocab=151936, tied=False, qk_norm=True),
}
# Dense bf16 peak FLOP/s and memory of the devices a plan may name (the vendors' data sheets: H100 SXM, H200 SXM).
DEVICES = {"h100": {"peak": 989e12, "memory_gb": 80, "bandwidth": 3.35e12},
           "h200": {"peak": 989e12, "memory_gb": 141, "bandwidth": 4.8e12}}
# Assumed model FLOP utilisation per kind of job, until measured on the device.
MFU = {"labels": 0.3, "alignment": 0.3, "train": 0.35, "generate": 0.1}
BYTES = {"bf16": 2, "fp32": 4}
CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"
PROJECTIONS = {"q_proj": ("hidden", "q"), "k_proj": ("hidden", "kv"), "v_proj": ("hidden", "kv"),
               "o_proj": ("q", "hidden"), "gate_proj": ("hidden", "intermediate"),
               "up_proj": ("hidden", "intermediate"), "down_proj": ("intermediate", "hidden")}


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's shape."""
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    hidden_norms: int = 2  # norms of the layer's width per layer (Gemma 3: four)
    qk_norm: bool = False  # a norm of the head width on queries and keys (Qwen3, Gemma 3)

    def width(self, what: str) -> int:
        return {"hidden": self.hidden, "intermediate": self.intermediate, "q": self.heads * self.head_dim,
                "kv": self.kv_heads * self.head_dim}[what]

    @property
    def layer_params(self) -> int:
        """One layer's weights: the seven projections and the norms."""
        return (sum(self.width(a) * self.width(b) for a, b in PROJECTIONS.values()) + self.hidden_norms * self.hidden
                + (2 * self.head_dim if self.qk_norm else 0))

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * self.layer_params + embeddings + self.hidden

    @property
    def flop_params(self) -> int:
        """The parameters a token's forward pass multiplies by: every layer's and the output layer (not the input
        embedding, which is a lookup)."""
        return self.layers * self.layer_params + self.vocab * self.hidden

    def lora_params(self, rank: int, targets) -> int:
        """LoRA's trainable parameters: r x (in + out) for each targeted projection of every layer."""
        return self.layers * sum(rank * (self.width(a) + self.width(b))
                                 for name, (a, b) in PROJECTIONS.items() if name in targets)

    def kv_bytes_per_token(self, dtype: str = "bf16") -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * BYTES[dtype]


def shape_of(spec: dict, folder: Path | None = None) -> tuple[Shape, str]:
    """A model's shape and where it came from: its prepared folder's config.json, else the published shape of its hub
    id, else the random model's settings."""
    if folder is not None and (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        config = config.get("text_config", config)
        heads, kind = config["num_attention_heads"], str(config.get("model_type", ""))
        return Shape(folder.name, config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"],
                     heads, config.get("num_key_value_heads") or heads,
                     config.get("head_dim") or config["hidden_size"] // heads, config["vocab_size"],
                     bool(config.get("tie_word_embeddings", True)), 4 if kind.startswith("gemma3") else 2,
                     kind.startswith(("gemma3", "qwen3"))), f"{folder / 'config.json'}"
    path = str(spec.get("path") or "")
    if path in KNOWN_SHAPES:
        return Shape(path, **KNOWN_SHAPES[path]), f"the published config.json of {path}"
    if spec.get("source") == "random":
        hidden, heads = int(spec.get("hidden_size", 64)), int(spec.get("heads", 4))
        return Shape("random", int(spec.get("layers", 4)), hidden, int(spec.get("intermediate_size", 128)), heads,
                     int(spec.get("kv_heads", 2)), hidden // heads, 49152, True), "the random model's settings"
    raise ValueError(f"model {spec}: no config.json in {folder} and no published shape known for it; prepare it "
                     f"(snakemake resources/models/...) or plan with a model of {sorted(KNOWN_SHAPES)}")


@dataclass
class Job:
    name: str
    count: int
    flops: float  # all of the jobs together
    memory_gb: float  # the peak of one job, per device
    kind: str
    note: str = ""
    host_gb: float = 0.0  # host memory one job needs: the models it loads, twice (loading copies), in each of its
    #                       processes (one a device), and 8 GB
    devices: int = 1
    fits_with: dict | None = None  # settings under which a job that does not fit would (setting -> peak GB)

    def hours(self, device: dict, gpus: int = 1) -> float:
        return self.flops / (device["peak"] * MFU[self.kind] * gpus) / 3600


def forward_memory(shape: Shape, rows: int, tokens: int, dtype: str = "bf16") -> float:
    """Bytes of a batched forward without gradients that keeps the last position's logits (the label stage's passes):
    the weights, the KV cache and the fp32 logits."""
    return shape.params * BYTES[dtype] + rows * tokens * shape.kv_bytes_per_token(dtype) + rows * shape.vocab * 4


def generate_memory(shape: Shape, rows: int, tokens: int, dtype: str = "bf16") -> float:
    """Bytes of greedy generation up to `tokens` (prompt and new ones): the weights and the KV cache."""
    return shape.params * BYTES[dtype] + rows * tokens * shape.kv_bytes_per_token(dtype)


def train_memory(explainer: Shape, trainable: int, gpus: int, zero: int, per_device: int, length: int,
                 checkpointing: bool, dtype: str = "bf16") -> float:
    """Bytes one device holds in training: the weights in `dtype` (ZeRO-3 shards them), fp32 master weights and
    Adam's two moments (ZeRO-1 and up shard them), fp32 gradients (ZeRO-2 and up), the activations (Korthikanti et
    al.: 34 bytes per token per layer per unit of width in bf16, twice that in fp32; with recomputation each layer's
    input only, plus one layer's) and four fp32 copies of the logits (the logits, their log-softmax in the loss and
    both gradients; bench/bench_plan.py measures them)."""
    weights = explainer.params * BYTES[dtype] / (gpus if zero >= 3 else 1)
    state = trainable * 12 / (gpus if zero >= 1 else 1) + trainable * 4 / (gpus if zero >= 2 else 1)
    tokens = per_device * length
    scale = BYTES[dtype] / 2
    per_layer = (2 if checkpointing else 34) * scale
    activations = tokens * explainer.hidden * (explainer.layers * per_layer + (34 * scale if checkpointing else 0))
    return weights + state + activations + 4 * tokens * explainer.vocab * 4


def act_patch_plan(settings, explainer: Shape, target: Shape, counts: dict, gpus: int,
                   device_gb: float = float("inf")) -> list[Job]:
    """The jobs of results/act_patch/{explainer}_{target}.json at `settings` (typed), with `counts`: pairs per split,
    prompt and question tokens (measured where the artifacts exist, else the assumptions in `assumed`)."""
    from pipeline.config import shared_section

    task = settings.act_patch
    training, generation = shared_section(settings, "training", "act_patch"), shared_section(
        settings, "generation", "act_patch")
    explainer_cfg = shared_section(settings, "explainer", "act_patch")
    windows = len(task.patch.windows(target.layers))
    types = len(task.patch.token_types)
    pairs = {split: counts[f"pairs_{split}"] for split in ("train", "test")}
    prompt, question, answer = counts["prompt_tokens"], counts["question_tokens"], counts["answer_tokens"]
    rows = {split: pairs[split] * types * windows for split in pairs}
    jobs = []
    # Facts: the target answers every fact once (about two a pair: `counts["facts"]`); pairs: each split's pairs are
    # rendered and both prompts checked with a clean forward.
    host = _gb(4 * target.params) + 8
    forward = _gb(forward_memory(target, task.batch_size, prompt))
    jobs.append(Job("act_patch_facts", 1, 2 * target.flop_params * counts["facts"] * prompt, forward, "labels",
                    f"{counts['facts']} facts", host_gb=host))
    jobs.append(Job("act_patch_pairs", 2, 2 * target.flop_params * 2 * sum(pairs.values()) * prompt, forward, "labels",
                    "one job per split", host_gb=host))
    # Labels: per pair a clean and a counterfactual forward, and one patched forward per token type x window.
    label_tokens = sum(pairs.values()) * (2 + types * windows) * prompt
    jobs.append(Job("act_patch_label_chunk", -(-sum(pairs.values()) // task.chunk_pairs),
                    2 * target.flop_params * label_tokens, forward, "labels", host_gb=host))
    if explainer_cfg.alignment == "fitted":
        tokens = pairs["train"] * prompt
        jobs.append(Job("alignment", 1, 2 * (explainer.flop_params + target.flop_params) * tokens,
                        _gb((explainer.params + target.params) * 2), "alignment",
                        host_gb=_gb(4 * (explainer.params + target.params)) + 8))
    # Training: every training row each epoch (max_examples caps the rows); the map-only baselines on the same rows.
    train_rows = rows["train"] if training.max_examples is None else min(rows["train"], training.max_examples)
    jobs += train_jobs("act_patch", training, explainer, train_rows, question, answer, gpus, device_gb,
                       [b for b in task.baselines if b not in IN_CONTEXT])
    answered = rows["test"] if generation.max_examples is None else min(rows["test"], generation.max_examples)
    jobs.append(generate_job("act_patch", generation, explainer, answered, question, answer,
                             (*get_task("act_patch").variants, *task.baselines)))
    return jobs


def input_ablation_plan(settings, explainer: Shape, target: Shape, counts: dict, gpus: int,
                        device_gb: float = float("inf")) -> list[Job]:
    """The jobs of results/input_ablation/{explainer}_{target}.json: the target answers every question with and
    without its hint (`max_new_tokens` greedy tokens), the explainer trains on the training split's questions and
    answers the test split's in each variant."""
    from pipeline.config import shared_section

    task = settings.input_ablation
    training, generation = (shared_section(settings, head, "input_ablation") for head in ("training", "generation"))
    questions = {split: counts[f"questions_{split}"] for split in ("train", "test")}
    prompt, question, answer = counts["prompt_tokens"], counts["question_tokens"], counts["answer_tokens"]
    tokens = 2 * sum(questions.values()) * (prompt + task.max_new_tokens)  # with and without the hint
    jobs = [Job("input_ablation_labels", 2, 2 * target.flop_params * tokens,
                _gb(generate_memory(target, task.batch_size, prompt + task.max_new_tokens)), "labels",
                "one job per split", host_gb=_gb(4 * target.params) + 8)]
    caps = [cap for cap in (task.max_train_examples, training.max_examples) if cap is not None]
    train_rows = min([questions["train"], *caps])
    jobs += train_jobs("input_ablation", training, explainer, train_rows, question, answer, gpus, device_gb)
    answered = questions["test"] if generation.max_examples is None else min(questions["test"],
                                                                             generation.max_examples)
    jobs.append(generate_job("input_ablation", generation, explainer, answered, question, answer,
                             (*get_task("input_ablation").variants, *task.baselines)))
    return jobs


def train_jobs(task: str, training, explainer: Shape, rows: int, question: int, answer: int, gpus: int,
               device_gb: float, baselines=()) -> list[Job]:
    """The training job of `rows` rows x the epochs (LoRA or full), and one job per map-only baseline on the same
    devices (the explainer frozen: the backward runs through every layer for the activations' gradients, as LoRA's
    does, and trains only the vector's map)."""
    tokens = rows * training.epochs * (question + answer)
    full = training.method == "full"
    trainable = explainer.params if full else explainer.lora_params(training.lora.r, training.lora.target_modules)
    zero = training.deepspeed.zero_stage if training.deepspeed.enabled else 0
    per_device = max(1, training.batch_size // gpus)
    length = min(training.max_length, question + answer)
    checkpointing = training.gradient_checkpointing
    peak = _gb(train_memory(explainer, trainable, gpus, zero, per_device, length, checkpointing))
    fits_with = None
    if peak > 0.9 * device_gb:  # what would make it fit, one setting at a time, then together
        options = {"training.gradient_checkpointing: true": (zero, per_device, True),
                   "training.deepspeed.zero_stage: 3": (3, per_device, checkpointing),
                   f"training.batch_size: {max(1, training.batch_size // 2)}, grad_accum: {2 * training.grad_accum}":
                       (zero, max(1, per_device // 2), checkpointing),
                   "gradient_checkpointing, ZeRO-3 and one row a device a step": (3, 1, True)}
        fits_with = {name: round(_gb(train_memory(explainer, trainable, gpus, *option[:2], length, option[2])), 1)
                     for name, option in options.items()}
    jobs = [Job(f"{task}_train", 1, (6 if full else 4) * explainer.flop_params * tokens, peak, "train",
                f"{rows} rows x {training.epochs:g} epochs, {trainable / 1e6:.0f}M trainable, ZeRO-{zero} on "
                f"{gpus} device(s), {per_device} rows a device a step",
                host_gb=gpus * _gb(4 * explainer.params) + 8, devices=gpus, fits_with=fits_with)]
    if baselines:  # on the training's devices, as their rule asks
        frozen = _gb(train_memory(explainer, explainer.hidden * explainer.hidden, gpus, zero, per_device, length,
                                  checkpointing))
        jobs.append(Job(f"{task}_train_baseline", len(baselines),
                        len(baselines) * 4 * explainer.flop_params * tokens, frozen, "train",
                        f"{', '.join(baselines)}: the explainer frozen, the vector's map trained",
                        host_gb=gpus * _gb(4 * explainer.params) + 8, devices=gpus))
    return jobs


def generate_job(task: str, generation, explainer: Shape, rows: int, question: int, answer: int,
                 variants) -> Job:
    """One generation job per variant over `rows` rows; an in-context variant's prompt holds k solved examples
    (question and answer each) before the question."""
    new = generation.max_new_tokens
    lengths = [(IN_CONTEXT.get(v, 0) + 1) * question + IN_CONTEXT.get(v, 0) * answer + new for v in variants]
    return Job(f"{task}_generate", len(variants), sum(2 * explainer.flop_params * rows * n for n in lengths),
               _gb(generate_memory(explainer, generation.batch_size, max(lengths))), "generate",
               f"{rows} rows each: {', '.join(variants)}", host_gb=_gb(4 * explainer.params) + 8)


def _gb(value: float) -> float:
    return value / 1e9


def measured_counts(workdir: Path, target: str, settings) -> tuple[dict, dict]:
    """Pairs per split and token lengths: the label tables' own where they exist, else from the settings and
    the stated assumptions; and where each came from."""
    from pipeline.artifacts import read_provenance

    task = settings.act_patch
    counts = {"pairs_train": task.pairs.train, "pairs_test": task.pairs.test, "prompt_tokens": 64,
              "question_tokens": 96, "answer_tokens": 16, "facts": 2 * (task.pairs.train + task.pairs.test)}
    source = {k: "settings" for k in ("pairs_train", "pairs_test")} | {
        k: "assumed" for k in ("prompt_tokens", "question_tokens", "answer_tokens")} | {
        "facts": "assumed: two a pair"}
    facts = workdir / "work" / "act_patch" / "facts" / f"{target}.parquet"
    if facts.is_file():
        import pyarrow.parquet as pq

        counts["facts"], source["facts"] = int(pq.ParquetFile(facts).metadata.num_rows), str(facts)
    for split in ("train", "test"):
        path = workdir / "work" / "act_patch" / "labels" / target / f"{split}.parquet"
        if path.is_file():
            recorded = read_provenance(path).get("counts", {})
            if "pairs" in recorded:
                counts[f"pairs_{split}"], source[f"pairs_{split}"] = int(recorded["pairs"]), str(path)
    return counts, source


MMLU_TEST_QUESTIONS = 14_042  # the cais/mmlu test split, the paper's input_ablation data


def input_ablation_counts(workdir: Path, target: str, settings) -> tuple[dict, dict]:
    """Questions per split (the label tables' rows where they exist, else the questions table's, else from the
    settings: the MMLU test split, or countryinfo's relations x max_questions_per_relation, about 250 countries a
    relation where that is null) and the stated token lengths; and where each came from."""
    import pyarrow.parquet as pq

    task = settings.input_ablation
    total = (MMLU_TEST_QUESTIONS if task.source == "mmlu" else
             len(task.relations) * (task.max_questions_per_relation or 250))
    counts = {"questions_train": round(total * (1 - task.test_fraction)), "questions_test":
              round(total * task.test_fraction), "prompt_tokens": 160, "question_tokens": 320, "answer_tokens": 32}
    source = {"questions_train": "settings", "questions_test": "settings"} | {
        k: "assumed" for k in ("prompt_tokens", "question_tokens", "answer_tokens")}
    questions = workdir / "work" / "input_ablation" / "questions.parquet"
    if questions.is_file():
        import pandas as pd

        splits = pd.read_parquet(questions, columns=["split"])["split"].value_counts()
        for split in ("train", "test"):
            counts[f"questions_{split}"], source[f"questions_{split}"] = int(splits.get(split, 0)), str(questions)
    for split in ("train", "test"):
        path = workdir / "work" / "input_ablation" / "labels" / target / f"{split}.parquet"
        if path.is_file():
            counts[f"questions_{split}"] = int(pq.ParquetFile(path).metadata.num_rows)
            source[f"questions_{split}"] = str(path)
    return counts, source


PLANNED_TASKS = {"act_patch": (act_patch_plan, measured_counts), "input_ablation": (input_ablation_plan,
                                                                                   input_ablation_counts)}


def plan(config: dict, run: str, device: str, gpus: int, workdir: Path = Path("."), task: str = "act_patch") -> dict:
    from pipeline.config import typed_settings

    if device not in DEVICES:
        raise ValueError(f"device {device!r}: expected one of {sorted(DEVICES)}")
    settings = typed_settings(config)
    models = dict(config.get("models", {}))
    parts = [(run[:i], run[i + 1:]) for i, c in enumerate(run) if c == "_"]
    named = [(e, t) for e, t in parts if e in models and t in models]
    if not named:
        raise ValueError(f"run {run!r}: expected {{explainer}}_{{target}} of the configured models {sorted(models)}")
    explainer_key, target_key = named[0]
    shapes = {key: shape_of(models[key], workdir / "resources" / "models" / key) for key in (explainer_key, target_key)}
    if task not in PLANNED_TASKS:
        raise ValueError(f"task {task!r}: the plan covers {sorted(PLANNED_TASKS)}")
    plan_of, counts_of = PLANNED_TASKS[task]
    counts, sources = counts_of(workdir, target_key, settings)
    chip = DEVICES[device]
    jobs = plan_of(settings, shapes[explainer_key][0], shapes[target_key][0], counts, gpus, chip["memory_gb"])
    rows = [{"job": j.name, "jobs": j.count, "tflop": j.flops / 1e12, "peak_memory_gb": round(j.memory_gb, 1),
             "fits": j.memory_gb <= 0.9 * chip["memory_gb"], "gpu_hours": j.hours(chip),
             "wall_hours": j.hours(chip, j.devices), "host_gb": round(j.host_gb, 1), "devices": j.devices,
             "fits_with": j.fits_with, "note": j.note} for j in jobs]
    return {"task": task, "run": run, "device": device, "gpus": gpus, "jobs": rows,
            "total": {"gpu_hours": sum(r["gpu_hours"] for r in rows), "tflop": sum(r["tflop"] for r in rows)},
            "shapes": {key: {"params": shape.params, "from": source} for key, (shape, source) in shapes.items()},
            "counts": {key: {"value": counts[key], "from": sources[key]} for key in counts},
            "assumptions": {"mfu": MFU, "peak_flops": chip["peak"]}}


# Rules that run a planned job's work under another name: one job per seed of training.seeds, or per point of the
# training budget (whose training jobs hold a multiple of the rows or epochs: their runtime is not planned here).
SAME_AS = {f"{task}_{stage}_{layout}": f"{task}_{stage}" for task in PLANNED_TASKS for stage in ("train", "generate")
           for layout in ("seeded", "budget")}


def slurm_resources(*planned: dict, margin: float = 1.5) -> dict:
    """The SLURM profile's set-resources for the planned jobs: each job's GPUs, host memory (MB) and runtime
    (minutes: one job's wall time on the device times `margin`, at least 10); over several plans (the runs one
    profile serves) the largest of each; the seeded rules as the rules they repeat."""
    import math

    out: dict = {}
    for plan_ in planned:
        for row in plan_["jobs"]:
            wall = row["wall_hours"] / max(1, row["jobs"])  # one job's: the jobs of a row run apart
            asked = {"gpu": row["devices"], "mem_mb": int(math.ceil(row["host_gb"] * 1000)),
                     "runtime": max(10, int(math.ceil(wall * 60 * margin)))}
            out[row["job"]] = {key: max(value, out.get(row["job"], {}).get(key, 0)) for key, value in asked.items()}
    return out | {seeded: dict(out[rule]) for seeded, rule in SAME_AS.items() if rule in out}


def main(argv: list[str] | None = None) -> int:
    import yaml

    from pipeline.config import deep_merge, validate_config, with_base_config

    parse = argparse.ArgumentParser(prog="python -m pipeline.plan", description=__doc__.split("\n\n")[0])
    parse.add_argument("--configfile", action="append", default=[], help="config files over config.yaml, in order")
    parse.add_argument("--task", default="act_patch", choices=sorted(PLANNED_TASKS))
    parse.add_argument("--run", required=True, action="append",
                       help="{explainer}_{target} of the task; again for more runs (--slurm: the largest request of "
                            "each job over them)")
    parse.add_argument("--device", default="h100", choices=sorted(DEVICES))
    parse.add_argument("--gpus", type=int, default=1, help="devices the training job spreads over (ZeRO)")
    parse.add_argument("--workdir", default=".", help="where resources/ and work/ are (measured counts, shapes)")
    parse.add_argument("--json", action="store_true")
    parse.add_argument("--slurm", action="store_true", help="print the profile's set-resources from the plan (YAML)")
    parse.add_argument("--margin", type=float, default=1.5, help="runtime margin over the planned wall time")
    args = parse.parse_args(argv)
    overlay: dict = {}
    for path in args.configfile:  # as Snakemake layers --configfile files over config.yaml
        overlay = deep_merge(overlay, yaml.safe_load(Path(path).read_text()) or {})
    config = with_base_config(overlay, CONFIG)
    validate_config(config, source=" + ".join(["config.yaml", *args.configfile]))
    results = [plan(config, run, args.device, args.gpus, Path(args.workdir), args.task) for run in args.run]
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
        return 0
    if args.slurm:
        print(f"# set-resources for {' and '.join(args.run)} on {args.device} x {args.gpus} (python -m pipeline.plan "
              f"--slurm, runtime margin {args.margin})")
        print("set-resources:")  # a rule a line, as profiles/slurm/config.yaml holds them
        for rule, asked in slurm_resources(*results, margin=args.margin).items():
            print(f"  {rule}: {yaml.safe_dump(asked, default_flow_style=True, sort_keys=False).strip()}")
        return 0
    for result in results:
        print(f"{args.task} {result['run']} on {args.device} x {args.gpus}")
        for row in result["jobs"]:
            print(f"{row['job']:24s} x{row['jobs']:<4d} {row['tflop']:10.3g} TFLOP  {row['peak_memory_gb']:7.1f} GB "
                  f"{'fits' if row['fits'] else 'DOES NOT FIT'}  {row['gpu_hours']:8.3g} GPU-h  {row['note']}")
            for setting, peak in (row["fits_with"] or {}).items():
                print(f"{'':30s}with {setting}: {peak} GB")
        print(f"total: {result['total']['gpu_hours']:.1f} GPU-hours on {args.device} (assumed MFU {MFU})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
