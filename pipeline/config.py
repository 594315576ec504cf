"""The configuration: its model (every setting declared once, pipeline/settings.py; each task's section declared
with the task), the JSON schema generated from it that a run's configuration is checked against before any job, the
checks the schema cannot say, config files layered over config.yaml, and the generated configuration reference.

`python -m pipeline.config FILE...` checks config files as a run would layer them; `python -m pipeline.config
reference` prints docs/configuration.md; `python -m pipeline.config defaults` prints every default as config.yaml
holds it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, StringConstraints, create_model

from pipeline.sampling import top_rank_counts
from pipeline.settings import (SHARED, AlignmentConfig, ExplainerConfig, FactsConfig, GenerationConfig,  # noqa: F401
                               InterpbenchConfig, MatrixConfig, ModelSpec, ScoringConfig, Section, TrainingConfig,
                               _models, overrides)


class ConfigError(ValueError):
    """The configuration is malformed; the message names the field and what was expected."""


OVERRIDABLE = tuple(SHARED)  # shared sections a task's own section may override
RunName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]+_[A-Za-z0-9]+$")]
ModelKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]+$")]
TaskName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")]


def task_settings() -> dict[str, type[Section]]:
    """Every registered task's settings model (tasks from outside the package included), by section name."""
    from pipeline.tasks import TASK_MODULES, get_task

    return {name: get_task(name).settings for name in TASK_MODULES if get_task(name).settings is not None}


@functools.lru_cache(maxsize=8)
def _settings_model(tasks: tuple[tuple[str, type], ...]) -> type[Section]:
    fields: dict[str, Any] = {
        "runs": (dict[str, tuple[RunName, ...]], Field(
            default_factory=lambda: {"act_patch": ("gemma_gemma",), "input_ablation": ("smollm_smollm",),
                                     "features": ("smollm_smollm",)},
            description="per task, the {explainer}_{target} runs `snakemake` builds with no target")),
        "task_modules": (dict[TaskName, str], Field(
            default_factory=dict, description="tasks defined outside pipeline/: task name -> an importable module "
                                              "that registers it (docs/adding-a-task.md)")),
        "task_rules": (tuple[str, ...], Field((), description="their label rules' files, included after the "
                                                              "workflow's own")),
        "matrix": (MatrixConfig, Field(default_factory=MatrixConfig)),
        "interpbench": (InterpbenchConfig, Field(default_factory=InterpbenchConfig)),
        "models": (dict[ModelKey, ModelSpec], Field(default_factory=_models, min_length=1, description=(
            "model keys (used in paths such as results/act_patch/{explainer}_{target}.json) and their sources"))),
        "facts": (FactsConfig, Field(default_factory=FactsConfig)),
    }
    fields |= {name: (model, Field(default_factory=model)) for name, model in tasks}
    fields |= {name: (model, Field(default_factory=model)) for name, model in (
        ("explainer", ExplainerConfig), ("alignment", AlignmentConfig), ("training", TrainingConfig),
        ("generation", GenerationConfig), ("scoring", ScoringConfig))}
    model = create_model("Settings", __base__=Section, **fields)
    model.__doc__ = "Settings of the explain-your-own-computations workflow (config.yaml)."
    return model


def settings_model() -> type[Section]:
    """The model of the whole configuration: the shared sections and every registered task's."""
    return _settings_model(tuple(sorted(task_settings().items())))


def _nullable(node: Any) -> Any:
    """The schema pydantic writes, with `anyOf: [X, null]` folded into X where X is a plain type (so that a wrong
    value is named with X's own message, not "not valid under any of the given schemas")."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable(value) for key, value in node.items()}
    options = node.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        other = next(o for o in options if o != {"type": "null"})
        if "type" in other and isinstance(other["type"], str):
            merged = {k: v for k, v in node.items() if k != "anyOf"} | other
            merged["type"] = [other["type"], "null"]
            if "enum" in merged:
                merged["enum"] = [*merged["enum"], None]
            return merged
    return node


def schema() -> dict[str, Any]:
    """The JSON schema a configuration is validated against, generated from the settings model."""
    return _nullable(settings_model().model_json_schema())


def _errors(validator, config) -> list:
    """Every schema error, where a value fails `anyOf: [a section, null]` the section's own errors instead."""
    def expand(error):
        if error.validator == "anyOf" and error.context:
            inner = [e for e in error.context if e.schema != {"type": "null"} and e.validator != "type"]
            return [found for e in inner for found in expand(e)] or [error]
        return [error]

    return [found for error in validator.iter_errors(config) for found in expand(error)]


def validate_config(config: dict[str, Any], source: str = "config", base: str | Path | None = None) -> None:
    """Check `config` against the schema and the rules the schema cannot say, naming the field. `base`: the folder
    relative `task_rules` paths are read from (the Snakefile's, as its `include:` reads them); None: the current one."""
    import jsonschema

    from pipeline.tasks import add_task_modules

    try:  # tasks from outside the package bring their sections: registered before the schema is made
        add_task_modules(config.get("task_modules") or {} if isinstance(config.get("task_modules"), dict) else {})
    except ValueError as error:
        raise ConfigError(f"{source}: {error}") from error
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(_errors(validator, config), key=lambda e: [str(p) for p in e.absolute_path])
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


def typed_settings(config: dict[str, Any]) -> Section:
    """A validated configuration as the settings model's instance (its sections typed)."""
    return settings_model().model_validate(config)


def shared_section(settings: Section, head: str, task: str | None) -> Section:
    """A shared section (training, generation, explainer) as a task's stages see it: with the task's overrides."""
    base = getattr(settings, head)
    overrides_ = getattr(getattr(settings, task, None), head, None) if task else None
    if not isinstance(overrides_, Section):  # none; or a task field of that name that is no override (circuits.explainer)
        return base
    return type(base).model_validate(deep_merge(base.model_dump(), overrides_.model_dump(exclude_unset=True)))


def as_config(value: Any) -> Any:
    """A settings object as config.yaml holds it: a task's overrides of a shared section only where it sets them."""
    if isinstance(value, Section):
        names = [name for name in type(value).model_fields if not type(value).__name__.endswith("Overrides")
                 or name in value.model_fields_set]
        return {name: as_config(getattr(value, name)) for name in names}
    if isinstance(value, dict):
        return {key: as_config(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [as_config(item) for item in value]
    return value


def defaults() -> dict[str, Any]:
    """Every setting's default, as config.yaml holds it (config.yaml must equal it: tests/test_config.py)."""
    return as_config(settings_model()())


def _type_name(annotation: Any) -> str:
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return "section"
    if origin is typing.Literal:
        return " \\| ".join(repr(a).replace("'", "") for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(parts) + (" \\| null" if type(None) in args else "")
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (tuple, list):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type_name(args[1])}"
    return getattr(annotation, "__name__", str(annotation))


def reference() -> str:
    """docs/configuration.md: every setting with its type, default, bounds and description, section by section,
    generated from the settings model (`python -m pipeline.config reference`)."""
    import json
    import typing

    from pipeline.settings import _models_in

    lines = ["# Configuration reference", "",
             "Generated from the settings model (pipeline/settings.py and each task's settings module) by `python -m "
             "pipeline.config reference`; tests/test_config.py keeps it current. config.yaml holds every default "
             "below; `--configfile` files override keys of it. A field marked *execution* changes how a stage runs, "
             "not what it makes: it is not in any stage's cache key.", ""]

    def bounds(field) -> str:
        found = []
        for item in field.metadata:
            for name, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >="),
                               ("pattern", "matches")):
                if getattr(item, name, None) is not None:
                    found.append(f"{sign} {getattr(item, name)}")
        return ", ".join(found)

    def section(model, where: str, instance) -> None:
        lines.extend([f"## `{where}`", "", " ".join((model.__doc__ or "").split()), "",
                      "| setting | type | default | description |", "| --- | --- | --- | --- |"])
        nested = []
        for name, field in model.model_fields.items():
            value = getattr(instance, name, None)
            inner = [m for m in _models_in(field.annotation) if issubclass(m, Section)]
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            note = "; ".join(p for p in (bounds(field), "*execution*" if extra.get("execution") else "") if p)
            described = (field.description or "") + (f" ({note})" if note else "")
            if inner and inner[0].__name__.endswith("Overrides"):  # a task's overrides of a shared section
                shown = f"`{json.dumps(as_config(value))}`"
                described = described or f"overrides of the `{name}` section for this task's stages"
            elif inner and typing.get_origin(field.annotation) is not dict:
                shown = "see below" if value is not None else "null"
                nested.append((inner[0], f"{where}.{name}", value))
            elif field.is_required():
                shown = "required"
            else:
                shown = f"`{json.dumps(as_config(value))}`"
            kind = "overrides" if inner and inner[0].__name__.endswith("Overrides") else _type_name(field.annotation)
            lines.append(f"| `{name}` | {kind} | {shown} | {described.replace('|', '/')} |")
        lines.append("")
        for inner, path, value in nested:
            section(inner, path, value if value is not None else inner.model_construct())

    root = settings_model()
    defaults_ = root()
    for name, field in root.model_fields.items():
        inner = [m for m in _models_in(field.annotation) if issubclass(m, Section)]
        if inner and typing.get_origin(field.annotation) is not dict:
            section(inner[0], name, getattr(defaults_, name))
        else:
            lines.extend([f"## `{name}`", "", field.description or "", "",
                          f"Default: `{json.dumps(as_config(getattr(defaults_, name)))}`", ""])
            if name == "models":
                section(ModelSpec, "models.{key}", ModelSpec.model_construct())
    return "\n".join(lines).rstrip() + "\n"


def load_config(path: str | Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    validate_config(config, source=str(path))
    return config


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
    parser.add_argument("files", nargs="*", metavar="FILE", help="config files, in the order --configfile takes "
                                                                  "them; or `reference`, or `defaults`")
    files = parser.parse_args(argv).files
    if files == ["reference"]:
        print(reference(), end="")
        return
    if files == ["defaults"]:
        print(yaml.safe_dump(defaults(), sort_keys=False, width=120), end="")
        return
    try:
        check_files(files)
    except ConfigError as error:
        sys.exit(str(error))
    print(f"valid: config.yaml + {' + '.join(files) or 'nothing'}")


if __name__ == "__main__":
    main()
