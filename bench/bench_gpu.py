"""GPU figures in one run: the bf16 matrix-product ceiling, the explainer's training throughput and model FLOPs
utilisation (LoRA and full fine-tuning in bf16, the Trainer as the workflow runs it), where one training step's time
goes (torch.profiler), and a DeepSpeed ZeRO-3 training (one process) beside plain training, loss by loss.

MFU is given two ways. `6N`: 6 x every parameter (embeddings included) x tokens per second / peak, the usual
definition. `executed`: the FLOPs the step runs: per token 6 x the non-embedding parameters for full fine-tuning
(4 x for LoRA: a frozen weight gets no gradient), plus the output layer (6 x vocabulary x width) only at the answer
positions the training computes logits for (`logits_to_keep`); attention's own products are left out (~150-token
rows). The peak is measured in the same run (8192^3 bf16 products), beside the datasheet's dense figure.
Tokens are the batches' own tokens (padding not counted), over the Trainer's whole `train()` (its first step's
warm-up included), as the workflow's training log counts them.
Usage (on a GPU): python bench/bench_gpu.py --model-dir resources/models/gemma [--steps 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench_patching import synchronize
from bench_trainer import examples
from pipeline.settings import ExplainerConfig, TrainingConfig
from hand_loop import HandLoop
from pipeline.explainer.model import encode_example, placeholder_token_id
from pipeline.explainer.training import train_explainer
from pipeline.models import load_model, read_manifest

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on CPU only as a smoke test of this script


def peak_tflops(size: int = 8192, repeats: int = 10) -> float:
    size = size if DEVICE == "cuda" else 1024
    a, b = (torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize()
    return 2 * size ** 3 * repeats / (time.perf_counter() - started) / 1e12


def shape(model_dir: str, questions, answers) -> dict:
    """The model's parameter counts, and the answer tokens (where logits are computed) per token of an example."""
    model, tokenizer = load_model(model_dir)
    embedding = model.get_input_embeddings().weight
    placeholder = placeholder_token_id(tokenizer, model)
    encoded = [encode_example(tokenizer, q, a, "plain", placeholder) for q, a in zip(questions, answers)]
    return {"parameters": sum(p.numel() for p in model.parameters()), "embedding": embedding.numel(),
            "vocabulary": embedding.shape[0], "width": embedding.shape[1],
            "answer_share": sum(sum(x != -100 for x in e.labels) for e in encoded) / sum(len(e.input_ids) for e in encoded)}


def mfu(tokens_per_second: float, method: str, dims: dict, peak: float) -> dict:
    body = dims["parameters"] - dims["embedding"]
    per_token = (6 if method == "full" else 4) * body + 6 * dims["vocabulary"] * dims["width"] * dims["answer_share"]
    return {"6N": 6 * dims["parameters"] * tokens_per_second / (peak * 1e12),
            "executed": per_token * tokens_per_second / (peak * 1e12)}


def trainer_run(cfg: TrainingConfig, model_dir: str, width: int, data) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        return train_explainer(cfg, ExplainerConfig(), model_dir, width, *data, Path(scratch) / "out",
                               Path(scratch) / "ckpt", {"bench": cfg.__dict__})


def profile_step(cfg: TrainingConfig, model_dir: str, width: int, data, steps: int = 8) -> dict:
    """The hand-written bf16 step (bench/hand_loop.py: autocast, fused AdamW) timed after warm-up, then one step
    under torch.profiler: the step's wall time against the time the GPU spent in kernels, and the kernels that took
    it."""
    from torch.profiler import ProfilerActivity, profile

    loop = HandLoop(cfg, model_dir, width, *data, device=DEVICE)
    steps = min(steps, loop.batches)
    warm = min(3, steps - 1)
    for index in range(warm):
        loop.step(index)
    synchronize()
    started = time.perf_counter()
    tokens = sum(loop.step(index) for index in range(warm, steps)) / (steps - warm)
    synchronize()
    seconds = (time.perf_counter() - started) / (steps - warm)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=activities) as prof:
        loop.step(steps - 1)
        synchronize()
    averages = prof.key_averages()

    def device_us(e) -> float:
        return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0))

    kernels = sorted((e for e in averages if device_us(e) > 0), key=device_us, reverse=True)
    busy_ms = sum(device_us(e) for e in kernels) / 1e3
    launches = sum(e.count for e in averages if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    return {"step_ms": seconds * 1e3, "tokens_per_step": tokens, "tokens_per_second": tokens / seconds,
            "profiled_gpu_busy_ms": busy_ms, "kernel_launches": launches,
            "top_kernels": [{"name": e.key[:90], "ms": device_us(e) / 1e3, "calls": e.count} for e in kernels[:12]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="resources/models/gemma")  # the main job's explainer
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-sizes", default="8,64")
    parser.add_argument("--datasheet-tflops", type=float, default=989.0)  # H100/H200 SXM dense bf16
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if DEVICE == "cpu":
        print("no GPU visible: a smoke test of this script on CPU, not figures")
    record: dict = {"gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__, "model_dir": args.model_dir,
                    "source": read_manifest(args.model_dir)["source"], "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                             time.gmtime())}
    peak = peak_tflops()
    record["peak_tflops_measured"], record["peak_tflops_datasheet"] = peak, args.datasheet_tflops
    print(f"{record['gpu']}, torch {torch.__version__}: bf16 square products {peak:.1f} TFLOP/s "
          f"(datasheet {args.datasheet_tflops:.0f})", flush=True)
    width = read_manifest(args.model_dir)["hidden_size"]
    base = TrainingConfig(precision="bf16", epochs=1, max_examples=None, warmup_steps=0, checkpoint_every=10 ** 6,
                          max_length=512, learning_rate=1e-5)
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    data = examples(args.steps * max(sizes), width)
    dims = record["shape"] = shape(args.model_dir, *data[:2])
    share = dims["answer_share"]
    print(f"model {args.model_dir}: {dims['parameters'] / 1e6:.1f}M parameters ({dims['embedding'] / 1e6:.1f}M "
          f"embedding, vocabulary {dims['vocabulary']}), answer tokens {share:.1%} of each row", flush=True)
    record["trainer"] = []
    for method in ("lora", "full"):
        for size in sizes:
            cfg = base.replaced(method=method, batch_size=size)
            count = args.steps * size
            log = trainer_run(cfg, args.model_dir, width, tuple(x[:count] for x in data))
            use = mfu(log["tokens_per_second"], method, dims, peak)
            row = {"method": method, "batch_size": size, "steps": log["steps"], "seconds": log["seconds"],
                   "tokens_per_second": log["tokens_per_second"], "mfu_6N": use["6N"], "mfu_executed": use["executed"]}
            record["trainer"].append(row)
            print(f"Trainer bf16 {method:4s} batch {size:3d}: {row['tokens_per_second']:9.0f} tokens/s "
                  f"({log['steps']} steps in {log['seconds']:.1f} s); MFU 6N {use['6N']:.1%}, executed "
                  f"{use['executed']:.1%} of the measured peak", flush=True)
    biggest = max(sizes)
    prof = profile_step(base.replaced(method="full", batch_size=biggest), args.model_dir, width, data)
    record["profile_full"] = prof
    use = mfu(prof["tokens_per_second"], "full", dims, peak)
    print(f"hand-written bf16 full step, batch {biggest}: {prof['step_ms']:.1f} ms, {prof['tokens_per_second']:.0f} "
          f"tokens/s (MFU 6N {use['6N']:.1%}, executed {use['executed']:.1%}); profiled step: GPU busy "
          f"{prof['profiled_gpu_busy_ms']:.1f} ms, {prof['kernel_launches']} kernel launches", flush=True)
    for k in prof["top_kernels"]:
        print(f"   {k['ms']:8.2f} ms  {k['calls']:5d}x  {k['name']}")
    # DeepSpeed ZeRO-3 in one process against plain training: the same full fine-tuning, batches and seed.
    steps = 12
    cfg = base.replaced(method="full", batch_size=8)
    small = tuple(x[:steps * 8] for x in data)
    plain = trainer_run(cfg, args.model_dir, width, small)
    try:
        zero3 = trainer_run(cfg.replaced(deepspeed={'enabled': True, 'zero_stage': 3}), args.model_dir, width, small)
    except Exception as error:  # noqa: BLE001 - recorded, not hidden: the figures above stand without it
        record["deepspeed_error"] = f"{type(error).__name__}: {error}"
        print(f"DeepSpeed ZeRO-3 failed: {record['deepspeed_error']}")
    else:
        pairs = list(zip([e["loss"] for e in plain["losses"]], [e["loss"] for e in zero3["losses"]]))
        worst = max(abs(a - b) / max(abs(a), 1e-9) for a, b in pairs)
        record["deepspeed"] = {"plain_losses": [a for a, _ in pairs], "zero3_losses": [b for _, b in pairs],
                               "max_relative_difference": worst, "plain_tokens_per_second": plain["tokens_per_second"],
                               "zero3_tokens_per_second": zero3["tokens_per_second"]}
        print(f"DeepSpeed ZeRO-3 (one process) against plain, full bf16, batch 8, {len(pairs)} steps: largest relative "
              f"loss difference {worst:.2e}; {zero3['tokens_per_second']:.0f} against {plain['tokens_per_second']:.0f} "
              "tokens/s")
        for i, (a, b) in enumerate(pairs):
            print(f"   step {i + 1:2d}: plain {a:.4f}   zero3 {b:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
