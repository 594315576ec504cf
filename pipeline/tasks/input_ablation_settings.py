"""The input_ablation task's settings (config.yaml's `input_ablation:` section), declared once (pipeline/settings.py)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from pipeline.settings import (UNIQUE, ExplainerConfig, GenerationConfig, Section, TrainingConfig, execution,
                               located, overrides)


@located("input_ablation")
class InputAblationConfig(Section):
    """input_ablation: would the target's answer to a multiple-choice question change without the hint ("I think the
    answer is (X)")? Text only: the explainer reads no vector."""
    released_labels: Optional[dict[str, str]] = Field(
        None, description="target key -> the paper's released label dataset, read instead of labels built here")
    source: Literal["countryinfo", "mmlu"] = Field("countryinfo", description="or mmlu, with path: to a Parquet file "
                                                                              "in the hub's cais/mmlu layout")
    path: Optional[str] = None
    relations: tuple[str, ...] = Field(("capital", "currency", "language", "region", "subregion", "borders",
                                        "demonym"), min_length=1)
    n_choices: int = Field(4, ge=2)
    max_questions_per_relation: Optional[int] = Field(100, ge=1)
    test_fraction: float = Field(0.3, gt=0, lt=1, description="share of countries (MMLU: questions) held out")
    seed: int = 0
    system_prompt: str = "Answer the multiple-choice question with the letter of the correct option."
    choice_format: str = Field("({letter}) {text}", pattern=r"\{letter\}.*\{text\}",
                               description="one option line: '(A) ...' matches the hint's '(X)'")
    answer_prefix: str = Field("Answer: (", description="opens the target's reply, so its greedy next tokens are the "
                                                        "letter")
    max_new_tokens: int = Field(2, ge=1)
    batch_size: int = execution(32, description="questions per forward pass", ge=1)
    keep: Literal["all", "known"] = Field(
        "all", description="known: only questions the target answers correctly without the hint (not the default: "
                           "models of this size answer at chance, so it would keep lucky guesses)")
    min_confidence: float = Field(0.0, ge=0, le=1, description="keep: known: the least probability of the answer's "
                                                               "letter among the letters")
    rebalance_train: bool = Field(True, description="downsample the majority class (changed/unchanged) of the "
                                                    "training split (without it SmolLM2 answered 'unchanged')")
    max_train_examples: Optional[int] = Field(None, ge=1)
    baselines: tuple[Literal["in_context_4", "in_context_8"], ...] = Field(
        ("in_context_4", "in_context_8"), json_schema_extra=UNIQUE, description="the in-context baselines (a text-only task has no vector map "
                                                      "to train)")
    explainer: Optional[overrides(ExplainerConfig)] = None
    training: Optional[overrides(TrainingConfig)] = Field(
        default_factory=lambda: overrides(TrainingConfig)(max_length=256, epochs=2))
    generation: Optional[overrides(GenerationConfig)] = Field(
        default_factory=lambda: overrides(GenerationConfig)(max_new_tokens=16))
