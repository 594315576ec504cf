import pytest
import torch

from pipeline.explainer import ContinuousTokenExplainer, WidthError, collate, encode_example
from pipeline.models import load_model


def test_placeholder_embedding_is_replaced_by_the_scaled_vector(tiny_dir):
    model, tokenizer = load_model(tiny_dir)
    explainer = ContinuousTokenExplainer(model, target_width=64)
    example = encode_example(tokenizer, "What does <vector> mean at layer 3?", "It means cats.", "plain")
    assert example.vector_position > 0
    prompt_len = example.labels.index(next(t for t in example.labels if t != -100))
    assert all(t == -100 for t in example.labels[:prompt_len])  # the loss covers only the answer
    assert example.labels[-1] == tokenizer.eos_token_id
    vector = torch.randn(1, 64) * 40
    batch = collate([example], vector, tokenizer.pad_token_id, "cpu")
    embeds = explainer.embed(batch["input_ids"], batch["vector_positions"], batch["vectors"])
    plain = model.get_input_embeddings()(batch["input_ids"])
    position = int(batch["vector_positions"][0])
    expected = vector[0] / vector[0].norm() * explainer.embed_norm  # identity projection for equal widths
    assert torch.allclose(embeds[0, position], expected, atol=1e-5)
    others = [i for i in range(embeds.shape[1]) if i != position]
    assert torch.equal(embeds[0, others], plain[0, others])
    zero = explainer.embed(batch["input_ids"], batch["vector_positions"], torch.zeros(1, 64))
    assert torch.count_nonzero(zero[0, position]) == 0  # the no-vector control sees a zero embedding


def test_widths_bridge_or_fail_clearly(tiny_dir):
    model, tokenizer = load_model(tiny_dir)
    wide = ContinuousTokenExplainer(model, target_width=640)  # e.g. Gemma 3 270M states into a 64-wide explainer
    example = encode_example(tokenizer, "x <vector> y", None, "plain")
    batch = collate([example], torch.randn(1, 640), tokenizer.pad_token_id, "cpu")
    out = wide(batch["input_ids"], batch["attention_mask"], batch["vector_positions"], batch["vectors"])
    assert out.logits.shape[-1] == len(tokenizer)
    with pytest.raises(WidthError, match="vectors have width 576 but this explainer reads width 640"):
        wide.embed(batch["input_ids"], batch["vector_positions"], torch.randn(1, 576))
    with pytest.raises(WidthError, match="projection is 'none' but target width 640 != explainer width 64"):
        ContinuousTokenExplainer(model, target_width=640, projection="none")
