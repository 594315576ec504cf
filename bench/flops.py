"""FLOPs of the explainer's stages counted from the model's shapes as the stages run them, for efficiency against the
chip's measured peak (MFU): a matrix product of [m, k] by [k, n] is 2mkn.

Training (LoRA): per token, the forward pass through every decoder layer's projections and attention, and the
backward pass for the activations' gradients through the same products (the frozen weights get none), plus LoRA's
own products forward and backward (its weights' gradients included); the output layer only at the answer positions,
forward and the backward for its input. Full fine-tuning adds the weights' gradients (2x the forward again).
Generation: the prompt once (its last position through the output layer), then per new token one position through
the layers and the output layer, attending over everything before it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    layers: int
    width: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, config) -> "Shape":
        text = getattr(config, "text_config", None) or config
        heads = text.num_attention_heads
        return cls(text.num_hidden_layers, text.hidden_size, text.intermediate_size, heads,
                   getattr(text, "num_key_value_heads", None) or heads,
                   getattr(text, "head_dim", None) or text.hidden_size // heads, text.vocab_size)

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one decoder layer (Llama / Gemma / Qwen naming)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (self.width, q), "k_proj": (self.width, kv), "v_proj": (self.width, kv),
                "o_proj": (q, self.width), "gate_proj": (self.width, self.intermediate),
                "up_proj": (self.width, self.intermediate), "down_proj": (self.intermediate, self.width)}

    def linear(self) -> float:
        """Forward FLOPs of one token through one layer's projections."""
        return sum(2 * i * o for i, o in self.projections().values())

    def attention(self, length: int) -> float:
        """Forward FLOPs of a row of `length` tokens' causal attention in one layer (scores and weighted values:
        position p attends over p + 1 positions)."""
        return 2 * 2 * self.heads * self.head_dim * length * (length + 1) / 2

    def row_forward(self, length: int) -> float:
        """Forward FLOPs of a row of `length` tokens through every layer (the output layer apart)."""
        return self.layers * (length * self.linear() + self.attention(length))


def training_flops(shape: Shape, lengths: list[int], answer_tokens: int, lora_r: int = 0,
                   lora_targets: tuple[str, ...] = (), full: bool = False) -> float:
    """FLOPs of one training step on rows of these token `lengths` (padding not computed) with `answer_tokens`
    positions through the output layer."""
    lora = sum(2 * lora_r * (i + o) for name, (i, o) in shape.projections().items() if name in lora_targets)
    total = 0.0
    for length in lengths:  # forward, the activations' gradients (and the weights' in full fine-tuning); LoRA's 3x
        total += shape.row_forward(length) * (3 if full else 2) + shape.layers * length * lora * 3
    head = 2 * shape.vocab * shape.width * answer_tokens
    return total + head * (3 if full else 2)


def generation_flops(shape: Shape, prompt_lengths: list[int], new_tokens: int) -> float:
    """FLOPs of greedy generation of `new_tokens` after each prompt."""
    total = 0.0
    head = 2 * shape.vocab * shape.width
    for length in prompt_lengths:
        total += shape.row_forward(length) + head
        for t in range(new_tokens):  # one position, attending over the prompt and what came before it
            total += shape.layers * (shape.linear() + 4 * shape.heads * shape.head_dim * (length + t + 1)) + head
    return total
