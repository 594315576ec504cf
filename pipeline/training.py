"""Fine-tune an explainer (peft LoRA or full) on (question, answer, vector) examples.

The loss covers only the answer tokens. A checkpoint of the trainable state is written every
`checkpoint_every` steps beside the output; a rerun resumes from it only when its key matches: the
stage's result settings plus the identity of its inputs (label tables by provenance, models by spec),
so a checkpoint trained on other labels is discarded, and a checkpoint missing any trainable weight
is refused.
With `deepspeed.enabled` the same loop runs through a DeepSpeed ZeRO engine. Under torchrun
(see pipeline/launch.py) every process takes its share of each global batch of `batch_size`
examples; the loss is summed over answer tokens and divided by the global batch's token count,
so gradients summed across processes equal single-process training on the same batch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.artifacts import ArtifactError, atomic_dir, atomic_path, config_hash, provenance
from pipeline.config import ExplainerConfig, TrainingConfig
from pipeline.explainer import ContinuousTokenExplainer, collate, encode_example, placeholder_token_id, save_explainer
from pipeline.generation import seeded_subset
from pipeline.models import input_device, load_model, read_manifest

STATE_FILE = "trainer_state.pt"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if world()[1] > 1:
        dist.barrier()


def _all_sum(value: float | torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    tensor = torch.as_tensor(value, dtype=torch.float64).clone()
    if world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def _init_process_group() -> None:
    """Join the group torchrun set up (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions whose next token is an answer token in some row of the batch: the only logits the loss reads.
    Passed to the model as `logits_to_keep`, the output layer runs there alone (Gemma's is 262k wide)."""
    return (labels[:, 1:] != -100).any(0).nonzero().squeeze(1)


def answer_loss_sum(logits: torch.Tensor, labels: torch.Tensor,
                    positions: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over answer tokens, and their count. `logits` are at every position, or
    only at `positions` (see answer_positions)."""
    if positions is None:
        shifted, targets = logits[:, :-1].float(), labels[:, 1:]
    else:
        shifted, targets = logits.float(), labels[:, positions + 1]
    loss = torch.nn.functional.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100, reduction="sum")
    return loss, int((targets != -100).sum())


def with_lora(model, cfg: TrainingConfig):
    """The model with the training section's LoRA adapter attached (peft)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                            target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM"))


def _deepspeed_engine(explainer, optimizer, scheduler, cfg: TrainingConfig, micro_batch: int):
    import deepspeed

    # One process without a launcher: a gloo group of one, as `deepspeed.initialize` expects.
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if not torch.cuda.is_available():
        # The CPU shared-memory collective is JIT-compiled (~76 s) and only speeds up multi-process runs on one host.
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
    }
    engine, _, _, _ = deepspeed.initialize(model=explainer, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


def train_explainer(cfg: TrainingConfig, explainer_cfg: ExplainerConfig, base_model_dir: str | Path,
                    target_width: int, questions: list[str], answers: list[str], vectors: torch.Tensor | None,
                    out_dir: str | Path, checkpoint_dir: str | Path, settings: dict,
                    first_step_gradients: str | Path | None = None, vector_layers: list[int] | None = None) -> dict:
    """Train, write the explainer folder atomically (rank 0), and return the training log.

    `settings` is the checkpoint key (and the explainer's provenance): it must name everything the result
    depends on. `first_step_gradients`, when given, receives the trainable gradients of the first step as
    they are applied (summed over processes), for checking multi-process training. `vector_layers`: each
    vector's source layer, for an explainer that injects at that layer (`explainer.inject: layer`)."""
    _init_process_group()
    rank, size = world()
    if cfg.batch_size % size:
        raise ValueError(f"training.batch_size {cfg.batch_size} must be divisible by the {size} training processes")
    torch.manual_seed(cfg.seed)
    out_dir, checkpoint_dir = Path(out_dir), Path(checkpoint_dir)
    model, tokenizer = load_model(base_model_dir, trainable=True)
    placeholder = placeholder_token_id(tokenizer, model)
    if cfg.method == "lora":
        model = with_lora(model, cfg)
    explainer = ContinuousTokenExplainer(model, target_width, placeholder, explainer_cfg.projection,
                                         explainer_cfg.inject)
    device = input_device(model)

    encoded = [encode_example(tokenizer, q, a, explainer_cfg.prompt_format, placeholder)
               for q, a in zip(questions, answers)]
    fits = np.array([len(e.input_ids) <= cfg.max_length for e in encoded])
    candidates = np.flatnonzero(fits)
    chosen = candidates[seeded_subset(len(candidates), cfg.max_examples, cfg.seed)]
    if len(chosen) == 0:
        raise ValueError(f"no training example fits training.max_length={cfg.max_length}")
    per_step = cfg.batch_size * cfg.grad_accum
    total_steps = max(1, math.ceil(len(chosen) * cfg.epochs / per_step))
    rng = np.random.default_rng(cfg.seed)
    epochs_needed = math.ceil(total_steps * per_step / len(chosen))
    order = np.concatenate([rng.permutation(chosen) for _ in range(epochs_needed)])

    lm_params = [p for p in explainer.lm.parameters() if p.requires_grad]
    groups = [{"params": lm_params, "lr": cfg.learning_rate}]
    if explainer.projection is not None:
        groups.append({"params": list(explainer.projection.parameters()), "lr": cfg.projection_learning_rate})
    trainable = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    warmup = min(cfg.warmup_steps, total_steps // 2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)) * max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    engine = _deepspeed_engine(explainer, optimizer, scheduler, cfg, cfg.batch_size // size) if cfg.deepspeed else None

    run_hash = config_hash(settings)
    start_step, history = _resume(checkpoint_dir, run_hash, explainer, optimizer, scheduler, engine)
    explainer.train()
    tokens_seen, started = 0, time.time()
    progress = tqdm(range(start_step, total_steps), desc="training", unit="step", initial=start_step,
                    total=total_steps, mininterval=5, disable=rank != 0)
    for step in progress:
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            index = order[(step * cfg.grad_accum + micro) * cfg.batch_size:][:cfg.batch_size][rank::size]
            batch = collate([encoded[i] for i in index], vectors[index] if vectors is not None else None,
                            tokenizer.pad_token_id, device,
                            [vector_layers[i] for i in index] if vector_layers is not None else None)
            tokens_seen += int(batch["attention_mask"].sum())
            labels = batch.pop("labels")
            positions = answer_positions(labels)
            logits = (engine or explainer)(**batch, logits_to_keep=positions).logits
            loss_sum, count = answer_loss_sum(logits, labels, positions)
            global_count = float(_all_sum(count))
            # Each process's share of the global mean; DeepSpeed averages gradients over processes, so scale by size.
            loss = loss_sum / global_count * (size if engine is not None else 1)
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                (loss / cfg.grad_accum).backward()
            step_loss += float(_all_sum(loss_sum.detach())) / global_count / cfg.grad_accum
        if engine is None:
            if size > 1:
                for p in trainable:
                    torch.distributed.all_reduce(p.grad)
            if first_step_gradients and step == start_step == 0 and rank == 0:
                named = {n: p.grad.detach().cpu().clone() for n, p in explainer.named_parameters() if p.requires_grad}
                with atomic_path(first_step_gradients) as tmp:
                    torch.save(named, tmp)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        history.append({"step": step + 1, "loss": step_loss, "lr": scheduler.get_last_lr()[0]})
        progress.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens_seen * size / (time.time() - started):.0f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total_steps:
            _save_checkpoint(checkpoint_dir, run_hash, step + 1, history, explainer, optimizer, scheduler, engine)

    explainer.eval()
    elapsed = time.time() - started
    log = {"steps": total_steps, "resumed_from_step": start_step, "examples": int(len(chosen)),
           "skipped_too_long": int((~fits).sum()), "processes": size,
           "tokens_per_second": float(_all_sum(tokens_seen)) / max(elapsed, 1e-9),
           "seconds": elapsed, "losses": history}
    meta = {"method": cfg.method, "base_model": read_manifest(base_model_dir)["source"], "target_width": target_width,
            "projection": explainer_cfg.projection if explainer.projection is not None else "none",
            "inject": explainer_cfg.inject,
            "prompt_format": explainer_cfg.prompt_format,
            "provenance": provenance(settings)}
    if rank == 0:
        with atomic_dir(out_dir) as folder:
            module = engine.module if engine is not None else explainer
            save_explainer(module, folder, meta)
            (folder / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    _barrier()
    return log


def _trainable_state(explainer) -> dict:
    return {name: p.detach().cpu().clone() for name, p in explainer.named_parameters() if p.requires_grad}


def _save_checkpoint(folder: Path, run_hash, step, history, explainer, optimizer, scheduler, engine) -> None:
    """DeepSpeed writes its (possibly sharded) state from every process; then rank 0 writes the state file,
    atomically and last, so a checkpoint only counts once all of it is on disk."""
    tag = f"step{step}"
    folder.mkdir(parents=True, exist_ok=True)
    if engine is not None:
        engine.save_checkpoint(str(folder / "deepspeed"), tag=tag)
    _barrier()
    if world()[0] == 0:
        state = {"run_hash": run_hash, "step": step, "tag": tag, "history": history,
                 "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}
        if engine is None:
            state |= {"trainable": _trainable_state(explainer), "optimizer": optimizer.state_dict()}
        with atomic_path(folder / STATE_FILE) as tmp:
            torch.save(state, tmp)
        for old in (folder / "deepspeed").glob("step*"):
            if old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()


def _resume(folder: Path, run_hash, explainer, optimizer, scheduler, engine) -> tuple[int, list]:
    path = folder / STATE_FILE
    if not path.exists():
        return 0, []
    state = torch.load(path, weights_only=False)
    if state.get("run_hash") != run_hash:
        print(f"ignoring checkpoint {folder}: it was written with other settings", file=sys.stderr)
        _barrier()
        if world()[0] == 0:
            shutil.rmtree(folder, ignore_errors=True)
        return 0, []
    if engine is not None:
        engine.load_checkpoint(str(folder / "deepspeed"), tag=state["tag"])
    else:
        expected = {name for name, p in explainer.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(expected - set(state["trainable"])), sorted(set(state["trainable"]) - expected)
        if missing or unexpected:
            raise ArtifactError(f"{path}: checkpoint does not fit this explainer: missing {missing[:5]} "
                                f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}); delete {folder}")
        explainer.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    print(f"resuming training from step {state['step']} ({folder})", file=sys.stderr)
    return state["step"], state["history"]
