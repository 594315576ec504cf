"""The act_patch task as the shared stages read it: its label rows as explainer examples, the rows training sees,
the vectors each variant reads, its structure prior, and its registration (settings, stages, baselines).

Labels follow the columns of the paper's published act_patch datasets (labels.py); the pipeline keeps the
intervention vectors in a safetensors file keyed by row id, and `load_examples` also accepts a table in the published
layout with the vectors inline in `patch_position`.
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from pipeline.lazy import lazy_import
from pipeline.settings import ExplainerConfig, FactsConfig, GenerationConfig, ScoringConfig
from pipeline.tasks.act_patch.settings import (ActPatchConfig, BudgetConfig, PairsConfig, PatchConfig, PromptConfig,
                                               TrainingRows)
from pipeline.explainer.prompts import FORMAT_INSTRUCTION, change_answer
from pipeline.tasks import Examples, Stage, Task, register
from pipeline.tasks.act_patch.labels import load_examples, pair_keys, row_keys
from pipeline.tasks.act_patch.prompts import (READING_QUESTION, act_patch_question, answer_contents, reading_answer,
                                             tokens_text)

torch = lazy_import("torch")  # loaded on first use: parsing the workflow does not import torch


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

    return examples_of(*load_examples(paths["labels"], paths.get("vectors")), load_tokenizer(target_dir))


def examples_of(frame: pd.DataFrame, vectors: torch.Tensor, tokenizer) -> Examples:
    """Label rows and their vectors as the explainer sees them (`tokenizer`: the target's)."""
    questions, answers = examples_from_rows(frame, tokenizer)
    return Examples(frame, questions, answers, vectors, row_keys(frame), pair_keys(frame),
                    frame["is_different"].astype(bool).to_numpy(),
                    {"token_type": frame["token_type"].tolist(), "layer": [[int(x) for x in w] for w in frame["layer"]],
                     "subset_counterfactual_answer": new_is_counterfactual(frame, tokenizer)})


def training_rows(rows: Examples, section: ActPatchConfig, seed: int, target_dir=None) -> Examples:
    """The training rows as `act_patch.training_rows` shapes them (the results say so through the settings):
    - oversample_counterfactual: k copies of each changed row whose new token is the counterfactual's answer (the
      rows only the vector can answer; ~12% of the rows on the default);
    - reading: a share of extra rows that ask the vector alone for the counterfactual's answer (or its own token),
      "At layer L, <vector> =" -> " Paris", from rows of the listed token types: a signal that cannot be learned
      without reading the vector (the reduced task of the issue on reading the vector)."""
    from pipeline.models import load_tokenizer

    shape = section.training_rows
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


class ActPatch(Task):
    """How the target's next token changes when a hidden state is patched in (the paper's act_patch)."""

    name, variants, format_instruction, settings = "act_patch", VARIANTS, FORMAT_INSTRUCTION, ActPatchConfig
    headline = ("is_different=True", "exact_match")  # names the counterfactual's answer: reads the vector
    prior_cell = ("token_type", "layer")
    baseline_variants = ("in_context_4", "in_context_8", "map_only", "affine")
    paper_suffix = "\n"  # the paper's act_patch templates end in "?\n"
    training_keys = (TrainingRows,)
    stages = {  # the task's own stages: the function each calls and the settings its result depends on
        "act_patch_facts": Stage("pipeline.tasks.facts:build_facts",
                                 (FactsConfig, PromptConfig, ActPatchConfig.key("precision"))),
        "act_patch_pairs": Stage("pipeline.tasks.act_patch.pairs:choose_pairs",
                                 (PromptConfig, PairsConfig, FactsConfig.key("keep_only_correct"),
                                  ActPatchConfig.key("precision"))),
        "act_patch_label_chunk": Stage("pipeline.tasks.act_patch.labels:build_label_chunk",
                                       (PromptConfig, PatchConfig, PairsConfig, FactsConfig.key("keep_only_correct"),
                                        ActPatchConfig.key("precision"))),
        "act_patch_labels": Stage("pipeline.tasks.act_patch.labels:gather_labels",
                                  (PromptConfig, PatchConfig, PairsConfig, FactsConfig.key("keep_only_correct"),
                                   "act_patch.released_labels.{target}")),
        "act_patch_diagnostics": Stage("pipeline.tasks.act_patch.diagnostics:diagnose",
                                       (GenerationConfig, ExplainerConfig, ScoringConfig), "act_patch",
                                       ("pipeline.tasks.act_patch.task",)),
        "act_patch_patch_effect": Stage("pipeline.tasks.act_patch.figures:patch_effect_figure"),
        "act_patch_budget": Stage("pipeline.report.budget:write_budget", (BudgetConfig, ScoringConfig)),
    }

    label_paths = staticmethod(label_paths)
    examples = staticmethod(examples)
    training_rows = staticmethod(training_rows)
    variant_vectors = staticmethod(variant_vectors)

    def baselines(self, scored, train, test, target_dir):
        return baseline_frames(scored, train, target_dir)

    def count_paths(self, target):
        return {"facts": f"work/act_patch/facts/{target}.parquet"}


TASK = register(ActPatch())


