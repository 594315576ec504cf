"""Explainer training step: the output layer at answer positions only against the output layer everywhere.

Measured side by side in one run on the same model, LoRA adapter and batch (act_patch-shaped rows: a ~130-token
question, a ~15-token answer, left-padded as training pads them):
  full:    logits at every position, then the answer tokens' cross-entropy (what training did before);
  answers: `logits_to_keep` = the (row, position) pairs that predict an answer token (what
           `pipeline.explainer.training` does).
Both compute the same loss and gradient (tests/test_training.py); the ratio is the time per forward+backward step.
Usage: python bench/bench_training.py [--model-dir resources/models/gemma] [--batch-size 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.settings import TrainingConfig
from pipeline.explainer.model import ContinuousTokenExplainer, collate, encode_example, placeholder_token_id
from pipeline.models import load_model, read_manifest
from pipeline.explainer.training import answer_loss_sum, answer_positions, with_lora
from pipeline.runtime import cpu_matmul

QUESTION = ("Here is a prompt: 'Fact: The official language of {} is'. If the hidden state at <vector> were patched "
            "into layers 6 to 9 at the last token of the subject, what would the next token be? Answer with the "
            "most likely next token, or say that the output would remain unchanged. Patching replaces the hidden state of "
            "the original prompt with the one from a counterfactual prompt about another country, at the layers "
            "named, and the model then continues from the patched state to its next token.")


def step(explainer, batch, labels, keep: bool) -> float:
    started = time.perf_counter()
    positions = answer_positions(labels) if keep else None
    out = explainer(**batch, **({"logits_to_keep": positions} if keep else {}))
    loss, count = answer_loss_sum(out.logits, labels, positions)
    (loss / count).backward()
    explainer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="resources/models/gemma")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"fp32 matrix products: {cpu_matmul()}")  # as every stage (pipeline.runtime.stage)
    width = read_manifest(args.model_dir)["hidden_size"]
    model, tokenizer = load_model(args.model_dir, trainable=True)
    placeholder = placeholder_token_id(tokenizer, model)
    model = with_lora(model, TrainingConfig())  # the training section's LoRA defaults
    explainer = ContinuousTokenExplainer(model, width, placeholder)
    countries = ["France", "Peru", "Japan", "Kenya", "Norway", "Chile", "Egypt", "Nepal"]
    answers = [f"The most likely output would change to <<< {c}>>>." for c in countries]
    rows = [encode_example(tokenizer, QUESTION.replace("{}", c), a, "plain", explainer.placeholder_id)
            for c, a in zip(countries * (args.batch_size // len(countries) + 1), answers * args.batch_size)]
    batch = collate(rows[:args.batch_size], torch.randn(args.batch_size, width), tokenizer.pad_token_id, "cpu")
    labels = batch.pop("labels")
    explainer.train()
    step(explainer, batch, labels, True)  # warm-up
    times = {name: min(step(explainer, batch, labels, keep) for _ in range(args.repeats))
             for name, keep in (("full", False), ("answers", True))}
    print(f"model {args.model_dir}: vocabulary {explainer.lm.get_output_embeddings().weight.shape[0]}, batch "
          f"{args.batch_size} x {labels.shape[1]} tokens, {int(answer_positions(labels).sum())} answer tokens")
    print(f"logits everywhere:       {times['full']:6.2f} s/step")
    print(f"logits at answers only:  {times['answers']:6.2f} s/step")
    print(f"full / answers = {times['full'] / times['answers']:.2f}")


if __name__ == "__main__":
    main()
