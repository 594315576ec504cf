# Wildcard constraints and input functions shared by the rule files.
import json
from pathlib import Path

from pipeline import runtime, stages
from pipeline.interpbench import cases as interpbench
from pipeline.artifacts import config_hash, damage, local_folder, unwritable
from pipeline.config import shared_section
from pipeline.tasks import (CONTEXT, FROZEN_BASELINES, IN_CONTEXT, TASK_MODULES, ScoreInputs, add_task_modules,
                            all_variants, baselines_of, get_task, with_role)

add_task_modules(dict(SETTINGS.task_modules))
TASKS = tuple(TASK_MODULES)
# Heavy jobs (models, labels, training, generation) take every core they are given: Snakemake lowers this to --cores
# (or --max-threads) on one machine; a SLURM job step runs with --cores all on its node, and pipeline.runtime.stage
# never gives torch more threads than the CPUs the process may run on (its cpus_per_task).
JOB_THREADS = 256
# GPU jobs on one machine never outnumber its GPUs: where none is given with --resources gpu=N (profiles/slurm gives
# the cluster's), the GPUs present are the cap. Without GPUs nothing is capped (the "GPU" jobs run on the CPU).
LOCAL_GPUS = runtime.visible_gpus()
if "gpu" not in workflow.global_resources and LOCAL_GPUS:
    workflow.register_resource("gpu", LOCAL_GPUS)
# Tasks scored as change predictions, whose runs get report_figures' metrics, confusion and loss figures.
CHANGE_TASKS = "|".join(t for t in TASKS if get_task(t).figures == ("metrics.png", "confusion.png", "loss.png"))


wildcard_constraints:
    model="[A-Za-z0-9]+",
    explainer="[A-Za-z0-9]+",
    target="[A-Za-z0-9]+",
    split="train|test",
    task="|".join(TASKS),
    variant="|".join(all_variants()),
    case="[A-Za-z0-9_]+",
    chunk="[0-9]+",
    seed="[0-9]+",
    rows="[0-9]+|all",
    epochs="[0-9]+",
    baseline="|".join(FROZEN_BASELINES),
    name="[A-Za-z0-9_.-]+",  # a file of questions, asks/{name}.csv


# Where a run's explainer, predictions and results live: "" the run of training.seed (results/{task}/{run}.json);
# "_seeded" one run per other seed of training.seeds (results/{task}/seeds/{seed}/{run}.json), gathered with the run
# of training.seed by {task}_seeds into results/{task}/{run}.seeds.json; "_budget" one run per point of a training
# budget that is not one of those (rows, epochs and seed; results/{task}/budget/r{rows}_e{epochs}/s{seed}/{run}.json).
LAYOUTS = {"": "", "_seeded": "seeds/{seed}/", "_budget": "budget/r{rows}_e{epochs}/s{seed}/"}


def released_label_files(task, wildcards):
    """A split's files of the released label dataset `{task}.released_labels` names for this target (a local folder:
    its files, so a new download reruns the job; a hub id: none), or None when the labels are built here."""
    from pipeline.artifacts import released_split_files

    source = (getattr(SETTINGS, task).released_labels or {}).get(known_model(wildcards.target))
    if source is None:
        return None
    setting = f"{task}.released_labels.{wildcards.target}"
    folder = local_folder(source, setting)
    return [str(f) for f in released_split_files(folder, wildcards.split, setting)] if folder else []


def label_settings(stage):
    """A label stage's settings for its {target} (that target's released labels, not every target's)."""
    return lambda wildcards: stages.settings(config, stage, target=known_model(wildcards.target))


def settings_of(stage):
    """The settings a stage's result depends on (pipeline/stages.py declares which): its rule's params."""
    return stages.settings(config, stage)


def seeded_settings(stage, layout):
    """A training stage's settings; in the seeded layout with training.seed set to the run's {seed}, in the budget
    layout with its rows and epochs too."""
    settings = stages.settings(config, stage)
    if not layout:
        return settings
    if layout == "_budget":
        return lambda wildcards: stages.with_budget(settings, wildcards.rows, wildcards.epochs, int(wildcards.seed))
    return lambda wildcards: stages.with_training_seed(settings, int(wildcards.seed))


def shared(head, task):
    """A shared section (training, generation, explainer) as the task's stages see it: with its overrides, typed."""
    return shared_section(SETTINGS, head, task)


def training_seeds(task):
    """training.seeds (the task's own training section may override it); none set: training.seed alone."""
    section = shared("training", task)
    return list(section.seeds or [section.seed])


def seed_results(task):
    """Every seed's results file of a run, for {task}_seeds: training.seed's is the run itself (the same settings, so
    it is not trained again), every other seed's the seeded layout's."""
    own = shared("training", task).seed

    def files(wildcards):
        run = f"{wildcards.explainer}_{wildcards.target}.json"
        seeds = training_seeds(task)
        if len(set(seeds)) < 2:
            raise ValueError(f"results/{task}/{wildcards.explainer}_{wildcards.target}.seeds.json gathers the runs of "
                             f"training.seeds, which gives one seed ({seeds}): an interval over training draws needs "
                             f"at least two (e.g. training.seeds: [0, 1, 2]); results/{task}/{run} is the one seed's")
        return {f"seed_{s}": f"results/{task}/{LAYOUTS['' if s == own else '_seeded'].format(seed=s)}{run}"
                for s in training_seeds(task)}

    return files


def code_of(stage):
    """A hash of the pipeline code the stage runs, so changed code reruns exactly what it affects."""
    return stages.code_hash(stage)


# Every rule's params hold `upstream`: for each job that makes one of its inputs, a digest of that job's params (its
# settings, code and own upstream), so a job's params change whenever a setting or code anywhere above it changes.
# Snakemake reruns a job whose params changed, but it does not rerun one whose output exists while an input is
# missing: without this, a setting changed above a job that then failed (killed at a SLURM time limit, say) left the
# old results reported as up to date. A function of the wildcards alone: Snakemake leaves params derived from
# `input` out of its comparison.
_UPSTREAM = {}
_PRODUCERS = {}


def upstream_of(rule_name):
    """The `upstream` param of the rule named `rule_name` (per producing job, a digest of its params)."""
    return lambda wildcards: _upstream(rule_name, dict(wildcards.items()))


def _upstream(rule_name, values):
    key = (rule_name, tuple(sorted(values.items())))
    if key not in _UPSTREAM:
        job_rule = workflow.get_rule(rule_name)
        found = {}
        for path in sorted({str(f) for f in job_rule.expand_input(values)[0]}):
            producer = _producer(path)
            if producer is not None:
                made_by, wildcard_values = producer
                _check_intact(path, made_by.name)
                label = f"{made_by.name}{''.join(f'[{k}={v}]' for k, v in sorted(wildcard_values.items()))}"
                found[label] = _params_digest(made_by, wildcard_values)
        _UPSTREAM[key] = dict(sorted(found.items()))
    return _UPSTREAM[key]


_INTACT = set()


def _check_intact(path, rule_name):
    """An input this workflow made that no longer reads (cut off, overwritten) stops the run before any job, naming
    it and the command that rebuilds it: a job that started on it would fail, after Snakemake had removed the
    job's own previous outputs."""
    forced = workflow.dag_settings.forcerun
    if path in _INTACT or workflow.dag_settings.forceall or rule_name in forced or path in forced:
        return  # about to be made again
    why = damage(path)
    if why:
        raise ValueError(f"{path} is damaged ({why}); to rebuild it and what was made from it, run the same command "
                         f"with --forcerun {rule_name} after the targets")
    _INTACT.add(path)


def _producer(path):
    """The rule and wildcards of the job that makes `path`, or None for a file this workflow does not make."""
    if path not in _PRODUCERS:
        makers = [r for r in workflow.rules if r.output and r.is_producer(path)]
        if len(makers) > 1:
            raise ValueError(f"{path} is made by several rules ({', '.join(r.name for r in makers)})")
        _PRODUCERS[path] = (makers[0], makers[0].get_wildcards(path)) if makers else None
    return _PRODUCERS[path]


def _params_digest(maker, values):
    """A short digest of the params a job of rule `maker` with these wildcards runs with (its own upstream among
    them)."""
    inputs = maker.expand_input(values)[0]
    params, _ = maker.expand_params(values, inputs, maker.expand_output(values)[0], None)
    return config_hash(dict(params.items()))


def model_settings(wildcards):
    return stages.settings(config, "prepare_model", model=known_model(wildcards.model))


def known_model(key):
    case = interpbench.case_key(key)
    if case is not None:
        raise ValueError(f"model key '{key}' is InterpBench case {case} (resources/interpbench/{case}/, built by the "
                         f"interpbench_case job): its inputs are token sequences over the case's vocabulary, not "
                         f"text, so the act_patch, input_ablation and features rules cannot take it as a model")
    if key not in SETTINGS.models:
        raise ValueError(f"unknown model key '{key}': config.yaml defines {sorted(SETTINGS.models)}")
    return key


def model_sources(wildcards):
    """No file inputs; checks a local model folder exists before any job starts, and that a prepared folder is whole."""
    spec = SETTINGS.models[known_model(wildcards.model)]
    prepared = Path(f"resources/models/{wildcards.model}")
    if prepared.is_dir() and not (prepared / "manifest.json").is_file():
        raise ValueError(f"{prepared} exists but holds no manifest.json (an interrupted or hand-made folder): delete it "
                         f"and run again, and prepare_model builds it")
    if spec.source == "hf":
        local_folder(spec.path, f"models.{wildcards.model}.path")
    return []


def before_the_first_job(jobs):
    """The Snakefile's onstart (not in a dry run): each task asks the external servers that the rules about to run
    will call (the features task's LM judge and describer) to answer, and every folder those jobs write into must take
    a file; else the run stops naming the setting or the folder."""
    jobs = list(jobs)
    rules = {job.rule.name for job in jobs}
    for task in TASKS:
        get_task(task).check_servers(getattr(SETTINGS, task, None), rules)
    blocked = unwritable(str(f) for job in jobs for f in job.output)
    if blocked:
        raise ValueError("the jobs about to run could not write their outputs, so they would fail after computing: "
                         + "; ".join(f"{folder}: {why}" for folder, why in blocked.items()))


def all_results():
    return [f"results/{task}/{run}.json" for task, runs in SETTINGS.runs.items() for run in runs]


def all_figures():
    """Every figure of the report: per run the task's figures; per act_patch target the patch effect."""
    figures = [f"report/{task}/{run}/{name}" for task, runs in SETTINGS.runs.items() for run in runs
               for name in get_task(task).figures]
    targets = sorted({run.split("_")[1] for run in SETTINGS.runs.get("act_patch", ())})
    return figures + [f"report/act_patch/patch_effect_{target}.png" for target in targets]


def run_figure_inputs(wildcards):
    _models(wildcards, wildcards.task)  # checks both keys
    run = f"{wildcards.explainer}_{wildcards.target}"
    return {
        "result": f"results/{wildcards.task}/{run}.json",
        "predictions": [f"work/{wildcards.task}/predictions/{run}/{v}.parquet" for v in run_variants(wildcards.task)],
        "trained": f"work/{wildcards.task}/explainers/{run}",
    }


def _models(wildcards, task):
    """The explainer's model folder and the target's: a language model, or the folder the task names for its
    target (circuits: the InterpBench cases). A pair that cannot be run is refused here, before any job."""
    target_dir = get_task(task).target_dir(wildcards.target)
    if shared("explainer", task).inject == "layer" and wildcards.explainer != wildcards.target:
        raise ValueError(f"explainer.inject 'layer' ({task}): explainer {wildcards.explainer} is not target "
                         f"{wildcards.target}, and a layer reads only its own model's states; use inject: embedding "
                         f"for this pair")
    return {"explainer": f"resources/models/{known_model(wildcards.explainer)}",
            "target": target_dir or f"resources/models/{known_model(wildcards.target)}"}


def alignment_input(wildcards, task):
    """The fitted explainer-from-target maps, when explainer.alignment is 'fitted' (a language-model target only)."""
    if shared("explainer", task).alignment != "fitted":
        return {}
    if get_task(task).target_dir(wildcards.target) is not None:
        raise ValueError(f"explainer.alignment 'fitted': the {task} task's target is not a language model, so there "
                         f"is no text to align its states on; use alignment: identity for it")
    return {"alignment": f"work/alignment/{known_model(wildcards.explainer)}_{known_model(wildcards.target)}.safetensors"}


def alignment_text(wildcards):
    """What the alignment is fitted on (alignment.text): the target's act_patch training pairs, or the corpus."""
    if SETTINGS.alignment.text == "corpus":
        return "work/features/corpus.parquet"
    return f"work/act_patch/pairs/{known_model(wildcards.target)}/train.parquet"


def alignment_inputs(wildcards):
    return {"text": alignment_text(wildcards), "target": f"resources/models/{known_model(wildcards.target)}",
            "explainer": f"resources/models/{known_model(wildcards.explainer)}"}


def train_inputs(task):
    """A task's training labels (as its module names them), both models and, where fitted, the alignment."""
    return lambda wildcards: (get_task(task).label_paths(wildcards.target, "train") | _models(wildcards, task)
                              | alignment_input(wildcards, task))


def trained_explainer(task, folder):
    """The trained explainer a run's generation and scoring read: this workflow's (`folder`), or a released one
    (explainer.checkpoint, which then needs no training job): its local folder, or no file for a hub id (the job
    fetches it)."""
    released = shared("explainer", task).checkpoint
    if not released:
        return {"trained": folder}
    return {"trained": released} if local_folder(released, f"explainer.checkpoint ({task})") else {}


def _prefix(prefix, wildcards):
    """A layout's folder for the job's wildcards (its seed; a budget point's rows and epochs)."""
    return prefix.format(**{name: getattr(wildcards, name) for name in ("seed", "rows", "epochs")
                            if f"{{{name}}}" in prefix})


def answered_without_trained_explainer(spec, variant):
    """The untrained variant, the in-context baselines and the task's custom ones (SelfIE): they read no trained
    explainer, so they are the same in every seed's run."""
    return variant == "untrained" or variant in spec.own_variants or variant in IN_CONTEXT


def run_variants(task, prefix=""):
    """The variants a run answers with: the task's, and in the run of training.seed (not the seeded or budget runs)
    the field's baselines its section lists (`{task}.baselines`)."""
    spec = get_task(task)
    return spec.variants + (baselines_of(spec, getattr(SETTINGS, task, None)) if not prefix else ())


def baseline_settings(task):
    """A frozen-explainer baseline's training settings: the fine-tuned run's, with its own training.method."""
    settings = stages.settings(config, f"{task}_train")

    def with_method(wildcards):
        import copy

        changed = copy.deepcopy(settings)
        changed.setdefault("training", {})["method"] = FROZEN_BASELINES[wildcards.baseline]
        return changed

    return with_method


def generation_inputs(task, split="test", prefix=""):
    """The task's labels of `split` (the test split or an evaluation set), both models, and the trained explainer
    (not for the untrained variant, nor for the variants the task answers without the explainer, such as SelfIE)."""
    def inputs(wildcards):
        spec = get_task(task)
        paths = spec.label_paths(wildcards.target, split) | _models(wildcards, task)
        if wildcards.variant in FROZEN_BASELINES:
            run = f"baselines/{wildcards.variant}/{wildcards.explainer}_{wildcards.target}"
            paths |= {"trained": f"work/{task}/{run}"}
        elif not answered_without_trained_explainer(spec, wildcards.variant):
            run = f"{_prefix(prefix, wildcards)}explainers/{wildcards.explainer}_{wildcards.target}"
            paths |= trained_explainer(task, f"work/{task}/{run}")
        elif wildcards.variant == "untrained" or wildcards.variant in IN_CONTEXT:
            paths |= alignment_input(wildcards, task)  # the untrained explainer starts from the fitted maps
        if wildcards.variant in IN_CONTEXT:  # its solved examples: the training split
            paths |= with_role(CONTEXT, spec.label_paths(wildcards.target, "train"))
        return paths

    return inputs


def score_inputs(task, prefix=""):
    """Every variant's predictions, the trained explainer and both models, and by role (ScoreInputs): both splits'
    labels, the artifacts whose counts are reported, the task's own scoring inputs and every variant's predictions
    on the evaluation sets the task's section runs (the features simulator's, the out-of-distribution sets)."""
    def inputs(wildcards):
        spec, run = get_task(task), f"{wildcards.explainer}_{wildcards.target}"
        where = f"work/{task}/{_prefix(prefix, wildcards)}"
        # The variants answered without the trained explainer are the same in every seed's run: each seed reads the
        # run of training.seed's, so they are generated once.
        at = lambda v: f"work/{task}/" if answered_without_trained_explainer(spec, v) else where  # noqa: E731
        section = getattr(SETTINGS, task, None)
        released = section is not None and (getattr(section, "released_labels", None) or {}).get(wildcards.target)
        roles = ScoreInputs(
            train=spec.label_paths(wildcards.target, "train"), test=spec.label_paths(wildcards.target, "test"),
            counts={} if released else spec.count_paths(wildcards.target),  # released labels: nothing built here
            own=spec.score_inputs(wildcards.target, section),
            evals={name: {v: f"{at(v)}predictions/{run}/{name}/{v}.parquet" for v in spec.variants}
                   for name in spec.eval_sets(section)})
        return ({"predictions": [f"{at(v)}predictions/{run}/{v}.parquet" for v in run_variants(task, prefix)]}
                | trained_explainer(task, f"{where}explainers/{run}") | _models(wildcards, task) | roles.named())

    return inputs


def matrix_inputs(wildcards):
    """Every explainer x target pair of matrix.models: its results file and its fine-tuned explainer's answers."""
    models = [known_model(m) for m in SETTINGS.matrix.models]
    paths = {}
    for explainer in models:
        for target in models:
            paths[f"result_{explainer}_{target}"] = f"results/{wildcards.task}/{explainer}_{target}.json"
            paths[f"pred_{explainer}_{target}"] = f"work/{wildcards.task}/predictions/{explainer}_{target}/finetuned.parquet"
    return paths


def ask_inputs(wildcards):
    """A user's questions (asks/{name}.csv, else .parquet), the run's trained (or released) explainer, its models,
    its test labels (their patch windows and prompt format) and its fine-tuned answers (their generation settings);
    for features also the training split's latents, the exemplars and the results (the simulator's settings)."""
    from pipeline.ask import TASKS

    if wildcards.task not in TASKS:
        raise ValueError(f"results/ask/{wildcards.task}/...: asking is built for {list(TASKS)}")
    stem = f"asks/{wildcards.name}"
    parquet = Path(f"{stem}.parquet").exists() and not Path(f"{stem}.csv").exists()
    questions = f"{stem}.parquet" if parquet else f"{stem}.csv"
    run = f"{known_model(wildcards.explainer)}_{known_model(wildcards.target)}"
    spec = get_task(wildcards.task)
    paths = ({"questions": questions, "predictions": f"work/{wildcards.task}/predictions/{run}/finetuned.parquet"}
             | trained_explainer(wildcards.task, f"work/{wildcards.task}/explainers/{run}")
             | _models(wildcards, wildcards.task) | spec.label_paths(wildcards.target, "test"))
    if wildcards.task == "features":
        from pipeline.tasks.features.task import exemplars_path

        paths |= with_role("train", spec.label_paths(wildcards.target, "train")) | {
            "exemplars": exemplars_path(known_model(wildcards.target), SETTINGS.features.source),
            "result": f"results/features/{run}.json"}
    return paths


# Each task's own input functions (and InterpBench's, which the circuits task reads).
include: "common/act_patch.smk"
include: "common/input_ablation.smk"
include: "common/features.smk"
include: "common/interpbench.smk"
