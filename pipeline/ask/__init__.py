"""Ask a trained explainer about your own inputs: the question exactly as it was asked in training, its answer, and
the truth computed there and then by the same code that made the labels.

    from pipeline.ask import Asker
    asker = Asker.load("act_patch", "gemma_gemma")        # in the workflow's folder, after the main job
    table = asker.act_patch("The capital of Japan is the city of", "Japan", counterfactual_subject="Italy")
    Asker.load("features", "tiny_tiny").features(layer=1, feature=7)   # an SAE latent: pipeline/ask/features.py

Settings come from the run's recorded provenance (the trained explainer's training and explainer sections, the
labels' patch windows and prompt format, the fine-tuned answers' generation section), so a question is asked as the
explainer was trained and scored. Models load once per Asker; ask as often as you like.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.artifacts import ArtifactError, read_provenance

TASKS = ("act_patch", "input_ablation", "features")
ANSWER_COLUMNS = ["token_type", "layer", "question", "answer", "said_changed", "clean_token", "patched_token",
                  "counterfactual_token", "changed", "reference", "agrees"]


@dataclass
class Asker:
    """A trained explainer of one run (`{explainer}_{target}`) with its target, loaded on first use."""
    task: str
    run: str
    workdir: Path
    explainer_model: Path
    target_model: Path
    settings: dict  # the trained explainer's recorded settings (a released one's: those its answers recorded)
    released: str | None = None  # the paper's released explainer the run used (explainer.checkpoint), if any
    _loaded: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, task: str, run: str | Path, workdir: str | Path = ".") -> "Asker":
        """`run`: a run name (`gemma_gemma`) of the workflow in `workdir`, or its trained explainer's folder
        (`work/{task}/explainers/{run}`). A run that answered with a released explainer (explainer.checkpoint: the
        paper's layout) and trained none is asked through that checkpoint, with the settings its answers recorded."""
        from pipeline.explainer.model import EXPLAINER_META

        if task not in TASKS:
            raise ValueError(f"task {task!r}: asking is built for {list(TASKS)}")
        folder = Path(run)
        if folder.is_dir():
            workdir, run = folder.resolve().parents[3], folder.name
        workdir = Path(workdir)
        trained = workdir / "work" / task / "explainers" / str(run)
        is_trained = (trained / EXPLAINER_META).is_file()
        released = None if is_trained else _released_settings(
            workdir / "work" / task / "predictions" / str(run) / "finetuned.parquet")
        if not is_trained and released is None:
            found = sorted(p.name for p in trained.parent.glob("*")) if trained.parent.is_dir() else []
            raise ArtifactError(f"{trained}: no trained explainer of run {run!r} (runs here: {found or 'none'}), nor "
                                f"answers of a released one; train it with `snakemake --cores all {trained}`")
        models = workdir / "resources" / "models"
        splits = [(run[:i], run[i + 1:]) for i, c in enumerate(str(run)) if c == "_"]
        pairs = [(models / e, models / t) for e, t in splits if (models / e).is_dir() and (models / t).is_dir()]
        if not pairs:
            raise ArtifactError(f"run {run!r}: no prepared models {models}/{{explainer}} and {{target}} for it")
        if is_trained:
            return cls(task, str(run), workdir, pairs[0][0], pairs[0][1], read_meta(trained)["provenance"]["settings"])
        from pipeline.settings import ExplainerConfig, section_of

        return cls(task, str(run), workdir, pairs[0][0], pairs[0][1], released,
                   str(section_of(released, ExplainerConfig).checkpoint))

    # What the run recorded ------------------------------------------------------------------------------------------
    @property
    def trained_dir(self) -> Path:
        """The explainer's weights: this workflow's trained folder, or the released checkpoint."""
        return Path(self.released) if self.released else self.workdir / "work" / self.task / "explainers" / self.run

    @property
    def recorded(self) -> dict:
        """What the explainer's own provenance records (for a released one: its checkpoint and the answers'
        settings)."""
        if self.released:
            return {"released_checkpoint": self.released, "settings": self.settings}
        return read_meta(self.trained_dir)["provenance"]

    @functools.cached_property
    def labels_settings(self) -> dict:
        """The settings the run's test labels recorded (read once per Asker)."""
        target = self.target_model.name
        path = self.workdir / "work" / self.task / "labels" / target / "test.parquet"
        if not path.is_file():
            raise ArtifactError(f"{path}: the run's test labels (their patch windows and prompt format) are needed; "
                                f"`snakemake --cores all {path}` makes them")
        return read_provenance(path)["settings"]

    @functools.cached_property
    def generation(self):
        """The generation section the run's fine-tuned answers were made with (the defaults where none exist; read
        once per Asker)."""
        from pipeline.settings import GenerationConfig, section_of

        made = self.workdir / "work" / self.task / "predictions" / self.run / "finetuned.parquet"
        settings = read_provenance(made)["settings"] if made.is_file() else {}
        return section_of(settings, GenerationConfig)

    def explainer_config(self):
        from pipeline.settings import ExplainerConfig, section_of

        return section_of(self.settings, ExplainerConfig)

    # Models, loaded once --------------------------------------------------------------------------------------------
    def target(self):
        if "target" not in self._loaded:
            from pipeline.models import load_model

            self._loaded["target"] = load_model(self.target_model)
        return self._loaded["target"]

    def explainer(self, width: int, text_only: bool = False):
        if "explainer" not in self._loaded:
            from pipeline.explainer.model import load_explainer
            from pipeline.runtime import torch_dtype

            cfg = self.explainer_config()
            alignment = self.workdir / "work" / "alignment" / f"{self.run}.safetensors"
            fitted = cfg.alignment == "fitted" and alignment.is_file() and not text_only
            tokens = cfg.continuous_tokens
            self._loaded["explainer"] = load_explainer(
                self.trained_dir, self.explainer_model, width, projection="none" if text_only else cfg.projection,
                inject=cfg.inject, alignment=alignment if fitted else None, scale=cfg.scale, center=cfg.center,
                continuous_tokens=tokens.ordered if tokens else None, text_only=text_only,
                dtype=torch_dtype(self.generation.precision))
        return self._loaded["explainer"]

    # Asking -----------------------------------------------------------------------------------------------------------
    def as_asked(self, questions: list[str]) -> list[str]:
        """The questions as the explainer reads them (with `prompt_format: paper`, ending as the paper's templates)."""
        from pipeline.explainer.explain import asked
        from pipeline.tasks import get_task

        return asked(questions, self.explainer_config(), get_task(self.task))

    def answer(self, questions: list[str], vectors=None, layers=None) -> list[str]:
        """The fine-tuned explainer's answers, asked as the workflow's generation stage asks them (`vectors`: one per
        question, none for a text-only task; `layers`: each vector's layer where the explainer maps per layer)."""
        from pipeline.explainer.generation import generate_answers
        from pipeline.models import read_manifest

        cfg, generation = self.explainer_config(), self.generation
        width = int(vectors.shape[1]) if vectors is not None else read_manifest(self.explainer_model)["hidden_size"]
        explainer, tokenizer = self.explainer(width, text_only=vectors is None)
        return generate_answers(explainer, tokenizer, self.as_asked(questions), vectors,
                                cfg.prompt_format, generation.max_new_tokens, generation.batch_size, desc="asking",
                                vector_layers=layers)

    def act_patch(self, prompt: str, subject: str, counterfactual_subject: str | None = None,
                  counterfactual: str | None = None, token_types=None, layers=None, pair_id: int = 0,
                  token_index: int | None = None) -> pd.DataFrame:
        """Patch the counterfactual prompt's state at each token type x layer window of the run into `prompt` and
        ask the explainer what changes. `counterfactual` defaults to `prompt` with `subject` replaced by
        `counterfactual_subject`; `token_types` and `layers` (windows, as lists of layers) default to every one of
        the run's labels; a subject is located at its last occurrence in its prompt (after any few-shot examples).
        One row per patch: the question as asked, the answer, the target's clean, patched and counterfactual next
        tokens, and whether the answer agrees with the truth (the paper's exact match). `pair_id` picks each row's
        phrasing of the question among the paper's five, as a labelled pair's id does. `token_index` (instead of
        token types) patches one token of the prompt as the target's tokenizer splits it (negative: from the end):
        before the subject the same index of the counterfactual, after it the same distance from the subject's last
        token (pipeline.tasks.facts.index_token_type); such a row takes the phrasing of the grid's first type."""
        from pipeline.explainer.explain import vector_layers
        from pipeline.explainer.metrics import score_rows
        from pipeline.models import read_manifest
        from pipeline.settings import section_of
        from pipeline.tasks.act_patch.labels import label_rows, run_patches
        from pipeline.tasks.act_patch.settings import PatchConfig, PromptConfig
        from pipeline.tasks.act_patch.task import examples_of
        from pipeline.explainer.prompts import parse_answer
        from pipeline.engine.patching import encode
        from pipeline.tasks.facts import RenderedPrompt, index_token_type
        import torch

        if counterfactual is None:
            if not counterfactual_subject:
                raise ValueError("give the counterfactual prompt or the counterfactual subject")
            counterfactual = prompt.replace(subject, counterfactual_subject, 1)
        counterfactual_subject = counterfactual_subject or subject
        labels = self.labels_settings
        patch, prompt_cfg = section_of(labels, PatchConfig), section_of(labels, PromptConfig)
        windows = all_windows = patch.windows(read_manifest(self.target_model)["num_layers"])
        types = list(token_types or patch.token_types)
        unknown = sorted(set(types) - set(patch.token_types))
        if unknown and token_index is None:
            raise ValueError(f"token types {unknown}: this run's explainer was trained on {list(patch.token_types)}")
        if layers is not None:
            wanted = [list(map(int, w)) for w in layers]
            missing = [w for w in wanted if w not in windows]
            if missing:
                raise ValueError(f"layers {missing}: this run's windows are {windows}")
            windows = wanted
        special = prompt_cfg.format == "completion"
        rendered = []
        for text, name in ((prompt, subject), (counterfactual, counterfactual_subject)):
            if name not in text:
                raise ValueError(f"subject {name!r} is not in the prompt {text!r}")
            start = text.rindex(name)  # the fact's own sentence ends the prompt, after any few-shot examples
            rendered.append(RenderedPrompt(text, (start, start + len(name)), len(text), special))
        model, tokenizer = self.target()
        if token_index is not None:
            types = [index_token_type(rendered[0], encode(tokenizer, [prompt], special)[0]["offsets"], int(token_index))]
        run = run_patches(model, tokenizer, [tuple(rendered)], windows, types, len(windows) * len(types))
        pair = {"pair_id": int(pair_id), "relation": "asked", "subject": subject,
                "counterfactual_subject": counterfactual_subject, "text": prompt,
                "counterfactual_text": counterfactual, "target_true": "", "counterfactual_target": ""}
        rows, vectors = label_rows([pair], run, tokenizer, windows, "asked")
        trained_types = list(patch.token_types)
        for row in rows:  # the row id of the whole run's grid, whatever part of it is asked: it picks the phrasing
            kind = trained_types.index(row["token_type"]) if row["token_type"] in trained_types else 0
            row["row_id"] = ((int(pair_id) * len(trained_types) + kind) * len(all_windows)
                             + all_windows.index(row["layer"]))
        examples = examples_of(pd.DataFrame(rows), torch.stack(vectors), tokenizer)
        answers = self.answer(examples.questions, examples.vectors, vector_layers(
            examples, self.explainer_config(), self.explainer_model, self.target_model))
        scored = score_rows(answers, examples.answers, examples.labels)
        frame = examples.frame
        return pd.DataFrame({
            "token_type": frame["token_type"], "layer": [list(w) for w in frame["layer"]],
            "question": self.as_asked(examples.questions), "answer": answers,
            "said_changed": [parse_answer(a).changed for a in answers],
            "clean_token": [c[0] for c in frame["original_continuation"]],
            "patched_token": [c[0] for c in frame["ablated_continuation"]],
            "counterfactual_token": [c[0] for c in frame["counterfactual_continuation"]],
            "changed": frame["is_different"].astype(bool), "reference": examples.answers,
            "agrees": scored["exact_match"].astype(bool)})[ANSWER_COLUMNS]

    def input_ablation(self, question: str, choices: list[str], hint: str, subject: str = "world_geography",
                       correct: int | None = None) -> pd.DataFrame:
        """Ask whether removing the hint "I think the answer is (`hint`)" from a multiple-choice question changes
        the target's answer: one row with the question as asked, the explainer's answer, and the target's letters
        without and with the hint (None where its reply is not a choice's letter: then there is no truth)."""
        from pipeline.explainer.prompts import parse_answer
        from pipeline.settings import section_of
        from pipeline.tasks.input_ablation import answered, explainer_question, question_row, reference_answer
        from pipeline.tasks.input_ablation_settings import InputAblationConfig
        from pipeline.tasks.questions import letters

        choices = [str(c) for c in choices]
        if len(choices) < 2 or hint not in letters(len(choices)):
            raise ValueError(f"hint {hint!r}: expected the letter of one of {len(choices)} choices "
                             f"({', '.join(letters(len(choices)))}); a question needs two choices or more")
        cfg = section_of(self.labels_settings, InputAblationConfig)
        model, tokenizer = self.target()
        fields, *_ = question_row(cfg, tokenizer, question, choices, subject, hint, correct)
        row = answered(cfg, [fields], model, tokenizer, desc="target").iloc[0]
        asked = explainer_question(row["system_prompt"], row["hint_user_prompt"])
        answer = self.answer([asked])[0]
        known = pd.notna(row["changed_pred_bc_hint"])
        reference = reference_answer(row["zeroshot_prediction"], row["random_hint_prediction"]) if known else None
        agrees = None
        if known:
            from pipeline.explainer.metrics import score_rows

            agrees = bool(score_rows([answer], [reference], [bool(row["changed_pred_bc_hint"])])["exact_match"][0])
        return pd.DataFrame([{
            "question": self.as_asked([asked])[0], "answer": answer, "said_changed": parse_answer(answer).changed,
            "answer_without_hint": row["zeroshot_prediction"], "answer_with_hint": row["random_hint_prediction"],
            "changed": bool(row["changed_pred_bc_hint"]) if known else None, "reference": reference,
            "agrees": agrees}])

    def act_patch_table(self, questions: pd.DataFrame) -> pd.DataFrame:
        """Many asks: one `act_patch` per row of `questions` (columns prompt, subject, and counterfactual_subject or
        counterfactual; optional token_type or token_index, layer and pair_id), the rows numbered by `ask`."""
        need = {"prompt", "subject"}
        missing = need - set(questions.columns)
        if missing or not ({"counterfactual_subject", "counterfactual"} & set(questions.columns)):
            raise ValueError(f"questions need columns prompt, subject and counterfactual_subject (or counterfactual); "
                             f"they have {list(questions.columns)}")
        out = []
        for number, row in enumerate(questions.to_dict("records")):
            types = [row["token_type"]] if pd.notna(row.get("token_type", None)) else None
            layer = row.get("layer", None)
            layers = [[int(x) for x in str(layer).replace(",", " ").split()]] if pd.notna(layer) else None
            index = optional(row, "token_index")
            answered = self.act_patch(row["prompt"], row["subject"], optional(row, "counterfactual_subject"),
                                      optional(row, "counterfactual"), types, layers,
                                      int(optional(row, "pair_id") or 0), None if index is None else int(index))
            out.append(answered.assign(ask=number, prompt=row["prompt"]))
        return pd.concat(out, ignore_index=True)[["ask", "prompt"] + ANSWER_COLUMNS]


    def input_ablation_table(self, questions: pd.DataFrame) -> pd.DataFrame:
        """Many asks: one `input_ablation` per row of `questions` (columns question, choices separated by `|`, hint;
        optional subject), the rows numbered by `ask`."""
        missing = {"question", "choices", "hint"} - set(questions.columns)
        if missing:
            raise ValueError(f"questions need columns question, choices (separated by |) and hint; they have "
                             f"{list(questions.columns)}")
        out = []
        for number, row in enumerate(questions.to_dict("records")):
            choices = row["choices"] if isinstance(row["choices"], list) else str(row["choices"]).split("|")
            answered = self.input_ablation(row["question"], [c.strip() for c in choices], str(row["hint"]).strip(),
                                           optional(row, "subject") or "world_geography")
            out.append(answered.assign(ask=number))
        table = pd.concat(out, ignore_index=True)
        return table[["ask"] + [c for c in table.columns if c != "ask"]]

    def features(self, layer: int, feature: int | None = None, exemplars: int = 5, simulate: bool = True,
                 vector_file: str | Path | None = None) -> dict:
        """What the explainer says SAE latent `feature` of `layer` encodes, beside the run's reference description,
        the latent's top exemplars (firing token marked) and the simulator's scores; or a direction of one's own
        from `vector_file`, read at `layer` (pipeline/ask/features.py)."""
        from pipeline.ask.features import ask_feature

        return ask_feature(self, layer, feature, exemplars, simulate, vector_file)

    def table(self, questions: pd.DataFrame) -> pd.DataFrame:
        """Every row of a file of questions, asked as this run's task asks."""
        if self.task == "features":
            from pipeline.ask.features import features_table

            return features_table(self, questions)
        return self.act_patch_table(questions) if self.task == "act_patch" else self.input_ablation_table(questions)


def optional(row: dict, name: str):
    value = row.get(name)
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def _released_settings(predictions: Path) -> dict | None:
    """The settings a run's fine-tuned answers recorded, where a released explainer (explainer.checkpoint) gave
    them; None otherwise."""
    if not predictions.is_file():
        return None
    from pipeline.settings import ExplainerConfig, section_of

    settings = read_provenance(predictions).get("settings", {})
    return settings if section_of(settings, ExplainerConfig).checkpoint else None


def read_meta(folder: Path) -> dict:
    import json

    from pipeline.explainer.model import EXPLAINER_META

    return json.loads((folder / EXPLAINER_META).read_text())


def read_questions(path: str | Path) -> pd.DataFrame:
    """A user's questions: a CSV or Parquet file, one ask per row."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"{path}: questions come as .csv or .parquet")


def ask_file(task: str, run: str | Path, questions_path: str | Path, out_path: str | Path,
             workdir: str | Path = ".") -> pd.DataFrame:
    """Every question of a user's file put to a trained explainer, into one table with the answers, the truth and
    the provenance (the explainer's run, its recorded settings, the questions file's fingerprint)."""
    import hashlib

    from pipeline.artifacts import provenance, write_table

    asker = Asker.load(task, run, workdir)
    questions = read_questions(questions_path)
    if questions.empty:
        raise ValueError(f"{questions_path}: no questions")
    table = asker.table(questions)
    prov = provenance({"run": asker.run, "explainer": asker.recorded,
                       "questions": {"path": str(questions_path),
                                     "sha256": hashlib.sha256(Path(questions_path).read_bytes()).hexdigest()}})
    write_table(table, out_path, prov)
    return table
