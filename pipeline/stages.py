"""Which settings and which code each stage's result depends on: one declaration for all cache keys.

Every stage (pipeline/tasks/__init__.py's Stage) names the function it calls (`entry`) and the settings it takes:
section models, fields of them, or per-job keys. Its cache key, `settings()`, is those settings less the fields the
models mark `execution` (batch sizes, process counts, checkpoint spacing: pipeline/settings.py), which `execution()`
gives the stage to run with. The rules' `params:` hold `settings()` and `code_hash()` of their stage, so Snakemake
reruns exactly the jobs whose settings or code changed and never one whose batch size changed; the same `settings()`
feed the provenance of the stage's artifacts and the training checkpoint key.
Every registered task (pipeline/tasks/__init__.py) gets `{task}_train`, `{task}_generate` and `{task}_score`
(pipeline/explainer/explain.py); a task's own section may override the shared `training` and `generation`
sections for its stages.
`code_hash` hashes the source of the entry's module and every pipeline module it can reach through
imports (the entry module's own, the entry function's, and, transitively, all of theirs), and what every job runs
around its entry (`pipeline.runtime.stage`: threads and the CPU's matrix-product library).
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.tasks import Stage

PACKAGE_DIR = Path(__file__).resolve().parent


def _shared_stages() -> dict[str, "Stage"]:
    """The stages every task shares; a task declares its own (Task.stages)."""
    from pipeline.settings import (AlignmentConfig, InterpbenchConfig, InterpbenchBuild, InterpbenchPatching,
                                   MatrixConfig, ScoringConfig)
    from pipeline.tasks import Stage

    return {
        "prepare_model": Stage("pipeline.models:prepare_model", ("models.{model}", "models.{tokenizer_from}")),
        "alignment": Stage("pipeline.explainer.alignment:fit_alignment", (AlignmentConfig,)),
        "matrix": Stage("pipeline.report.matrix:build_matrix", (MatrixConfig, ScoringConfig)),
        "seeds": Stage("pipeline.report.seeds:aggregate"),
        "ask": Stage("pipeline.ask:ask_file"),  # its settings are the run's, read from the artifacts it asks
        "interpbench_case": Stage("pipeline.interpbench.cases:build_case", (InterpbenchBuild,)),
        "interpbench_cases": Stage("pipeline.interpbench.cases:summarize", (InterpbenchConfig.key("cases"),)),
        "interpbench_patching": Stage("pipeline.interpbench.discovery:discover", (InterpbenchPatching,)),
        "interpbench_summary": Stage("pipeline.interpbench.discovery:write_summary"),
        "report_figures": Stage("pipeline.explainer.figures:run_figures"),
        "summary_table": Stage("pipeline.report:write_summary"),
        "results_tables": Stage("pipeline.report:write_results_tables"),
    }


@functools.lru_cache(maxsize=1)
def all_stages() -> dict[str, "Stage"]:
    """The shared stages and, for every task, its `{task}_train`, `{task}_generate` and `{task}_score` (and their
    seeded and budget layouts' copies), and the task's own."""
    from pipeline.settings import ExplainerConfig, GenerationConfig, ScoringConfig, TrainingConfig
    from pipeline.tasks import TASK_MODULES, Stage, get_task

    stages = _shared_stages()
    for task, module in TASK_MODULES.items():
        spec = get_task(task)
        stages[f"{task}_train"] = Stage("pipeline.explainer.explain:train",
                                        (TrainingConfig, ExplainerConfig, *spec.training_keys), task, (module,))
        stages[f"{task}_train_baseline"] = stages[f"{task}_train"]  # map_only, affine: training.method changed
        stages[f"{task}_generate"] = Stage("pipeline.explainer.explain:generate", (GenerationConfig, ExplainerConfig),
                                           task, (module,))
        for name in spec.eval_set_names:  # the same stage on another evaluation set
            stages[f"{task}_generate_{name}"] = stages[f"{task}_generate"]
        stages[f"{task}_score"] = Stage("pipeline.explainer.explain:score", (ScoringConfig, *spec.score_keys), task,
                                        (module,))
        for name in [n for n in stages if n.startswith(f"{task}_") and n[len(task) + 1:].startswith(
                ("train", "generate", "score"))]:
            stages[f"{name}_seeded"] = stages[name]  # one run per seed of training.seeds: the same stage
            stages[f"{name}_budget"] = stages[name]  # one run per point of a training budget: the same stage
        stages[f"{task}_seeds"] = Stage("pipeline.report.seeds:aggregate")
        stages |= spec.stages  # the task's own stages (labels, figures, diagnostics)
    return stages


def execution_keys(path: str) -> list[str]:
    """The fields at or below config path `path` marked `execution` (pipeline/settings.py): they change how a stage
    runs, not what it makes. A path the settings model does not reach (a per-job key) has none."""
    from pipeline.config import settings_model
    from pipeline.settings import _models_in, execution_fields

    model, parts, walked = settings_model(), path.split("."), []
    for part in parts:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return []
        field = fields[part]
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        walked.append(part)
        inner = _models_in(field.annotation)
        if extra.get("execution"):
            return [".".join(walked)]
        if not inner:
            return []
        model = inner[0]
    return execution_fields(model, f"{path}.")


SHARED_SECTIONS = ("training", "generation", "explainer")  # a task may override these under its own section


def task_section(config: dict[str, Any], head: str, task: str | None) -> dict[str, Any]:
    """A shared section (training, generation) as the task's stages see it: with the task's overrides."""
    return _section(config, head, task) or {}


def with_training_seed(settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """A training stage's settings for one seed of training.seeds (the list itself is not a setting of the run)."""
    import copy

    settings = copy.deepcopy(settings)
    settings.setdefault("training", {})["seed"] = seed
    settings["training"].pop("seeds", None)
    return settings


def with_budget(settings: dict[str, Any], rows: str | int | None, epochs: str | int, seed: int) -> dict[str, Any]:
    """A training stage's settings at one point of a training budget: its rows (`max_examples`; "all" or None: every
    row), epochs and seed."""
    settings = with_training_seed(settings, seed)
    settings["training"]["max_examples"] = None if rows in (None, "all") else int(rows)
    settings["training"]["epochs"] = int(epochs)
    return settings


def _stage(name: str) -> "Stage":
    stages = all_stages()
    if name not in stages:
        raise KeyError(f"unknown stage '{name}'; declared: {sorted(stages)}")
    return stages[name]


def _section(config: dict[str, Any], head: str, task: str | None) -> Any:
    from pipeline.config import deep_merge

    value = config.get(head)
    if task and head in SHARED_SECTIONS and isinstance(config.get(task, {}).get(head), dict):
        value = deep_merge(value or {}, config[task][head])
    return value


def _lookup(config: dict[str, Any], path: str, task: str | None) -> tuple[bool, Any]:
    head, *rest = path.split(".")
    value = _section(config, head, task)
    found = head in config
    for part in rest:
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    if task and head == task and not rest:  # a task's own section holds overrides of shared ones: not its settings
        value = {k: v for k, v in value.items() if not (k in SHARED_SECTIONS and isinstance(v, dict))}
    return found, value


def put_at(tree: dict, path: str | tuple, value: Any) -> None:
    """`tree[a][b][c] = value` for the path "a.b.c" (or the keys (a, b, c)), making the dicts on the way."""
    *parents, last = path.split(".") if isinstance(path, str) else path
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def _drop(tree: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    for part in parents:
        tree = tree.get(part)
        if not isinstance(tree, dict):
            return
    tree.pop(last, None)


def _fill(path: str, config: dict[str, Any], wildcards: dict[str, str]) -> str | None:
    """A key's path with the job's wildcards put in; None when the key names a wildcard the caller did not give
    (`{target}` of a label stage asked without a target: the key applies per job, not to the stage as a whole)."""
    import string

    values = dict(wildcards)
    if any(name not in values and name != "tokenizer_from"
           for _, name, _, _ in string.Formatter().parse(path) if name):
        return None
    if "{tokenizer_from}" in path:
        spec = config.get("models", {}).get(wildcards.get("model", ""), {})
        if not spec.get("tokenizer_from"):
            return None
        values["tokenizer_from"] = spec["tokenizer_from"]
    return path.format(**values)


def settings(config: dict[str, Any], stage: str, **wildcards: str) -> dict[str, Any]:
    """The settings the stage's result depends on, nested as in config.yaml (execution-only keys left out)."""
    import copy

    declared = _stage(stage)
    tree: dict[str, Any] = {}
    for template in declared.keys:
        path = _fill(template, config, wildcards)
        if path is None:
            continue
        found, value = _lookup(config, path, declared.task)
        if found:
            put_at(tree, path, copy.deepcopy(value))
        for execution_path in execution_keys(path):
            _drop(tree, execution_path)
    return tree


def execution(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The execution-only settings of the stage (batch sizes, processes), nested as in config.yaml."""
    declared = _stage(stage)
    tree: dict[str, Any] = {}
    for path in {execution for key in declared.keys for execution in execution_keys(key.split(".")[0])}:
        found, value = _lookup(config, path, declared.task)
        if found and value is not None:
            put_at(tree, path, value)
    return tree


def run_settings(stage_settings: dict[str, Any], config: dict[str, Any], stage: str) -> dict[str, Any]:
    """What a stage runs with: its result settings with its execution settings put back."""
    from pipeline.config import deep_merge

    return deep_merge(stage_settings, execution(config, stage))


def _module_file(module: str) -> Path:
    parts = module.split(".")
    if parts[0] != "pipeline":  # a task module from outside the package (config task_modules)
        import importlib.util

        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin:
            raise FileNotFoundError(f"{module}: no such module on the Python path")
        return Path(spec.origin)
    if len(parts) == 1:
        return PACKAGE_DIR / "__init__.py"
    folder = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (folder.with_suffix(".py"), folder / "__init__.py"):  # a module, or a subpackage's __init__
        if path.is_file():
            return path
    raise FileNotFoundError(f"{module}: no file {folder.with_suffix('.py')} or {folder / '__init__.py'}")


def _is_module(module: str) -> bool:
    try:
        _module_file(module)
    except FileNotFoundError:
        return False
    return True


def _with_packages(module: str) -> set[str]:
    """A pipeline module and the subpackages above it, whose `__init__` runs when it is imported (the package root's,
    which holds only the version, is left out)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts) + 1)}


def _pipeline_imports(nodes) -> set[str]:
    """The pipeline modules `import pipeline.x.y` and `from pipeline.x import y` (y a module or a name) load, with the
    subpackages above them."""
    found = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                found |= {a.name for a in sub.names if a.name.startswith("pipeline.")}
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0 and (
                    sub.module == "pipeline" or sub.module.startswith("pipeline.")):
                if sub.module != "pipeline":
                    found.add(sub.module)
                found |= {f"{sub.module}.{a.name}" for a in sub.names if _is_module(f"{sub.module}.{a.name}")}
    return set().union(*(_with_packages(m) for m in found)) if found else set()


@functools.lru_cache(maxsize=None)
def _tree(module: str) -> ast.Module:
    return ast.parse(_module_file(module).read_text())


@functools.lru_cache(maxsize=None)
def _module_imports(module: str) -> frozenset[str]:
    """Every pipeline module a module imports anywhere in its source (walked once per module)."""
    return frozenset(_pipeline_imports([_tree(module)]))


@functools.lru_cache(maxsize=None)
def _entry_imports(module: str, function: str) -> frozenset[str]:
    """Imports of the module's top level, of `function`, and of the module's functions it refers to."""
    tree = _tree(module)
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))}
    if function not in defs:
        raise ValueError(f"{module} defines no '{function}'")
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    seen, todo = set(), [function]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name) and n.id in defs]
    return frozenset(_pipeline_imports(top + [defs[n] for n in seen]))


@functools.lru_cache(maxsize=None)
def code_closure(entry: str, loaded: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The pipeline modules the entry function can run: its own module, the modules it loads by name (`loaded`),
    and all they can import."""
    module, function = entry.split(":")
    start = _with_packages(module) if module.startswith("pipeline.") else {module}
    modules, todo = start, sorted(_entry_imports(module, function) | set(loaded))
    while todo:
        name = todo.pop()
        if name not in modules:
            modules.add(name)
            todo += sorted(_module_imports(name) - modules)
    return tuple(sorted(modules))


_HASHES: dict[str, dict] = {}  # this process's cache: source fingerprint -> {stage: hash}


def _hash_cache_file() -> Path:
    return PACKAGE_DIR / "__pycache__" / "stage-code-hashes.json"


def _source_fingerprint() -> str:
    """Every pipeline source file's path, size and modification time: what the cached hashes were computed from."""
    from pipeline.tasks import BUILT_IN, TASK_MODULES

    files = sorted(PACKAGE_DIR.rglob("*.py")) + [_module_file(m) for t, m in sorted(TASK_MODULES.items())
                                                if t not in BUILT_IN]
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(repr(stats).encode()).hexdigest()


def _hash_cache() -> dict:
    """Stage code hashes of an earlier parse, kept while no pipeline source changed (walking every module's
    syntax tree is most of a no-op `snakemake` run's time otherwise)."""
    import json

    fingerprint = _source_fingerprint()
    if fingerprint not in _HASHES:
        try:
            cached = json.loads(_hash_cache_file().read_text())
        except (OSError, ValueError):
            cached = {}
        hashes = cached.get("hashes", {}) if cached.get("fingerprint") == fingerprint else {}
        _HASHES.clear()
        _HASHES[fingerprint] = hashes
    return {"fingerprint": fingerprint, "hashes": _HASHES[fingerprint]}


def _store_hash_cache(cache: dict) -> None:
    import json
    import os

    path = _hash_cache_file()
    try:
        path.parent.mkdir(exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(cache))
        partial.replace(path)
    except OSError:  # a read-only install: hash every time
        pass


def behaviour(module: str) -> str:
    """What in a module's source can change what it does: its syntax tree without comments, docstrings, layout (`ast.dump`
    leaves out line numbers) or settings' descriptions. A comment or a reworded docstring or description reruns
    nothing."""
    path = _module_file(module)
    stat = path.stat()
    return _behaviour(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _behaviour(path: str, size: int, mtime: int) -> str:
    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body and isinstance(
                body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        if isinstance(node, ast.Call):  # a setting's description (pipeline/settings.py's Field(description=...))
            node.keywords = [k for k in node.keywords if k.arg != "description"]
    return ast.dump(tree)


RUNTIME_ENTRY = "pipeline.runtime:stage"  # every job runs inside it: its threads, the CPU's matrix-product library


def _hash_stage(stage: str) -> str:
    """`module:hash` for every module of the stage's closure and the runtime's (a short hash of its behaviour each),
    so that when Snakemake says a job's params have changed, its before/now lines name the module whose code changed."""
    declared = _stage(stage)
    modules = set(code_closure(declared.entry, declared.modules)) | set(code_closure(RUNTIME_ENTRY))
    return " ".join(f"{module.removeprefix('pipeline.')}:{hashlib.sha256(behaviour(module).encode()).hexdigest()[:8]}"
                    for module in sorted(modules))


def code_hash(stage: str) -> str:
    """Per pipeline module the stage's entry can run, a short hash of its behaviour (`module:hash ...`). On a miss
    (a pipeline source changed) every declared stage is hashed and the cache written once: a parse asks for nearly
    all of them."""
    cache = _hash_cache()
    if stage not in cache["hashes"]:
        _stage(stage)  # an unknown name fails here, naming the declared ones
        cache["hashes"].update({name: _hash_stage(name) for name in all_stages()})
        _store_hash_cache(cache)
    return cache["hashes"][stage]
