"""The explainer: a causal LM whose input embedding at a placeholder token is replaced by a vector.

The placeholder is a dedicated token found by id: a reserved token where the tokenizer has one
(Llama 3's `<|reserved_special_token_12|>` and Qwen 3's `<|vision_pad|>`, as the paper's code
uses; Gemma 3's `<unused0>`), otherwise `<|vector|>` added as a special token with a zero
embedding row (never generated). The vector (a target-model hidden state) is normalised, mapped
to the explainer's width by a trainable linear projection (identity-initialised when widths
match) and scaled to the mean norm of what the explainer's embedding layer returns (Gemma's
layer multiplies its rows by sqrt(width), so the raw weights would be ~25x too small).
With `inject="layer"` (explainer = target, as Patchscopes and SelfIE read a model's own states) the
placeholder keeps its embedding and the vector instead replaces the placeholder's output of the decoder
layer it was taken from, scaled to the mean norm of the row's other tokens there (the first token, an
attention sink, left out); no projection. Saved folders hold the peft adapter (or full weights),
`projection.safetensors` and `explainer.json`.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.models import decoder_layers, embedding_norm
from pipeline.explainer.prompts import VECTOR

EXPLAINER_META = "explainer.json"
# Training methods that leave the language model as it is: only the vector's map (map), or an affine adapter after
# the fitted map (affine); their folders hold the projections and no weights of the model.
FROZEN_METHODS = ("map", "affine")
PROJECTION_FILE = "projection.safetensors"
RESERVED_PLACEHOLDERS = ("<|reserved_special_token_12|>", "<|vision_pad|>", "<unused0>")
ADDED_PLACEHOLDER = "<|vector|>"


class WidthError(ValueError):
    """Vector and model widths do not fit together."""


def placeholder_token_id(tokenizer, model: nn.Module | None = None) -> int:
    """The placeholder's id; adds `<|vector|>` (and, given the model, a zero embedding row) where no
    reserved token exists. Deterministic, so training and every later load agree on the id and row."""
    vocab = tokenizer.get_vocab()
    for token in RESERVED_PLACEHOLDERS:
        if token in vocab:
            return vocab[token]
    if ADDED_PLACEHOLDER not in vocab:
        tokenizer.add_tokens([ADDED_PLACEHOLDER], special_tokens=True)
    token_id = tokenizer.convert_tokens_to_ids(ADDED_PLACEHOLDER)
    if model is not None and token_id >= model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[token_id:].zero_()
            output = model.get_output_embeddings()
            if output is not None:
                output.weight[token_id:].zero_()
    return token_id


class ContinuousTokenExplainer(nn.Module):
    def __init__(self, lm: nn.Module, target_width: int, placeholder_id: int, projection: str = "linear",
                 inject: str = "embedding", alignment: dict[int, tuple] | None = None,
                 train_projection: bool = True, scale: str = "embedding_norm", affine: bool = False):
        """`alignment` (layer -> (weight, mean), pipeline/explainer/alignment.py) gives one projection per target layer
        started from the fitted map (the paper's `embed_projs`), applied to the unit vector less the layer's mean;
        without it one projection serves every layer. `scale`: embedding_norm (the unit vector's image at the
        embeddings' mean norm) or raw (the vector as it is, through the projection where there is one: the
        paper's code). `affine`: d + 1 more parameters after the map, a scale (from 1) and a shift (from 0) of what
        the placeholder receives (the frozen-explainer adapter of arXiv 2602.10352)."""
        super().__init__()
        self.lm = lm
        embeddings = lm.get_input_embeddings().weight
        width = embeddings.shape[1]
        self.target_width = target_width
        self.placeholder_id = placeholder_id
        if inject not in ("embedding", "layer"):
            raise ValueError(f"explainer.inject: expected 'embedding' or 'layer', got {inject!r}")
        self.inject = inject
        if inject == "layer":
            if target_width != width:
                raise WidthError(f"explainer.inject is 'layer' but target width {target_width} != explainer width "
                                 f"{width}: a layer reads only its own model's states")
            projection = "none"
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
        if scale not in ("embedding_norm", "raw"):
            raise ValueError(f"explainer.scale: expected 'embedding_norm' or 'raw', got {scale!r}")
        self.scale = scale
        self.placeholder_wrap: tuple[int, int] | None = None  # begin/end ids around the placeholder (released)
        self.layer_projections = None
        if alignment and self.projection is not None:
            self.projection = None
            self.layer_projections = nn.ModuleDict()
            self.layer_means = nn.ParameterDict()
            for layer, (weight, mean) in sorted(alignment.items()):
                if tuple(weight.shape) != (width, target_width):
                    raise WidthError(f"the alignment of layer {layer} maps {weight.shape[1]} to {weight.shape[0]}, "
                                     f"but this explainer reads width {target_width} and writes {width}")
                linear = nn.Linear(target_width, width, bias=False, dtype=torch.float32)
                with torch.no_grad():
                    linear.weight.copy_(weight)
                self.layer_projections[str(layer)] = linear.to(embeddings.device)
                self.layer_means[str(layer)] = nn.Parameter(mean.float().to(embeddings.device), requires_grad=False)
        for parameter in self.projection_parameters():
            parameter.requires_grad_(train_projection)
        self.affine_scale = nn.Parameter(torch.ones((), device=embeddings.device)) if affine else None
        self.affine_shift = nn.Parameter(torch.zeros(width, device=embeddings.device)) if affine else None
        self.register_buffer("embed_norm", embedding_norm(lm, {placeholder_id}).to(embeddings.device), persistent=False)

    def projection_parameters(self) -> list:
        """The projection's weights: the shared one, or every layer's."""
        if self.layer_projections is not None:
            return list(self.layer_projections.parameters())
        return list(self.projection.parameters()) if self.projection is not None else []

    def affine_parameters(self) -> list:
        return [self.affine_scale, self.affine_shift] if self.affine_scale is not None else []

    def project(self, vectors: torch.Tensor, vector_layers=None) -> torch.Tensor:
        """What the placeholder's embedding becomes for each vector (before the cast to the model's dtype)."""
        mapped = self._mapped(vectors, vector_layers)
        if self.affine_scale is None:
            return mapped
        return self.affine_scale * mapped.float() + self.affine_shift

    def _mapped(self, vectors: torch.Tensor, vector_layers=None) -> torch.Tensor:
        if self.layer_projections is not None:
            if vector_layers is None or len(vector_layers) != len(vectors):
                raise ValueError("this explainer has one projection per target layer: every vector needs its layer")
            missing = sorted({int(x) for x in vector_layers} - {int(k) for k in self.layer_projections})
            if missing:
                raise ValueError(f"no projection for vector layer(s) {missing}; the alignment holds layers "
                                 f"{sorted(int(k) for k in self.layer_projections)}")
            weight = self.layer_projections[str(int(vector_layers[0]))].weight
            mapped = torch.empty(len(vectors), weight.shape[0], dtype=weight.dtype, device=vectors.device)
            for layer in sorted({int(x) for x in vector_layers}):
                rows = torch.tensor([i for i, x in enumerate(vector_layers) if int(x) == layer], device=vectors.device)
                key = str(layer)
                # (under bf16 autocast the map returns bf16: it is stored in the fp32 result as it is)
                if self.scale == "raw":  # the paper's embed_projs: the layer's map on the vector as it is
                    mapped[rows] = self.layer_projections[key](vectors[rows].to(weight.dtype)).to(mapped.dtype)
                    continue
                centred = vectors[rows].float() - self.layer_means[key].float()
                unit = centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-6)
                mapped[rows] = self.layer_projections[key](unit.to(weight.dtype)).to(mapped.dtype)
            return mapped if self.scale == "raw" else mapped * self.embed_norm
        if self.scale == "raw":
            raw = vectors.float()
            return self.projection(raw.to(self.projection.weight.dtype)) if self.projection is not None else raw
        unit = vectors.float() / vectors.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
        # The projection is fp32, unless an engine cast the whole module (DeepSpeed bf16): meet it in its dtype.
        mapped = self.projection(unit.to(self.projection.weight.dtype)) if self.projection is not None else unit
        return mapped * self.embed_norm

    def _placeholders(self, input_ids: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        if vectors.shape[-1] != self.target_width:
            raise WidthError(f"vectors have width {vectors.shape[-1]} but this explainer reads width {self.target_width}")
        found = input_ids == self.placeholder_id
        slots = vectors.shape[1] if vectors.dim() == 3 else 1
        if not bool((found.sum(dim=1) == slots).all()):
            times = "exactly once" if slots == 1 else f"{slots} times"
            raise ValueError(f"every prompt given {slots} vector(s) must hold the placeholder token (id "
                             f"{self.placeholder_id}) {times}; found counts {found.sum(dim=1).tolist()}")
        return found

    def embed(self, input_ids: torch.Tensor, vectors: torch.Tensor | None, vector_layers=None):
        """Input embeddings with row b's placeholder replaced by the projected vectors[b] (embedding injection;
        with layer injection the embeddings are left as they are). A row of several placeholders (an in-context
        prompt: each solved example's vector, then the question's) takes vectors [rows, slots, width] in order, and
        `vector_layers` per row a list of the slots' layers."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        if vectors is None or self.inject == "layer":
            return embeds
        found = self._placeholders(input_ids, vectors)
        if vectors.dim() == 3:  # row-major, as `embeds[found]` orders the placeholders
            vector_layers = None if vector_layers is None else [layer for row in vector_layers for layer in row]
            vectors = vectors.reshape(-1, vectors.shape[-1])
        mapped = self.project(vectors, vector_layers).to(embeds.dtype)
        embeds = embeds.clone()
        embeds[found] = mapped
        return embeds

    @contextlib.contextmanager
    def injected(self, input_ids, attention_mask, vectors, vector_layers):
        """With layer injection: while inside, decoder layer L's output at row b's placeholder is vectors[b]'s
        direction at the mean norm of the row's other tokens there, for every row b with vector_layers[b] == L.
        Only the pass over the whole prompt is changed (later generation steps read it from the cache)."""
        if vectors is None or self.inject != "layer":
            yield
            return
        if vector_layers is None or len(vector_layers) != len(vectors):
            raise ValueError("explainer.inject is 'layer': every vector needs the layer it was taken from")
        if vectors.dim() == 3:
            raise ValueError("explainer.inject is 'layer': a prompt of several vectors (in context) needs 'embedding'")
        found = self._placeholders(input_ids, vectors)
        positions = found.float().argmax(dim=1)
        width = input_ids.shape[1]
        real = attention_mask.bool() & ~found
        real[torch.arange(len(real)), attention_mask.float().argmax(dim=1)] = False  # the first token: a sink
        unit = vectors.float() / vectors.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        blocks = decoder_layers(base)
        layers = torch.as_tensor(vector_layers, device=input_ids.device)

        def hook_for(rows):
            def hook(module, args, output):
                hidden = output[0] if isinstance(output, tuple) else output
                if hidden.shape[1] != width:
                    return None
                norms = hidden[rows].detach().float().norm(dim=-1)
                scale = (norms * real[rows]).sum(dim=1) / real[rows].sum(dim=1).clamp_min(1)
                hidden = hidden.clone()
                hidden[rows, positions[rows]] = (unit[rows] * scale[:, None]).to(hidden.dtype)
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            return hook

        handles = []
        try:
            for layer in sorted(set(layers.tolist())):
                if not 0 <= layer < len(blocks):
                    raise ValueError(f"vector layer {layer} is not a layer of the explainer (it has {len(blocks)})")
                rows = (layers == layer).nonzero().squeeze(-1)
                handles.append(blocks[layer].register_forward_hook(hook_for(rows)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers: int = 1,
                                        offload: bool = False):
        """Recompute the language model's activations in the backward pass (the Trainer calls this)."""
        self.lm.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs,
                                                every_n_layers=every_n_layers, offload=offload)

    @contextlib.contextmanager
    def output_at(self, mask: torch.Tensor | None):
        """While inside, the output layer runs only at `mask`'s (row, position) pairs, in row-major order: its input
        [batch, length, width] becomes [1, pairs, width], so the logits are [1, pairs, vocabulary]. What the model
        does to the logits after the output layer (Gemma's soft-capping) still applies."""
        if mask is None:
            yield
            return
        head = self.lm.get_output_embeddings()
        handle = head.register_forward_pre_hook(lambda module, args: (args[0][mask.to(args[0].device)][None],
                                                                      *args[1:]))
        try:
            yield
        finally:
            handle.remove()

    def forward(self, input_ids, attention_mask, vectors=None, labels=None, vector_layers=None, logits_to_keep=0):
        """`logits_to_keep`: as the model takes it (a count of last positions, or position indices shared by every
        row), or a [batch, length] bool mask: logits at exactly those (row, position) pairs (see `output_at`)."""
        embeds = self.embed(input_ids, vectors, vector_layers)
        mask = logits_to_keep if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dim() == 2 else None
        with self.injected(input_ids, attention_mask, vectors, vector_layers), self.output_at(mask):
            return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels,
                           logits_to_keep=0 if mask is not None else logits_to_keep)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, vectors=None, max_new_tokens=24, pad_token_id=None,
                 eos_token_id=None, vector_layers=None):
        embeds = self.embed(input_ids, vectors, vector_layers)
        with self.injected(input_ids, attention_mask, vectors, vector_layers):
            return self.lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                                    suppress_tokens=[self.placeholder_id])


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    has_vector: bool
    weights: list[float] | None = None  # per-token loss weights (None: every answer token weighs 1)


# The answer parts a loss weight can favour: the <<<content>>>, and the verdict: the word where the two answer forms
# part ("The output would remain unchanged ..." / "The most likely output would change ...", prompts.CHANGED and
# UNCHANGED), which decides it, and the words prompts.parse_answer reads it from.
_CONTENT = re.compile(r"<<<(.*?)>>>", re.S)
_VERDICT = re.compile(r"(?<=^The )(?:output|most)\b|(?<=^ The )(?:output|most)\b|remain\s+unchanged|change\s+to")


def answer_weights(tokenizer, text: str, content: float = 1.0, verdict: float = 1.0) -> list[float]:
    """One weight per token of `text` (tokenised without special tokens): `content` for tokens inside <<<...>>>,
    `verdict` for the verdict's words, 1 elsewhere (the larger where a token touches both)."""
    spans = [(m.start(1), m.end(1), content) for m in _CONTENT.finditer(text)]
    spans += [(m.start(), m.end(), verdict) for m in _VERDICT.finditer(text)]
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    weights = []
    for start, end in offsets:
        touching = [w for a, b, w in spans if start < b and end > a]
        weights.append(max(touching) if touching else 1.0)
    return weights


def prompt_text(question: str, tokenizer, prompt_format: str) -> str:
    if prompt_format == "chat":
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    if prompt_format in ("paper", "templated"):  # as it is: the paper's string template (its task's ending added), or a
        return question                          # prompt already in the chat template (in-context turns)
    return f"{question}\nAnswer:"


def encode_example(tokenizer, question: str, answer: str | None, prompt_format: str,
                   placeholder_id: int | None = None, content_weight: float = 1.0,
                   verdict_weight: float = 1.0, wrap: tuple[int, int] | None = None) -> Encoded:
    """Token ids with the placeholder id where `<vector>` stands (between `wrap`'s begin and end ids where given,
    as the paper's prompts hold it); labels cover only the answer, whose <<<content>>> and verdict tokens weigh
    `content_weight` and `verdict_weight` in the loss (1: every answer token alike)."""
    text = prompt_text(question, tokenizer, prompt_format)
    special = prompt_format not in ("chat", "templated")  # a chat template writes its own special tokens
    pieces = text.split(VECTOR)  # one placeholder per <vector> (several in an in-context prompt)
    marker = len(pieces) > 1
    ids = tokenizer(pieces[0], add_special_tokens=special)["input_ids"]
    if marker and placeholder_id is None:
        raise ValueError("the question holds <vector> but no placeholder token id was given")
    for after in pieces[1:]:
        middle = [wrap[0], placeholder_id, wrap[1]] if wrap else [placeholder_id]
        ids = ids + middle + tokenizer(after, add_special_tokens=False)["input_ids"]
    labels = [-100] * len(ids)
    weights = None
    if answer is not None:
        answer_text = ("" if prompt_format in ("chat", "paper", "templated") else " ") + answer
        answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
        if content_weight != 1.0 or verdict_weight != 1.0:
            weights = [0.0] * len(ids) + answer_weights(tokenizer, answer_text, content_weight, verdict_weight) + [1.0]
        answer_ids = answer_ids + [tokenizer.eos_token_id]
        ids, labels = ids + answer_ids, labels + answer_ids
    return Encoded(ids, labels, bool(marker), weights)


def collate(batch: list[Encoded], vectors: torch.Tensor | None, pad_id: int, device,
            vector_layers: list[int] | None = None) -> dict:
    """Left-padded tensors for training (labels) or generation; each vector's source layer where given."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    weighted = any(e.weights is not None for e in batch)
    weights = torch.zeros((len(batch), width)) if weighted else None
    for row, example in enumerate(batch):
        shift = width - len(example.input_ids)
        ids[row, shift:] = torch.tensor(example.input_ids)
        labels[row, shift:] = torch.tensor(example.labels)
        mask[row, shift:] = 1
        if weighted:
            weights[row, shift:] = torch.tensor(example.weights if example.weights is not None
                                                else [float(x != -100) for x in example.labels])
    has_vectors = vectors is not None and all(e.has_vector for e in batch)
    out = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device),
           "vectors": vectors.to(device) if has_vectors else None,
           "vector_layers": list(vector_layers) if has_vectors and vector_layers is not None else None}
    if weighted:
        out["loss_weights"] = weights.to(device)
    return out


def save_explainer(explainer: ContinuousTokenExplainer, folder: Path, meta: dict, state: dict | None = None) -> None:
    """The explainer's folder: the peft adapter (or the whole fine-tuned model), the projection and its metadata.
    `state`, where given, is the explainer's whole state dict gathered from partitioned weights (ZeRO-3)."""
    from safetensors.torch import save_file

    from peft import PeftModel

    meta = meta | {"embed_norm": float(explainer.embed_norm), "placeholder_id": explainer.placeholder_id,
                   "inject": explainer.inject, "scale": explainer.scale, "affine": explainer.affine_scale is not None,
                   "alignment": "fitted" if explainer.layer_projections is not None else "identity"}
    lm_state = {k.removeprefix("lm."): v for k, v in state.items() if k.startswith("lm.")} if state else None
    if isinstance(explainer.lm, PeftModel):
        # The adapter alone: the placeholder's embedding row is recreated (zero) wherever the explainer loads.
        explainer.lm.save_pretrained(folder, save_embedding_layers=False, state_dict=lm_state)
    elif meta.get("method") not in FROZEN_METHODS:  # a frozen language model is the base model: not saved again
        explainer.lm.save_pretrained(folder, state_dict=lm_state)
    affine = {}
    if explainer.affine_scale is not None:
        affine = {"affine.scale": explainer.affine_scale.detach().float().cpu().reshape(1).contiguous(),
                  "affine.shift": explainer.affine_shift.detach().float().cpu().contiguous()}
    if explainer.layer_projections is not None:
        tensors = {}
        for key, linear in explainer.layer_projections.items():
            weight = state[f"layer_projections.{key}.weight"] if state else linear.weight
            tensors[f"layers.{key}.weight"] = weight.detach().float().cpu().contiguous()
            tensors[f"layers.{key}.mean"] = explainer.layer_means[key].detach().float().cpu().contiguous()
        save_file(tensors | affine, str(folder / PROJECTION_FILE))
    elif explainer.projection is not None:
        weight = state["projection.weight"] if state else explainer.projection.weight
        save_file({"weight": weight.detach().float().cpu().contiguous()} | affine, str(folder / PROJECTION_FILE))
    (folder / EXPLAINER_META).write_text(json.dumps(meta, indent=2, default=str) + "\n")


EMBED_PROJ = re.compile(r"^(?:model\.)?embed_projs\.(\d+)\.weight$")


def released_folder(checkpoint: str) -> Path:
    """A released explainer's local folder: the path itself, or a hub id's snapshot (HF cache or HF_TOKEN)."""
    from pipeline.artifacts import local_folder

    local = local_folder(checkpoint, "explainer.checkpoint")
    if local:
        return Path(local)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(checkpoint, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as error:  # offline, unknown id, no access: say which setting and why
        raise ValueError(f"explainer.checkpoint: cannot fetch {checkpoint!r} from the hub (a local folder or a hub id "
                         f"in the HF cache): {type(error).__name__}: {error}") from error


def load_released(checkpoint: str, target_width: int, continuous_tokens: tuple[str, str, str] | None,
                  text_only: bool = False, dtype: torch.dtype | None = None) -> tuple[ContinuousTokenExplainer, object]:
    """A released explainer in the layout the paper's code writes (`model/continuous_*.py`, `save_pretrained`): a
    transformers model folder whose weights may hold one map per target layer (`embed_projs.{L}.weight`), prompted
    with `begin rep end` tokens around the vector (its config's `continuous_tokens`). As its
    `_process_continuous_tokens` does: the raw vector at `rep` when the widths match, the layer's map of the raw
    vector otherwise."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models import contiguous_output_layer

    folder = released_folder(checkpoint)
    if not (folder / "config.json").is_file():
        found = sorted(p.name for p in folder.iterdir())[:8]
        raise ValueError(f"explainer.checkpoint: {checkpoint} is not an explainer layout this workflow reads: expected "
                         f"this workflow's trained explainer ({EXPLAINER_META}) or a transformers model folder "
                         f"(config.json and weights) as the paper's code saves one; found {found}")
    if not continuous_tokens and not text_only:  # a text-only task (input_ablation) has no vector in its prompts
        raise ValueError(f"explainer.checkpoint {checkpoint}: set explainer.continuous_tokens (begin, rep, end), the "
                         f"tokens its prompts hold around and at the vector (the paper's Llama-3 explainers: "
                         f"<|reserved_special_token_10|>, <|reserved_special_token_12|>, <|reserved_special_token_11|>)")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    vocab = tokenizer.get_vocab()
    ids = []
    for name, token in zip(("begin", "rep", "end"), () if text_only else continuous_tokens):
        if token not in vocab:
            raise ValueError(f"explainer.continuous_tokens.{name}: {token!r} is not a token of {checkpoint}'s tokenizer")
        ids.append(vocab[token])
    model = contiguous_output_layer(AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=dtype or "auto", device_map="auto" if torch.cuda.is_available() else None))
    if text_only:
        explainer = ContinuousTokenExplainer(model, target_width, tokenizer.eos_token_id, projection="none")
        explainer.eval()
        return explainer, tokenizer
    maps = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                match = EMBED_PROJ.match(key)
                if match:
                    maps[int(match.group(1))] = handle.get_tensor(key).float()
    width = model.get_input_embeddings().weight.shape[1]
    if target_width == width:
        explainer = ContinuousTokenExplainer(model, target_width, ids[1], projection="none", scale="raw")
    elif not maps:
        raise WidthError(f"explainer.checkpoint {checkpoint}: its width {width} differs from the target's "
                         f"{target_width} and its weights hold no embed_projs.{{L}}.weight to map them")
    else:
        explainer = ContinuousTokenExplainer(model, target_width, ids[1], "linear", scale="raw", alignment={
            layer: (weight, torch.zeros(target_width)) for layer, weight in maps.items()})
    explainer.placeholder_wrap = (ids[0], ids[2])
    explainer.eval()
    return explainer, tokenizer


def load_explainer(folder: str | Path | None, base_model_dir: str | Path, target_width: int, *,
                   projection: str = "linear", inject: str = "embedding", alignment: str | Path | None = None,
                   scale: str = "embedding_norm", center: bool = True,
                   continuous_tokens: tuple[str, str, str] | None = None,
                   text_only: bool = False, dtype: torch.dtype | None = None) -> tuple[ContinuousTokenExplainer, object]:
    """A trained explainer from `folder` (this workflow's, or a released one in the paper's layout:
    `load_released`), or the untrained base explainer when `folder` is None (started from the fitted `alignment`
    artifact, where given, as training starts). `dtype`: the language model's weights (bf16 to generate in bf16; the
    projections stay fp32)."""
    from safetensors.torch import load_file

    from pipeline.models import load_model

    if folder is not None and not (Path(folder) / EXPLAINER_META).is_file():
        return load_released(str(folder), target_width, continuous_tokens, text_only, dtype)
    meta = json.loads((Path(folder) / EXPLAINER_META).read_text()) if folder else {}
    full = meta.get("method") == "full"
    model, tokenizer = load_model(base_model_dir, weights=folder if full else None, dtype=dtype)
    placeholder = placeholder_token_id(tokenizer, model)
    if folder and not full and meta.get("method") not in FROZEN_METHODS:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
        if dtype is not None:
            model.to(dtype)  # the merged adapter in the weights' dtype
    width = meta.get("target_width", target_width)
    maps = None
    if folder and meta.get("alignment") == "fitted":
        projection = meta["projection"] = "linear"  # per-layer projections (older folders say "none")
        saved = load_file(str(Path(folder) / PROJECTION_FILE))
        maps = {int(name.split(".")[1]): (weight, saved[name.replace(".weight", ".mean")])
                for name, weight in saved.items() if name.startswith("layers.") and name.endswith(".weight")}
    elif not folder and alignment:
        from pipeline.explainer.alignment import load_alignment

        maps = load_alignment(alignment, width, model.get_input_embeddings().weight.shape[1], center)
    explainer = ContinuousTokenExplainer(model, width, placeholder, meta.get("projection", projection),
                                         meta.get("inject", inject), maps, scale=meta.get("scale", scale),
                                         affine=bool(meta.get("affine")))
    saved = load_file(str(Path(folder) / PROJECTION_FILE)) if folder and (Path(folder) / PROJECTION_FILE).is_file() else {}
    if folder and explainer.projection is not None:
        explainer.projection.weight.data.copy_(saved["weight"])
    if explainer.affine_scale is not None:
        explainer.affine_scale.data.copy_(saved["affine.scale"].reshape(()))
        explainer.affine_shift.data.copy_(saved["affine.shift"])
    if "embed_norm" in meta:  # the scale training used (full fine-tuning moves the embeddings a little)
        explainer.embed_norm.fill_(float(meta["embed_norm"]))
    explainer.eval()
    return explainer, tokenizer
