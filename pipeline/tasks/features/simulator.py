"""The simulator: how well a description predicts where its feature fires.

A local causal LM reads a description and a feature's exemplar windows and predicts each token's activation
as the expected value over its next-token probabilities on activation classes (the method of
openai/automated-interpretability, which the paper's released simulator follows). Three prompt formats:
- `finetuned` (the paper's released simulator, `FinetunedSimulator.simulate` in its observatory_utils/simulator.py):
  `"## Neuron Description: {description}\n\n ## Input: "` then the window's tokens, one exemplar per forward
  pass; the activation of each token is read from the logits at that token's own position on the vocabulary
  ids 0..10, which are the classes 0..10 (not the digit tokens). With a Llama-3 tokenizer whose model has the
  extra rows the paper's simulator adds, the prefix's special tokens are remapped as its `UPD_MAPPING` does.
- `all_at_once` (the paper's and OpenAI's prompt for an untrained model): the paper's system prompt, then one
  token per line as `token<TAB>unknown`; the prediction is read where "unknown" would come, on the numbers
  "0".."10" that are single tokens of the tokenizer (for SmolLM2 and Gemma, "0".."9": a Pearson correlation
  does not depend on the scale).
- `compact` (what this workflow fine-tunes by default, `train_simulator`): the description, then each window's
  tokens as they are, every window in one prompt; read at each token on the single-token numbers. About a
  fifth of the tokens of `all_at_once`, so training and scoring fit a 2-core machine.
A released checkpoint's format is read from the checkpoint itself (`probe_format`: a model trained in the
`finetuned` format predicts one of vocabulary ids 0..10 at every input token), a simulator this
workflow trained records its format in `simulator.json`, and an untrained model is read `all_at_once`.
A description's score is the Pearson correlation between simulated and true activations (negative ones
clipped to 0) pooled over every token of the scored windows, on two sets: the top-activating exemplars
(the paper's code scores its top 20 and reports |r|) and top and random exemplars 1:1 (the OpenAI
method, signed r). Simulations are cached in SQLite by (simulator, prompt format, description, windows),
so a rerun simulates only descriptions it has not seen.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import torch

from pipeline.sampling import described_by_rank
from pipeline.tasks.features.settings import SimulatorConfig

# The paper's simulator system prompt ("unk_base", observatory_utils/simulator.py).
SYSTEM_PROMPT = """\
You are a meticulous AI researcher conducting an important investigation into a specific neuron inside a language model that activates in response to text inputs.

Your overall task is to simulate the activations of a neuron given a sequence of input tokens.
Prior to this, you have studied neuron activation patterns given a large corpus of text and summarized the behavior of a neuron in a sentence or two. Look at the explanation and try to predict how it will fire on each token.

The activation format is token<tab>activation, activations go from 0 to 10, "unknown" indicates an unknown activation. Most activations will be 0.
"""
FORMAT_VERSIONS = {"all_at_once": "unk_base/all_at_once/v1", "compact": "compact/v1",  # cache keys: bump on change
                   "finetuned": "transluce_finetuned/v1"}
FORMATS = tuple(FORMAT_VERSIONS)
FORMAT_FILE = "simulator.json"  # in a trained simulator's folder: its format and how it was trained
COMPACT_HEADER = "Feature description: {description}\nActivation of the feature at each token:"
FINETUNED_PREFIX = "## Neuron Description: {description}\n\n ## Input: "  # the paper's FinetunedSimulator
FINETUNED_CLASSES = 11  # vocabulary ids 0..10 are the classes 0..10 (the paper reads logits[:, :, :11])
# The paper's UPD_MAPPING: its Llama-3 simulator has the prompt's special tokens at new vocabulary rows.
LLAMA3_SPECIAL_REMAP = {128000: 128257, 128006: 128258, 128007: 128259, 128009: 128260}
PROBE_THRESHOLD = 0.5  # share of tokens predicting one of ids 0..10 above which a checkpoint is read as finetuned


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r; 0 when either side is constant (no linear information)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def number_tokens(tokenizer) -> dict[int, int]:
    """{value: token id} for the numbers 0..10 that are single tokens of the tokenizer."""
    numbers = {}
    for value in range(11):
        ids = tokenizer(str(value), add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            numbers[value] = ids[0]
    if len(numbers) < 2:
        raise ValueError("fewer than two of the numbers '0'..'10' are single tokens of the simulator's tokenizer")
    return numbers


def _load(model_dir: str, fmt: str = "auto"):
    """(model, tokenizer, source, format, evidence) from a prepared model folder (manifest.json), a simulator this
    workflow trained (also simulator.json), or a released checkpoint: any other local folder or a hub id, whose
    format `probe_format` reads from the checkpoint unless `fmt` names one."""
    from pathlib import Path

    from pipeline.models import MANIFEST, contiguous_output_layer, load_model, read_manifest

    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"features.simulator.format: {fmt!r} is not one of auto, {', '.join(FORMATS)}")
    folder = Path(model_dir)
    if (folder / MANIFEST).is_file():
        model, tokenizer = load_model(folder)
        trained = folder / FORMAT_FILE
        own = json.loads(trained.read_text())["format"] if trained.is_file() else "all_at_once"
        return model, tokenizer, read_manifest(folder)["source"], own if fmt == "auto" else fmt, {"from": (
            FORMAT_FILE if trained.is_file() else "an untrained model") if fmt == "auto" else "setting"}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = contiguous_output_layer(AutoModelForCausalLM.from_pretrained(str(model_dir)))
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except OSError as error:
        raise ValueError(f"features.simulator.checkpoint: cannot load {model_dir!r} as a released simulator (a local "
                         f"folder or a hub id of a causal LM): {error}") from error
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    evidence = {"from": "setting"}
    if fmt == "auto":
        mass = probe_format(model, tokenizer)
        fmt = "finetuned" if mass >= PROBE_THRESHOLD else "all_at_once"
        evidence = {"from": "probe", "class_argmax_share": round(mass, 4), "threshold": PROBE_THRESHOLD}
    return model, tokenizer, {"checkpoint": str(model_dir)}, fmt, evidence


PROBE_TEXT = ("the word the", [" The", " old", " man", " sat", " by", " the", " fire", " and", " sang", "."])


@torch.no_grad()
def probe_format(model, tokenizer) -> float:
    """The share of input tokens of a `finetuned`-format prompt at which the model's most likely next token over
    the whole vocabulary is one of ids 0..10: 1 for a model trained in that format (those are its classes), near 0
    for a language model (ids 0..10 are special, byte or punctuation tokens) or a random one (11 of the vocabulary)."""
    from pipeline.models import input_device

    ids, positions = encode_prompt(tokenizer, "finetuned", PROBE_TEXT[0], [PROBE_TEXT[1]], remap=_remap(model, tokenizer))[0]
    logits = model(input_ids=torch.tensor([ids], device=input_device(model))).logits[0, positions]
    return float((logits.argmax(-1) < FINETUNED_CLASSES).float().mean())


def _remap(model, tokenizer) -> dict[int, int]:
    """The paper's special-token remapping, where this is its Llama-3 simulator (a Llama-3 tokenizer and
    vocabulary rows for the new ids); none otherwise."""
    rows = model.get_input_embeddings().weight.shape[0]
    if getattr(tokenizer, "bos_token_id", None) == 128000 and rows > max(LLAMA3_SPECIAL_REMAP.values()):
        return dict(LLAMA3_SPECIAL_REMAP)
    return {}


def number_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                  positions: torch.Tensor, number_ids: torch.Tensor) -> torch.Tensor:
    """The next-token logits on the number tokens at (rows[i], positions[i]): [len(rows), len(number_ids)]. The
    output layer is applied only there and only to those tokens (a full vocabulary at every position would cost
    more than the model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[rows, positions]
    weight = base.get_output_embeddings().weight[number_ids.to(hidden.device)]
    logits = hidden.float() @ weight.float().T
    cap = getattr(base.config, "final_logit_softcapping", None) or getattr(
        getattr(base.config, "text_config", None), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def pad_right(encoded: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in encoded)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(encoded):
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    return ids, mask


def _prefix(tokenizer, fmt: str, description: str) -> list[int]:
    if fmt == "compact":
        return tokenizer(COMPACT_HEADER.format(description=description))["input_ids"]
    if fmt == "finetuned":
        return tokenizer(FINETUNED_PREFIX.format(description=description))["input_ids"]
    user = f"Neuron 1\nDescription of neuron selectivity: {description}"
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user},
                    {"role": "assistant", "content": "Activations:"}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(f"{SYSTEM_PROMPT}\n{user}\nActivations:")["input_ids"]


def encode_prompt(tokenizer, fmt: str, description: str, windows: list[list[str]],
                  remap: dict[int, int] | None = None) -> list[tuple[list[int], list[int]]]:
    """The prompts of format `fmt` (one for all windows; `finetuned`: one per window) as token ids, each with the
    positions whose logits are read as the activations of its window tokens, in order. A window token that the
    simulator's tokenizer splits is read at its last piece."""
    piece = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prefix = [(remap or {}).get(i, i) for i in _prefix(tokenizer, fmt, description)]

    def tokens(ids: list[int], positions: list[int], window: list[str]) -> None:
        for token in window:  # each token as it is, read at its last piece
            ids += piece(token) or piece(" ")
            positions.append(len(ids) - 1)

    if fmt == "finetuned":
        prompts = []
        for window in windows:
            ids, positions = list(prefix), []
            tokens(ids, positions, window)
            prompts.append((ids, positions))
        return prompts
    ids, positions = list(prefix), []
    for window in windows:
        if fmt == "compact":
            ids += piece("\n")
            tokens(ids, positions, window)
            continue
        ids += piece("\n<start>\n")
        for token in window:
            ids += piece(f"{token}\t")
            positions.append(len(ids) - 1)
            ids += piece("unknown\n")
        ids += piece("<end>")
    return [(ids, positions)]


def class_tokens(tokenizer, fmt: str) -> dict[int, int]:
    """{class value: token id} a format reads: vocabulary ids 0..10 for `finetuned`, else the numbers' tokens."""
    return {value: value for value in range(FINETUNED_CLASSES)} if fmt == "finetuned" else number_tokens(tokenizer)


class Simulator:
    def __init__(self, model_dir, batch_size: int = 8, cache_path=None, fmt: str = "auto"):
        from pipeline.tasks.features.llm import ReplyCache
        from pipeline.models import input_device

        self.model, self.tokenizer, self.source, self.format, self.format_evidence = _load(str(model_dir), fmt)
        self.device = input_device(self.model)
        self.batch_size = batch_size
        self.cache = ReplyCache(cache_path) if cache_path else None
        self.remap = _remap(self.model, self.tokenizer) if self.format == "finetuned" else {}
        numbers = class_tokens(self.tokenizer, self.format)
        self.values = torch.tensor(list(numbers), dtype=torch.float32)
        self.number_ids = torch.tensor(list(numbers.values()))
        self.calls = {"simulated": 0, "cached": 0}

    def encode(self, description: str, windows: list[list[str]]) -> list[tuple[list[int], list[int]]]:
        return encode_prompt(self.tokenizer, self.format, description, windows, self.remap)

    def _key(self, description: str, windows: list[list[str]]) -> str:
        blob = json.dumps({"simulator": self.source, "format": FORMAT_VERSIONS[self.format], "description": description,
                           "windows": windows}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    @torch.no_grad()
    def _run(self, jobs: list[tuple[str, list[list[str]]]]) -> list[np.ndarray]:
        prompts = [(job, prompt) for job, (d, w) in enumerate(jobs) for prompt in self.encode(d, w)]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i][1][0]))
        parts: list[np.ndarray] = [np.empty(0)] * len(prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(order), self.batch_size):
            chunk = [prompts[i][1] for i in order[start:start + self.batch_size]]
            ids, mask = pad_right([p[0] for p in chunk], pad)
            rows = torch.cat([torch.full((len(p[1]),), row) for row, p in enumerate(chunk)])
            positions = torch.cat([torch.tensor(p[1], dtype=torch.long) for p in chunk])
            logits = number_logits(self.model, ids.to(self.device), mask.to(self.device), rows.to(self.device),
                                   positions.to(self.device), self.number_ids).cpu()
            expected = (logits.softmax(-1) @ self.values).numpy()
            for part, i in zip(np.split(expected, np.cumsum([len(p[1]) for p in chunk])[:-1]),
                               order[start:start + self.batch_size]):
                parts[i] = part
        return [np.concatenate([parts[i] for i, (job, _) in enumerate(prompts) if job == k] or [np.empty(0)])
                for k in range(len(jobs))]

    def simulate(self, jobs: list[tuple[str, list[list[str]]]]) -> list[np.ndarray]:
        """Per (description, windows) job: the expected activation at every token of its windows, in order."""
        keys = [self._key(d, w) for d, w in jobs]
        found = {k: self.cache.get(k) for k in keys} if self.cache is not None else {}
        todo = sorted({k: i for i, k in enumerate(keys) if found.get(k) is None}.values())
        if todo:
            from tqdm.auto import tqdm

            results = []
            for start in tqdm(range(0, len(todo), 64), desc="simulator", mininterval=10):
                results += self._run([jobs[i] for i in todo[start:start + 64]])
            for i, values in zip(todo, results):
                found[keys[i]] = json.dumps([round(float(v), 5) for v in values])
                if self.cache is not None:
                    self.cache.put(keys[i], json.dumps(self.source, default=str), found[keys[i]], 0, 0)
        self.calls["simulated"] += len(todo)
        self.calls["cached"] += len(jobs) - len(todo)
        return [np.asarray(json.loads(found[k]), dtype=float) for k in keys]


def feature_windows(exemplars: pd.DataFrame, top: int, random: int, before: int | None = None,
                    describe_every: int = 1) -> dict[tuple[int, int], dict]:
    """Per (layer, feature): its windows (top-activating first, then random) with true activations, and which
    windows form the two scored sets: the top `top`, and top and random 1:1 (min of what exists of each).
    `before` keeps only that many tokens before each window's centre token (and all after it). With
    `describe_every` k > 1 the top ranks 0, k, 2k, ... (the describer's) are left out: scored out of sample."""
    out = {}
    if describe_every > 1:
        exemplars = exemplars[(exemplars["kind"] != "top") | ~described_by_rank(exemplars["rank"], describe_every)]
    if before is not None:
        cut = lambda values, centre: list(values)[max(0, int(centre) - before):]  # noqa: E731
        exemplars = exemplars.assign(
            tokens=[cut(t, c) for t, c in zip(exemplars["tokens"], exemplars["window_index"])],
            activations=[cut(a, c) for a, c in zip(exemplars["activations"], exemplars["window_index"])])
    exemplars = exemplars.sort_values(["layer", "feature", "kind", "rank"], ascending=[True, True, False, True])
    for key, part in exemplars.groupby(["layer", "feature"]):
        tops = part[part["kind"] == "top"].head(top)
        randoms = part[part["kind"] == "random"].head(random)
        pair = min(len(tops), len(randoms))
        windows = [[str(t) for t in w] for w in list(tops["tokens"]) + list(randoms["tokens"])]
        truth = [np.clip(np.asarray(a, dtype=float), 0, None) for a in list(tops["activations"]) + list(randoms["activations"])]
        out[(int(key[0]), int(key[1]))] = {
            "windows": windows, "truth": truth,
            "sets": {"top": list(range(len(tops))),
                     "top_random": list(range(pair)) + list(range(len(tops), len(tops) + pair))}}
    return out


def read_windows(exemplars_path, cfg: SimulatorConfig, describe_every: int = 1) -> dict[tuple[int, int], dict]:
    """feature_windows of an exemplars table (the SAE's or an out-of-distribution set's), as the simulator's
    settings size them (top, random, tokens_before), leaving out the top ranks the describer read (describe_every;
    1: none, as for the out-of-distribution sets, which nothing describes)."""
    from pipeline.artifacts import read_table

    exemplars = read_table(exemplars_path, required=["layer", "feature", "kind", "rank", "tokens", "window_index",
                                                     "activations"])
    return feature_windows(exemplars, cfg.top, cfg.random, cfg.tokens_before, describe_every)


def pooled_correlations(simulated: np.ndarray, entry: dict) -> dict[str, float]:
    """Pearson r of simulated against true activations, pooled over every token of each scored set's windows
    (not averaged per window): `top` (|r|, as the paper reports it), `top_signed` and `top_random`."""
    lengths = [len(w) for w in entry["windows"]]
    per_window = np.split(np.asarray(simulated, dtype=float), np.cumsum(lengths)[:-1])
    score = {}
    for name, picked in entry["sets"].items():
        predicted = np.concatenate([per_window[i] for i in picked]) if picked else np.empty(0)
        actual = np.concatenate([entry["truth"][i] for i in picked]) if picked else np.empty(0)
        score[name] = pearson(predicted, actual)
    return {"top": abs(score["top"]), "top_signed": score["top"], "top_random": score["top_random"]}


def score_descriptions(simulator: Simulator, items: list[tuple[str, tuple[int, int]]], windows: dict) -> pd.DataFrame:
    """Per (description, feature) item: its pooled correlations (see pooled_correlations)."""
    simulated = simulator.simulate([(description, windows[feature]["windows"]) for description, feature in items])
    return pd.DataFrame([pooled_correlations(values, windows[feature]) for (_, feature), values in zip(items, simulated)],
                        columns=["top", "top_signed", "top_random"])
