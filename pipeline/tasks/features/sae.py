"""TopK sparse autoencoders on the target's residual stream, trained with EleutherAI's sparsify.

`train_saes` trains one SAE per configured layer on corpus chunks and saves them in sparsify's own
layout (`layers.{L}/cfg.json` + `sae.safetensors`), so `sparsify.SparseCoder.load_many(dir, local=True)`
and its users' tools load them. Each chunk opens with a separator token that is left out of training
and of every statistic: position 0 is the model's attention sink, whose huge norm would otherwise
dominate the variance. `sae_quality` reports per layer, on held-out chunks: fraction of variance
explained, L0, dead and always-on fractions, and the increase in next-token loss when the SAE's
reconstruction replaces the residual stream at that layer. `load_decoder` reads decoder directions
from sparsify's or SAELens's layout.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from pipeline.lazy import lazy_import, no_grad
from pipeline.artifacts import ArtifactError, atomic_dir, provenance, read_table, write_table
from pipeline.tasks.features.settings import SaeConfig as SaeSettings  # sparsify has its own SaeConfig

torch = lazy_import("torch")  # loaded on first use: parsing the workflow does not import torch

PROVENANCE_FILE = "provenance.json"


def separator_id(tokenizer) -> int:
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to open each chunk with")
    return int(token)


def token_chunks(tokenizer, texts: list[str], context: int, max_tokens: int | None, seed: int) -> torch.Tensor:
    """[chunks, context] token ids: passages in a seeded order, concatenated with separators, cut into chunks
    that each open with the separator."""
    if context < 2:
        raise ValueError(f"features.sae.context: a chunk needs at least 2 tokens, got {context}")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    sep, body = separator_id(tokenizer), context - 1
    stream: list[int] = []
    for index in order:
        stream += tokenizer(texts[index], add_special_tokens=False)["input_ids"] + [sep]
        if max_tokens and len(stream) >= max_tokens * body / context + body:
            break
    count = len(stream) // body
    if max_tokens:
        count = min(count, max(1, max_tokens // context))
    if count == 0:
        raise ArtifactError(f"the corpus holds fewer than {body} tokens; nothing to train or measure on")
    chunks = torch.tensor(stream[:count * body]).view(count, body)
    return torch.cat([torch.full((count, 1), sep), chunks], dim=1)


def corpus_texts(corpus_path, split: str) -> list[str]:
    frame = read_table(corpus_path, required=["text", "split"])
    texts = frame.loc[frame["split"] == split, "text"].tolist()
    if not texts:
        raise ArtifactError(f"{corpus_path}: no passages in split '{split}'")
    return texts


class _NoGroup:
    """torch.distributed as sparsify sees it inside `_one_process`: every name as torch has it, but no group open."""

    def __getattr__(self, name):
        import torch.distributed

        return getattr(torch.distributed, name)

    @staticmethod
    def is_initialized() -> bool:
        return False


@contextlib.contextmanager
def _one_process():
    """sparsify's trainer wraps each SAE in DDP (and its Muon optimiser splits work across ranks) whenever a process
    group is open. A group of one process (one DeepSpeed opened earlier in this process, as a test or a notebook
    can) holds nobody to share with, and DDP over it fails on CPU: inside this, sparsify sees no group. A group of
    several processes is left as it is (sparsify's own multi-GPU training)."""
    import sparsify.muon
    import sparsify.trainer
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() == 1):
        yield
        return
    modules = (sparsify.trainer, sparsify.muon)
    saved = [module.dist for module in modules]
    for module in modules:
        module.dist = _NoGroup()
    try:
        yield
    finally:
        for module, original in zip(modules, saved):
            module.dist = original


def train_saes(model_dir, corpus_path, cfg: SaeSettings, out_dir, settings: dict) -> dict:
    """Train one TopK SAE per layer of `cfg.layers` and save them in sparsify's layout in `out_dir`."""
    import tempfile

    from datasets import Dataset
    from sparsify import SaeConfig, Trainer, TrainConfig

    from pipeline.models import load_model, read_manifest

    num_layers = read_manifest(model_dir)["num_layers"]
    bad = [layer for layer in cfg.layers if not 0 <= layer < num_layers]
    if bad:
        raise ValueError(f"features.sae.layers: {bad} are not layers of {model_dir} (it has {num_layers})")
    model, tokenizer = load_model(model_dir)
    torch.manual_seed(cfg.seed)
    chunks = token_chunks(tokenizer, corpus_texts(corpus_path, "train"), cfg.context, cfg.max_tokens, cfg.seed)
    print(f"training SAEs at layers {cfg.layers} on {chunks.numel()} tokens ({len(chunks)} chunks of {cfg.context})")
    dataset = Dataset.from_dict({"input_ids": chunks.tolist()}).with_format("torch")
    with tempfile.TemporaryDirectory(prefix="sparsify.") as scratch, atomic_dir(out_dir) as folder:
        train_cfg = TrainConfig(SaeConfig(expansion_factor=cfg.expansion_factor, k=cfg.k),
                                batch_size=cfg.batch_size, layers=list(cfg.layers),
                                exclude_tokens=[separator_id(tokenizer)], init_seeds=[cfg.seed],
                                log_to_wandb=False, save_dir=scratch, run_name="run", save_every=10**9)
        with _one_process():
            Trainer(train_cfg, dataset, model).fit()
        for hookpoint in sorted(Path(scratch, "run").iterdir()):
            if (hookpoint / "cfg.json").exists():
                hookpoint.rename(folder / hookpoint.name)
        found = sorted(p.name for p in folder.iterdir())
        if found != sorted(f"layers.{layer}" for layer in cfg.layers):
            raise ArtifactError(f"sparsify wrote {found}, expected one folder per layer {cfg.layers}")
        meta = provenance(settings, {"target": read_manifest(model_dir)["source"]}) | {
            "tokens": int(chunks.numel()), "separator_id": separator_id(tokenizer)}
        (folder / PROVENANCE_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return meta


def load_decoder(sae_dir: str | Path, expected_width: int | None = None) -> torch.Tensor:
    """Decoder directions [n_features, d_model] of one SAE in sparsify's layout (cfg.json with d_in, sae.safetensors)
    or SAELens's (cfg.json with d_in and d_sae, sae_weights.safetensors)."""
    from safetensors.torch import load_file

    sae_dir = Path(sae_dir)
    cfg_path = sae_dir / "cfg.json"
    if not cfg_path.is_file():
        raise ArtifactError(f"{sae_dir}: no cfg.json; expected an SAE in sparsify's or SAELens's layout")
    cfg = json.loads(cfg_path.read_text())
    for name in ("sae.safetensors", "sae_weights.safetensors"):
        if (sae_dir / name).is_file():
            weights = load_file(str(sae_dir / name))
            break
    else:
        raise ArtifactError(f"{sae_dir}: neither sae.safetensors (sparsify) nor sae_weights.safetensors (SAELens)")
    if "W_dec" not in weights:
        raise ArtifactError(f"{sae_dir}: no W_dec tensor among {sorted(weights)}")
    decoder = weights["W_dec"].float()
    d_in = cfg.get("d_in")
    if d_in is None or decoder.ndim != 2 or decoder.shape[1] != d_in:
        raise ArtifactError(f"{sae_dir}: W_dec has shape {tuple(decoder.shape)}, expected [n_features, d_in={d_in}] "
                            f"as cfg.json says")
    if expected_width is not None and d_in != expected_width:
        raise ArtifactError(f"{sae_dir}: the SAE reads width {d_in} but the target's residual stream has width "
                            f"{expected_width}")
    if "d_sae" in cfg and decoder.shape[0] != cfg["d_sae"]:
        raise ArtifactError(f"{sae_dir}: W_dec has {decoder.shape[0]} rows but cfg.json says d_sae={cfg['d_sae']}")
    return decoder


def load_saes(sae_dir, layers, width: int) -> dict:
    """{layer: sparsify SparseCoder} for the trained SAEs, width-checked."""
    from sparsify import SparseCoder

    saes = {}
    for layer in layers:
        folder = Path(sae_dir) / f"layers.{layer}"
        load_decoder(folder, width)
        saes[layer] = SparseCoder.load_from_disk(folder)
    return saes


@no_grad
def residual_states(model, chunks: torch.Tensor, layers, batch_size: int, desc: str = "encoding"):
    """Yield (chunk offset, {layer: the output of decoder layer `layer`, [B, T, d] float32}) per batch of chunks."""
    from pipeline.models import input_device

    device = input_device(model)
    for start in tqdm(range(0, len(chunks), batch_size), desc=desc, unit="batch", mininterval=5):
        ids = chunks[start:start + batch_size].to(device)
        hidden = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1).hidden_states
        yield start, {layer: hidden[layer + 1].float() for layer in layers}


@no_grad
def encode_layers(model, saes: dict, chunks: torch.Tensor, batch_size: int, desc: str = "encoding"):
    """Yield (chunk offset, hidden states by layer [B, T, d], TopK codes by layer (acts, indices) [B, T, k])."""
    for start, states in residual_states(model, chunks, list(saes), batch_size, desc):
        codes = {}
        for layer, sae in saes.items():
            encoded = sae.encode(states[layer].flatten(0, 1))
            shape = (*states[layer].shape[:2], -1)
            codes[layer] = (encoded.top_acts.view(shape), encoded.top_indices.view(shape))
        yield start, states, codes


@no_grad
def sae_quality(model_dir, sae_dir, corpus_path, cfg: SaeSettings, out_path, settings: dict) -> pd.DataFrame:
    """Per layer, on held-out chunks: variance explained, L0, dead and always-on fractions, loss increase."""
    from pipeline.models import decoder_layers, load_model, read_manifest

    model, tokenizer = load_model(model_dir)
    width = read_manifest(model_dir)["hidden_size"]
    saes = load_saes(sae_dir, cfg.layers, width)
    chunks = token_chunks(tokenizer, corpus_texts(corpus_path, "eval"), cfg.context, cfg.eval_tokens, cfg.seed)
    sums = {layer: {"error": 0.0, "square": 0.0, "l0": 0.0, "x": torch.zeros(width, dtype=torch.float64)}
            for layer in saes}
    fired = {layer: torch.zeros(sae.num_latents) for layer, sae in saes.items()}
    count = chunks[:, 1:].numel()
    for _, states, codes in encode_layers(model, saes, chunks, cfg.batch_size, "quality"):
        for layer, h in states.items():
            acts, indices = (c[:, 1:].flatten(0, 1) for c in codes[layer])
            x = h[:, 1:].flatten(0, 1)
            reconstruction = saes[layer].decode(acts, indices)
            sums[layer]["error"] += float((x - reconstruction).pow(2).sum())
            sums[layer]["square"] += float(x.double().pow(2).sum())
            sums[layer]["x"] += x.double().sum(0)
            active = acts > 0
            sums[layer]["l0"] += float(active.sum())
            fired[layer] += torch.bincount(indices[active], minlength=saes[layer].num_latents).float()
    labels = chunks.clone()
    labels[:, 0] = -100  # the separator is never a target

    def loss_with(layer=None) -> float:
        handle = None
        if layer is not None:
            sae = saes[layer]

            def splice(module, inputs, output):
                hidden = output[0] if isinstance(output, tuple) else output
                flat = hidden[:, 1:].flatten(0, 1).float()
                encoded = sae.encode(flat)
                patched = hidden.clone()
                patched[:, 1:] = sae.decode(encoded.top_acts, encoded.top_indices).view_as(hidden[:, 1:]).to(hidden.dtype)
                return (patched, *output[1:]) if isinstance(output, tuple) else patched

            handle = decoder_layers(model)[layer].register_forward_hook(splice)
        try:
            total, tokens = 0.0, 0
            for start in range(0, len(chunks), cfg.batch_size):
                ids, target = chunks[start:start + cfg.batch_size], labels[start:start + cfg.batch_size]
                n = int((target[:, 1:] != -100).sum())
                total += float(model(input_ids=ids, labels=target).loss) * n
                tokens += n
            return total / tokens
        finally:
            if handle is not None:
                handle.remove()

    clean = loss_with()
    rows = []
    for layer, stats in sums.items():
        frequency = fired[layer] / count
        total = stats["square"] - float(stats["x"].pow(2).sum()) / count  # summed squared deviation from the mean
        rows.append({"layer": layer, "latents": saes[layer].num_latents, "k": saes[layer].cfg.k,
                     "fraction_variance_explained": 1 - stats["error"] / total,
                     "l0": stats["l0"] / count, "dead_fraction": float((frequency == 0).float().mean()),
                     "always_on_fraction": float((frequency > cfg.always_on_fraction).float().mean()),
                     "clean_loss": clean, "spliced_loss": loss_with(layer), "eval_tokens": count})
        rows[-1]["loss_increase"] = rows[-1]["spliced_loss"] - clean
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False))
    write_table(frame, out_path, provenance(settings, {"target": read_manifest(model_dir)["source"]}))
    return frame
