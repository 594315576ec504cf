"""The explainer: a causal LM whose input embedding at a placeholder token is replaced by a vector.

The vector (a target-model hidden state) is normalised, mapped to the explainer's width by a
trainable linear projection (identity-initialised when widths match) and scaled to the
explainer's typical embedding norm. Saved folders hold the peft adapter (or full weights),
`projection.safetensors` and `explainer.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.prompts import VECTOR

EXPLAINER_META = "explainer.json"
PROJECTION_FILE = "projection.safetensors"


class WidthError(ValueError):
    """Vector and model widths do not fit together."""


class ContinuousTokenExplainer(nn.Module):
    def __init__(self, lm: nn.Module, target_width: int, projection: str = "linear"):
        super().__init__()
        self.lm = lm
        embeddings = lm.get_input_embeddings().weight
        width = embeddings.shape[1]
        self.target_width = target_width
        if projection == "none":
            if target_width != width:
                raise WidthError(f"explainer.projection is 'none' but target width {target_width} != explainer width "
                                 f"{width}; use projection: linear")
            self.projection = None
        else:
            self.projection = nn.Linear(target_width, width, bias=False, dtype=torch.float32)
            with torch.no_grad():
                if target_width == width:
                    self.projection.weight.copy_(torch.eye(width))
                else:
                    nn.init.normal_(self.projection.weight, std=width ** -0.5)
            self.projection.to(embeddings.device)
        self.register_buffer("embed_norm", embeddings.detach().float().norm(dim=-1).mean(), persistent=False)

    def embed(self, input_ids: torch.Tensor, vector_positions: torch.Tensor | None, vectors: torch.Tensor | None):
        embeds = self.lm.get_input_embeddings()(input_ids)
        if vectors is None or vector_positions is None:
            return embeds
        if vectors.shape[-1] != self.target_width:
            raise WidthError(f"vectors have width {vectors.shape[-1]} but this explainer reads width {self.target_width}")
        unit = vectors.float() / vectors.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
        mapped = self.projection(unit) if self.projection is not None else unit
        mapped = (mapped * self.embed_norm).to(embeds.dtype)
        embeds = embeds.clone()
        embeds[torch.arange(len(input_ids), device=input_ids.device), vector_positions] = mapped
        return embeds

    def forward(self, input_ids, attention_mask, vector_positions=None, vectors=None, labels=None):
        embeds = self.embed(input_ids, vector_positions, vectors)
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, vector_positions=None, vectors=None, max_new_tokens=24,
                 pad_token_id=None, eos_token_id=None):
        embeds = self.embed(input_ids, vector_positions, vectors)
        return self.lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                do_sample=False, pad_token_id=pad_token_id, eos_token_id=eos_token_id)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    vector_position: int  # -1 when the prompt holds no vector


def prompt_text(question: str, tokenizer, prompt_format: str) -> str:
    if prompt_format == "chat":
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    return f"{question}\nAnswer:"


def encode_example(tokenizer, question: str, answer: str | None, prompt_format: str) -> Encoded:
    """Token ids with one placeholder id where `<vector>` stands; labels cover only the answer."""
    text = prompt_text(question, tokenizer, prompt_format)
    special = prompt_format != "chat"
    before, marker, after = text.partition(VECTOR)
    ids = tokenizer(before, add_special_tokens=special)["input_ids"]
    position = -1
    if marker:
        position = len(ids)
        placeholder = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.pad_token_id
        ids = ids + [placeholder] + tokenizer(after, add_special_tokens=False)["input_ids"]
    labels = [-100] * len(ids)
    if answer is not None:
        answer_ids = tokenizer((" " if prompt_format != "chat" else "") + answer, add_special_tokens=False)["input_ids"]
        answer_ids = answer_ids + [tokenizer.eos_token_id]
        ids, labels = ids + answer_ids, labels + answer_ids
    return Encoded(ids, labels, position)


def collate(batch: list[Encoded], vectors: torch.Tensor | None, pad_id: int, device) -> dict:
    """Left-padded tensors for training (labels) or generation."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    positions = torch.zeros(len(batch), dtype=torch.long)
    for row, example in enumerate(batch):
        shift = width - len(example.input_ids)
        ids[row, shift:] = torch.tensor(example.input_ids)
        labels[row, shift:] = torch.tensor(example.labels)
        mask[row, shift:] = 1
        positions[row] = shift + example.vector_position
    has_vectors = vectors is not None and all(e.vector_position >= 0 for e in batch)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device),
            "vector_positions": positions.to(device) if has_vectors else None,
            "vectors": vectors.to(device) if has_vectors else None}


def save_explainer(explainer: ContinuousTokenExplainer, folder: Path, meta: dict) -> None:
    from safetensors.torch import save_file

    explainer.lm.save_pretrained(folder)
    if explainer.projection is not None:
        save_file({"weight": explainer.projection.weight.detach().cpu().contiguous()}, str(folder / PROJECTION_FILE))
    (folder / EXPLAINER_META).write_text(json.dumps(meta, indent=2, default=str) + "\n")


def load_explainer(folder: str | Path | None, base_model_dir: str | Path, target_width: int,
                   projection: str = "linear") -> tuple[ContinuousTokenExplainer, object]:
    """A trained explainer from `folder`, or the untrained base explainer when `folder` is None."""
    from safetensors.torch import load_file

    from pipeline.models import load_model

    meta = json.loads((Path(folder) / EXPLAINER_META).read_text()) if folder else {}
    full = meta.get("method") == "full"
    model, tokenizer = load_model(base_model_dir, weights=folder if full else None)
    if folder and not full:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    explainer = ContinuousTokenExplainer(model, meta.get("target_width", target_width),
                                         meta.get("projection", projection))
    if folder and explainer.projection is not None:
        explainer.projection.weight.data.copy_(load_file(str(Path(folder) / PROJECTION_FILE))["weight"])
    explainer.eval()
    return explainer, tokenizer
