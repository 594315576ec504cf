"""The one declaration of what each stage's result depends on: settings, execution-only settings, code."""

import copy

import pytest

from pipeline import stages


def test_execution_settings_are_not_part_of_a_stage_result(base_config):
    train = stages.settings(base_config, "act_patch_train")
    assert set(train) == {"training", "explainer", "act_patch"} and set(train["act_patch"]) == {"training_rows"}
    assert train["explainer"]["alignment"] == "fitted"  # act_patch's own explainer section over the shared one
    assert stages.settings(base_config, "input_ablation_train")["explainer"]["alignment"] == "identity"
    assert not {"gpus", "cpu_processes", "checkpoint_every", "gradient_checkpointing", "fsdp", "seeds"} & set(
        train["training"])
    changed = copy.deepcopy(base_config)
    changed["training"] |= {"gpus": 8, "cpu_processes": 2, "checkpoint_every": 7, "gradient_checkpointing": True,
                            "fsdp": "full_shard", "seeds": [5, 6]}
    changed["act_patch"]["batch_size"] = 3
    changed["act_patch"]["chunk_pairs"] = 7
    changed["generation"]["batch_size"] = 5
    for stage in stages.all_stages():
        assert stages.settings(changed, stage, model="smollm") == stages.settings(base_config, stage, model="smollm"), stage
    assert stages.execution(changed, "act_patch_train")["training"] == {
        "gpus": 8, "cpu_processes": 2, "checkpoint_every": 7, "gradient_checkpointing": True, "fsdp": "full_shard",
        "seeds": [5, 6]}
    # What the stage runs with has them back.
    run = stages.run_settings(train, changed, "act_patch_train")
    assert run["training"]["gpus"] == 8 and run["training"]["learning_rate"] == base_config["training"]["learning_rate"]


def test_result_settings_change_only_their_own_stages(base_config):
    changed = copy.deepcopy(base_config)
    changed["act_patch"]["patch"]["window_size"] = 3
    moved = {s for s in stages.all_stages()
             if stages.settings(changed, s, model="smollm") != stages.settings(base_config, s, model="smollm")}
    # the chunks and their gather; the pairs do not depend on the windows, later stages rerun because their input changed
    assert moved == {"act_patch_label_chunk", "act_patch_labels"}


def test_task_overrides_of_shared_sections(base_config):
    override = stages.settings(base_config, "input_ablation_train")
    assert override["training"]["epochs"] == base_config["input_ablation"]["training"]["epochs"]
    assert override["input_ablation"] == {"rebalance_train": True, "max_train_examples": None}
    assert stages.settings(base_config, "act_patch_train")["training"]["epochs"] == base_config["training"]["epochs"]
    labels = stages.settings(base_config, "input_ablation_labels")["input_ablation"]
    assert "batch_size" not in labels and "training" not in labels and labels["system_prompt"]


def test_a_random_model_depends_on_its_tokenizer_model(base_config):
    specs = stages.settings(base_config, "prepare_model", model="tiny")["models"]
    assert set(specs) == {"tiny", "smollm"}
    assert set(stages.settings(base_config, "prepare_model", model="smollm")["models"]) == {"smollm"}


def test_code_closure_follows_imports_but_not_unused_modules():
    declared = stages.all_stages()
    labels = stages.code_closure(declared["act_patch_labels"].entry, declared["act_patch_labels"].modules)
    assert {"pipeline.tasks.act_patch.labels", "pipeline.engine.patching", "pipeline.models", "pipeline.tasks.facts"} <= set(labels)
    assert "pipeline.explainer.training" not in labels and "pipeline.explainer.model" not in labels
    assert "pipeline.tasks.act_patch.prompts" not in labels  # the explainer's wording does not relabel
    train = stages.code_closure(declared["act_patch_train"].entry, declared["act_patch_train"].modules)
    assert {"pipeline.explainer.explain", "pipeline.explainer.training", "pipeline.explainer.model", "pipeline.tasks.act_patch.task"} <= set(train)
    assert "pipeline.report" not in train and "pipeline.tasks.input_ablation" not in train


def test_code_hash_changes_when_a_module_in_the_closure_changes(monkeypatch, tmp_path):
    import shutil

    copy_dir = tmp_path / "pipeline"
    shutil.copytree(stages.PACKAGE_DIR, copy_dir)
    monkeypatch.setattr(stages, "PACKAGE_DIR", copy_dir)
    caches = (stages._tree, stages.code_closure, stages._module_imports, stages._entry_imports)
    for cache in caches:
        cache.cache_clear()
    before = {s: stages.code_hash(s) for s in ("act_patch_labels", "act_patch_train")}
    with open(copy_dir / "explainer" / "training.py", "a") as handle:
        handle.write("\nCHANGE = 1\n")
    for cache in caches:
        cache.cache_clear()
    after = {s: stages.code_hash(s) for s in ("act_patch_labels", "act_patch_train")}
    assert after["act_patch_labels"] == before["act_patch_labels"]
    assert after["act_patch_train"] != before["act_patch_train"]
    # What Snakemake prints as the params before and now names the module that changed, and only it.
    changed = set(after["act_patch_train"].split()) - set(before["act_patch_train"].split())
    assert [entry.split(":")[0] for entry in changed] == ["explainer.training"]
    assert (copy_dir / "__pycache__" / "stage-code-hashes.json").exists()  # kept for the next parse
    with open(copy_dir / "explainer" / "training.py", "a") as handle:
        handle.write("ANOTHER_CHANGE = 2\n")
    assert stages.code_hash("act_patch_train") != after["act_patch_train"]  # the kept hashes go with the change
    for cache in caches:
        cache.cache_clear()


def test_every_task_gets_train_generate_and_score_stages():
    from pipeline.tasks import TASK_MODULES

    declared = stages.all_stages()
    for task in TASK_MODULES:
        for step in ("train", "generate", "score"):
            assert declared[f"{task}_{step}"].task == task and declared[f"{task}_{step}"].modules == (TASK_MODULES[task],)


def test_any_task_may_override_the_shared_sections(base_config):
    changed = copy.deepcopy(base_config)
    changed["act_patch"]["generation"] = {"max_new_tokens": 5}
    assert stages.settings(changed, "act_patch_generate")["generation"]["max_new_tokens"] == 5
    assert stages.settings(changed, "input_ablation_generate") == stages.settings(base_config, "input_ablation_generate")
    assert stages.settings(changed, "act_patch_labels") == stages.settings(base_config, "act_patch_labels")


def test_features_simulator_and_ood_settings_move_only_their_stages(base_config):
    def moved(edit):
        changed = copy.deepcopy(base_config)
        edit(changed["features"])
        return {s for s in stages.all_stages() if not s.endswith(("_seeded", "_budget"))  # their stage is the plain one
                if stages.settings(changed, s, model="smollm") != stages.settings(base_config, s, model="smollm")}

    assert moved(lambda f: f["simulator"]["training"].update(steps=7)) == {"features_simulator", "features_score"}
    assert moved(lambda f: f["ood"].update(vectors_per_layer=3)) == {"features_ood", "features_score"}
    assert moved(lambda f: f["ood"].update(batch_size=3)) == set()
    assert moved(lambda f: f["simulator"].update(max_features=3)) == {"features_score"}
    declared = stages.all_stages()
    assert declared["features_generate_ood_fw"] == declared["features_generate"]  # one stage, another set


def test_gpu_count_and_threads_follow_what_the_process_is_given(monkeypatch):
    import os

    from pipeline import runtime

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,3")
    assert runtime.visible_gpus() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert runtime.visible_gpus() == 0
    allowed = len(os.sched_getaffinity(0))
    assert runtime.usable_threads(256) == allowed and runtime.usable_threads(1) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # as under a one-CPU SLURM allocation
    assert runtime.usable_threads(256) == 1


def test_the_cpu_matmul_choice_keeps_fp32_precision_and_refuses_unknown_values(monkeypatch):
    import torch
    from pipeline import runtime

    generator = torch.Generator().manual_seed(1)
    left, right = torch.randn(40, 300, generator=generator), torch.randn(300, 70, generator=generator)
    exact = left.double() @ right.double()
    for choice in ("mkl", None):  # None: the stages' own choice (oneDNN where exact on this CPU)
        library = runtime.cpu_matmul(choice)
        assert library == ("mkl" if choice else library) and library in ("mkl", "onednn")
        assert float(((left @ right).double() - exact).norm() / exact.norm()) < 1e-5
        assert torch.backends.mkldnn.matmul.fp32_precision == ("ieee" if library == "mkl" else "bf16")
    # Every stage runs inside runtime.stage, so its choice is part of every stage's code (caches rerun when it changes).
    assert all(" runtime:" in f" {stages.code_hash(name)}" for name in stages.all_stages())
    monkeypatch.setenv(runtime.MATMUL_ENV, "bf16")
    with pytest.raises(ValueError, match="PIPELINE_CPU_MATMUL='bf16'"):
        runtime.cpu_matmul()
    runtime.cpu_matmul("auto")


def test_code_hashes_see_behaviour_not_comments_or_docstrings(tmp_path, monkeypatch):
    source = ('"""Module doc."""\nimport os\n\n\ndef f(x):\n    """Doc."""\n    return x + 1  # note\n\n\n'
              'seed = Field(0, ge=0, description="the seed")\n')
    variants = {
        "same": source,
        "description": source.replace('"the seed"', '"the seed of the run, reworded"'),
        "bound": source.replace("ge=0", "ge=1"),
        "comments": source.replace("# note", "# another note") + "\n# trailing\n",
        "docstrings": source.replace("Module doc.", "Reworded.").replace('"""Doc."""', '"""Other words."""'),
        "layout": source.replace("return x + 1", "return (x\n            + 1)"),
        "code": source.replace("x + 1", "x + 2"),
    }
    dumps = {}
    for name, text in variants.items():
        (tmp_path / f"{name}.py").write_text(text)
        monkeypatch.setattr(stages, "_module_file", lambda module, folder=tmp_path: folder / f"{module}.py")
        dumps[name] = stages.behaviour(name)
    assert dumps["comments"] == dumps["docstrings"] == dumps["layout"] == dumps["description"] == dumps["same"]
    assert dumps["code"] != dumps["same"] != dumps["bound"]


def test_training_does_not_depend_on_the_generation_code(base_config):
    """Training draws its rows with pipeline.sampling, not through generation.py, so an edit there reruns no training."""
    assert "pipeline.explainer.generation" not in stages.code_closure("pipeline.explainer.training:train_explainer")
    assert "pipeline.sampling" in stages.code_closure("pipeline.explainer.training:train_explainer")


def test_pipeline_modules_import_no_cycle_no_upward_and_no_task_imports_another():
    """Every `pipeline` import, at module level or inside a function: no cycle; no import upward through the floors
    (the ground floor, then engine, then explainer and interpbench side by side, then tasks, then report and ask; the
    task registry `pipeline.tasks` is the ground floor's); and no task module reaches into another task's module (shared
    pieces live in the module they belong to, such as facts.py's pairs)."""
    import ast

    graph = {}
    for path in stages.PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(stages.PACKAGE_DIR).with_suffix("").parts
        name = ".".join(("pipeline",) + (parts[:-1] if parts[-1] in ("__init__", "__main__") else parts))
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
                imported |= {f"{node.module}.{a.name}" for a in node.names if stages._is_module(f"{node.module}.{a.name}")}
                imported |= {node.module} if node.module != "pipeline" else set()
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name.startswith("pipeline.")}
        graph[name] = graph.get(name, set()) | (imported - {name})

    def reaches(start, goal, seen):
        return any(step == goal or (step not in seen and not seen.add(step) and reaches(step, goal, seen))
                   for step in graph.get(start, ()))

    assert [m for m in graph if reaches(m, m, set())] == []
    floors = {"engine": 1, "explainer": 2, "interpbench": 2, "tasks": 3, "report": 4, "ask": 4}

    def floor(module):
        parts = module.split(".")
        return (0, "") if module == "pipeline.tasks" or parts[1] not in floors else (floors[parts[1]], parts[1])

    upward = {(m, d) for m in graph for d in graph[m]
              if floor(d)[0] > floor(m)[0] or (floor(d)[0] == floor(m)[0] > 0 and floor(d)[1] != floor(m)[1])}
    assert upward == set()
    assert set(floors) == {p.name for p in stages.PACKAGE_DIR.iterdir() if (p / "__init__.py").is_file()}
    from pipeline.tasks import TASK_MODULES

    task_modules = set(TASK_MODULES.values())
    assert {(m, d) for m in task_modules for d in graph[m] if d in task_modules} == set()


def test_score_inputs_round_trip_through_a_rules_flat_names():
    """The score rule's input function names the files by role and the stage reads the same roles back; a key that
    would make the names ambiguous is refused."""
    from pipeline.tasks import ScoreInputs

    inputs = ScoreInputs(train={"labels": "a/train.parquet", "vectors": "a/train.st"}, test={"labels": "a/test.parquet"},
                         counts={"facts": "f.parquet"}, own={"simulator": "sim", "ood_fw_labels": "o.parquet"},
                         evals={"heldout_cases": {"finetuned": "h/f.parquet", "no_vector": "h/n.parquet"}})
    named = inputs.named()
    assert all(name.isidentifier() for name in named)  # Snakemake's named inputs are keyword arguments
    assert ScoreInputs.of(named | {"predictions": ["p.parquet"], "explainer": "m"}) == inputs
    with pytest.raises(ValueError, match="may not contain '__'"):
        ScoreInputs(own={"odd__name": "x"}).named()


def test_a_task_is_a_registered_subclass_that_names_what_it_lacks():
    from pipeline.tasks import Task, get_task, register

    with pytest.raises(TypeError, match="Task subclass"):
        register(object())

    class Bare(Task):
        name = "bare"

    with pytest.raises(NotImplementedError, match="task bare: label_paths"):
        Bare().label_paths("tiny", "test")
    assert not Bare().scores_own and get_task("features").scores_own and not get_task("act_patch").scores_own
