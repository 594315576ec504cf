"""The circuits task's settings (config.yaml's `circuits:` section), declared once (pipeline/settings.py)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from pipeline.settings import UNIQUE, GenerationConfig, Section, TrainingConfig, located, overrides


@located("circuits.pairs_per_case")
class PairsPerCase(Section):
    """Input pairs per case; each pair asks about every head and MLP once."""
    train: int = Field(100, ge=2)
    test: int = Field(8, ge=2, description="every test row is answered (8 pairs x 10 components = 80 per case)")
    heldout_cases: int = Field(8, ge=2)


@located("circuits")
class CircuitsConfig(Section):
    """circuits: the explainer answers component-level patching questions about InterpBench's cases (target key
    `ib`), trained on train_cases' patches, tested on held-out inputs of them and on heldout_cases."""
    train_cases: tuple[str | int, ...] = Field(("3", "11", "13", "18", "19", "20", "24", "33", "34", "35"),
                                               min_length=1, json_schema_extra=UNIQUE)
    heldout_cases: tuple[str | int, ...] = Field(("4", "21", "36", "37", "38", "8"), json_schema_extra=UNIQUE,
                                                 description="cases the explainer never sees in training")
    pairs_per_case: PairsPerCase = Field(default_factory=PairsPerCase)
    balance: Optional[float] = Field(1.0, gt=0, description="unchanged training rows kept per changed one (null: all)")
    width: int = Field(32, ge=1, description="vectors zero-padded to this width (the widest case has d_model 32)")
    seed: int = 0
    explainer: Optional[str] = Field("smollm", description="whose circuits run the InterpBench summary reports")
    training: Optional[overrides(TrainingConfig)] = None
    generation: Optional[overrides(GenerationConfig)] = Field(
        default_factory=lambda: overrides(GenerationConfig)(max_examples=None),
        description="answer every test and held-out-case row")
