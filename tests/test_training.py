"""Explainer training on the tiny model: it learns, saves a peft folder, resumes, and runs under DeepSpeed."""

import json
import os

import pytest
import torch

from pipeline.explainer import training
from pipeline.explainer.training import LAUNCHER_KEYS
from pipeline.settings import ExplainerConfig, TrainingConfig
from pipeline.explainer.model import collate, encode_example, load_explainer
from pipeline.explainer.generation import generate_answers
from pipeline.models import load_model


def toy_examples(n=16, width=64, seed=0, same_question=False):
    """The answer is decided by the vector's sign: only a model that reads the vector can get it right."""
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(n, width, generator=generator)
    signs = torch.randint(0, 2, (n,), generator=generator) if same_question else torch.arange(n) % 2
    vectors[:, 0] = torch.where(signs == 0, 5.0, -5.0)
    questions = ["What does <vector> say?" if same_question else f"What does <vector> say about item {i}?"
                 for i in range(n)]
    answers = ["The output would remain unchanged from <<<yes>>>." if s == 0 else
               "The most likely output would change to <<<no>>>." for s in signs.tolist()]
    return questions, answers, vectors


def cfg(deepspeed: bool = False, zero_stage: int = 2, **overrides):
    base = dict(method="lora", lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ("q_proj", "v_proj")},
                learning_rate=3e-3, projection_learning_rate=3e-3, warmup_steps=0, epochs=6, batch_size=4,
                max_examples=None, max_length=128, seed=0, checkpoint_every=3, precision="fp32",
                deepspeed={"enabled": deepspeed, "zero_stage": zero_stage})
    return TrainingConfig(**(base | overrides))


@torch.no_grad()
def answer_loss(explainer, tokenizer, examples) -> float:
    questions, answers, vectors = examples
    batch = collate([encode_example(tokenizer, q, a, "plain", explainer.placeholder_id)
                     for q, a in zip(questions, answers)], vectors, tokenizer.pad_token_id, "cpu")
    return explainer(**batch).loss.item()


def run(tmp_path, tiny_dir, name, config, examples):
    questions, answers, vectors = examples
    return training.train_explainer(config, ExplainerConfig(), tiny_dir, 64, questions, answers, vectors,
                                    tmp_path / name, tmp_path / f"{name}.ckpt", {"c": config.__dict__})


@pytest.mark.slow
def test_full_fine_tuning_learns_the_answers(tmp_path, tiny_dir):
    log = run(tmp_path, tiny_dir, "full", cfg(method="full", learning_rate=1e-2), toy_examples())
    losses = [entry["loss"] for entry in log["losses"]]
    assert log["steps"] == 24 and losses[-1] < losses[0] / 3
    assert {"model.safetensors", "projection.safetensors", "explainer.json"} <= {p.name for p in (tmp_path / "full").iterdir()}
    # the reloaded folder holds the trained weights: its loss is the trained loss, far below the base model's
    trained = answer_loss(*load_explainer(tmp_path / "full", tiny_dir, 64), toy_examples())
    base = answer_loss(*load_explainer(None, tiny_dir, 64), toy_examples())
    assert trained < base / 3 and trained == pytest.approx(losses[-1], rel=0.5)


def test_loras_dropout_on_cpu_draws_its_masks_from_random_words(tiny_dir):
    """WordMaskDropout drops elements at the rate asked (rounded to 1/32768), independently, scales the kept ones as
    torch's dropout does, repeats under a seed, passes through in eval; with_lora puts it in every adapted projection."""
    from pipeline.explainer.training import WordMaskDropout, with_lora

    drop = WordMaskDropout(0.1).train()
    torch.manual_seed(0)
    out = drop(torch.ones(1000, 997))  # an odd count: the last word is cut
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.002
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.9))
    # Each of a word's four fields decides its own element: their rates agree and neighbours are independent.
    fields = kept.view(-1)[:996_000].view(-1, 4).float()
    assert (fields.mean(0) - 0.9).abs().max() < 0.004
    assert abs((fields[:, 0] * fields[:, 1]).mean().item() - 0.81) < 0.004
    torch.manual_seed(0)
    assert torch.equal(drop(torch.ones(1000, 997)), out)
    assert torch.equal(drop.eval()(out), out)
    assert drop.train()(torch.ones(3, 3, dtype=torch.bfloat16)).dtype == torch.bfloat16
    model = with_lora(load_model(tiny_dir, trainable=True)[0], TrainingConfig().replaced(lora__dropout=0.05))
    dropouts = [m.lora_dropout["default"] for m in model.modules() if hasattr(m, "lora_dropout")]
    assert dropouts and all(isinstance(d, WordMaskDropout) and d.p == 0.05 for d in dropouts)


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
    events = list((folder / "tensorboard").glob("events.out.tfevents.*"))  # TensorBoard's logs beside the JSON log
    assert events and events[0].stat().st_size > 0
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


def killed_after_first_checkpoint(train, monkeypatch):
    """Run `train()` until its first checkpoint is on disk, then die as a killed job would."""
    def die(folder):
        raise KeyboardInterrupt(f"killed after writing {folder}")

    with monkeypatch.context() as patch:
        patch.setattr(training, "checkpoint_written", die)
        with pytest.raises(KeyboardInterrupt):
            train()


def interrupted_run(tmp_path, tiny_dir, name, config, examples, monkeypatch):
    killed_after_first_checkpoint(lambda: run(tmp_path, tiny_dir, name, config, examples), monkeypatch)


@pytest.mark.slow
def test_interrupted_training_resumes_from_its_checkpoint(tmp_path, tiny_dir, monkeypatch):
    examples = toy_examples()
    reference = run(tmp_path, tiny_dir, "straight", cfg(), examples)
    interrupted_run(tmp_path, tiny_dir, "resumed", cfg(), examples, monkeypatch)
    assert not (tmp_path / "resumed").exists() and (tmp_path / "resumed.ckpt").exists()
    resumed = run(tmp_path, tiny_dir, "resumed", cfg(), examples)
    assert resumed["resumed_from_step"] == 3
    straight = [e["loss"] for e in reference["losses"]]
    assert [e["loss"] for e in resumed["losses"]] == pytest.approx(straight, rel=1e-4, abs=1e-5)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_at_the_step_in_flight_and_the_rerun_resumes_there(tmp_path, tiny_dir, monkeypatch):
    """SIGTERM (a SLURM time limit) arrives after step 3's checkpoint: training saves another at the next step (4, not
    a multiple of checkpoint_every), stops without writing the explainer, and the rerun resumes at step 4 with the
    losses of a run never stopped."""
    import signal

    examples = toy_examples()
    config = cfg(checkpoint_every=3)
    reference = run(tmp_path, tiny_dir, "straight", config, examples)
    sent = []

    def time_limit(folder):  # once, as SLURM does
        if not sent:
            sent.append(folder)
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(training, "checkpoint_written", time_limit)
        with pytest.raises(training.TrainingStopped, match="stopped by SIGTERM at step 4 of 24"):
            run(tmp_path, tiny_dir, "stopped", config, examples)
    assert not (tmp_path / "stopped").exists()
    assert sorted(p.name for p in (tmp_path / "stopped.ckpt").glob("checkpoint-*")) == ["checkpoint-4"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the training
    resumed = run(tmp_path, tiny_dir, "stopped", config, examples)
    assert resumed["resumed_from_step"] == 4
    assert [e["loss"] for e in resumed["losses"]] == pytest.approx([e["loss"] for e in reference["losses"]],
                                                                   rel=1e-4, abs=1e-5)


def test_a_second_training_of_a_live_run_is_refused_naming_who_trains(tmp_path, tiny_dir):
    """`snakemake --unlock` while a run still trains lets a second run start the same job: it is refused, naming the
    process that holds the run, instead of resuming from that run's half-written checkpoint."""
    import socket

    with training._only_trainer(tmp_path / "m.ckpt"):
        with pytest.raises(training.RunInProgress, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            run(tmp_path, tiny_dir, "m", cfg(epochs=1), toy_examples(4))
    assert not (tmp_path / "m").exists()
    assert run(tmp_path, tiny_dir, "m", cfg(epochs=1), toy_examples(4))["steps"] == 1  # once it is gone


def test_checkpoint_of_other_settings_is_ignored(tmp_path, tiny_dir, monkeypatch):
    examples = toy_examples(8)
    interrupted_run(tmp_path, tiny_dir, "m", cfg(epochs=2, checkpoint_every=1), examples, monkeypatch)
    log = run(tmp_path, tiny_dir, "m", cfg(epochs=2, checkpoint_every=1, learning_rate=1e-3), examples)
    assert log["resumed_from_step"] == 0


def test_deepspeed_zero_on_cpu_matches_plain_training(tmp_path, tiny_dir, monkeypatch):
    pytest.importorskip("deepspeed")
    import torch.distributed as dist

    for key in LAUNCHER_KEYS:  # as in a process no launcher started
        monkeypatch.delenv(key, raising=False)
    examples = toy_examples(8)
    plain = run(tmp_path, tiny_dir, "plain", cfg(epochs=2, checkpoint_every=100), examples)
    speed = run(tmp_path, tiny_dir, "ds", cfg(epochs=2, checkpoint_every=100, deepspeed=True, zero_stage=2), examples)
    assert (tmp_path / "ds" / "adapter_model.safetensors").exists()
    assert [e["loss"] for e in speed["losses"]] == pytest.approx([e["loss"] for e in plain["losses"]], rel=1e-3)
    meta = json.loads((tmp_path / "ds" / "explainer.json").read_text())
    assert meta["method"] == "lora"
    # The launcher variables of the one-process group DeepSpeed needed are gone: a workflow this process starts
    # next (as the test suite does) must not inherit the MASTER_PORT this process's group still listens on.
    assert dist.is_initialized() and not [key for key in LAUNCHER_KEYS if key in os.environ]


def _train_kwargs(tmp_path, tiny_dir, name, config, examples):
    questions, answers, vectors = examples
    return dict(cfg=config, explainer_cfg=ExplainerConfig(), base_model_dir=tiny_dir, target_width=64,
                questions=questions, answers=answers, vectors=vectors, out_dir=tmp_path / name,
                checkpoint_dir=tmp_path / f"{name}.ckpt", settings={"c": config.__dict__})


@pytest.mark.slow
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
    launch.run("pipeline.explainer.training.train_explainer", _train_kwargs(tmp_path, tiny_dir, "two", config, examples),
               processes=2, threads=2, timeout=600)
    double = json.loads((tmp_path / "two" / "training_log.json").read_text())
    assert double["processes"] == 2 and single["processes"] == 1
    assert [e["loss"] for e in double["losses"]] == pytest.approx([e["loss"] for e in single["losses"]], rel=2e-3)
    one, two = (load_file(str(tmp_path / n / "adapter_model.safetensors")) for n in ("one", "two"))
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-2, atol=1e-4), name
    assert not (tmp_path / "two.ckpt").exists()


@pytest.mark.slow
def test_batch_that_does_not_split_evenly_is_refused(tmp_path, tiny_dir):
    from pipeline import launch

    with pytest.raises(RuntimeError, match="torchrun processes running pipeline.explainer.training.train_explainer failed"):
        launch.run("pipeline.explainer.training.train_explainer",
                   _train_kwargs(tmp_path, tiny_dir, "odd", cfg(batch_size=3, epochs=1), toy_examples(6)),
                   processes=2, threads=2, timeout=300)
    assert not (tmp_path / "odd").exists()


@pytest.mark.slow
def test_vector_alone_decides_the_answer_and_training_learns_to_read_it(tmp_path, tiny_dir):
    """Every question has the same text; only the vector says which answer is right. After training, the loss
    with each example's own vector falls well below the loss with the vectors shuffled among examples."""
    train_set = toy_examples(48, same_question=True)
    run(tmp_path, tiny_dir, "reads", cfg(method="full", epochs=12, batch_size=8, learning_rate=1e-2,
                                         projection_learning_rate=1e-2, checkpoint_every=1000), train_set)
    explainer, tokenizer = load_explainer(tmp_path / "reads", tiny_dir, 64)
    held_out = toy_examples(32, seed=1, same_question=True)
    questions, answers, vectors = held_out
    shuffled = vectors[torch.randperm(len(vectors), generator=torch.Generator().manual_seed(0))]
    true_loss = answer_loss(explainer, tokenizer, held_out)
    shuffled_loss = answer_loss(explainer, tokenizer, (questions, answers, shuffled))
    assert true_loss < 0.8 * shuffled_loss, (true_loss, shuffled_loss)


@pytest.mark.slow
def test_two_process_gradients_equal_one_process_gradients_with_unequal_token_counts(tmp_path, tiny_dir):
    """Rank 0 gets short answers, rank 1 long ones: the loss is normalised by the global token count, so the
    first step's gradients summed over processes are those of one process on the whole batch."""
    from pipeline import launch

    questions, _, vectors = toy_examples(8)
    answers = ["The output would remain unchanged from <<<a>>>." if i % 2 == 0 else
               "The most likely output would change to <<<" + "many more answer tokens here " * 4 + ">>>."
               for i in range(8)]  # each global batch of 4 splits [rank::2]: rank 0 short, rank 1 long
    examples = (questions, answers, vectors)
    config = cfg(epochs=1, checkpoint_every=100, max_examples=None)
    kwargs = _train_kwargs(tmp_path, tiny_dir, "one", config, examples) | {"first_step_gradients": tmp_path / "g1.pt"}
    training.train_explainer(**kwargs)
    kwargs = _train_kwargs(tmp_path, tiny_dir, "two", config, examples) | {"first_step_gradients": tmp_path / "g2.pt"}
    launch.run("pipeline.explainer.training.train_explainer", kwargs, processes=2, threads=2, timeout=600)
    one, two = torch.load(tmp_path / "g1.pt"), torch.load(tmp_path / "g2.pt")
    assert one.keys() == two.keys() and any(g.abs().max() > 0 for g in one.values())
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-3, atol=1e-7), name


def test_checkpoint_missing_trainable_weights_is_refused(tmp_path, tiny_dir, monkeypatch):
    from pipeline.artifacts import ArtifactError

    examples = toy_examples(8)
    interrupted_run(tmp_path, tiny_dir, "m", cfg(epochs=2, checkpoint_every=1), examples, monkeypatch)
    from safetensors.torch import load_file, save_file

    state_path = tmp_path / "m.ckpt" / "checkpoint-1" / training.TRAINABLE_FILE
    state = load_file(str(state_path))
    state.pop(next(iter(state)))
    save_file(state, str(state_path))
    with pytest.raises(ArtifactError, match="checkpoint does not fit this explainer: missing"):
        run(tmp_path, tiny_dir, "m", cfg(epochs=2, checkpoint_every=1), examples)


def test_changed_label_table_invalidates_the_checkpoint(tmp_path, tiny_dir, monkeypatch):
    """Kill training, rebuild the labels with another window, rerun: it starts over instead of resuming."""
    from pipeline.explainer import explain
    from pipeline.tasks.act_patch.labels import build_labels
    from pipeline.settings import FactsConfig
    from pipeline.tasks.act_patch.settings import ActPatchConfig, PromptConfig
    from pipeline.tasks.facts import build_facts

    build_facts(FactsConfig(relations=("capital",), keep_only_correct=False, max_facts_per_relation=30),
                PromptConfig(), tiny_dir, tmp_path / "facts.parquet")

    def labels(window):
        config = ActPatchConfig(patch={"window_size": window, "window_stride": 2}, pairs={"train": 3, "test": 1},
                                batch_size=16)
        build_labels(config, tmp_path / "facts.parquet", tiny_dir, "train", tmp_path / "l.parquet",
                               tmp_path / "v.safetensors", {"window": window}, keep_only_correct=False)

    def train():

        training_cfg = cfg(epochs=2, checkpoint_every=1, max_examples=8)
        run = explain.Run("act_patch", str(tiny_dir), str(tiny_dir),
                          {"training": training_cfg.model_dump(), "explainer": ExplainerConfig().model_dump()},
                          {"training": "same settings"},
                          {"labels": str(tmp_path / "l.parquet"), "vectors": str(tmp_path / "v.safetensors")})
        assert run.config("training") == training_cfg and run.config("explainer") == ExplainerConfig()
        return explain.train(run, tmp_path / "out", tmp_path / "ckpt")

    labels(2)
    killed_after_first_checkpoint(train, monkeypatch)
    assert (tmp_path / "ckpt" / "checkpoint-1" / training.TRAINABLE_FILE).exists()
    labels(1)  # the same training settings, other labels
    assert train()["resumed_from_step"] == 0


@pytest.mark.slow
def test_layer_injection_trains_to_read_the_vector_and_reloads_as_such(tmp_path, tiny_dir):
    """The same task with the vector written at layer 1's output: training learns to read it there, and the saved
    explainer reloads with its injection (whatever the caller asks)."""
    questions, answers, vectors = toy_examples(48, same_question=True)
    # Read at layer 1 of 4 the vector takes longer to learn than at the embedding (8 epochs do not suffice there).
    config = cfg(method="full", epochs=20, batch_size=8, learning_rate=1e-2, checkpoint_every=1000)
    training.train_explainer(config, ExplainerConfig(inject="layer"), tiny_dir, 64, questions, answers, vectors,
                             tmp_path / "layer", tmp_path / "layer.ckpt", {"c": "layer"}, vector_layers=[1] * 48)
    explainer, tokenizer = load_explainer(tmp_path / "layer", tiny_dir, 64)
    assert explainer.inject == "layer" and explainer.projection is None
    held_q, held_a, held_v = toy_examples(32, seed=1, same_question=True)
    shuffled = held_v[torch.randperm(len(held_v), generator=torch.Generator().manual_seed(0))]

    @torch.no_grad()
    def loss(vectors):
        batch = collate([encode_example(tokenizer, q, a, "plain", explainer.placeholder_id)
                         for q, a in zip(held_q, held_a)], vectors, tokenizer.pad_token_id, "cpu", [1] * 32)
        return explainer(**batch).loss.item()

    assert loss(held_v) < 0.8 * loss(shuffled), (loss(held_v), loss(shuffled))


@pytest.mark.parametrize("model", ["tiny_dir", "tiny_gemma_dir"])
def test_loss_from_answer_positions_alone_equals_the_full_loss_and_its_gradient(model, request):
    """Training runs the output layer only at the (row, position) pairs that predict an answer token (Gemma's is 262k
    wide); the loss and its gradient must be those of the full logits, with answers of different lengths in one
    left-padded batch (so no position is an answer position in every row) and Gemma's soft-capping included."""
    model_dir = request.getfixturevalue(model)
    explainer, tokenizer = load_explainer(None, model_dir, 64)
    questions, answers, vectors = toy_examples(n=3)
    answers[1] = "A much longer answer, so that the rows' answer positions differ. " * 2
    batch = collate([encode_example(tokenizer, q, a, "plain", explainer.placeholder_id)
                     for q, a in zip(questions, answers)], vectors, tokenizer.pad_token_id, "cpu")
    labels = batch.pop("labels")
    positions = training.answer_positions(labels)
    answer_tokens = int((labels != -100).sum())
    assert positions.sum() == answer_tokens  # one output row per answer token: no prompt or padding position
    assert positions.any(dim=0).sum() * len(labels) > answer_tokens  # fewer than every row at every such position
    weights = torch.rand(labels.shape, generator=torch.Generator().manual_seed(0)) + 0.5
    results = []
    for keep in (None, positions):
        explainer.zero_grad()
        out = explainer(**batch, **({} if keep is None else {"logits_to_keep": keep}))
        loss, count = training.answer_loss_sum(out.logits, labels, keep)
        weighted, _ = training.answer_loss_sum(out.logits, labels, keep, weights)  # loss_weights meet the same tokens
        loss.backward()
        grads = [p.grad.clone() for p in explainer.parameters() if p.grad is not None]
        results.append((loss.detach(), count, out.logits.shape[1], grads, weighted.detach()))
    (full, n_full, width_full, g_full, w_full), (kept, n_kept, width_kept, g_kept, w_kept) = results
    assert n_full == n_kept == answer_tokens and width_kept == answer_tokens
    assert torch.allclose(full, kept, rtol=1e-5) and torch.allclose(w_full, w_kept, rtol=1e-5)
    assert not torch.allclose(w_full, full, rtol=1e-3)
    assert g_full and all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g_full, g_kept))


def test_deepspeed_zero3_full_fine_tuning_matches_plain_and_saves_gathered_weights(tmp_path, tiny_dir):
    """ZeRO-3 partitions the weights: what is saved must be the whole trained model, equal to plain training's."""
    pytest.importorskip("deepspeed")
    from safetensors.torch import load_file
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    examples = toy_examples(8)
    config = cfg(method="full", learning_rate=1e-3, epochs=2, checkpoint_every=100)
    plain = run(tmp_path, tiny_dir, "plain", config, examples)
    zero3 = run(tmp_path, tiny_dir, "zero3", cfg(method="full", learning_rate=1e-3, epochs=2, checkpoint_every=100,
                                                deepspeed=True, zero_stage=3), examples)
    assert [e["loss"] for e in zero3["losses"]] == pytest.approx([e["loss"] for e in plain["losses"]], rel=1e-3)
    assert not is_deepspeed_zero3_enabled()  # a later load in this process is whole again, not partitioned
    one, three = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("plain", "zero3"))
    assert one.keys() == three.keys() and all(t.numel() > 0 for t in three.values())
    base = load_file(str(next(tiny_dir.glob("**/model.safetensors"))))
    moved = [n for n in one if n in base and not torch.equal(one[n], base[n])]
    assert moved  # training changed the weights, and ZeRO-3 saved the same changes
    for name in one:
        assert torch.allclose(one[name], three[name], rtol=1e-3, atol=1e-5), name
    assert torch.allclose(load_file(str(tmp_path / "plain" / "projection.safetensors"))["weight"],
                          load_file(str(tmp_path / "zero3" / "projection.safetensors"))["weight"], atol=1e-5)


def test_deepspeed_bf16_trains_on_cpu(tmp_path, tiny_dir):
    """The paper config's DeepSpeed precision: bf16 losses track fp32 ones and fall."""
    pytest.importorskip("deepspeed")
    examples = toy_examples(8)
    fp32 = run(tmp_path, tiny_dir, "fp32", cfg(epochs=3, checkpoint_every=100), examples)
    bf16 = run(tmp_path, tiny_dir, "bf16", cfg(epochs=3, checkpoint_every=100, deepspeed=True, zero_stage=2,
                                               precision="bf16"), examples)
    low = [e["loss"] for e in bf16["losses"]]
    assert all(map(torch.isfinite, map(torch.tensor, low))) and low[-1] < low[0]
    assert low == pytest.approx([e["loss"] for e in fp32["losses"]], rel=5e-2)
    assert (tmp_path / "bf16" / "adapter_model.safetensors").exists()


def test_gradient_accumulation_equals_the_larger_batch(tmp_path, tiny_dir):
    """Two micro-batches of 2 accumulate into the step one batch of 4 takes: same first-step gradients."""
    examples = toy_examples(8)
    big = _train_kwargs(tmp_path, tiny_dir, "big", cfg(epochs=1, checkpoint_every=100), examples)
    small = _train_kwargs(tmp_path, tiny_dir, "small", cfg(epochs=1, checkpoint_every=100, batch_size=2, grad_accum=2),
                          examples)
    training.train_explainer(**big, first_step_gradients=tmp_path / "big.pt")
    log = training.train_explainer(**small, first_step_gradients=tmp_path / "small.pt")
    assert log["steps"] == 2  # 8 examples, 4 per step
    one, two = torch.load(tmp_path / "big.pt"), torch.load(tmp_path / "small.pt")
    assert any(g.abs().max() > 0 for g in one.values())
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-4, atol=1e-7), name


def test_length_grouped_batches_and_gradient_checkpointing_train(tmp_path, tiny_dir):
    questions, answers, vectors = toy_examples(16)
    questions = [q + " Tell me more." * (i % 4) for i, q in enumerate(questions)]  # lengths to group by
    log = run(tmp_path, tiny_dir, "grouped", cfg(epochs=3, group_by_length=True, gradient_checkpointing=True),
              (questions, answers, vectors))
    losses = [e["loss"] for e in log["losses"]]
    assert losses[-1] < losses[0] and (tmp_path / "grouped" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_fsdp_across_two_processes_matches_one_process(tmp_path, tiny_dir):
    """The Trainer's FSDP (full_shard), two gloo processes on CPU: the losses and the saved full fine-tuned weights
    are one process's plain training's."""
    from safetensors.torch import load_file

    from pipeline import launch

    examples = toy_examples(8)
    settings = dict(method="full", learning_rate=1e-3, epochs=2, checkpoint_every=100)
    plain = run(tmp_path, tiny_dir, "plain", cfg(**settings), examples)
    launch.run("pipeline.explainer.training.train_explainer",
               _train_kwargs(tmp_path, tiny_dir, "fsdp", cfg(**settings, fsdp="full_shard"), examples),
               processes=2, threads=2, timeout=600)
    sharded = json.loads((tmp_path / "fsdp" / "training_log.json").read_text())
    assert sharded["processes"] == 2
    assert [e["loss"] for e in sharded["losses"]] == pytest.approx([e["loss"] for e in plain["losses"]], rel=1e-3)
    one, two = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("plain", "fsdp"))
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-3, atol=1e-5), name


def test_a_checkpoint_cut_off_mid_write_is_ignored_not_stuck(tmp_path, capfd):
    """A crash while the Trainer writes checkpoint-N in place leaves it without trainer_state.json: a rerun resumes
    from the newest complete checkpoint (or starts over) instead of failing on the missing file every time, and says
    so on the console as well as in the job's log."""
    from pipeline.explainer.training import TRAINABLE_FILE, _checkpoint_to_resume
    from pipeline.runtime import stage

    for step, files in ((10, [TRAINABLE_FILE, "trainer_state.json"]), (20, [TRAINABLE_FILE])):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        for name in files:
            (folder / name).write_text("x")
    (tmp_path / "run_key.json").write_text(json.dumps({"run_hash": "abc"}))
    with stage(str(tmp_path / "job.log")):  # as a job runs: its output goes to its log
        assert _checkpoint_to_resume(tmp_path, "abc") == str(tmp_path / "checkpoint-10")
    assert not (tmp_path / "checkpoint-20").exists()
    assert "incomplete (no trainer_state.json)" in (tmp_path / "job.log").read_text()
    assert "WARNING: ignoring checkpoint" in capfd.readouterr().err  # the console that started the job
    (tmp_path / "checkpoint-10" / "trainer_state.json").unlink()
    assert _checkpoint_to_resume(tmp_path, "abc") is None


@pytest.mark.parametrize("setting", ["identity", "fitted", "raw", "layer", "full", "released"])
def test_bf16_trains_and_generates_with_every_explainer_setting(tmp_path, tiny_dir, setting):
    """precision bf16 with each explainer setting: LoRA keeps its adapter and projections fp32 over bf16 frozen
    weights (full fine-tuning fp32 master weights), two steps train to finite losses, and the explainer answers in
    bf16; a released explainer (the paper's layout) answers in bf16 too."""
    from safetensors.torch import load_file

    from pipeline.artifacts import provenance, write_tensors
    from pipeline.models import load_model

    questions, answers, vectors = toy_examples(8)
    layers = [i % 2 * 2 for i in range(8)]  # vectors from layers 0 and 2
    explainer_cfg, alignment = ExplainerConfig(), None
    if setting == "fitted":
        generator = torch.Generator().manual_seed(1)
        alignment = tmp_path / "alignment.safetensors"
        write_tensors({f"layers.{layer}.{kind}": torch.randn(*shape, generator=generator) * 0.1 for layer in (0, 2)
                       for kind, shape in (("weight", (64, 64)), ("mean", (64,)))}, alignment, provenance({}))
        explainer_cfg = explainer_cfg.replaced(alignment="fitted")
    elif setting == "raw":
        explainer_cfg = explainer_cfg.replaced(scale="raw")
    elif setting == "layer":
        explainer_cfg = explainer_cfg.replaced(inject="layer", projection="none")
    folder = tmp_path / "explainer"
    if setting == "released":
        from test_released import TOKENS, released

        released(load_model(tiny_dir), folder)
        dtype_seen = None
    else:
        config = cfg(epochs=1, precision="bf16", method="full" if setting == "full" else "lora")
        log = training.train_explainer(config, explainer_cfg, tiny_dir, 64, questions, answers, vectors, folder,
                                       tmp_path / "ckpt", {"setting": setting}, vector_layers=layers,
                                       alignment=alignment)
        assert log["precision"] == "bf16" and log["steps"] == 2
        assert all(torch.isfinite(torch.tensor(e["loss"])) for e in log["losses"])
        saved = {name: tensor for path in folder.glob("*.safetensors") for name, tensor in load_file(str(path)).items()}
        assert saved and all(t.dtype == torch.float32 for n, t in saved.items() if "lora" in n or "layers." in n)
        dtype_seen = {t.dtype for n, t in saved.items() if "lora" not in n and "layers." not in n and n != "weight"}
        assert dtype_seen <= {torch.float32}  # full fine-tuning: fp32 master weights; LoRA saves no frozen weight
    explainer, tokenizer = load_explainer(folder, tiny_dir, 64, projection=explainer_cfg.projection,
                                          inject=explainer_cfg.inject, scale=explainer_cfg.scale, dtype=torch.bfloat16,
                                          continuous_tokens=TOKENS if setting == "released" else None)
    assert explainer.lm.get_input_embeddings().weight.dtype == torch.bfloat16
    predictions = generate_answers(explainer, tokenizer, questions[:4], vectors[:4],
                                   "paper" if setting == "released" else "plain", 6, 4, vector_layers=layers[:4])
    assert len(predictions) == 4 and all(isinstance(p, str) for p in predictions)


@pytest.mark.parametrize("method", ["map", "affine"])
def test_the_frozen_explainer_baselines_train_only_the_vectors_map(tmp_path, tiny_dir, method):
    """map: the language model frozen, the fitted per-layer maps trained; affine: the maps frozen too, only a scale and
    a shift (d + 1 parameters) trained. Their folders hold no model weights, and the loaded explainer gives the
    placeholder what the trained one did."""
    from safetensors.torch import load_file

    from pipeline.artifacts import provenance, write_tensors
    from pipeline.explainer.model import collate, encode_example

    questions, answers, vectors = toy_examples(8)
    layers = [i % 2 * 2 for i in range(8)]
    generator = torch.Generator().manual_seed(1)
    alignment = tmp_path / "alignment.safetensors"
    write_tensors({f"layers.{layer}.{kind}": torch.randn(*shape, generator=generator) * 0.1 for layer in (0, 2)
                   for kind, shape in (("weight", (64, 64)), ("mean", (64,)))}, alignment, provenance({}))
    explainer_cfg = ExplainerConfig(alignment="fitted")
    first = {name: load_file(str(alignment))[f"layers.{name}.weight"] for name in (0, 2)}
    log = training.train_explainer(cfg(epochs=2, method=method, learning_rate=1e-2, projection_learning_rate=1e-2),
                                   explainer_cfg, tiny_dir, 64, questions, answers, vectors, tmp_path / "m",
                                   tmp_path / "ckpt", {"method": method}, vector_layers=layers, alignment=alignment)
    assert log["steps"] == 4
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert "model.safetensors" not in files and "adapter_model.safetensors" not in files
    saved = load_file(str(tmp_path / "m" / "projection.safetensors"))
    moved = {layer: not torch.allclose(saved[f"layers.{layer}.weight"], first[layer]) for layer in (0, 2)}
    if method == "map":
        assert all(moved.values()) and "affine.scale" not in saved
    else:
        assert not any(moved.values()) and saved["affine.shift"].shape == (64,)
        assert float(saved["affine.scale"]) != 1.0 and saved["affine.shift"].abs().sum() > 0
    explainer, tokenizer = load_explainer(tmp_path / "m", tiny_dir, 64)
    base, _ = load_explainer(None, tiny_dir, 64, alignment=alignment)
    batch = collate([encode_example(tokenizer, questions[0], None, "plain", explainer.placeholder_id)], vectors[:1],
                    tokenizer.pad_token_id, "cpu", layers[:1])
    for name, parameter in explainer.lm.named_parameters():  # the model is the base model
        assert torch.equal(parameter, dict(base.lm.named_parameters())[name]), name
    assert not torch.allclose(explainer.embed(batch["input_ids"], batch["vectors"], batch["vector_layers"]),
                              base.embed(batch["input_ids"], batch["vectors"], batch["vector_layers"]))
