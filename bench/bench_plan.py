"""The plan's memory figures (pipeline.plan) against what a model of the planned shape holds on this CPU.

A random-weight model of a planned shape (the paper's 8B shapes at their full width, with fewer layers so that it
fits this machine: the per-layer terms scale with the layer count) runs each kind of job once, every stage in its own
process, and its peak resident memory above the process before the model was built is set beside the plan's figure
for the same shape, dtype and batch:
  forward:  a batched forward of prompts with the last position's logits (the label stage's passes);
  train:    one LoRA step (the planned rank on the seven projections, AdamW) on a batch of rows;
  generate: greedy generation of new tokens for a batch of questions (the KV cache grows).
Usage: python bench/bench_plan.py [--shape meta-llama/Llama-3.1-8B | --model-dir resources/models/gemma] [--layers 2]
       [--rows 2] [--length 112] [--rank 128] [--dtype fp32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from pipeline.plan import (KNOWN_SHAPES, PROJECTIONS, Shape, forward_memory, generate_memory, shape_of,
                           train_memory)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def rss_gb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1e9


def peak_gb() -> float:
    """The process's peak resident memory since the last reset_peak (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def reset_peak() -> None:
    """Start the peak anew (Linux: writing 5 to clear_refs resets VmHWM), so that a stage's peak leaves out the
    transient copies of building the model."""
    Path("/proc/self/clear_refs").write_text("5")


def planned_shape(args) -> Shape:
    shape = shape_of({}, Path(args.model_dir))[0] if args.model_dir else Shape(args.shape, **KNOWN_SHAPES[args.shape])
    fields = shape.__dict__ | {"layers": args.layers or shape.layers}
    return Shape(**fields)


def build(shape: Shape, dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    common = dict(num_hidden_layers=shape.layers, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                  num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim,
                  vocab_size=shape.vocab, tie_word_embeddings=shape.tied)
    config = Qwen3Config(**common) if shape.qk_norm else LlamaConfig(**common)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def run_stage(args) -> dict:
    """One stage in this process: the resident memory the model adds, and the peak the stage adds on top."""
    torch.set_num_threads(2)
    shape, dtype = planned_shape(args), DTYPES[args.dtype]
    before = rss_gb()
    model = build(shape, dtype)
    built = rss_gb()
    reset_peak()
    ids = torch.randint(0, shape.vocab, (args.rows, args.length))
    started = time.perf_counter()
    if args.stage == "forward":
        with torch.no_grad():
            model(input_ids=ids, logits_to_keep=1)
    elif args.stage == "train":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model.train(), LoraConfig(r=args.rank, lora_alpha=16, target_modules=list(PROJECTIONS)))
        trainable = [p for p in model.parameters() if p.requires_grad]
        for p in trainable:
            p.data = p.data.float()
        optimizer = torch.optim.AdamW(trainable, lr=1e-5)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
    else:
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens, do_sample=False,
                           pad_token_id=0)
    return {"stage": args.stage, "weights_gb": built - before, "peak_gb": peak_gb() - before,
            "seconds": time.perf_counter() - started}


def planned(args, stage: str) -> float:
    """The plan's GB for a stage of this shape, dtype and batch (one device, no ZeRO)."""
    shape = planned_shape(args)
    if stage == "forward":
        return forward_memory(shape, args.rows, args.length, args.dtype) / 1e9
    if stage == "train":
        trainable = shape.lora_params(args.rank, PROJECTIONS)
        return train_memory(shape, trainable, 1, 0, args.rows, args.length, False, args.dtype) / 1e9
    return generate_memory(shape, args.rows, args.length + args.new_tokens, args.dtype) / 1e9


def main(argv: list[str] | None = None) -> int:
    parse = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parse.add_argument("--shape", default="meta-llama/Llama-3.1-8B", choices=sorted(KNOWN_SHAPES))
    parse.add_argument("--model-dir", help="a prepared model folder whose config.json gives the shape instead")
    parse.add_argument("--layers", type=int, default=2, help="layers of the built model (0: the shape's own)")
    parse.add_argument("--rows", type=int, default=2)
    parse.add_argument("--length", type=int, default=112)
    parse.add_argument("--new-tokens", type=int, default=16)
    parse.add_argument("--rank", type=int, default=128)
    parse.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                       help="fp32: bf16 products are emulated (slow) on CPUs without native bf16")
    parse.add_argument("--stage", choices=["forward", "train", "generate"], help=argparse.SUPPRESS)
    args = parse.parse_args(argv)
    if args.stage:
        print(json.dumps(run_stage(args)))
        return 0
    shape = planned_shape(args)
    print(f"{shape.name}: {shape.layers} layers of width {shape.hidden}, vocabulary {shape.vocab}, "
          f"{shape.params / 1e9:.2f} B parameters in {args.dtype}; {args.rows} rows of {args.length} tokens")
    rows, own = [], list(argv if argv is not None else sys.argv[1:])
    for stage in ("forward", "train", "generate"):
        done = subprocess.run([sys.executable, __file__, *own, "--stage", stage], capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        plan = planned(args, stage)
        rows.append(measured | {"planned_gb": plan, "ratio": measured["peak_gb"] / plan})
        print(f"{stage:9s} planned {plan:7.2f} GB  measured {measured['peak_gb']:7.2f} GB (weights "
              f"{measured['weights_gb']:.2f})  ratio {measured['peak_gb'] / plan:5.2f}  {measured['seconds']:.1f} s")
    off = [r["stage"] for r in rows if abs(r["ratio"] - 1) > 0.25]
    print("within 25% of the plan" if not off else f"more than 25% off the plan: {off}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
