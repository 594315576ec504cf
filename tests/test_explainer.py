"""The explainer's input: a dedicated placeholder token, and the vector scaled to what the embedding layer returns."""

import pytest
import torch

from pipeline.explainer.model import (ADDED_PLACEHOLDER, ContinuousTokenExplainer, WidthError, collate, encode_example,
                                load_explainer, placeholder_token_id)
from pipeline.models import load_model


def test_placeholder_is_a_dedicated_token_found_by_id(tiny_dir):
    model, tokenizer = load_model(tiny_dir)
    rows = model.get_input_embeddings().weight.shape[0]
    placeholder = placeholder_token_id(tokenizer, model)
    # SmolLM2's tokenizer has no reserved token: one is added, with a zero row, and never the unk/pad/eos token.
    assert placeholder == rows and tokenizer.convert_ids_to_tokens(placeholder) == ADDED_PLACEHOLDER
    assert placeholder not in {tokenizer.unk_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id}
    assert model.get_input_embeddings().weight.shape[0] == rows + 1
    assert torch.count_nonzero(model.get_input_embeddings().weight[placeholder]) == 0
    assert placeholder_token_id(tokenizer, model) == placeholder  # idempotent
    example = encode_example(tokenizer, "What does <vector> mean at layer 3?", "It means cats.", "plain", placeholder)
    assert example.input_ids.count(placeholder) == 1 and example.has_vector
    # A tokenizer with a reserved token (Gemma 3's <unused0>) uses it, without growing the vocabulary.
    _, other = load_model(tiny_dir)
    other.add_tokens(["<unused0>"], special_tokens=True)
    assert placeholder_token_id(other) == other.convert_tokens_to_ids("<unused0>")
    assert ADDED_PLACEHOLDER not in other.get_vocab()


def test_placeholder_embedding_is_replaced_by_the_scaled_vector(tiny_dir):
    model, tokenizer = load_model(tiny_dir)
    placeholder = placeholder_token_id(tokenizer, model)
    explainer = ContinuousTokenExplainer(model, 64, placeholder)
    example = encode_example(tokenizer, "What does <vector> mean at layer 3?", "It means cats.", "plain", placeholder)
    prompt_len = example.labels.index(next(t for t in example.labels if t != -100))
    assert all(t == -100 for t in example.labels[:prompt_len])  # the loss covers only the answer
    assert example.labels[-1] == tokenizer.eos_token_id
    vector = torch.randn(1, 64) * 40
    batch = collate([example], vector, tokenizer.pad_token_id, "cpu")
    embeds = explainer.embed(batch["input_ids"], batch["vectors"])
    plain = model.get_input_embeddings()(batch["input_ids"])
    position = int((batch["input_ids"][0] == placeholder).nonzero())
    expected = vector[0] / vector[0].norm() * explainer.embed_norm  # identity projection for equal widths
    assert torch.allclose(embeds[0, position], expected, atol=1e-5)
    others = [i for i in range(embeds.shape[1]) if i != position]
    assert torch.equal(embeds[0, others], plain[0, others])
    zero = explainer.embed(batch["input_ids"], torch.zeros(1, 64))
    assert torch.count_nonzero(zero[0, position]) == 0  # the no-vector control sees a zero embedding
    with pytest.raises(ValueError, match="placeholder token .* exactly once"):
        explainer.embed(batch["input_ids"][:, :position], vector)


def test_gemma_explainer_receives_vectors_at_its_scaled_embedding_norm(tiny_gemma_dir):
    """Gemma's embedding layer multiplies rows by sqrt(width); the injected vector must match that scale."""
    model, tokenizer = load_model(tiny_gemma_dir)
    placeholder = placeholder_token_id(tokenizer, model)
    explainer = ContinuousTokenExplainer(model, 64, placeholder)
    layer = model.get_input_embeddings()
    ids = torch.tensor([i for i in range(layer.weight.shape[0]) if i != placeholder])
    with torch.no_grad():
        returned = layer(ids).norm(dim=-1).mean()
        raw = layer.weight[ids].norm(dim=-1).mean()
    assert returned / raw == pytest.approx(64 ** 0.5, rel=1e-3)  # the scale the issue is about
    assert float(explainer.embed_norm) == pytest.approx(float(returned), rel=1e-4)
    example = encode_example(tokenizer, "x <vector> y", None, "plain", placeholder)
    batch = collate([example], torch.randn(1, 64), tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        embeds = explainer.embed(batch["input_ids"], batch["vectors"])
    injected = embeds[0, int((batch["input_ids"][0] == placeholder).nonzero())]
    neighbours = embeds[0][batch["input_ids"][0] != placeholder].norm(dim=-1).mean()
    assert float(injected.norm()) == pytest.approx(float(returned), rel=1e-4)
    assert 0.2 < float(injected.norm() / neighbours) < 5  # the same order as the text tokens around it


def test_saved_explainer_keeps_its_placeholder_and_scale(tmp_path, tiny_dir):
    from pipeline.explainer.model import save_explainer

    model, tokenizer = load_model(tiny_dir)
    explainer = ContinuousTokenExplainer(model, 64, placeholder_token_id(tokenizer, model))
    explainer.embed_norm.fill_(3.25)
    save_explainer(explainer, tmp_path, {"method": "full", "target_width": 64, "projection": "linear"})
    loaded, loaded_tokenizer = load_explainer(tmp_path, tiny_dir, 64)
    assert loaded.placeholder_id == explainer.placeholder_id == loaded_tokenizer.convert_tokens_to_ids(ADDED_PLACEHOLDER)
    assert float(loaded.embed_norm) == 3.25


def test_widths_bridge_or_fail_clearly(tiny_dir):
    model, tokenizer = load_model(tiny_dir)
    placeholder = placeholder_token_id(tokenizer, model)
    wide = ContinuousTokenExplainer(model, 640, placeholder)  # e.g. Gemma 3 270M states into a 64-wide explainer
    example = encode_example(tokenizer, "x <vector> y", None, "plain", placeholder)
    batch = collate([example], torch.randn(1, 640), tokenizer.pad_token_id, "cpu")
    out = wide(batch["input_ids"], batch["attention_mask"], batch["vectors"])
    assert out.logits.shape[-1] == len(tokenizer)
    with pytest.raises(WidthError, match="vectors have width 576 but this explainer reads width 640"):
        wide.embed(batch["input_ids"], torch.randn(1, 576))
    with pytest.raises(WidthError, match="projection is 'none' but target width 640 != explainer width 64"):
        ContinuousTokenExplainer(model, 640, placeholder, projection="none")


def test_layer_injection_writes_each_vector_at_its_own_layer_in_the_prompt_pass_only(tiny_dir):
    model, tokenizer = load_model(tiny_dir)
    placeholder = placeholder_token_id(tokenizer, model)
    explainer = ContinuousTokenExplainer(model, 64, placeholder, "linear", inject="layer")
    assert explainer.projection is None  # a layer reads its own model's states as they are
    examples = [encode_example(tokenizer, q, None, "plain", placeholder)
                for q in ("What does <vector> mean at layer 1?", "Say what <vector> is, at layer 2, briefly.")]
    vectors = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    batch = collate(examples, vectors, tokenizer.pad_token_id, "cpu", [1, 2])
    seen = {}
    blocks = model.model.layers
    hooks = [blocks[i + 1].register_forward_pre_hook(lambda m, args, i=i: seen.setdefault(i, []).append(args[0].clone()))
             for i in (0, 1, 2)]
    with torch.no_grad():
        explainer(batch["input_ids"], batch["attention_mask"], batch["vectors"], vector_layers=batch["vector_layers"])
        plain_embeds = model.get_input_embeddings()(batch["input_ids"])
    for hook in hooks:
        hook.remove()
    position = (batch["input_ids"] == placeholder).float().argmax(dim=1)
    mask = batch["attention_mask"].bool() & (batch["input_ids"] != placeholder)
    for row, layer in enumerate((1, 2)):
        state = seen[layer][0][row]
        real = mask[row].clone()
        real[int(batch["attention_mask"][row].float().argmax())] = False  # the sink is left out of the scale
        scale = state[real].norm(dim=-1).mean()
        written = state[position[row]]
        assert torch.allclose(written, vectors[row] / vectors[row].norm() * scale, atol=1e-4)
        other = seen[0][0][row][position[row]]  # layer 0's output is left alone for both rows
        assert not torch.allclose(other / other.norm(), vectors[row] / vectors[row].norm(), atol=1e-2)
    assert torch.equal(explainer.embed(batch["input_ids"], batch["vectors"]), plain_embeds)  # no embedding swap
    # Generation: in the prompt pass only, the vector is written at its layer and changes the first token's logits (a
    # random tiny model's argmax need not move), and a zero vector writes zeros, not the plain state.
    def generate(vectors):
        logits, states = [], []
        on_head = model.lm_head.register_forward_hook(lambda m, args, out: logits.append(out[:, -1].clone()))
        on_block = blocks[2].register_forward_pre_hook(lambda m, args: states.append(args[0].clone()))
        try:
            said = explainer.generate(batch["input_ids"], batch["attention_mask"], vectors, max_new_tokens=4,
                                      pad_token_id=tokenizer.pad_token_id, vector_layers=[1, 2])
        finally:
            on_head.remove(), on_block.remove()
        return said, logits, states
    said, logits, states = generate(batch["vectors"])
    _, zero_logits, zero_states = generate(torch.zeros_like(vectors))
    assert said.shape[1] <= 4 and len(logits) == said.shape[1]
    assert states[0].shape[1] == batch["input_ids"].shape[1] and states[1].shape[1] == 1  # the prompt, then one token
    assert torch.allclose(states[0][0, position[0]], seen[1][0][0, position[0]], atol=1e-4)  # row 0's, at layer 1
    assert torch.count_nonzero(zero_states[0][0, position[0]]) == 0
    assert not torch.allclose(logits[0], zero_logits[0], atol=1e-3)
    assert all(len(h) == 0 for h in (b._forward_hooks for b in blocks))  # nothing is left hooked
    with pytest.raises(ValueError, match="needs the layer it was taken from"):
        explainer(batch["input_ids"], batch["attention_mask"], batch["vectors"])
    with pytest.raises(WidthError, match="a layer reads only its own model's states"):
        ContinuousTokenExplainer(model, 32, placeholder, "linear", inject="layer")
