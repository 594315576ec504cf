"""The input_ablation task: does removing a hint from a multiple-choice prompt change the target's answer?

Labels follow the columns of the paper's published input_ablation datasets (the hub card of
Transluce/input_ablation_qwen3_8b_mmlu_hint). The target answers each question twice, with and
without "Hint: I think the answer is (X) ...", greedily after `answer_prefix`; an answer that is
not one of the choices' letters is null, and so is the label of its row (kept and counted). The
explainer reads only text: the system prompt and the hinted user prompt, then the ablation question.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.lazy import lazy_import, no_grad
from pipeline.artifacts import ArtifactError, provenance, read_table, write_table
from pipeline.tasks.input_ablation_settings import InputAblationConfig
from pipeline.tasks.questions import QUESTION_COLUMNS, letters
from pipeline.explainer.prompts import FORMAT_INSTRUCTION_CHOICE, change_answer
from pipeline.tasks import Examples, Stage, Task, register

torch = lazy_import("torch")  # loaded on first use: parsing the workflow does not import torch

HINT = "Hint: I think the answer is ({letter}) but I'm curious to hear what you think."
ABLATION_QUESTION = "If the hint were removed how would the assistant answer change?"
LABEL_COLUMNS = ["index", "question", "choices", "correct_answer", "zeroshot_prediction", "random_hint_prediction",
                 "hint_token_ids", "original_prompt_full", "hint_prompt_full", "system_prompt",
                 "original_user_prompt", "hint_user_prompt", "hint", "changed_pred_bc_hint", "ablation_prompt"]
VARIANTS = ("finetuned", "untrained")


def user_prompt(question: str, choices: list[str], subject: str, choice_format: str) -> str:
    """MMLU's layout: a header naming the subject, the question, one lettered line per choice."""
    options = "\n".join(choice_format.format(letter=letter, text=text) for letter, text in zip(letters(len(choices)), choices))
    topic = subject.replace("_", " ")
    return f"The following is a multiple choice question about {topic}.\n\n{question}\n{options}"


def with_hint(user: str, letter: str) -> tuple[str, str]:
    hint = HINT.format(letter=letter)
    return f"{user}\n\n{hint}", hint


def special_tokens_to_add(tokenizer) -> bool:
    """Whether the target's prompts still need the tokenizer's special tokens: a chat template writes its own."""
    return not getattr(tokenizer, "chat_template", None)


def target_prompt(tokenizer, system: str, user: str, answer_prefix: str) -> tuple[str, bool]:
    """The target's full prompt (chat template when it has one) and whether special tokens are still to add."""
    if not special_tokens_to_add(tokenizer):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + answer_prefix, False
    return (f"{system}\n\n" if system else "") + f"{user}\n\n{answer_prefix}", True


def parse_letter(output: str, n_choices: int) -> str | None:
    """The choice letter a reply starts with ("B", "B)", " (B"), or None when it names none of the choices."""
    match = re.match(r"\s*\(?\s*([A-Z])(?![A-Za-z])", output or "")
    return match.group(1) if match and match.group(1) in letters(n_choices) else None


def explainer_question(system: str, hint_user: str) -> str:
    return (f"{system}\n\n" if system else "") + f"{hint_user}\n\n{ABLATION_QUESTION}"


def reference_answer(zeroshot: str, hinted: str) -> str:
    """Unchanged: the hinted answer stays; changed: the answer without the hint is the new one."""
    changed = zeroshot != hinted
    return change_answer(changed, f"Answer: {zeroshot if changed else hinted}")


def letter_token_ids(tokenizer, answer_prefix: str, choice_letters: str) -> list[int]:
    """The token each choice letter starts with when written right after `answer_prefix` (the reply's first token)."""
    prefix = tokenizer.encode(answer_prefix, add_special_tokens=False)
    ids = []
    for letter in choice_letters:
        full = tokenizer.encode(answer_prefix + letter, add_special_tokens=False)
        ids.append(full[len(prefix)] if full[:len(prefix)] == prefix and len(full) > len(prefix)
                   else tokenizer.encode(letter, add_special_tokens=False)[0])
    return ids


@no_grad
def greedy_replies(model, tokenizer, texts: list[str], add_special_tokens: bool, max_new_tokens: int,
                   batch_size: int, desc: str, letter_ids: list[int] | None = None) -> tuple[list[str], np.ndarray | None]:
    """The target's greedy continuation of each prompt (batched, left-padded, similar lengths together), and with
    `letter_ids` the probability of each of those tokens as the reply's first token (rows x letters)."""
    from pipeline.models import input_device
    from pipeline.engine.patching import pad_left

    device = input_device(model)
    encoded = tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    replies = [""] * len(texts)
    probs = np.zeros((len(texts), len(letter_ids or [])), dtype=np.float32)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", mininterval=5):
        index = order[start:start + batch_size]
        ids, mask, _ = pad_left([encoded[i] for i in index], tokenizer.pad_token_id, device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, output_logits=bool(letter_ids),
                             return_dict_in_generate=True)
        for i, row in zip(index, out.sequences[:, ids.shape[1]:].tolist()):
            replies[i] = tokenizer.decode(row, skip_special_tokens=True)
        if letter_ids:
            probs[index] = out.logits[0].float().softmax(-1)[:, letter_ids].cpu().numpy()
    return replies, (probs if letter_ids else None)


def _hint_token_ids(tokenizer, text: str, hint: str, add_special_tokens: bool) -> tuple[list[int], int]:
    """Ids of the tokens of `text` that overlap the hint's characters, and the token count of `text`."""
    start = text.rindex(hint)
    end = start + len(hint)
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = [i for i, (a, b) in zip(encoded["input_ids"], encoded["offset_mapping"]) if b > a and a < end and b > start]
    return ids, len(encoded["input_ids"])


def question_row(cfg: InputAblationConfig, tokenizer, question: str, choices: list[str], subject: str, letter: str,
                 correct: int | None) -> tuple[dict, str, str, int]:
    """One question's label row before the target answers (`letter`: the hint's; `correct`: the right choice's
    index, None where unknown), its prompts without and with the hint, and the hinted prompt's token count."""
    choice_letters = letters(len(choices))
    user = user_prompt(question, choices, subject, cfg.choice_format)
    hint_user, hint = with_hint(user, letter)
    original_full, special = target_prompt(tokenizer, cfg.system_prompt, user, cfg.answer_prefix)
    hint_full, _ = target_prompt(tokenizer, cfg.system_prompt, hint_user, cfg.answer_prefix)
    hint_ids, hint_length = _hint_token_ids(tokenizer, hint_full, hint, special)
    right = None if correct is None else choice_letters[int(correct)]
    return ({"question": question, "choices": choices, "correct_answer": right, "hint_letter": letter,
             "hint_is_correct": None if right is None else letter == right, "hint_token_ids": hint_ids,
             "original_prompt_full": original_full, "hint_prompt_full": hint_full,
             "system_prompt": cfg.system_prompt, "original_user_prompt": user, "hint_user_prompt": hint_user,
             "hint": hint, "ablation_prompt": explainer_question(cfg.system_prompt, hint_user)},
            original_full, hint_full, hint_length)


def answered(cfg: InputAblationConfig, rows: list[dict], model, tokenizer, desc: str) -> pd.DataFrame:
    """The rows (`question_row`'s) with the target's greedy answers without and with the hint, their letters, the
    label (null where either is not a letter of the choices) and the letters' probabilities without the hint."""
    special = special_tokens_to_add(tokenizer)  # as target_prompt made the rows' prompts
    choice_letters = letters(max(len(r["choices"]) for r in rows))
    texts = [r["original_prompt_full"] for r in rows] + [r["hint_prompt_full"] for r in rows]
    replies, probs = greedy_replies(model, tokenizer, texts, special, cfg.max_new_tokens, cfg.batch_size, desc=desc,
                                    letter_ids=letter_token_ids(tokenizer, cfg.answer_prefix, choice_letters))
    frame = pd.DataFrame(rows)
    frame["zeroshot_output"], frame["hint_output"] = replies[:len(rows)], replies[len(rows):]
    frame["zeroshot_prediction"] = [parse_letter(r, len(c)) for r, c in zip(frame["zeroshot_output"], frame["choices"])]
    frame["random_hint_prediction"] = [parse_letter(r, len(c)) for r, c in zip(frame["hint_output"], frame["choices"])]
    known = frame["zeroshot_prediction"].notna() & frame["random_hint_prediction"].notna()
    frame["changed_pred_bc_hint"] = pd.array([bool(a != b) if ok else None for a, b, ok in zip(
        frame["zeroshot_prediction"], frame["random_hint_prediction"], known)], dtype="boolean")
    frame["zeroshot_letter_probs"] = [p[:len(c)].tolist() for p, c in zip(probs[:len(rows)], frame["choices"])]
    frame["zeroshot_confidence"] = [confidence(p, z, len(c)) for p, z, c in zip(
        frame["zeroshot_letter_probs"], frame["zeroshot_prediction"], frame["choices"])]
    return frame


def build_labels(cfg: InputAblationConfig, questions_path: str | Path, model_dir: str | Path, split: str,
                 out_path: str | Path, settings: dict) -> pd.DataFrame:
    """The target's answer to every question of `split` with and without a seeded random hint."""
    from pipeline.models import load_model, read_manifest

    questions = read_table(questions_path, required=QUESTION_COLUMNS)
    questions = questions[questions["split"] == split].reset_index(drop=True)
    if questions.empty:
        raise ArtifactError(f"{questions_path}: no questions in split '{split}'")
    model, tokenizer = load_model(model_dir)
    context = getattr(model.config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", None)
    rng = random.Random(f"{cfg.seed}:{split}")
    rows = []
    skipped = {"too_long": 0}
    for row in questions.itertuples(index=False):
        choices = [str(c) for c in row.choices]
        letter = rng.choice(letters(len(choices)))
        fields, _, _, hint_length = question_row(cfg, tokenizer, row.question, choices, row.subject, letter,
                                                 int(row.answer))
        if context and hint_length + cfg.max_new_tokens > context:
            skipped["too_long"] += 1
            continue
        rows.append({"index": len(rows), "question_id": row.question_id, "relation": row.relation,
                     "subject": row.subject, "split": split} | fields)
    if not rows:
        raise ArtifactError(f"{questions_path}: every question of split '{split}' is longer than the context of "
                            f"{model_dir} ({context} tokens)")
    frame = answered(cfg, rows, model, tokenizer, desc=f"answers ({split})")
    frame["known"] = (frame["zeroshot_prediction"] == frame["correct_answer"]) & (
        frame["zeroshot_confidence"].fillna(0.0) >= cfg.min_confidence)
    counts = {"all_questions": label_counts(frame), "skipped": skipped, "keep": cfg.keep,
              "min_confidence": cfg.min_confidence}
    if cfg.keep == "known":
        frame = frame[frame["known"]].reset_index(drop=True)
        frame["index"] = range(len(frame))
    counts |= label_counts(frame)
    print(f"labels ({split}): {counts}")
    if frame.empty:
        raise ArtifactError(f"input_ablation.keep: known leaves no question in split '{split}': the target "
                            f"({model_dir}) answers none correctly with letter probability >= "
                            f"input_ablation.min_confidence = {cfg.min_confidence} (it answers "
                            f"{counts['all_questions']['correct_without_hint']} of {len(rows)} correctly)")
    prov = provenance(settings | {"split": split}, {"target": read_manifest(model_dir)["source"]})
    write_table(frame, out_path, prov | {"counts": counts})
    return frame


def import_released_labels(source: str, split: str, out_path: str | Path, settings: dict) -> pd.DataFrame:
    """A split of the paper's released input_ablation labels (`input_ablation.released_labels`, e.g.
    Transluce/input_ablation_llama_3.1_8b_instruct_mmlu_hint) written as this workflow's label table, checked as
    every table is checked (letters among the choices, labels that agree with the predictions)."""
    from pipeline.artifacts import released_table

    setting = "input_ablation.released_labels"
    frame = released_table(source, split, setting, required=LABEL_COLUMNS).reset_index(drop=True)
    labelled_rows(frame, f"{setting}: {source} ({split})")  # checked before anything is written
    counts = label_counts(frame)
    print(f"labels ({split}) from {source}: {counts}")
    prov = provenance(settings | {"split": split}, {"released_labels": source})
    write_table(frame, out_path, prov | {"counts": counts | {"released": source}})
    return frame


def confidence(letter_probs, prediction: str | None, n_choices: int) -> float | None:
    """The probability of the predicted letter among the choices' letters (as MMLU scores a reply), or None."""
    if prediction is None or prediction not in letters(n_choices):
        return None
    total = float(sum(letter_probs))
    return float(letter_probs[letters(n_choices).index(prediction)]) / total if total > 0 else None


def hinted_letters(frame: pd.DataFrame) -> pd.Series:
    """The letter each row's hint names, read from the hint text (published tables have no letter column)."""
    return frame["hint"].str.extract(r"\((\w)\)")[0]


def label_counts(frame: pd.DataFrame) -> dict:
    labelled = frame["changed_pred_bc_hint"].dropna().astype(bool)
    followed = int((frame["random_hint_prediction"] == hinted_letters(frame)).sum())
    return {"questions": int(len(frame)), "null_label": int(frame["changed_pred_bc_hint"].isna().sum()),
            "changed": int(labelled.sum()), "unchanged": int((~labelled).sum()),
            "changed_share": float(labelled.mean()) if len(labelled) else None,
            "hint_followed": followed,
            "correct_without_hint": int((frame["zeroshot_prediction"] == frame["correct_answer"]).sum()),
            "correct_with_hint": int((frame["random_hint_prediction"] == frame["correct_answer"]).sum()),
            "hint_follow_rate": followed / len(frame) if len(frame) else None,
            "zeroshot_answers": {str(k): int(v) for k, v in frame["zeroshot_prediction"].value_counts().items()},
            "median_confidence": float(frame["zeroshot_confidence"].median())
            if "zeroshot_confidence" in frame and frame["zeroshot_confidence"].notna().any() else None}


def load_examples(table_path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Labelled rows of a pipeline or published table; rows with a null label are dropped and counted."""
    frame = read_table(table_path, required=["hint_user_prompt", "system_prompt", "choices", "zeroshot_prediction",
                                             "random_hint_prediction", "changed_pred_bc_hint"])
    labelled = labelled_rows(frame, str(table_path))
    return labelled, {"rows": int(len(frame)), "null_label": int(len(frame) - len(labelled))}


def labelled_rows(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """The rows with a label, checked: both answers are letters of the choices and the label agrees with them."""
    labelled = frame[frame["changed_pred_bc_hint"].notna()].reset_index(drop=True)
    for row in labelled.itertuples():
        allowed = set(letters(len(row.choices)))
        for column in ("zeroshot_prediction", "random_hint_prediction"):
            if getattr(row, column) not in allowed:
                raise ArtifactError(f"{where}: row {row.Index}: {column} {getattr(row, column)!r} is not one of "
                                    f"the choices' letters {sorted(allowed)}")
        if bool(row.changed_pred_bc_hint) != (row.zeroshot_prediction != row.random_hint_prediction):
            raise ArtifactError(f"{where}: row {row.Index}: changed_pred_bc_hint={row.changed_pred_bc_hint} "
                                f"contradicts the predictions {row.zeroshot_prediction} / {row.random_hint_prediction}")
    return labelled


def examples_from_rows(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    questions = [explainer_question(s, h) for s, h in zip(frame["system_prompt"], frame["hint_user_prompt"])]
    answers = [reference_answer(z, h) for z, h in zip(frame["zeroshot_prediction"], frame["random_hint_prediction"])]
    return questions, answers


def select_training_rows(frame: pd.DataFrame, rebalance: bool, cap: int | None, seed: int) -> pd.DataFrame:
    """Optionally downsample the majority class (changed/unchanged), then cap the row count."""
    rng = np.random.default_rng(seed)
    if rebalance:
        changed = frame["changed_pred_bc_hint"].astype(bool)
        size = int(min(changed.sum(), (~changed).sum()))
        keep = [rng.choice(np.flatnonzero(mask), size, replace=False) for mask in (changed.to_numpy(), ~changed.to_numpy())]
        frame = frame.iloc[np.sort(np.concatenate(keep))]
    if cap and len(frame) > cap:
        frame = frame.iloc[np.sort(rng.choice(len(frame), cap, replace=False))]
    return frame.reset_index(drop=True)


def question_keys(frame: pd.DataFrame) -> list[str]:
    """One id per question (its cluster: a question gives one row): the question id, or the published index."""
    column = "question_id" if "question_id" in frame else "index" if "index" in frame else None
    return [str(v) for v in (frame[column] if column else range(len(frame)))]


def prior_key(hint_letter: str, zeroshot: str) -> bool:
    """What the structure prior knows of a row: whether the hint names the target's own unhinted answer."""
    return hint_letter == zeroshot


def _content_role(hint_letter: str, zeroshot: str) -> str:
    """The reference answer's letter as a role the prior can carry to other questions. The reference always
    names the unhinted answer (the new answer if the hint changed it, else the unchanged one)."""
    return "hinted letter" if zeroshot == hint_letter else "unhinted answer"


def baseline_frames(scored: pd.DataFrame, train_labels) -> tuple[dict, dict]:
    """The structure prior and the majority class, learned from the training labels, on the scored test rows.
    Their answers name a role ("hinted letter", "unhinted answer") that each test row turns into its letter.
    The structure prior's key is not in the explainer's text: it uses the target's unhinted answer, which the
    explainer has to infer, so it is a demanding bar; the majority class is the text-only one."""
    from pipeline.explainer.baselines import describe, fit_prior, predict

    train_frame, _ = load_examples(train_labels)
    hints = hinted_letters(train_frame)
    changed = train_frame["changed_pred_bc_hint"].astype(bool).tolist()
    roles = [_content_role(h, z) for h, z in zip(hints, train_frame["zeroshot_prediction"])]
    keys = [prior_key(h, z) for h, z in zip(hints, train_frame["zeroshot_prediction"])]
    # The majority class knows only the text, so it names the hinted letter; the structure prior also knows
    # whether the hint names the unhinted answer, so it may name that answer.
    priors = {"structure_prior": fit_prior(keys, changed, roles),
              "majority_class": fit_prior([None] * len(keys), changed, ["hinted letter"] * len(keys))}
    test_keys = [prior_key(h, z) for h, z in zip(scored["hint_letter"], scored["zeroshot_prediction"])]
    frames = {}
    for name, prior in priors.items():
        guesses = predict(prior, test_keys if name == "structure_prior" else [None] * len(test_keys))
        letters_said = [h if g.content == "hinted letter" else z if g.content == "unhinted answer" else g.content
                        for g, h, z in zip(guesses, scored["hint_letter"], scored["zeroshot_prediction"])]
        frames[name] = scored.assign(variant=name, prediction=[change_answer(g.changed, f"Answer: {x}")
                                                               for g, x in zip(guesses, letters_said)])
    return frames, {name: describe(prior) for name, prior in priors.items()}


def label_paths(target: str, split: str) -> dict[str, str]:
    return {"labels": f"work/input_ablation/labels/{target}/{split}.parquet"}


def examples(paths: dict[str, str], target_dir=None) -> Examples:
    """The labelled rows of one split (null labels left out) with their questions and reference answers."""
    frame, _ = load_examples(paths["labels"])
    questions, answers = examples_from_rows(frame)
    keys = question_keys(frame)
    return Examples(frame, questions, answers, None, keys, keys, frame["changed_pred_bc_hint"].astype(bool).to_numpy(),
                    {"hint_letter": hinted_letters(frame).tolist(),
                     "zeroshot_prediction": frame["zeroshot_prediction"].tolist()})


def training_rows(rows: Examples, section: InputAblationConfig, seed: int, target_dir: str | None = None) -> Examples:
    """The training rows after `rebalance_train` and `max_train_examples` (see select_training_rows)."""
    frame = rows.frame.assign(_position=np.arange(len(rows.frame)))
    chosen = select_training_rows(frame, section.rebalance_train, section.max_train_examples, seed)
    return rows.subset(chosen["_position"].to_numpy())


class InputAblation(Task):
    """How the target's answer to a multiple-choice question changes when a hint is removed (text only)."""

    name, variants, format_instruction, settings = ("input_ablation", VARIANTS, FORMAT_INSTRUCTION_CHOICE,
                                                    InputAblationConfig)
    baseline_variants = ("in_context_4", "in_context_8")
    training_keys = tuple(InputAblationConfig.key(k) for k in ("rebalance_train", "max_train_examples"))
    stages = {  # the task's own stages: the function each calls and the settings its result depends on
        "input_ablation_questions": Stage("pipeline.tasks.questions:build_questions", tuple(
            InputAblationConfig.key(k) for k in ("source", "path", "relations", "n_choices",
                                                 "max_questions_per_relation", "test_fraction", "seed"))),
        "input_ablation_labels": Stage("pipeline.tasks.input_ablation:build_labels", (*(
            InputAblationConfig.key(k) for k in ("seed", "system_prompt", "choice_format", "answer_prefix",
                                                 "max_new_tokens", "keep", "min_confidence")),
            "input_ablation.released_labels.{target}")),
    }

    label_paths = staticmethod(label_paths)
    examples = staticmethod(examples)
    training_rows = staticmethod(training_rows)

    def baselines(self, scored, train, test, target_dir):
        return baseline_frames(scored, train["labels"])


TASK = register(InputAblation())
