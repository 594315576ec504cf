import copy

import pytest

from pipeline.config import ActPatchConfig, ConfigError, TrainingConfig, deep_merge, load_config, validate_config


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


def test_missing_section_and_model_fields(base_config):
    config = copy.deepcopy(base_config)
    del config["scoring"]
    with pytest.raises(ConfigError, match="'scoring' is a required property"):
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
    cfg = ActPatchConfig.from_dict(base_config["act_patch"])
    windows = cfg.windows(30)
    assert windows[0] == [0, 1, 2, 3, 4, 5] and windows[-1] == [24, 25, 26, 27, 28, 29]
    assert sorted(x for w in windows for x in w) == list(range(30))
    assert cfg.windows(8)[-1] == [0, 1, 2, 3, 4, 5]  # no short window at the top: windows are full
    paper = ActPatchConfig(window_size=8, window_stride=4)
    assert paper.windows(32)[-1] == list(range(24, 32)) and all(len(w) == 8 for w in paper.windows(32))
    with pytest.raises(ConfigError, match="window_size 8"):
        paper.windows(6)
    with pytest.raises(ConfigError, match="first_layer"):
        ActPatchConfig(first_layer=40).windows(30)


def test_training_config_flattens_lora_and_deepspeed(base_config):
    cfg = TrainingConfig.from_dict(base_config["training"] | {"deepspeed": {"enabled": True, "zero_stage": 1}})
    assert cfg.deepspeed and cfg.zero_stage == 1 and cfg.lora_r == 16
    assert "down_proj" in cfg.lora_target_modules


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


# Where a settings dataclass's default differs from config.yaml on purpose, the reason (none today): every other
# default must be config.yaml's, so code that builds a dataclass without a key behaves as the shipped config does.
DEFAULTS_THAT_DIFFER: dict[tuple[str, str], str] = {}


def test_the_settings_dataclasses_default_to_what_config_yaml_says():
    import dataclasses
    from pathlib import Path

    import yaml

    from pipeline import config as settings

    shipped = yaml.safe_load((Path(__file__).resolve().parent.parent / "config.yaml").read_text())
    from pipeline.interpbench.cases import InterpBenchBuildConfig
    from pipeline.interpbench.discovery import InterpBenchPatchingConfig
    from pipeline.tasks.circuits import CircuitsConfig
    from pipeline.tasks.features import settings as features

    sections = {"training": settings.TrainingConfig, "generation": settings.GenerationConfig,
                "explainer": settings.ExplainerConfig, "scoring": settings.ScoringConfig,
                "facts": settings.FactsConfig, "act_patch": settings.ActPatchConfig,
                "input_ablation": settings.InputAblationConfig, "circuits": CircuitsConfig,
                "interpbench.build": InterpBenchBuildConfig, "interpbench.patching": InterpBenchPatchingConfig,
                "features": features.FeaturesConfig, "features.corpus": features.CorpusConfig,
                "features.sae": features.SaeConfig, "features.exemplars": features.ExemplarsConfig,
                "features.descriptions": features.DescriptionsConfig, "features.judge": features.JudgeConfig,
                "features.simulator": features.SimulatorConfig, "features.ood": features.OodConfig,
                "features.simulator.training": features.SimulatorTrainingConfig}
    differ = []
    for section, cls in sections.items():
        values = shipped
        for key in section.split("."):
            values = values[key]
        from_yaml, default = cls.from_dict(values), cls()
        for field in dataclasses.fields(cls):
            if getattr(from_yaml, field.name) != getattr(default, field.name) and (
                    (section, field.name) not in DEFAULTS_THAT_DIFFER):
                differ.append(f"{section}.{field.name}: config.yaml {getattr(from_yaml, field.name)!r}, "
                              f"{cls.__name__} default {getattr(default, field.name)!r}")
    assert differ == []


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
