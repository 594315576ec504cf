"""The hand-written explainer training step both throughput benches time beside the Trainer (bench_trainer.py on CPU,
bench_gpu.py on a GPU): collate a batch on the device, forward with logits only at the answer positions, answer-only
loss, backward, clip at 1, AdamW step (the LM's trainable weights at the learning rate, the projection at its own),
under bf16 autocast where the settings ask for bf16. The core of the loop pipeline.explainer.training ran before the
Trainer, without its checkpointing."""

from __future__ import annotations

import torch

from pipeline.settings import TrainingConfig
from pipeline.explainer.model import ContinuousTokenExplainer, collate, encode_example, placeholder_token_id
from pipeline.explainer.training import answer_loss_sum, answer_positions, with_lora
from pipeline.models import load_model


class HandLoop:
    """One explainer (LoRA or full, as `cfg.method` says) on `device`, with its examples encoded once; `step(i)`
    trains on the i-th batch of `cfg.batch_size` and returns that batch's token count (padding not counted)."""

    def __init__(self, cfg: TrainingConfig, model_dir: str, width: int, questions, answers, vectors,
                 device: str = "cpu"):
        torch.manual_seed(cfg.seed)
        model, tokenizer = load_model(model_dir, trainable=True)
        placeholder = placeholder_token_id(tokenizer, model)
        if cfg.method == "lora":
            model = with_lora(model, cfg)
        self.explainer = ContinuousTokenExplainer(model, width, placeholder).to(device)
        self.encoded = [encode_example(tokenizer, q, a, "plain", placeholder) for q, a in zip(questions, answers)]
        self.vectors, self.pad, self.device, self.size = vectors, tokenizer.pad_token_id, device, cfg.batch_size
        self.bf16 = cfg.precision == "bf16"
        projection = list(self.explainer.projection.parameters()) if self.explainer.projection is not None else []
        groups = [{"params": [p for p in self.explainer.lm.parameters() if p.requires_grad], "lr": cfg.learning_rate}]
        groups += [{"params": projection, "lr": cfg.projection_learning_rate}] if projection else []
        self.trainable = [p for group in groups for p in group["params"]]
        self.optimizer = torch.optim.AdamW(groups, weight_decay=0.0, fused=device == "cuda")
        self.explainer.train()

    @property
    def batches(self) -> int:
        return len(self.encoded) // self.size

    def step(self, index: int) -> int:
        rows = slice(index * self.size, (index + 1) * self.size)
        batch = collate(self.encoded[rows], self.vectors[rows], self.pad, self.device)
        labels = batch.pop("labels")
        positions = answer_positions(labels)
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16):
            loss_sum, count = answer_loss_sum(self.explainer(**batch, logits_to_keep=positions).logits, labels,
                                              positions)
        (loss_sum / count).backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum())
