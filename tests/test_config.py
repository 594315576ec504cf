import copy

import pytest

from pipeline.config import ConfigError, deep_merge, load_config, validate_config
from pipeline.settings import TrainingConfig
from pipeline.tasks.act_patch.settings import ActPatchConfig, PatchConfig


def test_default_config_is_valid(base_config):
    validate_config(base_config)


@pytest.mark.parametrize("path, value, expected", [
    (("act_patch", "patch", "window_size"), 0, "act_patch.patch.window_size"),
    (("training", "method"), "qlora", "training.method"),
    (("models", "smollm", "source"), "ftp", "models.smollm.source"),
    (("facts", "test_fraction"), 1.5, "facts.test_fraction"),
])
def test_invalid_values_name_the_field(base_config, path, value, expected):
    config = copy.deepcopy(base_config)
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        validate_config(config)


@pytest.mark.parametrize("task, head, override, expected", [
    ("act_patch", "training", {"precision": "fp16"}, r"act_patch\.training\.precision: 'fp16' is not one of"),
    ("act_patch", "training", {"batch_size": 0}, r"act_patch\.training\.batch_size: 0 is less than the minimum of 1"),
    ("features", "training", {"learning_rat": 1e-4}, r"features\.training: Additional properties .*'learning_rat'"),
    ("features", "training", {"lora": {"rr": 3}}, r"features\.training\.lora: Additional properties .*'rr'"),
    ("input_ablation", "generation", {"max_new_tokens": 0}, r"input_ablation\.generation\.max_new_tokens"),
    ("act_patch", "explainer", {"alignment": "ridge"}, r"act_patch\.explainer\.alignment: 'ridge' is not one of"),
])
def test_a_tasks_overrides_are_checked_as_the_section_they_override(base_config, task, head, override, expected):
    config = copy.deepcopy(base_config)
    config[task][head] = override
    with pytest.raises(ConfigError, match=expected):
        validate_config(config)
    config[task][head] = {}  # every key of an override is optional
    validate_config(config)


def test_missing_fields_of_a_model_are_named(base_config):
    config = copy.deepcopy(base_config)
    config["models"]["nosource"] = {"path": "x/y"}
    with pytest.raises(ConfigError, match="models.nosource: 'source' is a required property"):
        validate_config(config)
    config = copy.deepcopy(base_config)
    config["models"]["broken"] = {"source": "hf"}
    with pytest.raises(ConfigError, match="models.broken: source 'hf' needs field 'path'"):
        validate_config(config)
    config = copy.deepcopy(base_config)
    config["models"]["tiny"]["tokenizer_from"] = "nosuch"
    with pytest.raises(ConfigError, match="unknown model key 'nosuch'"):
        validate_config(config)


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(path)


def test_layer_windows_cover_the_depth(base_config):
    cfg = ActPatchConfig.from_dict(base_config["act_patch"]).patch
    windows = cfg.windows(30)
    assert windows[0] == [0, 1, 2, 3, 4, 5] and windows[-1] == [24, 25, 26, 27, 28, 29]
    assert sorted(x for w in windows for x in w) == list(range(30))
    assert cfg.windows(8)[-1] == [0, 1, 2, 3, 4, 5]  # no short window at the top: windows are full
    paper = PatchConfig(window_size=8, window_stride=4)
    assert paper.windows(32)[-1] == list(range(24, 32)) and all(len(w) == 8 for w in paper.windows(32))
    with pytest.raises(ConfigError, match="window_size 8"):
        paper.windows(6)
    with pytest.raises(ConfigError, match="first_layer"):
        PatchConfig(first_layer=40).windows(30)
    # The published tables' windows: a quarter of the depth, one after another (Llama-3.1-8B 32 layers, Qwen3-8B 36).
    quarters = PatchConfig(depth_windows=4)
    assert quarters.windows(32) == [list(range(s, s + 8)) for s in (0, 8, 16, 24)]
    assert quarters.windows(36)[-1] == list(range(27, 36)) and quarters.windows(36)[1] == list(range(9, 18))
    with pytest.raises(ConfigError, match="depth_windows 4"):
        quarters.windows(3)


def test_training_settings_read_lora_and_deepspeed_typed(base_config):
    cfg = TrainingConfig.from_dict(base_config["training"] | {"deepspeed": {"enabled": True, "zero_stage": 1}})
    assert cfg.deepspeed.enabled and cfg.deepspeed.zero_stage == 1 and cfg.lora.r == 16
    assert "down_proj" in cfg.lora.target_modules


def test_deep_merge_overrides_nested_keys_only():
    merged = deep_merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}})
    assert merged == {"a": {"b": 5, "c": 2}, "d": 3}


def test_a_config_file_that_is_not_yaml_is_named_with_its_line(tmp_path):
    from pipeline.config import check_files

    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  seed: [1\n  lr: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line 3, column 5: not valid YAML"):
        check_files([str(bad)])
    good = tmp_path / "good.yaml"
    good.write_text("training: {seed: 3}\n")
    check_files([str(good)])
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("training: {sed: 3}\n")
    with pytest.raises(ConfigError, match=r"(?s)wrong\.yaml.*training: Additional properties"):
        check_files([str(good), str(wrong)])


def test_config_yaml_holds_every_default_of_the_settings_model():
    """config.yaml is the settings model's defaults, value for value (what a stage builds from a section that leaves a
    key out is what the shipped config says), and `python -m pipeline.config defaults` writes them."""
    from pathlib import Path

    import yaml

    from pipeline.config import defaults, settings_model

    shipped = yaml.safe_load((Path(__file__).resolve().parent.parent / "config.yaml").read_text())
    model = settings_model()
    assert model.model_validate(shipped) == model()
    assert model.model_validate(defaults()) == model()


def test_the_configuration_reference_is_generated_and_current():
    from pathlib import Path

    from pipeline.config import reference

    written = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    assert written == reference(), "docs/configuration.md is stale: python -m pipeline.config reference > " \
                                   "docs/configuration.md"


def test_a_setting_declared_once_reaches_the_schema_the_reference_and_its_stages_cache_key(monkeypatch):
    """One field added to a task's settings model in the test tree (the toy task's, tests/toy_task/task.py): the
    generated schema checks it, the generated reference lists it, and the cache key of the stage that takes the
    section holds it (and that of a stage that does not, not)."""
    import dataclasses
    import importlib

    from pydantic import Field, create_model

    from pipeline import config as configuration, stages, tasks

    monkeypatch.setitem(tasks.TASK_MODULES, "toy", "tests.toy_task.task")
    toy = importlib.import_module("tests.toy_task.task")
    grown = create_model("ToyConfig", __base__=toy.ToyConfig, width_of_the_moon=(int, Field(
        7, ge=1, description="a setting added in one place")))
    task = tasks.get_task("toy")
    grown_task = type("GrownToy", (type(task),), {  # the toy task with the setting added to its section
        "settings": grown, "stages": {"toy_labels": dataclasses.replace(task.stages["toy_labels"], takes=(grown,))}})
    monkeypatch.setitem(tasks._TASKS, "toy", grown_task())
    stages.all_stages.cache_clear()
    try:
        assert configuration.schema()["$defs"]["ToyConfig"]["properties"]["width_of_the_moon"]["minimum"] == 1
        config = configuration.defaults()
        assert config["toy"]["width_of_the_moon"] == 7
        with pytest.raises(ConfigError, match=r"toy\.width_of_the_moon: 0 is less than the minimum of 1"):
            validate_config(config | {"toy": {"width_of_the_moon": 0}})
        assert "| `width_of_the_moon` | int | `7` | a setting added in one place (>= 1) |" in configuration.reference()
        assert stages.settings(config, "toy_labels")["toy"]["width_of_the_moon"] == 7
        assert "toy" not in stages.settings(config, "alignment")
    finally:
        stages.all_stages.cache_clear()


def test_released_labels_are_checked_before_any_job(base_config, tmp_path):
    """A released label table's target must be a model key; a local folder must exist and hold both splits; and the
    reading rows, which need the counterfactual's answer that released tables lack, must be off."""
    import copy

    from pipeline.config import ConfigError, validate_config

    def check(task, value, reading=0.0):
        config = copy.deepcopy(base_config)
        config[task]["released_labels"] = value
        if task == "act_patch":
            config["act_patch"]["training_rows"]["reading"]["fraction"] = reading
        validate_config(config, source="my.yaml")

    check("act_patch", {"smollm": "Transluce/act_patch_llama_3.1_8b_counterfact"})  # a hub id: read by the job
    with pytest.raises(ConfigError, match=r"my.yaml: act_patch.released_labels.nope: unknown model key 'nope'"):
        check("act_patch", {"nope": "Transluce/x"})
    with pytest.raises(ConfigError, match=r"input_ablation.released_labels.smollm: local folder ./gone does not exist"):
        check("input_ablation", {"smollm": "./gone"})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train-00000-of-00001.parquet").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"act_patch.released_labels.smollm: .* holds no 'test' split"):
        check("act_patch", {"smollm": str(tmp_path)})
    (tmp_path / "test.parquet").write_bytes(b"")
    check("act_patch", {"smollm": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"released tables hold no counterfactual answers.*reading \(fraction 0.25\)"):
        check("act_patch", {"smollm": str(tmp_path)}, reading=0.25)


def test_the_feature_exemplars_kept_must_hold_what_the_describer_reads_and_the_simulator_scores(base_config):
    """With describe_every k, the describer reads top ranks 0, k, 2k, ... and the simulator scores the others: too few
    kept for either is refused before any job, naming the setting; the default scores whole 64-token chunks."""
    import copy

    from pipeline.config import ConfigError, validate_config
    from pipeline.tasks.features.exemplars import window_bounds

    features = base_config["features"]
    kept, every = features["exemplars"]["top"], features["descriptions"]["describe_every"]
    assert features["simulator"]["top"] == kept - kept // every and features["simulator"]["tokens_before"] is None
    start, end = window_bounds([1, 30, 63], features["exemplars"]["window_before"], features["exemplars"]["window_after"],
                               features["sae"]["context"])
    assert (start == 1).all() and (end == features["sae"]["context"]).all()  # every window is its whole chunk

    def check(**changes):
        config = copy.deepcopy(base_config)
        for path, value in changes.items():
            section, name = path.split("__")
            config["features"][section][name] = value
        validate_config(config, source="my.yaml")

    with pytest.raises(ConfigError, match=r"my.yaml: features.simulator.top: 11 top exemplars .* leaves 10 .* at least 22"):
        check(simulator__top=11)
    with pytest.raises(ConfigError, match=r"features.descriptions.min_exemplars: 5 .*top 8 with describe_every 2 leaves it 4"):
        check(exemplars__top=8, simulator__top=4)
    check(exemplars__top=22, simulator__top=11)
    check(simulator__top=20, descriptions__describe_every=1)  # in sample: the same 20 (the paper's reading)
    check(simulator__top=50, simulator__enabled=False)


def test_the_paper_config_trains_act_patch_with_the_papers_recipe():
    """config.paper.yaml over config.yaml: act_patch's training is the paper's (every row, 20 epochs, batch 32,
    constant 5e-5, random batches, no loss weights), not the CPU default's act_patch overrides."""
    from pathlib import Path

    import yaml

    from pipeline.config import deep_merge
    from pipeline.stages import task_section

    root = Path(__file__).resolve().parent.parent
    config = deep_merge(yaml.safe_load((root / "config.yaml").read_text()),
                        yaml.safe_load((root / "config.paper.yaml").read_text()))
    training = task_section(config, "training", "act_patch")
    assert {k: training[k] for k in ("max_examples", "epochs", "batch_size", "learning_rate", "lr_schedule",
                                     "group_by_length", "loss_weights")} == {
        "max_examples": None, "epochs": 20, "batch_size": 32, "learning_rate": 5.0e-5, "lr_schedule": "constant",
        "group_by_length": False, "loss_weights": {"content": 1.0, "verdict": 1.0}}
    assert training["lora"] == {"r": 128, "alpha": 16, "dropout": 0.1, "target_modules": [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


def test_no_setting_is_read_from_a_raw_dict_outside_the_configuration_machinery():
    """Settings reach code as typed sections (pipeline.settings.section_of, the typed SETTINGS of the workflow): no
    `config["training"]`, `run["act_patch"]` or `section.get("judge")` of a section's name in pipeline/ or workflow/,
    but where the configuration itself is built, checked and keyed (config.py, stages.py, settings.py)."""
    import re
    from pathlib import Path

    from pipeline.config import settings_model
    from pipeline.settings import _models_in

    names: set[str] = set()

    def walk(model):
        for name, field in model.model_fields.items():
            inner = [m for m in _models_in(field.annotation) if hasattr(m, "model_fields")]
            if inner:
                names.add(name)
                if not inner[0].__name__.endswith("Overrides"):
                    walk(inner[0])
    walk(settings_model())
    names -= {"models", "runs"}  # also a results file's keys: checked apart below
    # what holds settings as a dict: the config, a stage's settings (run), a section, a config file loaded
    holders = r"(\bconfig|\brun|\bsection|\bsettings|\bcfg|load_config\([^)]*\))"
    pattern = re.compile(r"""%s(\[|\.get\()["'](%s)["']""" % (holders, "|".join(sorted(names))))
    repo = Path(__file__).resolve().parent.parent
    machinery = {"pipeline/config.py", "pipeline/stages.py", "pipeline/settings.py"}
    found = []
    for path in [*repo.glob("pipeline/**/*.py"), *repo.glob("workflow/**/*.py"), *repo.glob("workflow/**/*.smk")]:
        where = str(path.relative_to(repo))
        if where in machinery:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line.split("#")[0]):
                found.append(f"{where}:{number}: {line.strip()}")
    assert found == []
