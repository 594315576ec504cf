"""The nnsight engine against a plain torch forward-hook implementation on the tiny model."""

import torch

from pipeline.models import decoder_layers
from pipeline.patching import capture_states, pad_left, patched_next_tokens, wrap


def hook_patch_logits(model, ids, mask, positions, layer_mask, values):
    """Reference: one forward with hooks that overwrite each row's position at its patched layers."""
    handles = []
    for layer, block in enumerate(decoder_layers(model)):
        def hook(module, inputs, output, layer=layer):
            hidden = output[0] if isinstance(output, tuple) else output
            for row in range(hidden.shape[0]):
                if layer_mask[row, layer]:
                    hidden[row, positions[row]] = values[row, layer]
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
    values = torch.randn(4, num_layers, model.config.hidden_size) * 3
    traced = wrap(model)
    with torch.no_grad():
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
    states = capture_states(wrap(model), model.config.num_hidden_layers, ids, mask, rows, positions)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert states.shape == (3, model.config.num_hidden_layers, model.config.hidden_size)
    for layer in range(model.config.num_hidden_layers - 1):  # the last entry of hidden_states is after the final norm
        assert torch.allclose(states[:, layer], hidden[layer + 1][rows, positions], atol=1e-5)
