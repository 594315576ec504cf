"""act_patch's labels: every pair patched at each token type x window of layers (batched, the clean run's prefix
reused), gathered from chunks into the split's table and vectors in the columns of the paper's published datasets,
or imported from a released table; and read back as label rows with their vectors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.artifacts import (ArtifactError, check_same_run, provenance, read_table, read_tensors, write_table,
                                write_tensors)
from pipeline.lazy import lazy_import
from pipeline.runtime import torch_dtype
from pipeline.tasks.act_patch.pairs import PAIR_COLUMNS, choose_pairs, chunk_count
from pipeline.tasks.act_patch.settings import ActPatchConfig
from pipeline.tasks.facts import RenderedPrompt, token_positions

torch = lazy_import("torch")  # loaded on first use: parsing the workflow does not import torch


LABEL_COLUMNS = ["layer", "input_tokens", "original_continuation", "ablated_continuation", "is_different",
                 "patch_position", "counterfactual_text", "gt_original_target", "gt_counterfactual_target",
                 "layer_hashable", "token_type"]


def build_label_chunk(cfg: ActPatchConfig, pairs_path: str | Path, model_dir: str | Path, split: str, chunk: int,
                      out_table: str | Path, out_vectors: str | Path, settings: dict) -> pd.DataFrame:
    """Patch every (pair, token type, layer window) of one chunk of pairs (`chunk_pairs` of them) and record
    greedy next tokens with and without it. Row ids are global (pair_id x patches per pair + patch), so the
    chunks concatenate into the split's table whatever their size.

    The intervention is one vector, the counterfactual prompt's output of the window's first layer at the
    token, written into every layer of the window: the vector the explainer is shown is the intervention."""
    from pipeline.models import load_model, read_manifest

    pairs = read_table(pairs_path, required=PAIR_COLUMNS)
    pairs = pairs.iloc[chunk * cfg.chunk_pairs:(chunk + 1) * cfg.chunk_pairs]
    model, tokenizer = load_model(model_dir, dtype=torch_dtype(cfg.precision))
    manifest = read_manifest(model_dir)
    windows, types = cfg.patch.windows(manifest["num_layers"]), list(cfg.patch.token_types)
    prov = provenance(settings | {"split": split, "chunk": chunk}, {"target": manifest["source"]})
    if pairs.empty:  # a chunk past the pairs a shortfall left
        print(f"label chunk {chunk}: no pairs")
        write_tensors({"intervention_vector": torch.zeros(0, manifest["hidden_size"]),
                       "row_id": torch.zeros(0, dtype=torch.long)}, out_vectors, prov)
        write_table(pd.DataFrame(columns=["row_id", "pair_id"]), out_table, prov)
        return pd.DataFrame()
    run = run_patches(model, tokenizer, rendered_pairs(pairs), windows, types, cfg.batch_size, desc=f"chunk {chunk}")
    rows, vectors = label_rows(pairs.to_dict("records"), run, tokenizer, windows, split)
    frame = pd.DataFrame(rows)
    print(f"label chunk {chunk}: {len(pairs)} pairs, {len(frame)} rows, {int(frame['is_different'].sum())} changed")
    write_tensors({"intervention_vector": torch.stack(vectors), "row_id": torch.tensor(frame["row_id"].to_numpy())},
                  out_vectors, prov)
    write_table(frame, out_table, prov)
    return frame


def rendered_pairs(pairs: pd.DataFrame) -> list[tuple[RenderedPrompt, RenderedPrompt]]:
    """Each row of a pairs table as its (original, counterfactual) prompts, as the pairs stage rendered them."""
    return [tuple(RenderedPrompt(p[f"{side}text"], tuple(p[f"{side}subject_span"]), int(p[f"{side}sentence_end"]),
                                 bool(p["add_special_tokens"])) for side in ("", "counterfactual_"))
            for p in pairs.to_dict("records")]


def label_rows(pairs: list[dict], run: "PatchRun", tokenizer, windows: list[list[int]], split: str
               ) -> tuple[list[dict], list]:
    """The label rows (LABEL_COLUMNS and the pair's own columns) and intervention vectors of patched pairs, one row
    per (token type, window) of each pair; row ids are global: pair_id x patches per pair + patch."""
    per_pair = len(run.types) * len(windows)
    orig_enc, cf_enc, orig_pos, cf_pos = run.orig_enc, run.cf_enc, run.orig_pos, run.cf_pos
    rows, vectors = [], []
    for i, pair in enumerate(pairs):
        input_tokens = tokenizer.convert_ids_to_tokens(orig_enc[i]["input_ids"])
        cf_tokens = tokenizer.convert_ids_to_tokens(cf_enc[i]["input_ids"])
        clean_token = tokenizer.decode([int(run.answers[i, 0])])
        for job, (type_index, window_index) in enumerate(run.jobs_per_pair[1:], start=1):
            token_type, window = run.types[type_index], windows[window_index]
            patched = tokenizer.decode([int(run.answers[i, job])])
            o_pos, c_pos = orig_pos[i][token_type], cf_pos[i][token_type]
            rows.append({
                "row_id": int(pair["pair_id"]) * per_pair + job - 1, "pair_id": int(pair["pair_id"]),
                "split": split, "relation": pair["relation"],
                "subject": pair["subject"], "counterfactual_subject": pair["counterfactual_subject"],
                "input_text": pair["text"],
                "layer": [int(x) for x in window], "input_tokens": input_tokens,
                "original_continuation": [clean_token], "ablated_continuation": [patched],
                "counterfactual_continuation": [tokenizer.decode([int(run.cf_answers[i])])],
                "is_different": bool(run.answers[i, job] != run.answers[i, 0]),
                "patch_position": {"counterfact_pos": c_pos, "counterfact_text_token": cf_tokens[c_pos],
                                   "orig_pos": o_pos, "orig_text_token": input_tokens[o_pos],
                                   "orig_text_decoded": tokenizer.decode([orig_enc[i]["input_ids"][o_pos]])},
                "counterfactual_text": pair["counterfactual_text"],
                "gt_original_target": pair["target_true"], "gt_counterfactual_target": pair["counterfactual_target"],
                "layer_hashable": [int(x) for x in window], "token_type": token_type,
            })
            vectors.append(run.states[i, type_index, window_index])
    return rows, vectors


def gather_labels(pairs_path: str | Path, chunk_tables: list[str], chunk_vectors: list[str], split: str,
                  out_table: str | Path, out_vectors: str | Path, settings: dict) -> pd.DataFrame:
    """The split's labels and vectors from its chunks (in row-id order; row i of the vectors is row_id i)."""
    from pipeline.artifacts import read_provenance

    tables, vectors = [], []
    for table_path, vectors_path in zip(chunk_tables, chunk_vectors):
        check_same_run(table_path, vectors_path)
        table = read_table(table_path, allow_empty=True)
        tensors = read_tensors(vectors_path)
        if len(table) != len(tensors["intervention_vector"]):
            raise ArtifactError(f"{vectors_path}: {len(tensors['intervention_vector'])} vectors for {len(table)} rows "
                                f"of {table_path}; rerun that chunk")
        if len(table):
            tables.append(table)
            vectors.append(tensors["intervention_vector"])
    if not tables:
        raise ArtifactError(f"{pairs_path}: every label chunk of split '{split}' is empty")
    frame = pd.concat(tables, ignore_index=True)
    if not np.array_equal(frame["row_id"].to_numpy(), np.arange(len(frame))):
        raise ArtifactError(f"label chunks {chunk_tables}: row ids are not 0..{len(frame) - 1} in order; rerun them")
    pair_prov = read_provenance(pairs_path)
    prov = provenance(settings | {"split": split}, pair_prov.get("models"))
    prov["counts"] = pair_prov.get("counts", {}) | {"rows": len(frame), "changed": int(frame["is_different"].sum()),
                                                    "chunks": len(chunk_tables)}
    print(f"labels ({split}): {prov['counts']}")
    write_tensors({"intervention_vector": torch.cat(vectors), "row_id": torch.arange(len(frame))}, out_vectors, prov)
    write_table(frame, out_table, prov)
    return frame


def import_released_labels(source: str, split: str, model_dir: str | Path, out_table: str | Path,
                           out_vectors: str | Path, settings: dict) -> pd.DataFrame:
    """A split of the paper's released act_patch labels (`act_patch.released_labels`, e.g.
    Transluce/act_patch_llama_3.1_8b_counterfact: its columns, byte-level token strings, each row's vector inline in
    `patch_position`) written as this workflow's label artifacts, so training, generation and scoring read them as they
    read labels built here. Rows keep the released order (row id = place); a table without `pair_id` gets one per
    (input tokens, counterfactual text), the unit the scores resample. The vectors must have the target's width."""
    from pipeline.artifacts import released_table
    from pipeline.models import read_manifest

    setting = "act_patch.released_labels"
    frame = released_table(source, split, setting, required=LABEL_COLUMNS).reset_index(drop=True)
    where = f"{setting}: {source} ({split})"
    vectors = inline_vectors(frame, where, "in {absent} of {rows} rows")
    width = read_manifest(model_dir)["hidden_size"]
    if vectors.shape[1] != width:
        raise ArtifactError(f"{where}: vectors of width {[vectors.shape[1]]}, but the target {model_dir} has hidden "
                            f"size {width}: these labels belong to another target model")
    frame["patch_position"] = [{k: v for k, v in p.items() if k != "intervention_vector"} for p in frame["patch_position"]]
    frame["row_id"] = np.arange(len(frame))
    if "pair_id" not in frame:
        frame["pair_id"] = pd.factorize(pd.Series(pair_keys(frame)))[0]
    prov = provenance(settings | {"split": split}, {"released_labels": source})
    prov["counts"] = {"rows": len(frame), "changed": int(frame["is_different"].sum()),
                      "pairs": int(frame["pair_id"].nunique()), "released": source}
    print(f"labels ({split}) from {source}: {prov['counts']}")
    write_tensors({"intervention_vector": vectors, "row_id": torch.arange(len(frame))}, out_vectors, prov)
    write_table(frame, out_table, prov)
    return frame


def build_labels(cfg: ActPatchConfig, facts_path: str | Path, model_dir: str | Path, split: str,
                 out_table: str | Path, out_vectors: str | Path, settings: dict,
                 keep_only_correct: bool = True) -> pd.DataFrame:
    """The three label stages in one call (pairs, every chunk, gather), for use outside Snakemake; the pairs
    and chunks go to a scratch folder beside `out_table` that is removed afterwards."""
    import shutil
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix=".labels-", dir=Path(out_table).parent))
    try:
        choose_pairs(cfg, facts_path, model_dir, split, scratch / "pairs.parquet", settings, keep_only_correct)
        chunks = range(chunk_count(cfg, split))
        tables = [scratch / f"chunk{c}.parquet" for c in chunks]
        vectors = [scratch / f"chunk{c}.vectors.safetensors" for c in chunks]
        for c in chunks:
            build_label_chunk(cfg, scratch / "pairs.parquet", model_dir, split, c, tables[c], vectors[c], settings)
        return gather_labels(scratch / "pairs.parquet", tables, vectors, split, out_table, out_vectors, settings)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_examples(table_path: str | Path, vectors_path: str | Path | None = None) -> tuple[pd.DataFrame, torch.Tensor]:
    """Rows and intervention vectors from a pipeline table (+ safetensors) or a published table (inline vectors)."""
    frame = read_table(table_path, required=LABEL_COLUMNS)
    if vectors_path is not None:
        check_same_run(table_path, vectors_path)
        tensors = read_tensors(vectors_path)
        if "intervention_vector" not in tensors:
            raise ArtifactError(f"{vectors_path}: no tensor 'intervention_vector'")
        row_ids = frame["row_id"].to_numpy() if "row_id" in frame else np.arange(len(frame))
        vectors = tensors["intervention_vector"]
        if row_ids.max(initial=-1) >= len(vectors):
            raise ArtifactError(f"{vectors_path}: holds {len(vectors)} vectors but {table_path} refers to row {row_ids.max()}")
        vectors = vectors[torch.from_numpy(np.array(row_ids, dtype=np.int64))]
    else:
        vectors = inline_vectors(frame, str(table_path), "and no vectors file was given")
    return frame, vectors.float()


def inline_vectors(frame: pd.DataFrame, where: str, missing: str) -> torch.Tensor:
    """The vectors a published table holds inline, one per row (`patch_position.intervention_vector`); a row without
    one is refused as `{where}: ... is missing {missing}` (`missing` may name `{absent}` and `{rows}`)."""
    inline = [p.get("intervention_vector") if isinstance(p, dict) else None for p in frame["patch_position"]]
    absent = sum(v is None for v in inline)
    if absent:
        raise ArtifactError(f"{where}: patch_position.intervention_vector is missing "
                            f"{missing.format(absent=absent, rows=len(inline))}")
    widths = {len(v) for v in inline}
    if len(widths) > 1:
        raise ArtifactError(f"{where}: vectors of widths {sorted(widths)} in one table")
    return torch.tensor(np.stack([np.asarray(v, dtype=np.float32) for v in inline]))


def row_keys(frame: pd.DataFrame) -> list[str]:
    """A stable id per row: the pipeline's row id, or the row's place in a published table."""
    return [str(r) for r in (frame["row_id"] if "row_id" in frame else range(len(frame)))]


def pair_keys(frame: pd.DataFrame) -> list[str]:
    """The pair each row comes from (its cluster): all of a pair's token types and windows share it."""
    if "pair_id" in frame:
        return [str(p) for p in frame["pair_id"]]
    return [f"{' '.join(map(str, t))}|{c}" for t, c in zip(frame["input_tokens"], frame["counterfactual_text"])]


@dataclass
class PatchRun:
    types: list[str]
    jobs_per_pair: list[tuple]  # (token type index, window index); (None, None) is the clean run
    orig_enc: list[dict]
    cf_enc: list[dict]
    orig_pos: list[dict]
    cf_pos: list[dict]
    states: torch.Tensor  # [pairs, token types, windows, width]: the counterfactual at each window's first layer
    answers: np.ndarray  # [pairs, jobs] greedy next-token ids of the original prompt, clean then patched
    cf_answers: np.ndarray  # [pairs] greedy next-token id of the counterfactual prompt


def run_patches(model, tokenizer, rendered: list[tuple[RenderedPrompt, RenderedPrompt]], windows: list[list[int]],
                types: list[str], batch_size: int, desc: str = "") -> PatchRun:
    """Greedy next tokens of every pair's original prompt, clean and patched at each token type x window.

    The patch writes one vector, the counterfactual's output of the window's first layer at the token type's
    position, into every layer of the window at the original prompt's position of that token type. A patched row
    computes only the columns from its token on, on top of the clean run's cache (tested against a full forward
    per row: bench/bench_patching.py `full_forward_answers`)."""
    from pipeline.models import input_device
    from pipeline.engine.patching import (capture_states, clean_prefix, encode, pad_left, patched_suffix_next_tokens,
                                          wrap)

    special = rendered[0][0].add_special_tokens
    orig_enc = encode(tokenizer, [r[0].text for r in rendered], special)
    cf_enc = encode(tokenizer, [r[1].text for r in rendered], special)
    orig_pos = [token_positions(r[0], e["offsets"], types) for r, e in zip(rendered, orig_enc)]
    cf_pos = [token_positions(r[1], e["offsets"], types) for r, e in zip(rendered, cf_enc)]
    traced, device = wrap(model), input_device(model)
    starts = [window[0] for window in windows]
    num_layers = max(w[-1] for w in windows) + 1

    # Counterfactual runs: once per pair, the windows' first layers at every token type's position.
    cf_states, cf_answers = [], []
    per_batch = max(1, batch_size // len(types))
    for start in tqdm(range(0, len(rendered), per_batch), desc="counterfactual runs", unit="batch", mininterval=5):
        chunk = range(start, min(start + per_batch, len(rendered)))
        ids, mask, shifts = pad_left([cf_enc[i]["input_ids"] for i in chunk], tokenizer.pad_token_id, device)
        rows = torch.tensor([r for r in range(len(chunk)) for _ in types], device=device)
        pos = torch.tensor([shifts[r] + cf_pos[i][t] for r, i in enumerate(chunk) for t in types], device=device)
        states, next_ids = capture_states(traced, starts, ids, mask, rows, pos)
        cf_states.append(states.float().cpu())
        cf_answers.append(next_ids.cpu())
    states = torch.cat(cf_states).view(len(rendered), len(types), len(windows), -1)

    jobs_per_pair = [(None, None)] + [(t, w) for t in range(len(types)) for w in range(len(windows))]
    answers = np.zeros((len(rendered), len(jobs_per_pair)), dtype=np.int64)
    # Clean runs once per pair with their caches; then, per token type, every window of the chunk's pairs in
    # one run over the columns from the type's first position on (the columns before are the clean run's).
    pairs_per_batch = max(1, batch_size // len(windows))
    for start in tqdm(range(0, len(rendered), pairs_per_batch), desc=f"patching {desc}", unit="batch",
                      mininterval=5):
        chunk = list(range(start, min(start + pairs_per_batch, len(rendered))))
        ids, mask, shifts = pad_left([orig_enc[i]["input_ids"] for i in chunk], tokenizer.pad_token_id, device)
        prefix = clean_prefix(traced, ids, mask)
        answers[chunk, 0] = prefix.next_ids.cpu().numpy()
        for type_index, token_type in enumerate(types):
            rows = [(r, w) for r in range(len(chunk)) for w in range(len(windows))]
            layer_mask = torch.zeros(len(rows), num_layers, dtype=torch.bool)
            for b, (_, w) in enumerate(rows):
                layer_mask[b, windows[w]] = True
            positions = torch.tensor([shifts[r] + orig_pos[chunk[r]][token_type] for r, _ in rows], device=device)
            values = torch.stack([states[chunk[r], type_index, w] for r, w in rows]).to(device)
            next_ids = patched_suffix_next_tokens(traced, prefix, torch.tensor([r for r, _ in rows], device=device),
                                                  positions, layer_mask.to(device), values)
            jobs = [jobs_per_pair.index((type_index, w)) for w in range(len(windows))]
            answers[np.ix_(chunk, jobs)] = next_ids.view(len(chunk), len(windows)).cpu().numpy()
    return PatchRun(types, jobs_per_pair, orig_enc, cf_enc, orig_pos, cf_pos, states, answers,
                    torch.cat(cf_answers).numpy())

