"""The simulator: how well a description predicts where its feature fires.

As in openai/automated-interpretability's all-at-once simulator (which the paper's released simulator
follows), a local causal LM reads the description and then a feature's exemplar windows, one token per
line as `token<TAB>unknown`; at each token its next-token probabilities on the activation tokens
"0".."10" give the expected activation. Only the numbers that are single tokens of the simulator's
tokenizer count (for SmolLM2 and Gemma, "0".."9": a Pearson correlation does not depend on the scale).
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

# The paper's simulator system prompt ("unk_base", observatory_utils/simulator.py).
SYSTEM_PROMPT = """\
You are a meticulous AI researcher conducting an important investigation into a specific neuron inside a language model that activates in response to text inputs.

Your overall task is to simulate the activations of a neuron given a sequence of input tokens.
Prior to this, you have studied neuron activation patterns given a large corpus of text and summarized the behavior of a neuron in a sentence or two. Look at the explanation and try to predict how it will fire on each token.

The activation format is token<tab>activation, activations go from 0 to 10, "unknown" indicates an unknown activation. Most activations will be 0.
"""
FORMAT_VERSION = "unk_base/all_at_once/v1"  # part of the cache key: change it when the prompt changes


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r; 0 when either side is constant (no linear information)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


class Simulator:
    def __init__(self, model_dir, batch_size: int = 8, cache_path=None):
        from pipeline.llm import ReplyCache
        from pipeline.models import input_device, load_model, read_manifest

        self.model, self.tokenizer = load_model(model_dir)
        self.device = input_device(self.model)
        self.batch_size = batch_size
        self.source = read_manifest(model_dir)["source"]
        self.cache = ReplyCache(cache_path) if cache_path else None
        numbers = {}
        for value in range(11):
            ids = self.tokenizer(str(value), add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                numbers[value] = ids[0]
        if len(numbers) < 2:
            raise ValueError(f"simulator {model_dir}: fewer than two of '0'..'10' are single tokens")
        self.values = torch.tensor(list(numbers), dtype=torch.float32)
        self.number_ids = torch.tensor(list(numbers.values()))
        self.calls = {"simulated": 0, "cached": 0}

    def _prefix(self, description: str) -> list[int]:
        user = f"Neuron 1\nDescription of neuron selectivity: {description}"
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user},
                        {"role": "assistant", "content": "Activations:"}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(f"{SYSTEM_PROMPT}\n{user}\nActivations:")["input_ids"]

    def _encode(self, description: str, windows: list[list[str]]) -> tuple[list[int], list[int]]:
        """Token ids of the prompt and the positions whose next token is a window token's activation."""
        piece = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        ids, positions = self._prefix(description), []
        for window in windows:
            ids += piece("\n<start>\n")
            for token in window:
                ids += piece(f"{token}\t")
                positions.append(len(ids) - 1)
                ids += piece("unknown\n")
            ids += piece("<end>")
        return ids, positions

    def _key(self, description: str, windows: list[list[str]]) -> str:
        blob = json.dumps({"simulator": self.source, "format": FORMAT_VERSION, "description": description,
                           "windows": windows}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    @torch.no_grad()
    def _run(self, jobs: list[tuple[str, list[list[str]]]]) -> list[np.ndarray]:
        encoded = [self._encode(d, w) for d, w in jobs]
        order = sorted(range(len(jobs)), key=lambda i: len(encoded[i][0]))
        out: list[np.ndarray] = [np.empty(0)] * len(jobs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            width = max(len(encoded[i][0]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(chunk):
                ids[row, :len(encoded[i][0])] = torch.tensor(encoded[i][0])
                mask[row, :len(encoded[i][0])] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float().cpu()
            for row, i in enumerate(chunk):
                at = logits[row, encoded[i][1]][:, self.number_ids]
                out[i] = (at.softmax(-1) @ self.values).numpy()
        return out

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


def feature_windows(exemplars: pd.DataFrame, top: int, random: int, before: int | None = None) -> dict[tuple[int, int], dict]:
    """Per (layer, feature): its windows (top-activating first, then random) with true activations, and which
    windows form the two scored sets: the top `top`, and top and random 1:1 (min of what exists of each).
    `before` keeps only that many tokens before each window's centre token (and all after it)."""
    out = {}
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
