"""The engine: the hooked model and batched activation patching (the only nnsight code)."""
