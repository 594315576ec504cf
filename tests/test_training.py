"""Explainer training on the tiny model: it learns, saves a peft folder, resumes, and runs under DeepSpeed."""

import json

import pytest
import torch

from pipeline import training
from pipeline.config import ExplainerConfig, TrainingConfig
from pipeline.explainer import collate, encode_example, load_explainer
from pipeline.generation import generate_answers
from pipeline.models import load_model


def toy_examples(n=16, width=64):
    """The answer is decided by the vector's sign: only a model that reads the vector can get it right."""
    torch.manual_seed(0)
    vectors = torch.randn(n, width)
    vectors[:, 0] = torch.where(torch.arange(n) % 2 == 0, 5.0, -5.0)
    questions = [f"What does <vector> say about item {i}?" for i in range(n)]
    answers = ["The output would remain unchanged from <<<yes>>>." if i % 2 == 0 else
               "The most likely output would change to <<<no>>>." for i in range(n)]
    return questions, answers, vectors


def cfg(**overrides):
    base = dict(method="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=("q_proj", "v_proj"),
                learning_rate=3e-3, projection_learning_rate=3e-3, warmup_steps=0, epochs=6, batch_size=4,
                max_examples=None, max_length=128, seed=0, checkpoint_every=3)
    return TrainingConfig(**(base | overrides))


@torch.no_grad()
def answer_loss(explainer, tokenizer, examples) -> float:
    questions, answers, vectors = examples
    batch = collate([encode_example(tokenizer, q, a, "plain") for q, a in zip(questions, answers)], vectors,
                    tokenizer.pad_token_id, "cpu")
    return explainer(**batch).loss.item()


def run(tmp_path, tiny_dir, name, config, examples):
    questions, answers, vectors = examples
    return training.train_explainer(config, ExplainerConfig(), tiny_dir, 64, questions, answers, vectors,
                                    tmp_path / name, tmp_path / f"{name}.ckpt", {"c": config.__dict__})


def test_full_fine_tuning_learns_the_answers(tmp_path, tiny_dir):
    log = run(tmp_path, tiny_dir, "full", cfg(method="full", learning_rate=1e-2), toy_examples())
    losses = [entry["loss"] for entry in log["losses"]]
    assert log["steps"] == 24 and losses[-1] < losses[0] / 3
    assert {"model.safetensors", "projection.safetensors", "explainer.json"} <= {p.name for p in (tmp_path / "full").iterdir()}
    # the reloaded folder holds the trained weights: its loss is the trained loss, far below the base model's
    trained = answer_loss(*load_explainer(tmp_path / "full", tiny_dir, 64), toy_examples())
    base = answer_loss(*load_explainer(None, tiny_dir, 64), toy_examples())
    assert trained < base / 3 and trained == pytest.approx(losses[-1], rel=0.5)


def test_lora_training_saves_a_peft_folder_that_reloads(tmp_path, tiny_dir):
    from peft import PeftModel
    from safetensors.torch import load_file

    examples = toy_examples()
    log = run(tmp_path, tiny_dir, "lora", cfg(), examples)
    losses = [entry["loss"] for entry in log["losses"]]
    assert losses[-1] < losses[0]
    folder = tmp_path / "lora"
    assert {"adapter_model.safetensors", "adapter_config.json", "projection.safetensors", "explainer.json",
            "training_log.json"} <= {p.name for p in folder.iterdir()}
    assert not (tmp_path / "lora.ckpt").exists()  # the checkpoint goes once training is done
    adapter = load_file(str(folder / "adapter_model.safetensors"))
    assert any("lora_B" in name and tensor.abs().max() > 0 for name, tensor in adapter.items())  # B starts at zero
    base, _ = load_model(tiny_dir)
    assert isinstance(PeftModel.from_pretrained(base, str(folder)), PeftModel)  # plain peft can load it
    explainer, tokenizer = load_explainer(folder, tiny_dir, 64)
    projection = load_file(str(folder / "projection.safetensors"))["weight"]
    assert torch.equal(explainer.projection.weight, projection) and not torch.equal(projection, torch.eye(64))
    questions, answers, vectors = examples
    predictions = generate_answers(explainer, tokenizer, questions[:4], vectors[:4], "plain", 8, 4)
    assert len(predictions) == 4 and all(isinstance(p, str) for p in predictions)


def interrupted_run(tmp_path, tiny_dir, name, config, examples, monkeypatch):
    """Train until the first checkpoint is written, then die as a killed job would."""
    save = training._save_checkpoint

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt("killed after the first checkpoint")

    with monkeypatch.context() as patch:
        patch.setattr(training, "_save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, tiny_dir, name, config, examples)


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path, tiny_dir, monkeypatch):
    examples = toy_examples()
    reference = run(tmp_path, tiny_dir, "straight", cfg(), examples)
    interrupted_run(tmp_path, tiny_dir, "resumed", cfg(), examples, monkeypatch)
    assert not (tmp_path / "resumed").exists() and (tmp_path / "resumed.ckpt").exists()
    resumed = run(tmp_path, tiny_dir, "resumed", cfg(), examples)
    assert resumed["resumed_from_step"] == 3
    straight = [e["loss"] for e in reference["losses"]]
    assert [e["loss"] for e in resumed["losses"]] == pytest.approx(straight, rel=1e-4, abs=1e-5)


def test_checkpoint_of_other_settings_is_ignored(tmp_path, tiny_dir, monkeypatch):
    examples = toy_examples(8)
    interrupted_run(tmp_path, tiny_dir, "m", cfg(epochs=2, checkpoint_every=1), examples, monkeypatch)
    log = run(tmp_path, tiny_dir, "m", cfg(epochs=2, checkpoint_every=1, learning_rate=1e-3), examples)
    assert log["resumed_from_step"] == 0


def test_deepspeed_zero_on_cpu_matches_plain_training(tmp_path, tiny_dir):
    pytest.importorskip("deepspeed")
    examples = toy_examples(8)
    plain = run(tmp_path, tiny_dir, "plain", cfg(epochs=2, checkpoint_every=100), examples)
    speed = run(tmp_path, tiny_dir, "ds", cfg(epochs=2, checkpoint_every=100, deepspeed=True, zero_stage=2), examples)
    assert (tmp_path / "ds" / "adapter_model.safetensors").exists()
    assert [e["loss"] for e in speed["losses"]] == pytest.approx([e["loss"] for e in plain["losses"]], rel=1e-3)
    meta = json.loads((tmp_path / "ds" / "explainer.json").read_text())
    assert meta["method"] == "lora"


def _train_kwargs(tmp_path, tiny_dir, name, config, examples):
    questions, answers, vectors = examples
    return dict(cfg=config, explainer_cfg=ExplainerConfig(), base_model_dir=tiny_dir, target_width=64,
                questions=questions, answers=answers, vectors=vectors, out_dir=tmp_path / name,
                checkpoint_dir=tmp_path / f"{name}.ckpt", settings={"c": config.__dict__})


@pytest.mark.parametrize("deepspeed", [False, True], ids=["plain", "deepspeed-zero2"])
def test_two_processes_match_one_process(tmp_path, tiny_dir, deepspeed):
    """torchrun with two gloo processes, each taking half of every batch, trains as one process does."""
    from safetensors.torch import load_file

    from pipeline import launch

    if deepspeed:
        pytest.importorskip("deepspeed")
    examples = toy_examples(16)
    config = cfg(epochs=2, checkpoint_every=3, deepspeed=deepspeed)
    single = run(tmp_path, tiny_dir, "one", config, examples)
    launch.run("pipeline.training.train_explainer", _train_kwargs(tmp_path, tiny_dir, "two", config, examples),
               processes=2, threads=2, timeout=600)
    double = json.loads((tmp_path / "two" / "training_log.json").read_text())
    assert double["processes"] == 2 and single["processes"] == 1
    assert [e["loss"] for e in double["losses"]] == pytest.approx([e["loss"] for e in single["losses"]], rel=2e-3)
    one, two = (load_file(str(tmp_path / n / "adapter_model.safetensors")) for n in ("one", "two"))
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-2, atol=1e-4), name
    assert not (tmp_path / "two.ckpt").exists()


def test_batch_that_does_not_split_evenly_is_refused(tmp_path, tiny_dir):
    from pipeline import launch

    with pytest.raises(RuntimeError, match="torchrun processes running pipeline.training.train_explainer failed"):
        launch.run("pipeline.training.train_explainer",
                   _train_kwargs(tmp_path, tiny_dir, "odd", cfg(batch_size=3, epochs=1), toy_examples(6)),
                   processes=2, threads=2, timeout=300)
    assert not (tmp_path / "odd").exists()
