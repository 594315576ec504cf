"""The shell commands README.md and docs/*.md show (fenced code blocks and inline code), for tests that run them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# A command the docs show for the workflow: Snakemake, or one of the package's own modules.
COMMAND = re.compile(r"^(?:\.venv/bin/)?(?:snakemake(?=\s|$)|python -m pipeline\b)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
# What a reader fills in where the docs name a kind of value, and what the tests put there.
PLACEHOLDERS = {"{task}": "act_patch", "{explainer}_{target}": "smollm_smollm", "my.yaml": "tests/config_tiny.yaml",
                "more.yaml": "tests/config_tiny.yaml", "FILE": "tests/config_tiny.yaml",
                "{run}": "smollm_smollm"}


@dataclass(frozen=True)
class Command:
    source: str  # file:line
    text: str  # as the docs show it

    def filled(self) -> str:
        text = self.text
        for placeholder, value in PLACEHOLDERS.items():
            text = text.replace(placeholder, value)
        return text


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _segments(line: str) -> list[str]:
    """A shell line's commands joined by && or ;, each without a leading `$ ` prompt."""
    return [part.strip().removeprefix("$ ").strip() for part in re.split(r"&&|;", line)]


def documented_commands() -> list[Command]:
    found: list[Command] = []
    for path in doc_files():
        text = path.read_text()
        name = str(path.relative_to(REPO))
        for block in FENCE.finditer(text):
            first = text.count("\n", 0, block.start(1)) + 1
            lines = block.group(1).split("\n")
            index = 0
            while index < len(lines):
                start, line = index, lines[index]
                while line.rstrip().endswith("\\") and index + 1 < len(lines):
                    index += 1
                    line = line.rstrip()[:-1] + " " + lines[index].strip()
                index += 1
                if line.lstrip().startswith("#"):
                    continue
                code = line.split(" #")[0]  # a trailing comment
                found += [Command(f"{name}:{first + start}", part) for part in _segments(code) if COMMAND.match(part)]
        prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        lines = prose.split("\n")
        for number, line in enumerate(lines):  # indented code blocks (four spaces), with continuation lines
            if line.startswith("    ") and COMMAND.match(line.strip()) and not (number and lines[number - 1].rstrip(
                    ).endswith("\\")):
                joined, following = line.strip(), number
                while joined.endswith("\\") and following + 1 < len(lines):
                    following += 1
                    joined = joined[:-1].rstrip() + " " + lines[following].strip()
                found.append(Command(f"{name}:{number + 1}", joined))
        for span in INLINE.finditer(prose):
            if COMMAND.match(span.group(1).strip()):
                line = prose.count("\n", 0, span.start()) + 1
                found += [Command(f"{name}:{line}", part) for part in _segments(span.group(1)) if COMMAND.match(part)]
    return found
