"""The act_patch task: CounterFact pairs -> batched activation patching labels -> explainer examples.

Labels follow the columns of the paper's published act_patch datasets. The pipeline keeps the
intervention vectors in a safetensors file keyed by row id; `load_examples` also accepts a table
in the published layout with the vectors inline in `patch_position`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from pipeline.artifacts import ArtifactError, provenance, read_table, read_tensors, write_table, write_tensors
from pipeline.config import ActPatchConfig
from pipeline.facts import RenderedPrompt, draw_options, render_prompt
from pipeline.prompts import act_patch_question, change_answer, token_text, tokens_to_text

FACTS_COLUMNS = ["fact_id", "relation", "subject", "template", "target_true", "split", "kept", "few_shot"]
LABEL_COLUMNS = ["layer", "input_tokens", "original_continuation", "ablated_continuation", "is_different",
                 "patch_position", "counterfactual_text", "gt_original_target", "gt_counterfactual_target",
                 "layer_hashable", "token_type"]


def token_positions(prompt: RenderedPrompt, offsets: list[tuple[int, int]]) -> dict[str, int]:
    """Token index of the last subject token, the first token after the subject, and the last token."""
    start, end = prompt.subject_span
    real = [(i, a, b) for i, (a, b) in enumerate(offsets) if b > a]
    subject = [i for i, a, b in real if a < end and b > start]
    after = [i for i, a, b in real if a >= end]
    if not subject or not after:
        raise ValueError(f"cannot locate the subject tokens in prompt {prompt.text!r}")
    return {"last_subject_token": subject[-1], "relation_suffix": after[0], "last_token": len(offsets) - 1}


def first_token(tokenizer, target: str) -> int:
    return tokenizer(" " + target, add_special_tokens=False)["input_ids"][0]


def make_pairs(facts: pd.DataFrame, count: int, seed: int, tokenizer) -> list[tuple[pd.Series, pd.Series]]:
    """(original, counterfactual) facts of one relation whose answers begin with different tokens."""
    rng = random.Random(seed)
    facts = facts.assign(first=[first_token(tokenizer, t) for t in facts["target_true"]])
    by_relation = {rel: group for rel, group in facts.groupby("relation")}
    order = list(range(len(facts)))
    rng.shuffle(order)
    pairs = []
    for index in order:
        original = facts.iloc[index]
        pool = by_relation[original["relation"]]
        pool = pool[(pool["first"] != original["first"]) & (pool["subject"] != original["subject"])]
        if len(pool):
            pairs.append((original, pool.iloc[rng.randrange(len(pool))]))
        if len(pairs) == count:
            break
    return pairs


def build_labels(cfg: ActPatchConfig, facts_path: str | Path, model_dir: str | Path, split: str,
                 out_table: str | Path, out_vectors: str | Path) -> pd.DataFrame:
    """Patch every (pair, token type, layer window) and record greedy next tokens with and without it."""
    from pipeline.models import load_model, read_manifest

    facts = read_table(facts_path, required=FACTS_COLUMNS)
    facts = facts[facts["kept"] & (facts["split"] == split)].reset_index(drop=True)
    if facts.empty:
        raise ArtifactError(f"{facts_path}: no kept facts in split '{split}'")
    model, tokenizer = load_model(model_dir)
    manifest = read_manifest(model_dir)
    windows = cfg.windows(manifest["num_layers"])
    pairs = make_pairs(facts, cfg.pairs[split], cfg.pair_seed, tokenizer)
    rng = random.Random(cfg.pair_seed)
    rendered = []
    for original, counter in pairs:
        options = draw_options(facts, original["relation"], [original["target_true"], counter["target_true"]],
                               cfg.prompt.n_options, rng) if cfg.prompt.format == "constrained" else None
        examples = json.loads(original["few_shot"])
        rendered.append(tuple(render_prompt(f["template"], f["subject"], options, cfg.prompt, tokenizer, examples)
                              for f in (original, counter)))
    run = run_patches(model, tokenizer, rendered, windows, list(cfg.token_types), cfg.batch_size,
                      manifest["num_layers"], desc=split)
    types, orig_enc, cf_enc, orig_pos, cf_pos = run.types, run.orig_enc, run.cf_enc, run.orig_pos, run.cf_pos
    answers, states, jobs_per_pair = run.answers, run.states, run.jobs_per_pair

    rows, vectors = [], []
    for i, (original, counter) in enumerate(pairs):
        input_tokens = tokenizer.convert_ids_to_tokens(orig_enc[i]["input_ids"])
        cf_tokens = tokenizer.convert_ids_to_tokens(cf_enc[i]["input_ids"])
        clean = tokenizer.decode([int(answers[i, 0])])
        for job, (type_index, window_index) in enumerate(jobs_per_pair[1:], start=1):
            token_type, window = types[type_index], windows[window_index]
            patched = tokenizer.decode([int(answers[i, job])])
            o_pos, c_pos = orig_pos[i][token_type], cf_pos[i][token_type]
            rows.append({
                "row_id": len(rows), "pair_id": i, "split": split, "relation": original["relation"],
                "subject": original["subject"], "counterfactual_subject": counter["subject"],
                "input_text": rendered[i][0].text,
                "layer": [int(x) for x in window], "input_tokens": input_tokens,
                "original_continuation": [clean], "ablated_continuation": [patched],
                "is_different": bool(answers[i, job] != answers[i, 0]),
                "patch_position": {"counterfact_pos": c_pos, "counterfact_text_token": cf_tokens[c_pos],
                                   "orig_pos": o_pos, "orig_text_token": input_tokens[o_pos],
                                   "orig_text_decoded": tokenizer.decode([orig_enc[i]["input_ids"][o_pos]])},
                "counterfactual_text": rendered[i][1].text,
                "gt_original_target": original["target_true"], "gt_counterfactual_target": counter["target_true"],
                "layer_hashable": [int(x) for x in window], "token_type": token_type,
            })
            # The vector the explainer sees: the counterfactual output of the window's first layer (what is patched there).
            vectors.append(states[i, type_index, window[0]])
    frame = pd.DataFrame(rows)
    settings = {"act_patch": cfg.__dict__ | {"prompt": cfg.prompt.__dict__}, "split": split}
    prov = provenance(settings, {"target": manifest["source"]})
    prov["counts"] = {"pairs": len(pairs), "rows": len(frame), "changed": int(frame["is_different"].sum())}
    write_tensors({"intervention_vector": torch.stack(vectors), "row_id": torch.arange(len(frame))}, out_vectors, prov)
    write_table(frame, out_table, prov)
    return frame


def load_examples(table_path: str | Path, vectors_path: str | Path | None = None) -> tuple[pd.DataFrame, torch.Tensor]:
    """Rows and intervention vectors from a pipeline table (+ safetensors) or a published table (inline vectors)."""
    frame = read_table(table_path, required=LABEL_COLUMNS)
    if vectors_path is not None:
        tensors = read_tensors(vectors_path)
        if "intervention_vector" not in tensors:
            raise ArtifactError(f"{vectors_path}: no tensor 'intervention_vector'")
        row_ids = frame["row_id"].to_numpy() if "row_id" in frame else np.arange(len(frame))
        vectors = tensors["intervention_vector"]
        if row_ids.max(initial=-1) >= len(vectors):
            raise ArtifactError(f"{vectors_path}: holds {len(vectors)} vectors but {table_path} refers to row {row_ids.max()}")
        vectors = vectors[torch.from_numpy(np.array(row_ids, dtype=np.int64))]
    else:
        inline = [p.get("intervention_vector") if isinstance(p, dict) else None for p in frame["patch_position"]]
        if any(v is None for v in inline):
            raise ArtifactError(f"{table_path}: patch_position.intervention_vector is missing and no vectors file was given")
        vectors = torch.tensor(np.stack([np.asarray(v, dtype=np.float32) for v in inline]))
    return frame, vectors.float()


def _first(value) -> str:
    return str(value[0]) if isinstance(value, (list, tuple, np.ndarray)) else str(value)


def examples_from_rows(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Explainer questions and reference answers for label rows (pipeline or published layout)."""
    questions, answers = [], []
    for index, row in enumerate(frame.itertuples(index=False)):
        text = row.input_text if "input_text" in frame.columns else tokens_to_text(row.input_tokens)
        position = row.patch_position
        token = position.get("orig_text_decoded") or tokens_to_text([position["orig_text_token"]])
        questions.append(act_patch_question(index, row.layer, token, text))
        changed = bool(row.is_different)
        content = _first(row.ablated_continuation if changed else row.original_continuation)
        answers.append(change_answer(changed, token_text(content)))
    return questions, answers


def train(training_cfg, explainer_cfg, labels_path, vectors_path, explainer_dir, target_dir, out_dir,
          checkpoint_dir, settings: dict) -> dict:
    """Fine-tune the explainer on the training split's label rows."""
    from pipeline.models import read_manifest
    from pipeline.training import train_explainer

    frame, vectors = load_examples(labels_path, vectors_path)
    target_width = read_manifest(target_dir)["hidden_size"]
    if vectors.shape[1] != target_width:
        raise ArtifactError(f"{vectors_path}: vectors have width {vectors.shape[1]}, but target model "
                            f"{target_dir} has hidden size {target_width}")
    questions, answers = examples_from_rows(frame)
    return train_explainer(training_cfg, explainer_cfg, explainer_dir, target_width, questions, answers, vectors,
                           out_dir, checkpoint_dir, settings)


VARIANTS = ("finetuned", "untrained", "no_vector")


def generate(variant: str, generation_cfg, explainer_cfg, labels_path, vectors_path, explainer_dir, target_dir,
             trained_dir, out_path, settings: dict) -> pd.DataFrame:
    """Answers of one explainer variant on the test split: the fine-tuned explainer, the untrained
    explainer (zero-shot, with format instructions, in its chat template if it has one), or the
    fine-tuned one given a zero vector."""
    from pipeline.explainer import load_explainer
    from pipeline.generation import generate_answers, seeded_subset
    from pipeline.models import read_manifest
    from pipeline.prompts import FORMAT_INSTRUCTION

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant '{variant}'; expected one of {VARIANTS}")
    frame, vectors = load_examples(labels_path, vectors_path)
    chosen = seeded_subset(len(frame), generation_cfg.max_examples, generation_cfg.seed)
    frame, vectors = frame.iloc[chosen].reset_index(drop=True), vectors[chosen]
    questions, references = examples_from_rows(frame)
    target_width = read_manifest(target_dir)["hidden_size"]
    explainer, tokenizer = load_explainer(None if variant == "untrained" else trained_dir, explainer_dir,
                                          target_width, explainer_cfg.projection)
    prompt_format = explainer_cfg.prompt_format
    if variant == "untrained":
        questions = [q + FORMAT_INSTRUCTION for q in questions]
        # Zero-shot, an instruct model is asked as it was trained to be asked: in its chat template.
        prompt_format = "chat" if getattr(tokenizer, "chat_template", None) else prompt_format
    if variant == "no_vector":
        vectors = torch.zeros_like(vectors)
    predictions = generate_answers(explainer, tokenizer, questions, vectors, prompt_format,
                                   generation_cfg.max_new_tokens, generation_cfg.batch_size, desc=variant)
    out = pd.DataFrame({"row_id": frame["row_id"] if "row_id" in frame else np.arange(len(frame)),
                        "variant": variant, "question": questions, "prediction": predictions,
                        "reference": references, "is_different": frame["is_different"].astype(bool),
                        "token_type": frame["token_type"], "layer": frame["layer"]})
    write_table(out, out_path, provenance(settings, {"explainer": read_manifest(explainer_dir)["source"],
                                                     "target": read_manifest(target_dir)["source"]}))
    return out


def score(scoring_cfg, prediction_paths: dict[str, str], labels_paths: dict[str, str], facts_path, trained_dir,
          explainer_dir, target_dir, out_path, names: dict[str, str]) -> dict:
    """Metrics of every variant, counts and provenance in `results/act_patch/{explainer}_{target}.json`."""

    from pipeline.artifacts import read_provenance, write_json
    from pipeline.metrics import change_metrics_by_label, run_summary

    metrics = {}
    for variant, path in prediction_paths.items():
        frame = read_table(path, required=["prediction", "reference", "is_different"])
        metrics[variant] = change_metrics_by_label(frame, scoring_cfg.bootstrap_samples, scoring_cfg.seed)
    counts = {"facts": read_provenance(facts_path).get("counts", {})}
    for split, path in labels_paths.items():
        counts[f"labels_{split}"] = read_provenance(path).get("counts", {})
    result = {"task": "act_patch", "explainer": names["explainer"], "target": names["target"], "metrics": metrics,
              "counts": counts} | run_summary(scoring_cfg, prediction_paths, trained_dir, explainer_dir, target_dir)
    write_json(result, out_path)
    return result


@dataclass
class PatchRun:
    types: list[str]
    jobs_per_pair: list[tuple]  # (token type index, window index); (None, None) is the clean run
    orig_enc: list[dict]
    cf_enc: list[dict]
    orig_pos: list[dict]
    cf_pos: list[dict]
    states: torch.Tensor  # [pairs, token types, layers, width] counterfactual states
    answers: np.ndarray  # [pairs, jobs] greedy next-token ids


def run_patches(model, tokenizer, rendered: list[tuple[RenderedPrompt, RenderedPrompt]], windows: list[list[int]],
                types: list[str], batch_size: int, num_layers: int, desc: str = "") -> PatchRun:
    """Greedy next tokens of every pair's original prompt, clean and patched at each token type x window."""
    from pipeline.models import input_device
    from pipeline.patching import capture_states, encode, pad_left, patched_next_tokens, wrap

    special = rendered[0][0].add_special_tokens
    orig_enc = encode(tokenizer, [r[0].text for r in rendered], special)
    cf_enc = encode(tokenizer, [r[1].text for r in rendered], special)
    orig_pos = [token_positions(r[0], e["offsets"]) for r, e in zip(rendered, orig_enc)]
    cf_pos = [token_positions(r[1], e["offsets"]) for r, e in zip(rendered, cf_enc)]
    traced, device = wrap(model), input_device(model)

    # Counterfactual runs: once per pair, every layer at every token type's position.
    cf_states = []
    per_batch = max(1, batch_size // len(types))
    for start in tqdm(range(0, len(rendered), per_batch), desc="counterfactual runs", unit="batch", mininterval=5):
        chunk = range(start, min(start + per_batch, len(rendered)))
        ids, mask, shifts = pad_left([cf_enc[i]["input_ids"] for i in chunk], tokenizer.pad_token_id, device)
        rows = torch.tensor([r for r in range(len(chunk)) for _ in types], device=device)
        pos = torch.tensor([shifts[r] + cf_pos[i][t] for r, i in enumerate(chunk) for t in types], device=device)
        cf_states.append(capture_states(traced, num_layers, ids, mask, rows, pos).float().cpu())
    states = torch.cat(cf_states).view(len(rendered), len(types), num_layers, -1)

    # Patched runs: whole pairs per batch (a clean row plus every token type x window), so a pair's
    # clean and patched answers always come from the same forward pass.
    jobs_per_pair = [(None, None)] + [(t, w) for t in range(len(types)) for w in range(len(windows))]
    pairs_per_batch = max(1, batch_size // len(jobs_per_pair))
    answers = np.zeros((len(rendered), len(jobs_per_pair)), dtype=np.int64)
    for start in tqdm(range(0, len(rendered), pairs_per_batch), desc=f"patching {desc}", unit="batch", mininterval=5):
        chunk = list(range(start, min(start + pairs_per_batch, len(rendered))))
        sequences, positions, layer_mask, values = [], [], [], []
        for i in chunk:
            for type_index, window_index in jobs_per_pair:
                sequences.append(orig_enc[i]["input_ids"])
                row_mask = torch.zeros(num_layers, dtype=torch.bool)
                if type_index is None:
                    positions.append(0)
                else:
                    positions.append(orig_pos[i][types[type_index]])
                    row_mask[windows[window_index]] = True
                layer_mask.append(row_mask)
                values.append(states[i, type_index or 0])
        ids, mask, shifts = pad_left(sequences, tokenizer.pad_token_id, device)
        position_tensor = torch.tensor([p + s for p, s in zip(positions, shifts)], device=device)
        next_ids = patched_next_tokens(traced, ids, mask, position_tensor, torch.stack(layer_mask).to(device),
                                       torch.stack(values).to(device))
        answers[chunk] = next_ids.view(len(chunk), len(jobs_per_pair)).cpu().numpy()

    return PatchRun(types, jobs_per_pair, orig_enc, cf_enc, orig_pos, cf_pos, states, answers)
