"""Labels are ground truth: do act_patch's labels in bf16 give the same next tokens as in fp32?

The label stage's own patching (`pipeline.tasks.act_patch.labels.run_patches`) over the workflow's pairs table, the
target loaded in fp32 and then in bf16 (`act_patch.precision`), the windows, token types and batch of the config's
act_patch section. Printed: the share of rows (clean and patched) whose greedy next token is the same in both, the
share of patched rows whose is_different verdict is the same, and patches per second in each precision.
`act_patch.precision` may be bf16 only where the first share is at least 99% (docs/running.md).
Usage: python bench/bench_label_precision.py [--pairs work/act_patch/pairs/gemma/train.parquet]
       [--model-dir resources/models/gemma] [--count 200] [--configfile config.yaml] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.artifacts import read_table
from pipeline.config import load_config, typed_settings
from pipeline.models import load_model, read_manifest
from pipeline.runtime import cpu_bf16, cpu_matmul
from pipeline.tasks.act_patch.labels import rendered_pairs, run_patches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="work/act_patch/pairs/gemma/train.parquet")
    parser.add_argument("--model-dir", default="resources/models/gemma")
    parser.add_argument("--count", type=int, default=200, help="pairs patched (the table's first)")
    parser.add_argument("--configfile", default="config.yaml")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu_matmul()
    cfg = typed_settings(load_config(args.configfile)).act_patch
    rendered = rendered_pairs(read_table(args.pairs).head(args.count))
    windows = cfg.patch.windows(read_manifest(args.model_dir)["num_layers"])
    types = list(cfg.patch.token_types)
    answers, seconds = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model, tokenizer = load_model(args.model_dir, dtype=dtype)
        start = time.perf_counter()
        answers[name] = run_patches(model, tokenizer, rendered, windows, types, cfg.batch_size, desc=name).answers
        seconds[name] = time.perf_counter() - start
        del model
    fp32, bf16 = answers["fp32"], answers["bf16"]
    patches = fp32[:, 1:].size
    same_token = (fp32 == bf16).mean()
    same_clean = (fp32[:, 0] == bf16[:, 0]).mean()
    changed = {name: a[:, 1:] != a[:, :1] for name, a in answers.items()}
    same_verdict = (changed["fp32"] == changed["bf16"]).mean()
    print(f"{args.model_dir}, {len(rendered)} pairs of {args.pairs}, {len(types)} token types x {len(windows)} windows: "
          f"{patches} patched rows, {len(rendered)} clean; {args.threads} threads; {cpu_bf16()['why']}")
    print(f"same next token in bf16 as in fp32: {same_token:.4f} of all rows (clean {same_clean:.4f}); "
          f"same is_different: {same_verdict:.4f}; changed rows fp32 {changed['fp32'].mean():.3f}, "
          f"bf16 {changed['bf16'].mean():.3f}   (bf16 labels allowed at >= 0.99)")
    for name in ("fp32", "bf16"):
        print(f"{name}: {patches / seconds[name]:8.1f} patches/s ({seconds[name]:.1f} s, counterfactual runs included)")
    print(f"bf16 / fp32 patching = {seconds['fp32'] / seconds['bf16']:.2f}")


if __name__ == "__main__":
    main()
