"""Secrets (HF_TOKEN, API keys) from the environment or a `.env` file; never logged or stored."""

from __future__ import annotations

import os
from pathlib import Path


def get_secret(name: str, dotenv: str | Path = ".env") -> str | None:
    """The environment wins; otherwise a `NAME=value` line of `.env` in the working folder."""
    if os.environ.get(name):
        return os.environ[name]
    path = Path(dotenv)
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip().removeprefix("export ").strip() == name:
            return value.strip().strip("'\"") or None
    return None
