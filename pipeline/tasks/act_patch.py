"""The act_patch task: CounterFact pairs -> batched activation patching labels -> explainer examples.

Labels follow the columns of the paper's published act_patch datasets. The pipeline keeps the
intervention vectors in a safetensors file keyed by row id; `load_examples` also accepts a table
in the published layout with the vectors inline in `patch_position`.
"""

from __future__ import annotations

import functools

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.lazy import lazy_import
from pipeline.artifacts import (ArtifactError, check_same_run, provenance, read_table, read_tensors, write_table,
                                write_tensors)
from pipeline.settings import ExplainerConfig, FactsConfig, GenerationConfig, ScoringConfig
from pipeline.tasks.act_patch_settings import (ActPatchConfig, BudgetConfig, PairsConfig, PatchConfig, PromptConfig,
                                               TrainingRows)
from pipeline.runtime import torch_dtype, warn
from pipeline.tasks.facts import RenderedPrompt, draw_options, make_pairs, render_prompt, token_positions
from pipeline.explainer.prompts import FORMAT_INSTRUCTION, change_answer, phrasing, token_text
from pipeline.tasks import Examples, Stage, Task, register

torch = lazy_import("torch")  # loaded on first use: parsing the workflow does not import torch

# The paper's five phrasings (config/act_patch/*.yaml of its code), with one placeholder token for the vector.
ACT_PATCH_QUESTIONS = (
    "If feature <vector> at layer {layers} is added to tokens {tokens} when processing the text <<<{input}>>>, "
    "how would the output change?",
    "When feature <vector> at layer {layers} is added at tokens {tokens} in the input <<<{input}>>>, what happens "
    "to the model's output?",
    "Consider the input text: <<<{input}>>>. If we steer layer {layers} towards feature <vector> at tokens "
    "{tokens}, how does this affect the generated continuation?",
    "Given the text <<<{input}>>>, what would be the effect on the output if feature <vector> at layer {layers} "
    "is added to tokens {tokens}?",
    "If we steer towards feature <vector> at layer {layers} and tokens {tokens} when processing <<<{input}>>>, "
    "how would the model's response differ?",
)


def layers_text(layers) -> str:
    """A layer window as the paper writes it: "24, 25, 26, 27"."""
    return ", ".join(str(int(x)) for x in layers)


def act_patch_question(row_key: str | int, layers, token: str, input_text: str, seed: int = 0) -> str:
    template = ACT_PATCH_QUESTIONS[phrasing(row_key, len(ACT_PATCH_QUESTIONS), seed)]
    return template.format(layers=layers_text(layers), tokens=f"<{token}>", input=input_text)


FACTS_COLUMNS = ["fact_id", "relation", "subject", "template", "target_true", "split", "kept", "few_shot"]
LABEL_COLUMNS = ["layer", "input_tokens", "original_continuation", "ablated_continuation", "is_different",
                 "patch_position", "counterfactual_text", "gt_original_target", "gt_counterfactual_target",
                 "layer_hashable", "token_type"]


PAIR_COLUMNS = ["pair_id", "relation", "subject", "target_true", "counterfactual_subject", "counterfactual_target",
                "text", "subject_span", "sentence_end", "counterfactual_text", "counterfactual_subject_span",
                "counterfactual_sentence_end", "add_special_tokens"]


def choose_pairs(cfg: ActPatchConfig, facts_path: str | Path, model_dir: str | Path, split: str, out: str | Path,
                 settings: dict, keep_only_correct: bool = True) -> pd.DataFrame:
    """The split's (original, counterfactual) pairs, rendered, whose original prompt the target answers
    correctly (with keep_only_correct), the first `pairs[split]` of a seeded order. A shortfall is logged and
    kept in the provenance; below `pairs.min_fraction` of what was asked it is an error."""
    from pipeline.tasks.facts import answer_matches
    from pipeline.models import load_model, read_manifest
    from pipeline.engine.patching import greedy_next_tokens

    facts = read_table(facts_path, required=FACTS_COLUMNS)
    facts = facts[facts["kept"] & (facts["split"] == split)].reset_index(drop=True)
    if facts.empty:
        raise ArtifactError(f"{facts_path}: no kept facts in split '{split}'")
    model, tokenizer = load_model(model_dir, dtype=torch_dtype(cfg.precision))
    candidates = make_pairs(facts, cfg.pairs.seed, tokenizer)
    rng = random.Random(cfg.pairs.seed)
    rendered = []
    for original, counter in candidates:
        options = draw_options(facts, original["relation"], [original["target_true"], counter["target_true"]],
                               cfg.prompt.n_options, rng) if cfg.prompt.format == "constrained" else None
        examples = json.loads(original["few_shot"])
        rendered.append(tuple(render_prompt(f["template"], f["subject"], options, cfg.prompt, tokenizer, examples)
                              for f in (original, counter)))
    # "Kept = answered correctly" is decided on the prompt that is patched (its options included).
    clean = greedy_next_tokens(model, tokenizer, [r[0] for r in rendered], cfg.batch_size, desc="clean check")
    passed = [i for i, ((original, _), answer) in enumerate(zip(candidates, clean))
              if not keep_only_correct or answer_matches(answer, original["target_true"])]
    failed, asked = len(candidates) - len(passed), getattr(cfg.pairs, split)
    chosen = passed[:asked]
    counts = {"facts": len(facts), "candidate_pairs": len(candidates), "clean_check_failed": failed, "asked": asked,
              "pairs": len(chosen), "shortfall": asked - len(chosen)}
    where = (f"{facts_path}, split '{split}': {len(facts)} kept facts give {len(candidates)} candidate pairs (one per "
             f"original fact), {failed} of them fail the clean check of {model_dir}")
    if len(chosen) < cfg.pairs.min_fraction * asked or not chosen:
        raise ArtifactError(f"{where}, leaving {len(chosen)} pairs of the {asked} act_patch.pairs.{split} asks "
                            f"(below pairs.min_fraction {cfg.pairs.min_fraction}); use more facts (facts.source: counterfact "
                            f"with its path, more relations) or ask for fewer pairs")
    if len(chosen) < asked:
        warn(f"{where}: {len(chosen)} pairs instead of the {asked} asked")
    print(f"pairs ({split}): {counts}")
    frame = pd.DataFrame([{
        "pair_id": pair_id, "relation": original["relation"], "subject": original["subject"],
        "target_true": original["target_true"], "counterfactual_subject": counter["subject"],
        "counterfactual_target": counter["target_true"], "text": orig.text, "subject_span": list(orig.subject_span),
        "sentence_end": orig.sentence_end, "counterfactual_text": cf.text,
        "counterfactual_subject_span": list(cf.subject_span), "counterfactual_sentence_end": cf.sentence_end,
        "add_special_tokens": orig.add_special_tokens,
    } for pair_id, ((original, counter), (orig, cf)) in enumerate(
        (candidates[i], rendered[i]) for i in chosen)])
    prov = provenance(settings | {"split": split}, {"target": read_manifest(model_dir)["source"]})
    prov["counts"] = counts
    write_table(frame, out, prov)
    return frame


def chunk_count(cfg: ActPatchConfig, split: str) -> int:
    """How many label chunks a split's pairs are patched in (the last ones may be empty after a shortfall)."""
    return max(1, -(-getattr(cfg.pairs, split) // cfg.chunk_pairs))


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
    per_pair = len(types) * len(windows)
    prov = provenance(settings | {"split": split, "chunk": chunk}, {"target": manifest["source"]})
    if pairs.empty:  # a chunk past the pairs a shortfall left
        print(f"label chunk {chunk}: no pairs")
        write_tensors({"intervention_vector": torch.zeros(0, manifest["hidden_size"]),
                       "row_id": torch.zeros(0, dtype=torch.long)}, out_vectors, prov)
        write_table(pd.DataFrame(columns=["row_id", "pair_id"]), out_table, prov)
        return pd.DataFrame()
    rendered = [tuple(RenderedPrompt(p[f"{side}text"], tuple(p[f"{side}subject_span"]), int(p[f"{side}sentence_end"]),
                                     bool(p["add_special_tokens"])) for side in ("", "counterfactual_"))
                for p in pairs.to_dict("records")]
    run = run_patches(model, tokenizer, rendered, windows, types, cfg.batch_size, desc=f"chunk {chunk}")
    orig_enc, cf_enc, orig_pos, cf_pos = run.orig_enc, run.cf_enc, run.orig_pos, run.cf_pos

    rows, vectors = [], []
    for i, pair in enumerate(pairs.to_dict("records")):
        input_tokens = tokenizer.convert_ids_to_tokens(orig_enc[i]["input_ids"])
        cf_tokens = tokenizer.convert_ids_to_tokens(cf_enc[i]["input_ids"])
        clean_token = tokenizer.decode([int(run.answers[i, 0])])
        for job, (type_index, window_index) in enumerate(run.jobs_per_pair[1:], start=1):
            token_type, window = types[type_index], windows[window_index]
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
    frame = pd.DataFrame(rows)
    print(f"label chunk {chunk}: {len(pairs)} pairs, {len(frame)} rows, {int(frame['is_different'].sum())} changed")
    write_tensors({"intervention_vector": torch.stack(vectors), "row_id": torch.tensor(frame["row_id"].to_numpy())},
                  out_vectors, prov)
    write_table(frame, out_table, prov)
    return frame


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


@functools.lru_cache(maxsize=4)
def _vocabulary(tokenizer) -> frozenset:
    """The tokenizer's token strings, built once per tokenizer: `get_vocab()` builds a new dict on every call (0.09 s
    for SmolLM2, 0.53 s for Gemma's 262k tokens), which per row of a label table took minutes."""
    return frozenset(tokenizer.get_vocab())


def tokens_text(tokenizer, tokens) -> str:
    """Text of token strings from a table: byte-level BPE or SentencePiece tokens go through the tokenizer's own
    decoder ('ĠMÃ¼nchen' -> ' München'); strings that are not tokens of its vocabulary are already text."""
    tokens = [str(t) for t in (tokens.tolist() if isinstance(tokens, np.ndarray) else tokens)]
    vocab = _vocabulary(tokenizer)
    if tokens and all(t in vocab for t in tokens):
        return tokenizer.convert_tokens_to_string(tokens)
    return "".join(tokens)


def row_keys(frame: pd.DataFrame) -> list[str]:
    """A stable id per row: the pipeline's row id, or the row's place in a published table."""
    return [str(r) for r in (frame["row_id"] if "row_id" in frame else range(len(frame)))]


def pair_keys(frame: pd.DataFrame) -> list[str]:
    """The pair each row comes from (its cluster): all of a pair's token types and windows share it."""
    if "pair_id" in frame:
        return [str(p) for p in frame["pair_id"]]
    return [f"{' '.join(map(str, t))}|{c}" for t, c in zip(frame["input_tokens"], frame["counterfactual_text"])]


def answer_contents(frame: pd.DataFrame, tokenizer) -> list[str]:
    """The content of each row's reference answer: the patched next token if it changed, else the clean one."""
    return [token_text(tokens_text(tokenizer, row.ablated_continuation if row.is_different else row.original_continuation))
            for row in frame.itertuples(index=False)]


def examples_from_rows(frame: pd.DataFrame, tokenizer) -> tuple[list[str], list[str]]:
    """Explainer questions and reference answers for label rows (pipeline or published layout); `tokenizer`
    is the target's, whose tokens the table holds."""
    questions = []
    for key, row in zip(row_keys(frame), frame.itertuples(index=False)):
        text = row.input_text if "input_text" in frame.columns else tokens_text(tokenizer, row.input_tokens)
        token = tokens_text(tokenizer, [row.patch_position["orig_text_token"]])
        questions.append(act_patch_question(key, row.layer, token, text))
    answers = [change_answer(bool(c), content) for c, content in zip(frame["is_different"], answer_contents(frame, tokenizer))]
    return questions, answers


VARIANTS = ("finetuned", "untrained", "no_vector", "shuffled_vector")


def shuffled_vectors(frame: pd.DataFrame, vectors: torch.Tensor, seed: int) -> torch.Tensor:
    """Each row gets the vector of another pair of the same relation, token type and layer window
    (a derangement within each group), so only what is specific to the pair is lost."""
    rng = np.random.default_rng(seed)
    relation = frame["relation"] if "relation" in frame else pd.Series([""] * len(frame))
    groups = pd.Series(range(len(frame))).groupby(
        [relation.astype(str).to_numpy(), frame["token_type"].astype(str).to_numpy(),
         [tuple(int(x) for x in w) for w in frame["layer"]]]).groups
    shuffled = vectors.clone()
    for rows in groups.values():
        rows = np.asarray(rows)
        if len(rows) < 2:
            continue
        order = rows[rng.permutation(len(rows))]
        shuffled[torch.from_numpy(order)] = vectors[torch.from_numpy(np.roll(order, -1))]
    return shuffled


def prior_key(token_type, layer) -> tuple:
    """What the question's text reveals about a row: its token type and layer window."""
    return str(token_type), tuple(int(x) for x in layer)


def baseline_frames(scored: pd.DataFrame, train_paths: dict[str, str], target_dir) -> tuple[dict, dict]:
    """The structure prior and the majority class, learned from the training labels, on the scored test rows."""
    from pipeline.explainer.baselines import describe, fit_prior, predict
    from pipeline.models import load_tokenizer

    tokenizer = load_tokenizer(target_dir)
    train_frame, _ = load_examples(train_paths["labels"], train_paths["vectors"])
    changed, contents = train_frame["is_different"].astype(bool).tolist(), answer_contents(train_frame, tokenizer)
    keys = [prior_key(t, w) for t, w in zip(train_frame["token_type"], train_frame["layer"])]
    priors = {"structure_prior": fit_prior(keys, changed, contents),
              "majority_class": fit_prior([None] * len(keys), changed, contents)}
    test_keys = [prior_key(t, w) for t, w in zip(scored["token_type"], scored["layer"])]
    frames = {}
    for name, prior in priors.items():
        guesses = predict(prior, test_keys if name == "structure_prior" else [None] * len(test_keys))
        frames[name] = scored.assign(variant=name, prediction=[change_answer(g.changed, g.content) for g in guesses])
    return frames, {name: describe(prior) for name, prior in priors.items()}


def label_paths(target: str, split: str) -> dict[str, str]:
    return {"labels": f"work/act_patch/labels/{target}/{split}.parquet",
            "vectors": f"work/act_patch/labels/{target}/{split}.vectors.safetensors"}


def new_is_counterfactual(frame: pd.DataFrame, tokenizer) -> list[bool]:
    """Changed rows whose new next token is the counterfactual prompt's own answer: the rows whose answer the
    question's text cannot give, only the vector (published tables without the counterfactual's answer: none)."""
    if "counterfactual_continuation" not in frame:
        return [False] * len(frame)
    return [bool(row.is_different) and tokens_text(tokenizer, row.ablated_continuation)
            == tokens_text(tokenizer, row.counterfactual_continuation) for row in frame.itertuples(index=False)]


def examples(paths: dict[str, str], target_dir) -> Examples:
    """The label rows of one split with their questions, reference answers and intervention vectors. The column
    `subset_counterfactual_answer` makes the scores report those rows on their own (pipeline/explainer/metrics.py)."""
    from pipeline.models import load_tokenizer

    frame, vectors = load_examples(paths["labels"], paths.get("vectors"))
    tokenizer = load_tokenizer(target_dir)
    questions, answers = examples_from_rows(frame, tokenizer)
    return Examples(frame, questions, answers, vectors, row_keys(frame), pair_keys(frame),
                    frame["is_different"].astype(bool).to_numpy(),
                    {"token_type": frame["token_type"].tolist(), "layer": [[int(x) for x in w] for w in frame["layer"]],
                     "subset_counterfactual_answer": new_is_counterfactual(frame, tokenizer)})


READING_QUESTION = "At layer {layer}, <vector> ="


def reading_answer(row, target: str, tokenizer) -> str:
    """What a reading row asks the vector for: the counterfactual prompt's own next token (`answer`) or the token
    the vector was taken at (`token`)."""
    if target == "token":
        return token_text(tokens_text(tokenizer, [row.patch_position["counterfact_text_token"]]))
    return token_text(tokens_text(tokenizer, row.counterfactual_continuation))


def training_rows(rows: Examples, settings: dict, seed: int, target_dir=None) -> Examples:
    """The training rows as `act_patch.training_rows` shapes them (the results say so through the settings):
    - oversample_counterfactual: k copies of each changed row whose new token is the counterfactual's answer (the
      rows only the vector can answer; ~12% of the rows on the default);
    - reading: a share of extra rows that ask the vector alone for the counterfactual's answer (or its own token),
      "At layer L, <vector> =" -> " Paris", from rows of the listed token types: a signal that cannot be learned
      without reading the vector (the reduced task of the issue on reading the vector)."""
    from pipeline.models import load_tokenizer

    shape = ActPatchConfig.from_dict(settings).training_rows
    copies, reading = shape.oversample_counterfactual, shape.reading
    share = reading.fraction
    if copies <= 1 and share <= 0:
        return rows
    index = np.arange(len(rows.questions))
    counterfactual = np.asarray(rows.columns.get("subset_counterfactual_answer", [False] * len(index)), dtype=bool)
    index = np.concatenate([index] + [np.flatnonzero(counterfactual)] * (copies - 1))
    out = rows.subset(index)
    out.row_keys = [key if i < len(rows.questions) else f"{key}:copy{i}" for i, key in enumerate(out.row_keys)]
    if share <= 0:
        return out
    if rows.vectors is None or "counterfactual_continuation" not in rows.frame:
        raise ValueError("act_patch.training_rows.reading needs the pipeline's label tables (vectors and the "
                         "counterfactual's answer)")
    tokenizer = load_tokenizer(target_dir)
    types = set(reading.token_types)
    pool = np.flatnonzero(rows.frame["token_type"].isin(types).to_numpy())
    count = min(len(pool), int(round(share * len(out.questions))))
    chosen = np.sort(np.random.default_rng(seed).choice(pool, size=count, replace=False))
    read = rows.subset(chosen)
    target = reading.target
    read.questions = [READING_QUESTION.format(layer=int(layer[0])) for layer in read.columns["layer"]]
    read.answers = [reading_answer(row, target, tokenizer) for row in read.frame.itertuples(index=False)]
    read.row_keys = [f"{key}:read" for key in read.row_keys]
    return out.concat(read)


def variant_vectors(variant: str, rows: Examples, seed: int) -> torch.Tensor:
    """What each variant reads at the placeholder: the intervention vector, none (zeros), or another pair's."""
    if variant == "no_vector":
        return torch.zeros_like(rows.vectors)
    if variant == "shuffled_vector":
        return shuffled_vectors(rows.frame, rows.vectors, seed)
    return rows.vectors


TASK = register(Task(
    headline=("is_different=True", "exact_match"),  # names the counterfactual's answer: reads the vector
    settings=ActPatchConfig,
    baseline_variants=("in_context_4", "in_context_8", "map_only", "affine"),
    name="act_patch", variants=VARIANTS, format_instruction=FORMAT_INSTRUCTION, label_paths=label_paths,
    paper_suffix="\n",  # the paper's act_patch templates end in "?\n"
    examples=examples, baselines=lambda scored, train, test, target_dir: baseline_frames(scored, train, target_dir),
    variant_vectors=variant_vectors, training_keys=(TrainingRows,),
    training_rows=training_rows,
    count_paths=lambda target: {"facts": f"work/act_patch/facts/{target}.parquet"},
    # The task's own stages: name -> the function each calls and the settings its result depends on.
    stages={
        "act_patch_facts": Stage("pipeline.tasks.facts:build_facts",
                                 (FactsConfig, PromptConfig, ActPatchConfig.key("precision"))),
        "act_patch_pairs": Stage("pipeline.tasks.act_patch:choose_pairs",
                                 (PromptConfig, PairsConfig, FactsConfig.key("keep_only_correct"),
                                  ActPatchConfig.key("precision"))),
        "act_patch_label_chunk": Stage("pipeline.tasks.act_patch:build_label_chunk",
                                       (PromptConfig, PatchConfig, PairsConfig, FactsConfig.key("keep_only_correct"),
                                        ActPatchConfig.key("precision"))),
        "act_patch_labels": Stage("pipeline.tasks.act_patch:gather_labels",
                                  (PromptConfig, PatchConfig, PairsConfig, FactsConfig.key("keep_only_correct"),
                                   "act_patch.released_labels.{target}")),
        "act_patch_diagnostics": Stage("pipeline.tasks.act_patch_diagnostics:diagnose",
                                       (GenerationConfig, ExplainerConfig, ScoringConfig), "act_patch",
                                       ("pipeline.tasks.act_patch",)),
        "act_patch_patch_effect": Stage("pipeline.tasks.act_patch_figures:patch_effect_figure"),
        "act_patch_budget": Stage("pipeline.report.budget:write_budget", (BudgetConfig, ScoringConfig)),
    },
))


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
                types: list[str], batch_size: int, desc: str = "", reuse_prefix: bool = True) -> PatchRun:
    """Greedy next tokens of every pair's original prompt, clean and patched at each token type x window.

    The patch writes one vector, the counterfactual's output of the window's first layer at the token type's
    position, into every layer of the window at the original prompt's position of that token type. With
    `reuse_prefix` (the default) a patched row computes only the columns from its token on, on top of the clean
    run's cache; without it every row is a full forward (the reference the fast path is tested against)."""
    from pipeline.models import input_device
    from pipeline.engine.patching import (capture_states, clean_prefix, encode, pad_left, patched_next_tokens,
                                   patched_suffix_next_tokens, wrap)

    special = rendered[0][0].add_special_tokens
    orig_enc = encode(tokenizer, [r[0].text for r in rendered], special)
    cf_enc = encode(tokenizer, [r[1].text for r in rendered], special)
    orig_pos = [token_positions(r[0], e["offsets"]) for r, e in zip(rendered, orig_enc)]
    cf_pos = [token_positions(r[1], e["offsets"]) for r, e in zip(rendered, cf_enc)]
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
    width = states.shape[-1]
    if reuse_prefix:
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

    # Full forwards: whole pairs per batch (a clean row plus every token type x window).
    pairs_per_batch = max(1, batch_size // len(jobs_per_pair))
    for start in tqdm(range(0, len(rendered), pairs_per_batch), desc=f"patching {desc}", unit="batch", mininterval=5):
        chunk = list(range(start, min(start + pairs_per_batch, len(rendered))))
        sequences, positions, layer_mask, values = [], [], [], []
        for i in chunk:
            for type_index, window_index in jobs_per_pair:
                sequences.append(orig_enc[i]["input_ids"])
                row_mask = torch.zeros(num_layers, dtype=torch.bool)
                if type_index is None:
                    positions.append(0)
                    values.append(torch.zeros(width))
                else:
                    positions.append(orig_pos[i][types[type_index]])
                    row_mask[windows[window_index]] = True
                    values.append(states[i, type_index, window_index])
                layer_mask.append(row_mask)
        ids, mask, shifts = pad_left(sequences, tokenizer.pad_token_id, device)
        position_tensor = torch.tensor([p + s for p, s in zip(positions, shifts)], device=device)
        next_ids = patched_next_tokens(traced, ids, mask, position_tensor, torch.stack(layer_mask).to(device),
                                       torch.stack(values).to(device))
        answers[chunk] = next_ids.view(len(chunk), len(jobs_per_pair)).cpu().numpy()

    return PatchRun(types, jobs_per_pair, orig_enc, cf_enc, orig_pos, cf_pos, states, answers,
                    torch.cat(cf_answers).numpy())
