"""Fine-tuning the simulator (rule features_simulator): LoRA on a local causal LM to predict each token's activation
class of a training feature's exemplar windows from its reference description, in the format the score stage
reads (pipeline/tasks/features/simulator.py)."""

from __future__ import annotations

import json

import numpy as np
import torch

from pipeline.tasks.features.settings import FeaturesConfig
from pipeline.tasks.features.simulator import (FORMAT_FILE, pad_right, class_tokens, encode_prompt, number_logits,
                                               read_windows)


def activation_levels(truth: list[np.ndarray], top: int) -> np.ndarray:
    """True activations of one feature's windows as the classes 0..top the simulator is trained to predict:
    clipped at 0 and scaled so the feature's largest activation is `top` (OpenAI's discretisation to 0..10,
    with `top` the largest number that is one token)."""
    values = np.clip(np.concatenate(truth), 0, None)
    scale = values.max()
    return np.zeros(len(values), dtype=np.int64) if scale <= 0 else np.rint(values / scale * top).astype(np.int64)


def class_balanced_loss(logits: torch.Tensor, target: torch.Tensor, balance: bool = True) -> torch.Tensor:
    """Cross-entropy of each token's activation class; with `balance`, the tokens of class 0 (the feature off) and the
    others (it fires) carry equal shares of the loss, whatever their counts (a whole window is mostly off), and
    within each share every token counts alike. Plain mean cross-entropy when either share is empty or not balanced."""
    each = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    off = target == 0
    if not balance or off.all() or not off.any():
        return each.mean()
    return 0.5 * each[off].mean() + 0.5 * each[~off].mean()


def train_simulator(base_dir, labels_path, exemplars_path, features: FeaturesConfig, out_dir, settings: dict) -> dict:
    """Fine-tune `base_dir` (LoRA on its top `lora_layers` layers, `features.simulator.training`) to predict, on the
    windows the score stage reads (`features.simulator`, the describer's ranks left out), in `format` (compact,
    or the paper's finetuned: one window per prompt, classes 0..10 at vocabulary ids 0..10), the
    activation class of every token of a training feature's windows from its reference description; save the
    merged model as a prepared model folder with `simulator.json` (format, settings, loss history)."""
    from peft import LoraConfig, get_peft_model

    from pipeline.artifacts import atomic_dir, config_hash, read_table
    from pipeline.models import MANIFEST, load_model, read_manifest

    cfg = features.simulator.training
    torch.manual_seed(cfg.seed)
    labels = read_table(labels_path, required=["layer", "feature", "description"])
    windows = read_windows(exemplars_path, features.simulator, features.described_every)
    items = [(str(d), windows[(int(layer), int(feature))]) for layer, feature, d in
             zip(labels["layer"], labels["feature"], labels["description"]) if (int(layer), int(feature)) in windows]
    if not items:
        raise ValueError(f"{labels_path}: no training feature has exemplars in {exemplars_path} to train on")
    manifest = read_manifest(base_dir)
    model, tokenizer = load_model(base_dir, trainable=True)
    fmt = cfg.format
    if fmt not in ("compact", "finetuned"):
        raise ValueError(f"features.simulator.training.format: {fmt!r} is not compact or finetuned")
    numbers = class_tokens(tokenizer, fmt)
    number_ids, top = torch.tensor(list(numbers.values())), max(numbers)
    if list(numbers) != list(range(top + 1)):
        raise ValueError(f"{base_dir}: the simulator needs the numbers 0..{top} as single tokens, found {list(numbers)}")
    # finetuned: a language-model loss over the whole vocabulary (the class is the next token's id), so that the
    # model's mass sits on ids 0..10 as a simulator trained like the paper's does; compact: over the classes only.
    read_ids = torch.arange(model.get_output_embeddings().weight.shape[0]) if fmt == "finetuned" else number_ids
    layers = manifest["num_layers"]
    model = get_peft_model(model, LoraConfig(
        r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj",
        "o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=list(range(max(0, layers - cfg.lora_layers), layers))))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))
    from pipeline.models import input_device

    device, pad = input_device(model), tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = np.random.default_rng(cfg.seed).permutation(len(items))
    history = []
    from tqdm.auto import tqdm

    for step in tqdm(range(cfg.steps), desc="simulator training", mininterval=10):
        batch = [items[order[(step * cfg.batch_size + j) % len(items)]] for j in range(cfg.batch_size)]
        encoded = [prompt for description, entry in batch for prompt in encode_prompt(tokenizer, fmt, description,
                                                                                      entry["windows"])]
        ids, mask = pad_right([e[0] for e in encoded], pad)
        rows = torch.cat([torch.full((len(e[1]),), row) for row, e in enumerate(encoded)])
        positions = torch.cat([torch.tensor(e[1], dtype=torch.long) for e in encoded])
        target = torch.from_numpy(np.concatenate([activation_levels(entry["truth"], top) for _, entry in batch]))
        logits = number_logits(model, ids.to(device), mask.to(device), rows.to(device), positions.to(device), read_ids)
        loss = class_balanced_loss(logits, target.to(logits.device), cfg.balance)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        history.append(round(loss.item(), 5))
    merged = model.merge_and_unload()
    merged.eval()
    with atomic_dir(out_dir) as folder:
        merged.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        source = {"simulator_of": manifest["source"], "trained": config_hash(settings)}
        (folder / MANIFEST).write_text(json.dumps({
            "key": "simulator", "source": source, "location": ".", "hidden_size": manifest["hidden_size"],
            "num_layers": layers, "architecture": manifest["architecture"]}, indent=2) + "\n")
        record = {"format": fmt, "base": manifest["source"], "settings": settings, "features": len(items),
                  "numbers": list(numbers), "loss": history}
        (folder / FORMAT_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"simulator: {len(items)} training features, loss {history[0]:.3f} -> {np.mean(history[-10:]):.3f}")
    return record
