"""The act_patch task's settings (config.yaml's `act_patch:` section), declared once (pipeline/settings.py)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from pipeline.settings import (UNIQUE, ExplainerConfig, GenerationConfig, Precision, Section, TrainingConfig, execution,
                               located, overrides)

TokenType = Literal["last_subject_token", "relation_suffix", "last_token"]
Baseline = Literal["in_context_4", "in_context_8", "map_only", "affine"]


@located("act_patch.prompt")
class PromptConfig(Section):
    """The target's fact prompts."""
    format: Literal["completion", "constrained"] = Field(
        "completion", description="constrained: 'Respond with one of A or B ... or unknown' in the chat template")
    n_options: int = Field(4, ge=2, description="constrained: the options offered")


@located("act_patch.patch")
class PatchConfig(Section):
    """Which states are patched: token types x windows of consecutive layers."""
    token_types: tuple[TokenType, ...] = Field(("last_subject_token", "relation_suffix", "last_token"), min_length=1)
    window_size: int = Field(6, ge=1, description="consecutive layers patched together")
    window_stride: int = Field(6, ge=1, description="windows start every `stride` layers from first_layer")
    first_layer: int = Field(0, ge=0)
    last_layer: Optional[int] = Field(None, ge=0, description="null: the model's last layer")
    depth_windows: Optional[int] = Field(None, ge=1, description="split the layers from first_layer to last_layer into "
                                         "this many equal windows, one after another (the published tables: 4, windows "
                                         "of a quarter of the depth: 8 layers on Llama-3.1-8B, 9 on Qwen3-8B); null: "
                                         "window_size and window_stride")

    def windows(self, num_layers: int) -> list[list[int]]:
        """Full windows of `window_size` consecutive layers starting every `window_stride` layers, e.g. [[0..5],
        [6..11], ...]; a window that would run past the last layer is left out. With `depth_windows` the size and
        stride are the depth over that count (4 on 32 layers: [0..7], [8..15], [16..23], [24..31])."""
        from pipeline.config import ConfigError

        last = num_layers - 1 if self.last_layer is None else min(self.last_layer, num_layers - 1)
        if self.first_layer > last:
            raise ConfigError(f"act_patch.patch: first_layer {self.first_layer} is beyond the model's last layer {last}")
        size, stride = self.window_size, self.window_stride
        if self.depth_windows is not None:
            size = stride = (last - self.first_layer + 1) // self.depth_windows
            if size == 0:
                raise ConfigError(f"act_patch.patch: depth_windows {self.depth_windows} is more than the "
                                  f"{last - self.first_layer + 1} layers from first_layer to the last")
        windows = [list(range(start, start + size)) for start in range(self.first_layer, last + 1, stride)
                   if start + size - 1 <= last]
        if not windows:
            raise ConfigError(f"act_patch.patch: window_size {size} from first_layer {self.first_layer} "
                              f"does not fit below the last layer {last}")
        return windows


@located("act_patch.pairs")
class PairsConfig(Section):
    """(original, counterfactual) pairs of facts per split."""
    train: int = Field(240, ge=1)
    test: int = Field(100, ge=1)
    seed: int = 0
    min_fraction: float = Field(0.5, ge=0, le=1, description="fewer pairs than this share of those asked is an error")


class ReadingRows(Section):
    """Extra rows "At layer L, <vector> =" -> the counterfactual's answer: a signal only the vector carries."""
    fraction: float = Field(0.25, ge=0, description="a share of the rows; 0: none")
    target: Literal["answer", "token"] = Field("answer", description="the counterfactual's answer, or the token the "
                                                                     "vector was taken at")
    token_types: tuple[TokenType, ...] = Field(("last_subject_token", "last_token"), min_length=1)


@located("act_patch.training_rows")
class TrainingRows(Section):
    """What the explainer trains on besides the label rows as they are (docs/reading-the-vector.md)."""
    oversample_counterfactual: int = Field(3, ge=1, description="copies of each changed row whose new token is the "
                                                                "counterfactual's answer (only the vector tells it)")
    reading: ReadingRows = Field(default_factory=ReadingRows)


class DecisivePoints(Section):
    """The points of a budget that decide, trained with more seeds."""
    points: tuple[tuple[Optional[int], int], ...] = Field(((2400, 1), (2400, 3)), description="[rows, epochs] pairs")
    seeds: tuple[int, ...] = Field((0, 1, 2), json_schema_extra=UNIQUE)


@located("act_patch.budget")
class BudgetConfig(Section):
    """The training budget as a curve (results/act_patch/{explainer}_{target}.budget.json): one run per point of rows
    x epochs x seeds, the run of the training section's own rows, epochs and seeds reused."""
    rows: tuple[Optional[int], ...] = Field((2400, None), min_length=1,
                                           description="training rows (max_examples); null: every row the labels hold")
    epochs: tuple[int, ...] = Field((1, 2, 3, 5), min_length=1)
    seeds: tuple[int, ...] = Field((0,), min_length=1, json_schema_extra=UNIQUE, description="the seeds of every point")
    decide: DecisivePoints = Field(default_factory=DecisivePoints)
    others: tuple[str, ...] = Field(("smollm",), description="other explainers of the same target at every point "
                                                             "(self minus other)")


@located("act_patch")
class ActPatchConfig(Section):
    """act_patch: how the target's next token changes when a hidden state from a counterfactual prompt is patched in.
    Labels from facts -> pairs -> patching (nnsight), the explainer's rows from the labels."""
    released_labels: Optional[dict[str, str]] = Field(
        None, description="target key -> the paper's released label dataset, read instead of labels built here: a "
                          "local folder (data/{split}-*.parquet) or a hub dataset id")
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    patch: PatchConfig = Field(default_factory=PatchConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    batch_size: int = execution(64, description="patched rows per forward pass", ge=1)
    precision: Precision = Field("fp32", description="the target's weights for facts, pairs and patching: labels are "
                                                     "ground truth (bf16 only where it gives the same next tokens)")
    chunk_pairs: int = execution(1000, description="pairs per label job (patched apart, then gathered)", ge=1)
    training_rows: TrainingRows = Field(default_factory=TrainingRows)
    baselines: tuple[Baseline, ...] = Field(
        ("in_context_4", "in_context_8", "map_only", "affine"), json_schema_extra=UNIQUE,
        description="the field's baselines beside the fine-tuned explainer, each scored with paired differences "
                    "(the run of training.seed only)")
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    explainer: Optional[overrides(ExplainerConfig)] = Field(
        default_factory=lambda: overrides(ExplainerConfig)(alignment="fitted"),
        description="the explainer reads its vector through per-layer maps fitted to its own embeddings")
    training: Optional[overrides(TrainingConfig)] = Field(
        default_factory=lambda: overrides(TrainingConfig)(max_examples=2400, group_by_length=True,
                                                          loss_weights={"content": 2.0, "verdict": 2.0}),
        description="2,400 rows (300 steps), the short reading rows batched together, the answer's content and "
                    "verdict weighing twice the fixed wording")
    generation: Optional[overrides(GenerationConfig)] = None
