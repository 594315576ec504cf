"""Typed settings: a settings dataclass from its config section (a module of its own, so that a stage whose settings
class lives beside its code does not depend on all of pipeline/config.py)."""

from __future__ import annotations

import dataclasses
from typing import Any


def from_section(cls, section: dict[str, Any]):
    """The dataclass from a config section; keys it does not hold are left out (the schema checks them)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in section.items() if k in names})


class Section:
    """A settings dataclass read from its config section: `Cls.from_dict(section)`, lists read as tuples (the
    settings are frozen, so their values are too)."""

    @classmethod
    def from_dict(cls, section: dict[str, Any]):
        return from_section(cls, {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()})
