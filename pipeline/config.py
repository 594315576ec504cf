"""Typed settings: the config schema check and one dataclass per config section.

The Snakefile validates config.yaml with `validate_config`; each stage receives only its
own section (through Snakemake `params:`) and builds the dataclass below from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.sampling import top_rank_counts
from pipeline.typed import from_section

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


class ConfigError(ValueError):
    """The configuration is malformed; the message names the field and what was expected."""


OVERRIDABLE = ("training", "generation", "explainer")  # shared sections a task's own section may override


def schema() -> dict[str, Any]:
    """The config schema, with each task's overrides of a shared section checked as that section is (every key
    optional, unknown keys refused): one definition, so an override can be no looser than the section."""
    loaded = yaml.safe_load(SCHEMA_PATH.read_text())
    sections = loaded["properties"]
    for task_schema in sections.values():
        overrides = task_schema.get("properties", {}) if isinstance(task_schema, dict) else {}
        for head in OVERRIDABLE:
            if overrides.get(head, {}).get("type") == "object":
                overrides[head] = {k: v for k, v in sections[head].items() if k != "required"} | {
                    "description": f"overrides of the {head} section for this task"}
    return loaded


def validate_config(config: dict[str, Any], source: str = "config", base: str | Path | None = None) -> None:
    """Check `config` against the schema and the rules the schema cannot say, naming the field. `base`: the folder
    relative `task_rules` paths are read from (the Snakefile's, as its `include:` reads them); None: the current one."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'.'.join(str(p) for p in e.absolute_path) or '<top level>'}: {e.message}" for e in errors]
        raise ConfigError(f"{source}: invalid configuration:\n  " + "\n  ".join(lines))
    for where, section in [("explainer", config.get("explainer") or {})] + [
            (f"{task}.explainer", deep_merge(config.get("explainer") or {}, config[task]["explainer"]))
            for task in ("act_patch", "input_ablation", "features")
            if isinstance(config.get(task), dict) and isinstance(config[task].get("explainer"), dict)]:
        if section.get("alignment") == "fitted" and (section.get("projection") == "none" or section.get("scale") == "raw"):
            raise ConfigError(f"{source}: {where}: alignment 'fitted' starts per-layer projections from a map fitted on "
                              f"unit vectors: it needs projection 'linear' and scale 'embedding_norm' (got projection "
                              f"{section.get('projection')!r}, scale {section.get('scale')!r})")
    for index, path in enumerate(config.get("task_rules") or []):
        if not Path(base or ".").joinpath(path).is_file():
            raise ConfigError(f"{source}: task_rules[{index}]: no rule file {path}")
    for task in ("act_patch", "input_ablation"):
        _check_released_labels(config, task, source)
    _check_feature_exemplars(config, source)
    for key, spec in config["models"].items():
        needed = {"gguf_wheel": ["package", "file"], "random": ["tokenizer_from"], "hf": ["path"]}[spec["source"]]
        for name in needed:
            if name not in spec:
                raise ConfigError(f"{source}: models.{key}: source '{spec['source']}' needs field '{name}'")
        if spec["source"] == "random" and spec["tokenizer_from"] not in config["models"]:
            raise ConfigError(f"{source}: models.{key}.tokenizer_from: unknown model key '{spec['tokenizer_from']}'")


def _check_feature_exemplars(config: dict[str, Any], source: str) -> None:
    """The workflow's own features: the top exemplars kept must hold the ranks the describer reads (0, k, 2k, ...;
    at least `min_exemplars`) and the ranks the simulator scores out of sample (the others, `simulator.top`)."""
    features = config.get("features")
    if not isinstance(features, dict) or features.get("source", "pipeline") != "pipeline":
        return
    kept = (features.get("exemplars") or {}).get("top")
    every = (features.get("descriptions") or {}).get("describe_every", 1)
    wanted = (features.get("descriptions") or {}).get("min_exemplars", 1)
    if not isinstance(kept, int) or not isinstance(every, int) or every < 1:
        return
    read, scored = top_rank_counts(kept, every)
    if isinstance(wanted, int) and read < wanted:
        raise ConfigError(f"{source}: features.descriptions.min_exemplars: {wanted} exemplars for the describer, but "
                          f"features.exemplars.top {kept} with describe_every {every} leaves it {read} (ranks 0, "
                          f"{every}, ...); keep more top exemplars or ask for fewer")
    simulator = features.get("simulator") or {}
    if simulator.get("enabled", True) and isinstance(simulator.get("top"), int) and simulator["top"] > scored:
        raise ConfigError(f"{source}: features.simulator.top: {simulator['top']} top exemplars to score, but "
                          f"features.exemplars.top {kept} with describe_every {every} leaves {scored} that the "
                          f"describer did not read; set features.exemplars.top to at least "
                          f"{simulator['top'] * every if every > 1 else simulator['top']}")


def _check_released_labels(config: dict[str, Any], task: str, source: str) -> None:
    """`{task}.released_labels`: known target keys, and a local folder that holds a train and a test split."""
    from pipeline.artifacts import ArtifactError, local_folder, released_split_files

    for key, where in ((config.get(task) or {}).get("released_labels") or {}).items():
        setting = f"{task}.released_labels.{key}"
        if key not in config["models"]:
            raise ConfigError(f"{source}: {setting}: unknown model key '{key}' (models: {sorted(config['models'])})")
        try:
            folder = local_folder(where, setting)
            for split in ("train", "test") if folder else ():
                released_split_files(folder, split, setting)
        except (ValueError, ArtifactError) as error:
            raise ConfigError(f"{source}: {error}") from error
        reading = (((config.get(task) or {}).get("training_rows") or {}).get("reading") or {}).get("fraction", 0)
        if reading:
            raise ConfigError(f"{source}: {setting}: released tables hold no counterfactual answers, which "
                              f"{task}.training_rows.reading (fraction {reading}) trains on; set it to 0 as "
                              f"config.paper.yaml does")


def load_config(path: str | Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    validate_config(config, source=str(path))
    return config


_build = from_section


@dataclass(frozen=True)
class FactsConfig:
    source: str = "countryinfo"
    relations: tuple[str, ...] = ("capital", "continent", "currency", "demonym")
    few_shot: int = 1
    keep_only_correct: bool = True
    test_fraction: float = 0.3
    seed: int = 0
    path: str | None = None
    max_facts_per_relation: int | None = None

    @classmethod
    def from_dict(cls, section: dict[str, Any]) -> "FactsConfig":
        return _build(cls, {**section, "relations": tuple(section.get("relations", cls.relations))})


@dataclass(frozen=True)
class PromptConfig:
    format: str = "completion"
    n_options: int = 4

    @classmethod
    def from_dict(cls, section: dict[str, Any]) -> "PromptConfig":
        return _build(cls, section)


@dataclass(frozen=True)
class ActPatchConfig:
    prompt: PromptConfig = field(default_factory=PromptConfig)
    token_types: tuple[str, ...] = ("last_subject_token", "relation_suffix", "last_token")
    window_size: int = 6
    window_stride: int = 6
    first_layer: int = 0
    last_layer: int | None = None
    pairs: dict[str, int] = field(default_factory=lambda: {"train": 240, "test": 100})
    pair_seed: int = 0
    min_fraction: float = 0.5  # fewer chosen pairs than this share of `pairs` is an error
    batch_size: int = 64
    chunk_pairs: int = 1000  # pairs per label job (scattered, then gathered)
    precision: str = "fp32"  # the target's weights while it answers and is patched (labels are ground truth)

    @classmethod
    def from_dict(cls, section: dict[str, Any]) -> "ActPatchConfig":
        """From the config's act_patch section, or the part of it a stage's settings hold (the pairs stage has no
        `patch`: what is missing keeps its default)."""
        patch, pairs = section.get("patch", {}), section["pairs"]
        return cls(
            prompt=PromptConfig.from_dict(section["prompt"]),
            token_types=tuple(patch.get("token_types", cls.token_types)),
            window_size=patch.get("window_size", cls.window_size),
            window_stride=patch.get("window_stride", cls.window_stride),
            first_layer=patch.get("first_layer", cls.first_layer),
            last_layer=patch.get("last_layer"),
            pairs={"train": pairs["train"], "test": pairs["test"]},
            pair_seed=pairs["seed"],
            min_fraction=pairs.get("min_fraction", cls.min_fraction),
            batch_size=section["batch_size"],
            chunk_pairs=section.get("chunk_pairs", cls.chunk_pairs),
            precision=section.get("precision", cls.precision),
        )

    def windows(self, num_layers: int) -> list[list[int]]:
        """Full windows of `window_size` consecutive layers starting every `window_stride` layers, e.g. [[0..5],
        [6..11], ...]; a window that would run past the last layer is left out (stride 4, size 8 on 32 layers
        ends with [24..31]), as in the published tables."""
        last = num_layers - 1 if self.last_layer is None else min(self.last_layer, num_layers - 1)
        if self.first_layer > last:
            raise ConfigError(
                f"act_patch.patch: first_layer {self.first_layer} is beyond the model's last layer {last}"
            )
        windows = [list(range(start, start + self.window_size))
                   for start in range(self.first_layer, last + 1, self.window_stride) if start + self.window_size - 1 <= last]
        if not windows:
            raise ConfigError(f"act_patch.patch: window_size {self.window_size} from first_layer {self.first_layer} "
                              f"does not fit below the last layer {last}")
        return windows


@dataclass(frozen=True)
class InputAblationConfig:
    source: str = "countryinfo"
    path: str | None = None
    relations: tuple[str, ...] = ("capital", "currency", "language", "region", "subregion", "borders", "demonym")
    n_choices: int = 4
    max_questions_per_relation: int | None = 100
    test_fraction: float = 0.3
    seed: int = 0
    system_prompt: str = "Answer the multiple-choice question with the letter of the correct option."
    choice_format: str = "({letter}) {text}"
    answer_prefix: str = "Answer: ("
    max_new_tokens: int = 2
    batch_size: int = 32
    keep: str = "all"  # or "known": only questions the target answers correctly without the hint
    min_confidence: float = 0.0  # with keep: known, the least probability of that answer among the letters
    rebalance_train: bool = True
    max_train_examples: int | None = None

    @classmethod
    def from_dict(cls, section: dict[str, Any]) -> "InputAblationConfig":
        flat = {k: v for k, v in section.items() if k not in ("training", "generation", "explainer")}
        return _build(cls, {**flat, "relations": tuple(flat.get("relations", cls.relations))})


@dataclass(frozen=True)
class ExplainerConfig:
    prompt_format: str = "plain"
    projection: str = "linear"
    inject: str = "embedding"  # or "layer": write the vector at the layer it came from (explainer = target)
    alignment: str = "identity"  # or "fitted": one projection per target layer, started from the alignment stage's map
    train_projection: bool = True  # false: the projection(s) stay as started (identity or fitted) in training
    scale: str = "embedding_norm"  # or "raw": the vector as it is (the paper's code), no normalisation
    center: bool = True  # fitted alignment: subtract the layer's mean state first (false for directions, not states)
    checkpoint: str | None = None  # a released explainer (the paper's layout): generated and scored without training
    continuous_tokens: tuple[str, str, str] | None = None  # (begin, rep, end) of a released explainer's prompts

    @classmethod
    def from_dict(cls, section: dict[str, Any]) -> "ExplainerConfig":
        flat = dict(section)
        tokens = flat.pop("continuous_tokens", None)
        if tokens:
            flat["continuous_tokens"] = (tokens["begin"], tokens["rep"], tokens["end"])
        return _build(cls, flat)


@dataclass(frozen=True)
class TrainingConfig:
    method: str = "lora"
    lora_r: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    learning_rate: float = 5e-4
    projection_learning_rate: float = 1e-3
    warmup_steps: int = 10
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    max_examples: int | None = 1200
    max_length: int = 192
    seed: int = 0
    checkpoint_every: int = 25
    gpus: int = 1
    cpu_processes: int = 1
    deepspeed: bool = False
    zero_stage: int = 2
    precision: str = "auto"  # fp32, bf16, or auto: bf16 where it is faster (pipeline.runtime.resolve_precision)
    group_by_length: bool = False  # batches of similar lengths (less padding; another order than random batches)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (memory for time)
    fsdp: str | None = None  # the Trainer's FSDP option, e.g. "full_shard auto_wrap" (instead of DeepSpeed)
    content_weight: float = 1.0  # loss weight of the answer's <<<content>>> tokens (1: as every answer token)
    verdict_weight: float = 1.0  # loss weight of the verdict's words ("remain unchanged" / "change to")
    lr_schedule: str = "linear"  # or "constant" (the paper's code: constant 5e-5 after warm-up)

    @classmethod
    def from_dict(cls, section: dict[str, Any]) -> "TrainingConfig":
        flat = dict(section)
        for key, value in (flat.pop("loss_weights", None) or {}).items():
            flat[f"{key}_weight"] = value
        for key, value in (flat.pop("lora", None) or {}).items():
            flat[f"lora_{key}"] = tuple(value) if isinstance(value, list) else value
        speed = flat.pop("deepspeed", None) or {}
        flat["deepspeed"] = bool(speed.get("enabled", False))
        flat["zero_stage"] = speed.get("zero_stage", cls.zero_stage)
        flat["precision"] = flat.get("precision") or speed.get("precision", cls.precision)
        return _build(cls, flat)


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 20
    batch_size: int = 32
    max_examples: int | None = 300
    seed: int = 0
    precision: str = "auto"

    @classmethod
    def from_dict(cls, section: dict[str, Any]) -> "GenerationConfig":
        return _build(cls, section)


@dataclass(frozen=True)
class ScoringConfig:
    bootstrap_samples: int = 1000
    seed: int = 0

    @classmethod
    def from_dict(cls, section: dict[str, Any]) -> "ScoringConfig":
        return _build(cls, section)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, merging nested mappings key by key."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def with_base_config(config: dict[str, Any], base_path: str | Path, command_line: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """The workflow's config.yaml with the run's --configfile/--config values layered on top. `command_line`: the
    --config values as Snakemake parsed them, whose nested values it leaves as strings (`--config 'scoring={"seed":
    3}'` gives seed '3'): each such string is read as YAML here (3, true, null, [1, 2]), so they reach the settings
    typed as a config file's would."""
    base = yaml.safe_load(Path(base_path).read_text())
    merged = deep_merge(base, config)
    return deep_merge(merged, {key: _typed(value) for key, value in (command_line or {}).items() if isinstance(
        value, (dict, list))})


def _typed(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    if isinstance(value, str):
        try:
            return yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            return value
    return value


def check_files(paths: list[str], base_path: str | Path = Path(__file__).resolve().parent.parent / "config.yaml") -> None:
    """Check config files as a run would layer them over config.yaml, naming the file and, for YAML that does not
    parse, its line (Snakemake reads --configfile before the workflow and says only "not valid JSON or YAML")."""
    layered: dict[str, Any] = {}
    for path in paths:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from error
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        layered = deep_merge(layered, loaded)
    validate_config(with_base_config(layered, base_path), source=" + ".join(["config.yaml", *map(str, paths)]),
                    base=Path(base_path).parent)


def main(argv: list[str] | None = None) -> None:
    """`python -m pipeline.config FILE...`: check config files as a run layers them over config.yaml."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m pipeline.config", description=(
        "Check config files as `snakemake --configfile FILE...` layers them over config.yaml, naming the file, the "
        "line of YAML that does not parse, and every setting the schema refuses."))
    parser.add_argument("files", nargs="*", metavar="FILE", help="config files, in the order --configfile takes them")
    files = parser.parse_args(argv).files
    try:
        check_files(files)
    except ConfigError as error:
        sys.exit(str(error))
    print(f"valid: config.yaml + {' + '.join(files) or 'nothing'}")


if __name__ == "__main__":
    main()
