"""Training throughput: fp32 against bf16 with efficiency against the chip's own peak, and the explainer on the
Hugging Face Trainer against the hand-written loop it replaced.

Precision (first, in one run): the Trainer in fp32 and in bf16 (frozen weights held in bf16, pipeline's training
precision) on the same rows, each with its CPU MFU: the step's FLOPs counted from the model's shapes as training runs
them (bench/flops.py) over the rate of a probe matrix product measured in the same run in that precision
(pipeline.runtime.product_rate). Where the CPU has no native bf16 dot products its bf16 products are emulated
(hundreds of times slower): the bf16 training is not run, and the probe rates say why.

Measured side by side in one run on the same model, LoRA adapter, examples (act_patch-shaped: a ~130-token
question, a ~15-token answer, a vector) and batch:
  loop:    the core of the loop pipeline.explainer.training ran before the Trainer (bench/hand_loop.py: collate,
           forward with logits at answer positions, answer-only loss, backward, clip, AdamW step);
  trainer: `pipeline.explainer.training.train_explainer` as the workflow runs it (Trainer, logging every step,
           TensorBoard, the explainer folder written at the end).
Both count the tokens of their batches (padding not included) over the time of their training steps. Then, on rows of
varied lengths (with reading rows, as act_patch.training_rows adds), the Trainer with random batches against
length-grouped batches (training.group_by_length), and length-grouped batches with the LoRA dropout of the training
section (0.05) against none: on CPU the dropout masks (one Bernoulli draw per input element of each of the seven
adapted projections) cost about a seventh of a step (1.16x without them, 2026-12-03); and the default (grouped,
dropout 0.05) with fp32 matrix products in MKL against oneDNN (pipeline.runtime.cpu_matmul, every stage's choice
since 2026-12-03). The last line is the default today against the default when the throughput goal was set (random
batches, MKL).
Usage: python bench/bench_trainer.py [--model-dir resources/models/gemma] [--steps 6] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pipeline.settings import ExplainerConfig, TrainingConfig
from hand_loop import HandLoop
from pipeline.explainer.training import train_explainer
from pipeline.models import read_manifest
from pipeline.runtime import cpu_bf16, cpu_matmul, product_rate

QUESTION = ("Here is a prompt: 'Fact: The official language of {} is'. If the hidden state at <vector> were patched "
            "into layers 6 to 9 at the last token of the subject, what would the next token be? Answer with the "
            "most likely next token, or say that the output would remain unchanged. Patching replaces the hidden state of "
            "the original prompt with the one from a counterfactual prompt about another country, at the layers "
            "named, and the model then continues from the patched state to its next token.")
COUNTRIES = ["France", "Peru", "Japan", "Kenya", "Norway", "Chile", "Egypt", "Nepal", "Ghana", "Spain", "Italy", "Laos"]


def examples(count: int, width: int):
    questions = [QUESTION.replace("{}", COUNTRIES[i % len(COUNTRIES)]) for i in range(count)]
    answers = [f"The most likely output would change to <<< {COUNTRIES[(i + 3) % len(COUNTRIES)]}>>>." for i in range(count)]
    return questions, answers, torch.randn(count, width, generator=torch.Generator().manual_seed(0))


def loop_tokens_per_second(cfg: TrainingConfig, model_dir: str, width: int, questions, answers, vectors) -> float:
    loop = HandLoop(cfg, model_dir, width, questions, answers, vectors)
    tokens, started = 0, time.perf_counter()
    for index in range(loop.batches):
        tokens += loop.step(index)
    return tokens / (time.perf_counter() - started)


def varied_examples(count: int, width: int, reading_share: float = 0.25):
    """act_patch-shaped rows of the lengths the workflow trains on: the question's input text varies (one to three
    sentences), and a share are reading rows ("At layer L, <vector> =" -> a token), as act_patch.training_rows adds."""
    questions, answers = [], []
    for i in range(count):
        if i % round(1 / reading_share) == 0:
            questions.append(f"At layer {6 * (i % 5)}, <vector> =")
            answers.append(COUNTRIES[(i + 3) % len(COUNTRIES)])
        else:  # a third, two thirds or all of the ~130-token question, as the act_patch phrasings and inputs vary
            text = QUESTION.replace("{}", COUNTRIES[i % len(COUNTRIES)])
            questions.append(text[:len(text) * (1 + i % 3) // 3])
            answers.append(f"The most likely output would change to <<< {COUNTRIES[(i + 3) % len(COUNTRIES)]}>>>.")
    return questions, answers, torch.randn(count, width, generator=torch.Generator().manual_seed(0))


def trainer_tokens_per_second(cfg: TrainingConfig, model_dir: str, width: int, questions, answers, vectors) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        log = train_explainer(cfg, ExplainerConfig(), model_dir, width, questions, answers, vectors,
                              Path(scratch) / "out", Path(scratch) / "ckpt", {"bench": cfg.group_by_length})
    return log["tokens_per_second"]


def training_flops_of(cfg: TrainingConfig, model_dir: str, questions, answers) -> float:
    """FLOPs of one epoch over these rows, as the Trainer runs them (bench/flops.py)."""
    from transformers import AutoConfig

    from flops import Shape, training_flops
    from pipeline.explainer.model import encode_example, placeholder_token_id
    from pipeline.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    placeholder = placeholder_token_id(tokenizer)
    encoded = [encode_example(tokenizer, q, a, "plain", placeholder) for q, a in zip(questions, answers)]
    shape = Shape.of(AutoConfig.from_pretrained(read_manifest(model_dir)["weights"]))
    return training_flops(shape, [len(e.input_ids) for e in encoded], sum(sum(x != -100 for x in e.labels)
                                                                            for e in encoded),
                          cfg.lora.r if cfg.method == "lora" else 0, cfg.lora.target_modules, cfg.method == "full")


def precision_section(cfg: TrainingConfig, model_dir: str, width: int, questions, answers, vectors) -> None:
    """fp32 against bf16 training tokens/s in one run, each with its MFU against its own probe peak."""
    peaks = {name: product_rate(dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    flops = training_flops_of(cfg, model_dir, questions, answers)
    print(f"probe product [1024 x 640] x [640 x 2048]: fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} "
          f"GFLOP/s ({cpu_bf16()['why'] if cpu_bf16()['native'] else 'no native bf16 dot products: emulated'})")
    rates = {}
    for precision in ("fp32", "bf16"):
        if precision == "bf16" and peaks["bf16"] < peaks["fp32"] / 2:
            print(f"bf16 training: not run (its products run at {peaks['bf16'] / peaks['fp32']:.3f}x fp32's here)")
            continue
        with tempfile.TemporaryDirectory() as scratch:
            log = train_explainer(cfg.replaced(precision=precision), ExplainerConfig(), model_dir, width, questions,
                                  answers, vectors, Path(scratch) / "out", Path(scratch) / "ckpt", {"p": precision})
        rates[precision] = log["tokens_per_second"]
        achieved = flops / log["seconds"] / 1e9
        print(f"Trainer {precision}: {log['tokens_per_second']:8.1f} tokens/s, {achieved:.1f} GFLOP/s counted, "
              f"MFU {achieved / peaks[precision]:.0%} of the {precision} probe peak")
    if len(rates) == 2:
        print(f"bf16 / fp32 = {rates['bf16'] / rates['fp32']:.2f}   (goal >= 1.4)")
    generation_section(model_dir, width, questions, vectors, peaks)


def generation_section(model_dir: str, width: int, questions, vectors, peaks: dict, new_tokens: int = 16,
                       batch_size: int = 32) -> None:
    """Greedy generation as the generation stage runs it (the untrained explainer, batches sorted by length), new
    tokens per second in each precision, with its MFU: the FLOPs of the prompts and the new tokens (bench/flops.py)
    over that precision's probe peak. Every row generates `new_tokens` (no end token stops it early)."""
    from transformers import AutoConfig

    from flops import Shape, generation_flops
    from pipeline.explainer.generation import generate_answers
    from pipeline.explainer.model import encode_example, load_explainer

    shape = Shape.of(AutoConfig.from_pretrained(read_manifest(model_dir)["weights"]))
    rates = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if precision == "bf16" and peaks["bf16"] < peaks["fp32"] / 2:
            continue
        explainer, tokenizer = load_explainer(None, model_dir, width, dtype=dtype)
        # No end token: every row makes `new_tokens`, the same work in both precisions.
        tokenizer.eos_token_id = explainer.lm.generation_config.eos_token_id = None
        lengths = [len(encode_example(tokenizer, q, None, "plain", explainer.placeholder_id).input_ids)
                   for q in questions]
        start = time.perf_counter()
        generate_answers(explainer, tokenizer, questions, vectors, "plain", new_tokens, batch_size, desc=precision)
        seconds = time.perf_counter() - start
        flops = generation_flops(shape, lengths, new_tokens)
        rates[precision] = len(questions) * new_tokens / seconds
        print(f"generation {precision}: {rates[precision]:8.1f} new tokens/s ({len(questions)} rows x {new_tokens}, "
              f"batch {batch_size}), {flops / seconds / 1e9:.1f} GFLOP/s counted, MFU "
              f"{flops / seconds / 1e9 / peaks[precision]:.0%} of the {precision} probe peak")
    if len(rates) == 2:
        print(f"generation bf16 / fp32 = {rates['bf16'] / rates['fp32']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="resources/models/gemma")  # the act_patch default pair's
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["precision"], help="the precision section alone")
    parser.add_argument("--lora-dropout", type=float, default=None, help="LoRA's dropout (the training section's "
                        "default where not given); its masks' random numbers cost the same in both precisions")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    library = cpu_matmul()  # as every stage does; MKL below only where named
    width = read_manifest(args.model_dir)["hidden_size"]
    cfg = TrainingConfig(batch_size=args.batch_size, epochs=1, max_examples=None, warmup_steps=0,
                         checkpoint_every=10 ** 6, max_length=512, precision="fp32")
    if args.lora_dropout is not None:
        cfg = cfg.replaced(lora__dropout=args.lora_dropout)
    print(f"model {args.model_dir}, {args.threads} threads, fp32 products in {library}, LoRA dropout "
          f"{cfg.lora.dropout}, {args.steps} steps of {args.batch_size}")
    precision_section(cfg, args.model_dir, width, *varied_examples(args.steps * args.batch_size, width))
    if args.only:
        return
    questions, answers, vectors = examples(args.steps * args.batch_size, width)
    loop = loop_tokens_per_second(cfg, args.model_dir, width, questions, answers, vectors)
    with tempfile.TemporaryDirectory() as scratch:
        log = train_explainer(cfg, ExplainerConfig(), args.model_dir, width, questions, answers, vectors,
                              Path(scratch) / "out", Path(scratch) / "ckpt", {"bench": True})
    trainer = log["tokens_per_second"]
    print(f"model {args.model_dir}: LoRA r={cfg.lora.r} on {len(cfg.lora.target_modules)} projections, "
          f"{args.steps} steps of {args.batch_size} examples, {args.threads} threads, fp32 products in {library}")
    print(f"hand-written loop:  {loop:8.1f} tokens/s")
    print(f"Trainer:            {trainer:8.1f} tokens/s")
    print(f"trainer / loop = {trainer / loop:.2f}   (goal >= 1.00)")
    # Rows of varied lengths, as the workflow trains on: random batches (today's default) against length-grouped ones.
    # Tokens are the rows' own tokens (padding not counted): what grouping saves is the padding computed.
    varied = varied_examples(args.steps * args.batch_size * 2, width)
    random_batches = trainer_tokens_per_second(cfg, args.model_dir, width, *varied)
    cpu_matmul("mkl")
    random_mkl = trainer_tokens_per_second(cfg, args.model_dir, width, *varied)
    grouped_mkl = trainer_tokens_per_second(cfg.replaced(group_by_length=True), args.model_dir, width, *varied)
    cpu_matmul()
    grouped = trainer_tokens_per_second(cfg.replaced(group_by_length=True), args.model_dir, width, *varied)
    print(f"varied lengths, random batches:  {random_batches:8.1f} tokens/s")
    print(f"varied lengths, grouped batches: {grouped:8.1f} tokens/s")
    print(f"grouped / random = {grouped / random_batches:.2f}   (goal >= 1.5 with the training rows of act_patch)")
    undropped = trainer_tokens_per_second(cfg.replaced(group_by_length=True, lora__dropout=0.0), args.model_dir, width,
                                          *varied)
    print(f"varied lengths, grouped, LoRA dropout {cfg.lora.dropout}: {grouped:8.1f} tokens/s")
    print(f"varied lengths, grouped, LoRA dropout 0:    {undropped:8.1f} tokens/s")
    print(f"no dropout / dropout = {undropped / grouped:.2f}   no dropout and grouped / random = "
          f"{undropped / random_batches:.2f}")
    print(f"varied lengths, random batches, MKL:  {random_mkl:8.1f} tokens/s")
    print(f"varied lengths, grouped, MKL:         {grouped_mkl:8.1f} tokens/s")
    print(f"{library} / MKL = {grouped / grouped_mkl:.2f} (grouped), {random_batches / random_mkl:.2f} (random)")
    print(f"the default (grouped, dropout {cfg.lora.dropout}, {library}) / the default when the goal was set (random, "
          f"MKL) = {grouped / random_mkl:.2f}   (goal >= 1.5)")


if __name__ == "__main__":
    main()
