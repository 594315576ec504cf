"""The nnsight engine against a plain torch forward-hook implementation, and the act_patch label runs on it."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.models import decoder_layers
from pipeline.engine.patching import capture_states, pad_left, patched_next_tokens, wrap

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))  # bench_patching's reference loop


def hook_patch_logits(model, ids, mask, positions, layer_mask, values):
    """Reference: one forward with hooks that write each row's one vector at its position in each patched layer."""
    handles = []
    for layer, block in enumerate(decoder_layers(model)):
        def hook(module, inputs, output, layer=layer):
            hidden = output[0] if isinstance(output, tuple) else output
            for row in range(hidden.shape[0]):
                if layer_mask[row, layer]:
                    hidden[row, positions[row]] = values[row]
            return output
        handles.append(block.register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits[:, -1]
    finally:
        for handle in handles:
            handle.remove()


def test_batched_nnsight_patching_equals_forward_hooks(tiny):
    model, tokenizer = tiny
    num_layers = model.config.num_hidden_layers
    torch.manual_seed(0)
    sequences = [tokenizer(t)["input_ids"] for t in
                 ["The capital of Japan is", "People from Peru are called", "Kenya is a country in Africa and",
                  "The capital of Chile is the city of"]]
    ids, mask, shifts = pad_left(sequences, tokenizer.pad_token_id)  # unequal lengths: left padding in play
    positions = torch.tensor([shifts[0] + 2, shifts[1] + 3, shifts[2] + 0, shifts[3] + 5])
    layer_mask = torch.zeros(4, num_layers, dtype=torch.bool)
    layer_mask[0, 0:2] = True   # a window at the bottom
    layer_mask[1, 2:4] = True   # a window at the top
    layer_mask[2, 1] = True     # a single layer
    # row 3: no patch, the clean run
    values = torch.randn(4, model.config.hidden_size) * 3
    traced = wrap(model)
    engine = patched_next_tokens(traced, ids, mask, positions, layer_mask, values)
    reference = hook_patch_logits(model, ids, mask, positions, layer_mask, values)
    assert torch.equal(engine, reference.argmax(-1))
    with torch.no_grad():
        clean = model(input_ids=ids, attention_mask=mask).logits[:, -1]
    assert torch.equal(engine[3], clean[3].argmax(-1))
    # the patches really act: the patched rows' logits move away from the clean ones
    assert (reference[:3] - clean[:3]).abs().max() > 1e-3


def test_capture_states_matches_hidden_states(tiny):
    model, tokenizer = tiny
    ids, mask, shifts = pad_left([tokenizer("A B C D")["input_ids"], tokenizer("A B")["input_ids"]],
                                 tokenizer.pad_token_id)
    rows, positions = torch.tensor([0, 1, 1]), torch.tensor([1, shifts[1], ids.shape[1] - 1])
    layers = [2, 0, 1]  # any order: the result follows it
    states, next_ids = capture_states(wrap(model), layers, ids, mask, rows, positions)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert states.shape == (3, 3, model.config.hidden_size)
    for column, layer in enumerate(layers):  # hidden_states[k + 1] is layer k's output (below the last layer)
        assert torch.allclose(states[:, column], out.hidden_states[layer + 1][rows, positions], atol=1e-5)
    assert torch.equal(next_ids, out.logits[:, -1].argmax(-1))


def rendered_pairs(tokenizer, count=5):
    from pipeline.tasks.act_patch.settings import PromptConfig
    from pipeline.tasks.facts import render_prompt

    subjects = ["Japan", "South Korea", "Peru", "New Zealand", "Chile", "Kenya", "Mexico", "Finland", "Argentina",
                "Egypt", "Norway", "Thailand", "Portugal", "Ghana", "Vietnam", "Ireland", "Bolivia", "Iceland"]
    prompt = PromptConfig()
    return [tuple(render_prompt("The capital of {} is the city of", s, None, prompt, tokenizer, [])
                  for s in (subjects[i], subjects[-1 - i])) for i in range(count)]


def test_final_layer_patch_of_the_last_token_gives_the_counterfactual_answer(tiny):
    """Writing the counterfactual's last-layer state at the last token leaves nothing to compute but the head."""
    from pipeline.tasks.act_patch.labels import run_patches

    model, tokenizer = tiny
    last = model.config.num_hidden_layers - 1
    run = run_patches(model, tokenizer, rendered_pairs(tokenizer), [[last], [0, 1]], ["last_token"], batch_size=16)
    assert np.array_equal(run.answers[:, 1], run.cf_answers)  # window [last]: the counterfactual's own next token
    for i, (original, counter) in enumerate(rendered_pairs(tokenizer)):
        with torch.no_grad():
            clean = model(**tokenizer(original.text, return_tensors="pt")).logits[0, -1].argmax()
            cf = model(**tokenizer(counter.text, return_tensors="pt")).logits[0, -1].argmax()
        assert run.answers[i, 0] == clean and run.cf_answers[i] == cf
    assert (run.answers[:, 0] != run.cf_answers).any()  # the check is not vacuous


def test_batched_patching_with_padding_equals_running_pairs_one_by_one(tiny):
    from pipeline.tasks.act_patch.labels import run_patches

    model, tokenizer = tiny
    pairs = rendered_pairs(tokenizer, 6)  # prompts of different lengths: padded when batched together
    windows, types = [[0, 1], [2, 3], [1]], ["last_subject_token", "relation_suffix", "last_token"]
    batched = run_patches(model, tokenizer, pairs, windows, types, batch_size=64)
    assert len({len(tokenizer(p[0].text)["input_ids"]) for p in pairs}) > 1
    for i, pair in enumerate(pairs):
        alone = run_patches(model, tokenizer, [pair], windows, types, batch_size=64)
        assert np.array_equal(alone.answers[0], batched.answers[i])
        assert torch.allclose(alone.states[0], batched.states[i], atol=1e-5)
    assert pd.Series(batched.answers[:, 1:].ravel()).nunique() > 1  # patches change answers in different ways


def assert_prefix_reuse_equals_full_forwards(model, tokenizer, pairs, windows, types):
    from bench_patching import full_forward_answers  # the reference: a full forward per patched row
    from pipeline.tasks.act_patch.labels import run_patches

    assert len({len(tokenizer(p[0].text)["input_ids"]) for p in pairs}) > 1  # left padding in play
    for batch_size in (64, len(windows)):  # many pairs per clean batch, and one
        fast = run_patches(model, tokenizer, pairs, windows, types, batch_size=batch_size)
        full = full_forward_answers(model, tokenizer, fast, windows, batch_size=64)
        assert np.array_equal(fast.answers, full)
    assert pd.Series(full[:, 1:].ravel()).nunique() > 1  # the comparison is not vacuous
    assert (full[:, 1:] != full[:, :1]).any()


def test_prefix_reuse_equals_full_forwards(tiny, tiny_gemma_dir):
    from pipeline.models import load_model

    model, tokenizer = tiny
    windows, types = [[0, 1], [2, 3], [1], [3]], ["last_subject_token", "relation_suffix", "last_token"]
    assert_prefix_reuse_equals_full_forwards(model, tokenizer, rendered_pairs(tokenizer, 9), windows, types)
    gemma, gemma_tokenizer = load_model(tiny_gemma_dir)  # sliding-window cache layers
    assert_prefix_reuse_equals_full_forwards(gemma, gemma_tokenizer, rendered_pairs(gemma_tokenizer, 5), windows, types)


@pytest.mark.slow
def test_prefix_reuse_equals_full_forwards_on_smollm(smollm_dir, base_config):
    from pipeline.tasks.act_patch.settings import ActPatchConfig
    from pipeline.models import load_model

    model, tokenizer = load_model(smollm_dir)
    windows = ActPatchConfig.from_dict(base_config["act_patch"]).patch.windows(model.config.num_hidden_layers)
    assert_prefix_reuse_equals_full_forwards(model, tokenizer, rendered_pairs(tokenizer, 12), windows,
                                             ["last_subject_token", "relation_suffix", "last_token"])
