"""Throughput of the batched patching engine against the bare forward pass and a naive loop.

Measured side by side in one run on the same model and prompts:
  engine: `pipeline.tasks.act_patch.labels.run_patches` (counterfactual runs included), patches per second: the clean run
          once per pair with its cache, each patched row computing only the columns from its token on;
  full:   `full_forward_answers`, a full forward per patched row over the engine's counterfactual states (the
          reference the engine is tested against, tests/test_patching.py);
  bare:   plain batched forward passes over exactly the rows a full-forward engine computes (a clean row and
          every patch of each pair): one forward per patch, the limit without reuse;
  naive:  one patch per forward pass (batch of one, counterfactual states precomputed, which flatters it).
Usage: python bench/bench_patching.py [--model-dir resources/models/smollm] [--pairs 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pipeline.tasks.act_patch.labels import run_patches
from pipeline.tasks.act_patch.settings import ActPatchConfig, PromptConfig
from pipeline.tasks.facts import countryinfo_facts, render_prompt
from pipeline.models import input_device, load_model, read_manifest
from pipeline.engine.patching import pad_left, patched_next_tokens, wrap
from pipeline.runtime import cpu_matmul


def rendered_pairs(tokenizer, count: int):
    facts = countryinfo_facts(("capital",)).head(2 * count)
    subjects = facts["subject"].tolist()
    template = facts["template"].iloc[0]
    shot = ["The capital of France is the city of Paris."]
    return [tuple(render_prompt(template, s, None, PromptConfig(), tokenizer, shot) for s in (subjects[2 * i], subjects[2 * i + 1]))
            for i in range(count)]


def full_forward_answers(model, tokenizer, run, windows: list[list[int]], batch_size: int) -> np.ndarray:
    """A PatchRun's answers computed with a full forward per row: whole pairs per batch, a clean row plus every
    token type x window, each patched row writing the run's counterfactual state into its window's layers."""
    traced, device = wrap(model), input_device(model)
    num_layers = max(w[-1] for w in windows) + 1
    answers = np.zeros_like(run.answers)
    pairs_per_batch = max(1, batch_size // len(run.jobs_per_pair))
    for start in range(0, len(run.orig_enc), pairs_per_batch):
        chunk = list(range(start, min(start + pairs_per_batch, len(run.orig_enc))))
        sequences, positions, layer_mask, values = [], [], [], []
        for i in chunk:
            for type_index, window_index in run.jobs_per_pair:
                sequences.append(run.orig_enc[i]["input_ids"])
                row_mask = torch.zeros(num_layers, dtype=torch.bool)
                if type_index is None:
                    positions.append(0)
                    values.append(torch.zeros(run.states.shape[-1]))
                else:
                    positions.append(run.orig_pos[i][run.types[type_index]])
                    row_mask[windows[window_index]] = True
                    values.append(run.states[i, type_index, window_index])
                layer_mask.append(row_mask)
        ids, mask, shifts = pad_left(sequences, tokenizer.pad_token_id, device)
        position_tensor = torch.tensor([p + s for p, s in zip(positions, shifts)], device=device)
        next_ids = patched_next_tokens(traced, ids, mask, position_tensor, torch.stack(layer_mask).to(device),
                                       torch.stack(values).to(device))
        answers[chunk] = next_ids.view(len(chunk), len(run.jobs_per_pair)).cpu().numpy()
    return answers


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # a GPU's work is queued: the clock stops when it is done, not when it is launched


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="resources/models/smollm")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"fp32 matrix products: {cpu_matmul()}")  # as every stage (pipeline.runtime.stage)
    model, tokenizer = load_model(args.model_dir)  # on the GPU where there is one (pipeline.models.placement)
    device = input_device(model)
    num_layers = read_manifest(args.model_dir)["num_layers"]
    cfg = ActPatchConfig()
    windows, types = cfg.patch.windows(num_layers), list(cfg.patch.token_types)
    pairs = rendered_pairs(tokenizer, args.pairs)
    patches = args.pairs * len(types) * len(windows)
    result = {}

    def engine():
        result["run"] = run_patches(model, tokenizer, pairs, windows, types, args.batch_size)

    def full():
        result["full"] = full_forward_answers(model, tokenizer, result["run"], windows, args.batch_size)

    with torch.no_grad():
        engine_s = timed(engine, args.repeats)
        full_s = timed(full, args.repeats)
        assert (result["full"] == result["run"].answers).all(), "reuse changed a patched answer"
        run = result["run"]
        # The same rows the engine computes (each pair's clean row plus its patches), in the same batches.
        rows_per_pair = len(run.jobs_per_pair)
        pairs_per_batch = max(1, args.batch_size // rows_per_pair)
        batches = []
        for start in range(0, len(pairs), pairs_per_batch):
            chunk = range(start, min(start + pairs_per_batch, len(pairs)))
            batches.append(pad_left([run.orig_enc[i]["input_ids"] for i in chunk for _ in range(rows_per_pair)],
                                    tokenizer.pad_token_id, device)[:2])
        bare_s = timed(lambda: [model(input_ids=i, attention_mask=m, logits_to_keep=1) for i, m in batches],
                       args.repeats)
        traced = wrap(model)
        naive_count = min(patches, 60)
        jobs = [(i, t, w) for i in range(len(pairs)) for t in range(len(types)) for w in range(len(windows))][:naive_count]

        def naive():
            for i, t, w in jobs:
                ids = torch.tensor([run.orig_enc[i]["input_ids"]], device=device)
                mask = torch.zeros(1, num_layers, dtype=torch.bool, device=device)
                mask[0, windows[w]] = True
                patched_next_tokens(traced, ids, torch.ones_like(ids),
                                    torch.tensor([run.orig_pos[i][types[t]]], device=device), mask,
                                    run.states[i, t, w][None].to(device))

        naive_s = timed(naive, 1) * patches / naive_count

    engine_rate, full_rate = patches / engine_s, patches / full_s
    bare_rate, naive_rate = patches / bare_s, patches / naive_s
    print(f"model {args.model_dir}: {num_layers} layers, {args.pairs} pairs x {len(types)} token types x "
          f"{len(windows)} windows = {patches} patches, batch {args.batch_size}, "
          f"{torch.cuda.get_device_name() if device.type == 'cuda' else f'{args.threads} threads'}")
    print(f"bare forward, one per patch:      {bare_rate:8.1f} patches/s")
    print(f"engine, prefix reuse (default):   {engine_rate:8.1f} patches/s")
    print(f"engine, full forward per patch:   {full_rate:8.1f} patches/s")
    print(f"naive, one patch per forward:     {naive_rate:8.1f} patches/s")
    print(f"engine / bare  = {engine_rate / bare_rate:.2f}   (goal >= 1.50)")
    print(f"full / bare    = {full_rate / bare_rate:.2f}")
    print(f"engine / full  = {engine_rate / full_rate:.2f}")
    print(f"engine / naive = {engine_rate / naive_rate:.2f}")


if __name__ == "__main__":
    main()
