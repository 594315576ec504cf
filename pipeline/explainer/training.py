"""Fine-tune an explainer (peft LoRA or full) on (question, answer, vector) examples.

The loss covers only the answer tokens. A checkpoint of the trainable state is written every
`checkpoint_every` steps in the checkpoint folder; a rerun resumes from it only when its key matches: the
stage's result settings plus the identity of its inputs (label tables by provenance, models by spec),
so a checkpoint trained on other labels is discarded, and a checkpoint missing any trainable weight
is refused.
Training runs on the Hugging Face Trainer (`ExplainerTrainer`): it brings torchrun and DeepSpeed (ZeRO 0-3,
weights gathered on save under ZeRO-3) or FSDP, resume from checkpoint, gradient accumulation and checkpointing,
bf16, length-grouped batches and TensorBoard event files (copied into the explainer folder beside
training_log.json). What stays ours: the continuous-token explainer as the model, the answer-only loss divided
by the answer tokens of the whole accumulated global batch (so several processes train as one does), the
projection's own learning rate, and checkpoints keyed by the run's settings that hold the trainable weights alone.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.artifacts import ArtifactError, as_umask_says, atomic_dir, atomic_path, config_hash, provenance
from pipeline.settings import ExplainerConfig, TrainingConfig
from pipeline.explainer.model import (FROZEN_METHODS, ContinuousTokenExplainer, collate, encode_example,
                                      placeholder_token_id, save_explainer)
from pipeline.sampling import seeded_subset
from pipeline.models import load_model, read_manifest
from pipeline.runtime import resolve_precision, warn


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
    """[batch, length] bool: the (row, position) pairs whose next token is an answer token, the only logits the loss
    reads. Passed to the explainer as `logits_to_keep`, the output layer runs there alone (Gemma's is 262k wide),
    not at every row of a position where some row's answer is (left-padded rows' answers differ in length)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    return mask


def answer_loss_sum(logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None,
                    weights: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over answer tokens (each times its weight, where `weights` [batch, length]
    are given), and their count. `logits` are at every position [batch, length, vocabulary], or only at the
    answer_positions mask `positions` [1, pairs, vocabulary]."""
    if positions is None:
        shifted, targets = logits[:, :-1].float(), labels[:, 1:]
        weights = weights[:, 1:] if weights is not None else None
    else:
        kept = positions[:, :-1]
        shifted, targets = logits.float(), labels[:, 1:][kept]
        weights = weights[:, 1:][kept] if weights is not None else None
    losses = torch.nn.functional.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1),
                                               ignore_index=-100, reduction="none")
    if weights is not None:
        losses = losses * weights.reshape(-1).to(losses.dtype)
    return losses.sum(), int((targets != -100).sum())


def with_lora(model, cfg: TrainingConfig):
    """The model with the training section's LoRA adapter attached (peft); on a CPU its dropout draws its masks from
    random words (WordMaskDropout)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                             target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM"))
    if cfg.lora.dropout > 0 and not torch.cuda.is_available():
        for module in model.modules():
            dropouts = getattr(module, "lora_dropout", None)
            if isinstance(dropouts, torch.nn.ModuleDict):
                for name in list(dropouts.keys()):
                    dropouts[name] = WordMaskDropout(cfg.lora.dropout)
    return model


class WordMaskDropout(torch.nn.Module):
    """Dropout with its mask cut from 64-bit random words, four 16-bit fields each, instead of one Bernoulli draw per
    element: on a CPU torch's generator makes one number at a time, and LoRA's masks (one per element of each adapted
    projection's input) took a fifth of an fp32 training step and over a quarter of a bf16 one; this draws a quarter
    of the numbers (2.3x faster on 2 cores, bench/bench_trainer.py). Each field is uniform (the top one over 15 bits),
    so the rate is p rounded to 1/32768; kept elements are scaled by 1 / (1 - p), as torch.nn.Dropout does."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.register_buffer("threshold", torch.tensor([round(p * 65536) - 32768] * 3 + [round(p * 32768)],
                                                       dtype=torch.int16), persistent=False)

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        count = x.numel()
        words = -(-count // 4)
        fields = torch.empty(words, dtype=torch.int64, device=x.device).random_().view(torch.int16).view(words, 4)
        keep = (fields >= self.threshold).view(-1)[:count].view(x.shape)  # little-endian: the top field is last
        return x * keep * (1 / (1 - self.p))


TRAINABLE_FILE = "trainable.safetensors"  # a checkpoint's trainable weights (LoRA and projection, or all of a full run)
KEY_FILE = "run_key.json"  # the checkpoint key a checkpoint folder was written under


def deepspeed_config(cfg: TrainingConfig) -> dict:
    """The DeepSpeed config the Trainer runs with ("auto" values are filled in from its arguments). ZeRO-3 gathers
    the 16-bit weights when a checkpoint or the explainer is saved, so what is written is whole."""
    zero: dict = {"stage": cfg.deepspeed.zero_stage}
    if cfg.deepspeed.zero_stage == 3:
        zero |= {"stage3_gather_16bit_weights_on_model_save": True}
    return {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto", "zero_optimization": zero, "bf16": {"enabled": "auto"},
            "zero_allow_untested_optimizer": True}


def trainer_class():
    from transformers import Trainer

    class ExplainerTrainer(Trainer):
        """The continuous-token explainer on the Hugging Face Trainer: answer-only loss normalised by the answer
        tokens of the whole accumulated global batch, two learning rates, checkpoints of the trainable weights."""

        loss_is_scaled_for_ga = True  # compute_loss divides by the accumulated batch's token count itself

        def __init__(self, *args, lm_lr: float, projection_lr: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.lm_lr, self.projection_lr, self.tokens_seen = lm_lr, projection_lr, 0
            self.model_accepts_loss_kwargs = True  # so the Trainer counts answer tokens over the global batch

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels, weights = inputs.pop("labels"), inputs.pop("loss_weights", None)
            self.tokens_seen += int(inputs["attention_mask"].sum())
            positions = answer_positions(labels)
            outputs = model(**inputs, logits_to_keep=positions)
            loss_sum, count = answer_loss_sum(outputs.logits, labels, positions, weights)
            total = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
            # DDP and DeepSpeed average gradients over processes: scale each process's share back up.
            loss = loss_sum / total * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                explainer = self.model
                groups = [{"params": [p for p in explainer.lm.parameters() if p.requires_grad], "lr": self.lm_lr}]
                projection = [p for p in explainer.projection_parameters() + explainer.affine_parameters()
                              if p.requires_grad]
                groups = [g for g in groups if g["params"]]  # map-only training leaves the model with none
                if projection:
                    groups.append({"params": projection, "lr": self.projection_lr})
                self.optimizer = torch.optim.AdamW(groups, lr=self.lm_lr, weight_decay=0.0)
            return self.optimizer

        def _save(self, output_dir=None, state_dict=None):
            """A checkpoint holds the trainable weights alone (the base model is in resources/models)."""
            from safetensors.torch import save_file

            if not self.args.should_save:
                return
            names = trainable_names(self.model)
            state = state_dict if state_dict else self.model.state_dict()
            os.makedirs(output_dir, exist_ok=True)
            save_file({n: t.detach().cpu().contiguous() for n, t in state.items() if n in names},
                      os.path.join(output_dir, TRAINABLE_FILE))
            as_umask_says(output_dir)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            from safetensors.torch import load_file

            path = Path(resume_from_checkpoint) / TRAINABLE_FILE
            if not path.exists():
                raise ArtifactError(f"{path}: the checkpoint has no trainable weights; delete {path.parent.parent}")
            state = load_file(str(path))
            expected = trainable_names(self.model)
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            if missing or unexpected:
                raise ArtifactError(f"{path}: checkpoint does not fit this explainer: missing {missing[:5]} "
                                    f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}); delete "
                                    f"{path.parent.parent}")
            self.model.load_state_dict(state, strict=False)
            print(f"resuming training from {resume_from_checkpoint}", file=sys.stderr)

    return ExplainerTrainer


def trainable_names(explainer) -> set[str]:
    return {name for name, p in explainer.named_parameters() if p.requires_grad}


def checkpoint_written(folder: str) -> None:
    """Called once a checkpoint is complete on disk (tests interrupt training here)."""


class TrainingStopped(RuntimeError):
    """Training was stopped by a signal after saving a checkpoint; the same command resumes from it."""


STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")  # a SLURM time limit (or --signal), Ctrl-C, a requeue warning


@contextlib.contextmanager
def _stop_on_signal():
    """While inside, SIGTERM (what SLURM sends at a time limit, before SIGKILL), SIGINT (Ctrl-C) and SIGUSR1 ask
    training to stop after the step in flight with a checkpoint saved; the list yielded holds the signals received.
    A second signal stops at once. Outside the main thread (where signals cannot be caught) nothing is installed."""
    import signal
    import threading

    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {}

    def handler(signum, frame):
        if received:  # asked twice: stop now, without a checkpoint
            signal.signal(signum, previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice")
        received.append(signum)
        print(f"{signal.Signals(signum).name} received: saving a checkpoint after the step in flight, then stopping",
              file=sys.stderr, flush=True)

    for name in STOP_SIGNALS:
        number = getattr(signal, name)
        previous[number] = signal.signal(number, handler)
    try:
        yield received
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def _any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any (so all stop at the same step)."""
    return bool(_all_sum(float(flag)) > 0) if world()[1] > 1 else flag


def _callbacks(first_step_gradients, tensorboard_dir: Path, stop_signals: list | None = None,
               stopped: dict | None = None) -> list:
    """The checkpoint, first-step and stop-on-signal hooks (a signal in `stop_signals` on any process: every process
    saves a checkpoint and stops at the same step, recorded in `stopped["step"]`), and (on rank 0) TensorBoard event
    files in `tensorboard_dir`."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers import TrainerCallback
    from transformers.integrations import TensorBoardCallback

    class Hooks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop_signals is not None and _any_process(bool(stop_signals)):
                control.should_save, control.should_training_stop = True, True
                stopped["step"] = state.global_step

        def on_save(self, args, state, control, **kwargs):
            checkpoint_written(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if first_step_gradients and state.global_step == 0 and args.process_index == 0:
                named = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
                with atomic_path(first_step_gradients) as tmp:
                    torch.save(named, tmp)

    return [Hooks()] + ([TensorBoardCallback(SummaryWriter(log_dir=str(tensorboard_dir)))] if world()[0] == 0 else [])


class _Rows(torch.utils.data.Dataset):
    """Example indices with their token ids (the length-grouped sampler reads `input_ids`)."""

    def __init__(self, encoded, chosen):
        self.encoded, self.chosen = encoded, [int(i) for i in chosen]

    def __len__(self):
        return len(self.chosen)

    def __getitem__(self, item):
        index = self.chosen[item]
        return {"index": index, "input_ids": self.encoded[index].input_ids}


LAUNCHER_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def _deepspeed_scope():
    """What DeepSpeed needs around one training, and nothing left behind after it.

    Without a launcher DeepSpeed wants a process group (else it looks for MPI): that of one process over gloo on a
    free port. The group itself stays for the life of the process (DeepSpeed caches its groups; a later training
    reuses it), but the launcher variables are restored on exit, so a workflow this process starts next (as the
    test suite does) does not inherit a MASTER_PORT this process still listens on. The transformers ZeRO-3 flag is
    cleared too, else a later model load in this process would be partitioned. On CPU the shared-memory collective
    op is JIT-compiled (~76 s) and only helps several processes: skipped."""
    import socket

    import deepspeed  # noqa: F401
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    saved = {key: os.environ.get(key) for key in LAUNCHER_KEYS}
    if not ("WORLD_SIZE" in os.environ and "MASTER_PORT" in os.environ):  # no launcher: one process of our own
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    if not torch.cuda.is_available():
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class RunInProgress(RuntimeError):
    """Another live process is training the same run (the same checkpoint folder)."""


@contextlib.contextmanager
def _only_trainer(checkpoint_dir: Path):
    """While inside, this process alone trains into `checkpoint_dir` (a lock file beside it, with who holds it): a
    second run of the same job, such as one started after `snakemake --unlock` while the first still trains, is
    refused instead of resuming from the first's half-written checkpoint. Only rank 0 holds it."""
    import socket
    from datetime import datetime

    from filelock import FileLock, Timeout

    if world()[0] != 0:
        yield
        return
    checkpoint_dir.parent.mkdir(parents=True, exist_ok=True)
    lock, owner = FileLock(f"{checkpoint_dir}.lock"), Path(f"{checkpoint_dir}.owner")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        held = owner.read_text().strip() if owner.exists() else "unknown"
        raise RunInProgress(f"another process is training this run now ({held}; lock {checkpoint_dir}.lock): "
                            f"`snakemake --unlock` was run while that run is live. Wait for it to end, or stop it, "
                            f"then run again") from None
    try:
        owner.write_text(f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now():%Y-%m-%d %H:%M:%S}\n")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _checkpoint_to_resume(checkpoint_dir: Path, run_hash: str) -> str | None:
    """The newest checkpoint written under this run's key; checkpoints of other settings are deleted."""
    key_file = checkpoint_dir / KEY_FILE
    if checkpoint_dir.exists():
        written = json.loads(key_file.read_text()).get("run_hash") if key_file.exists() else None
        if written != run_hash:
            print(f"ignoring checkpoint {checkpoint_dir}: it was written with other settings", file=sys.stderr)
            _barrier()
            if world()[0] == 0:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
    _barrier()
    if world()[0] == 0:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(key_file) as tmp:
            tmp.write_text(json.dumps({"run_hash": run_hash}) + "\n")
    _barrier()
    return _newest_complete_checkpoint(checkpoint_dir)


CHECKPOINT_FILES = (TRAINABLE_FILE, "trainer_state.json")  # what every resumable checkpoint holds


def _newest_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest `checkpoint-N` folder that holds every file a resume reads; newer ones cut off mid-write (a crash
    while the Trainer writes in place) are removed with a warning instead of failing every rerun."""
    if not checkpoint_dir.exists():
        return None
    found = sorted((int(p.name.split("-")[1]), p) for p in checkpoint_dir.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[1].isdigit())
    for _, folder in reversed(found):
        missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
        if not missing:
            return str(folder)
        warn(f"ignoring checkpoint {folder}: it is incomplete (no {', '.join(missing)}), as a run killed "
              f"while writing it leaves it; resuming from an earlier one or from the start")
        _barrier()
        if world()[0] == 0:
            shutil.rmtree(folder, ignore_errors=True)
        _barrier()
    return None


def train_explainer(cfg: TrainingConfig, explainer_cfg: ExplainerConfig, base_model_dir: str | Path,
                    target_width: int, questions: list[str], answers: list[str], vectors: torch.Tensor | None,
                    out_dir: str | Path, checkpoint_dir: str | Path, settings: dict,
                    first_step_gradients: str | Path | None = None, vector_layers: list[int] | None = None,
                    alignment: str | Path | None = None) -> dict:
    """Train with the Hugging Face Trainer, write the explainer folder atomically (rank 0), return the training log.

    `settings` is the checkpoint key (and the explainer's provenance): it must name everything the result
    depends on. `first_step_gradients`, when given, receives the trainable gradients of the first step as
    they are applied (averaged over processes, which equals one process's), for checking multi-process training.
    `vector_layers`: each vector's source layer, for an explainer that injects at that layer (`explainer.inject:
    layer`, or one projection per layer started from the fitted `alignment` artifact, `explainer.alignment: fitted`)."""
    from transformers import TrainingArguments

    from accelerate.state import AcceleratorState

    _init_process_group()
    rank, size = world()
    if cfg.batch_size % size:
        raise ValueError(f"training.batch_size {cfg.batch_size} must be divisible by the {size} training processes")
    # Accelerate keeps its state per process and marks DeepSpeed in the environment: a second training in one
    # process (tests, notebooks) starts afresh.
    AcceleratorState._reset_state(reset_partial_state=True)
    for key in [k for k in os.environ if k.startswith(("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_"))]:
        del os.environ[key]
    torch.manual_seed(cfg.seed)
    out_dir, checkpoint_dir = Path(out_dir), Path(checkpoint_dir)
    precision = resolve_precision(cfg.precision)
    # In bf16 the weights LoRA leaves frozen are held in bf16 (not cast again in every forward pass); the adapter, the
    # projections and the optimizer state stay fp32 (peft keeps adapters fp32), and the products run under bf16
    # autocast. Full fine-tuning keeps fp32 master weights under autocast; DeepSpeed casts as its config says.
    frozen_bf16 = precision == "bf16" and cfg.method != "full" and not cfg.deepspeed.enabled
    model, tokenizer = load_model(base_model_dir, trainable=True, dtype=torch.bfloat16 if frozen_bf16 else None)
    placeholder = placeholder_token_id(tokenizer, model)
    if cfg.method == "lora":
        model = with_lora(model, cfg)
    elif cfg.method in FROZEN_METHODS:  # the field's baselines: the model as it is, only the vector's map trained
        model.requires_grad_(False)
        if explainer_cfg.inject != "embedding":
            raise ValueError(f"training.method {cfg.method!r} trains the map to the placeholder's embedding: it needs "
                             f"explainer.inject 'embedding' (got {explainer_cfg.inject!r})")
    maps = None
    if alignment is not None:
        from pipeline.explainer.alignment import load_alignment

        maps = load_alignment(alignment, target_width, model.get_input_embeddings().weight.shape[1],
                              explainer_cfg.center)
    explainer = ContinuousTokenExplainer(model, target_width, placeholder, explainer_cfg.projection,
                                         explainer_cfg.inject, maps,
                                         cfg.method == "map" or (explainer_cfg.train_projection and cfg.method != "affine"),
                                         explainer_cfg.scale, affine=cfg.method == "affine")
    if cfg.method in FROZEN_METHODS and not trainable_names(explainer):
        raise ValueError(f"training.method {cfg.method!r}: nothing to train (no projection: the vector enters as it "
                         f"is, or the task has no vector)")

    encoded = [encode_example(tokenizer, q, a, explainer_cfg.prompt_format, placeholder, cfg.loss_weights.content,
                              cfg.loss_weights.verdict) for q, a in zip(questions, answers)]
    fits = np.array([len(e.input_ids) <= cfg.max_length for e in encoded])
    candidates = np.flatnonzero(fits)
    chosen = candidates[seeded_subset(len(candidates), cfg.max_examples, cfg.seed)]
    if len(chosen) == 0:
        raise ValueError(f"no training example fits training.max_length={cfg.max_length}")
    per_step = cfg.batch_size * cfg.grad_accum
    total_steps = max(1, math.ceil(len(chosen) * cfg.epochs / per_step))

    def collator(items):
        index = [item["index"] for item in items]
        return collate([encoded[i] for i in index], vectors[index] if vectors is not None else None,
                       tokenizer.pad_token_id, "cpu", [vector_layers[i] for i in index] if vector_layers else None)

    with _only_trainer(checkpoint_dir), _deepspeed_scope() if cfg.deepspeed.enabled else contextlib.nullcontext(), \
            _stop_on_signal() as stop_signals:
        stopped: dict = {"step": None}
        run_hash = config_hash(settings)
        resume = _checkpoint_to_resume(checkpoint_dir, run_hash)
        args = TrainingArguments(
            output_dir=str(checkpoint_dir), max_steps=total_steps, per_device_train_batch_size=cfg.batch_size // size,
            gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate, weight_decay=0.0,
            lr_scheduler_type="constant_with_warmup" if cfg.lr_schedule == "constant" else "linear", warmup_steps=min(cfg.warmup_steps, total_steps // 2), max_grad_norm=1.0,
            seed=cfg.seed, data_seed=cfg.seed, bf16=precision == "bf16", use_cpu=not torch.cuda.is_available(),
            logging_strategy="steps", logging_steps=1, report_to="none", save_strategy="steps", save_steps=cfg.checkpoint_every, save_total_limit=1,
            remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=rank != 0,
            train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
            activation_checkpointing=cfg.gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
            deepspeed=deepspeed_config(cfg) if cfg.deepspeed.enabled else None, fsdp=cfg.fsdp or "",
            ddp_find_unused_parameters=False)
        trainer = trainer_class()(model=explainer, args=args, train_dataset=_Rows(encoded, chosen), data_collator=collator,
                                  callbacks=_callbacks(first_step_gradients, checkpoint_dir / "tensorboard", stop_signals,
                                                     stopped),
                                  lm_lr=cfg.learning_rate,
                                  projection_lr=cfg.projection_learning_rate)
        started = time.time()
        trainer.train(resume_from_checkpoint=resume)
        elapsed = time.time() - started
        if stopped["step"] is not None and stopped["step"] < total_steps:
            import signal

            cause = signal.Signals(stop_signals[0]).name if stop_signals else "a signal to another process"
            saved = checkpoint_dir / f"checkpoint-{stopped['step']}"
            raise TrainingStopped(f"stopped by {cause} at step {stopped['step']} of {total_steps}; checkpoint saved in "
                                  f"{saved}: the same command resumes from it")
        start_step = int(resume.rsplit("-", 1)[1]) if resume else 0
        history = [{"step": e["step"], "loss": e["loss"], "lr": e["learning_rate"]}
                   for e in trainer.state.log_history if "loss" in e]
        log = {"steps": total_steps, "resumed_from_step": start_step, "examples": int(len(chosen)), "precision": precision,
               "skipped_too_long": int((~fits).sum()), "processes": size,
               "tokens_per_second": float(_all_sum(trainer.tokens_seen)) / max(elapsed, 1e-9),
               "seconds": elapsed, "losses": history}
        meta = {"method": cfg.method, "base_model": read_manifest(base_model_dir)["source"], "target_width": target_width,
                "projection": "none" if explainer.projection is None and explainer.layer_projections is None else "linear",
                "inject": explainer_cfg.inject, "train_projection": explainer_cfg.train_projection, "precision": precision,
                "prompt_format": explainer_cfg.prompt_format,
                "provenance": provenance(settings)}
        # Under ZeRO-3 the weights are partitioned: gather them (every process takes part), then rank 0 writes.
        state = trainer.accelerator.get_state_dict(trainer.deepspeed) if cfg.deepspeed.enabled and cfg.deepspeed.zero_stage == 3 else None
        if rank == 0:
            with atomic_dir(out_dir) as folder:
                save_explainer(explainer, folder, meta, state)
                (folder / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
                if (checkpoint_dir / "tensorboard").exists():
                    shutil.copytree(checkpoint_dir / "tensorboard", folder / "tensorboard")
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        _barrier()
    return log
