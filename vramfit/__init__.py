"""vramfit: VRAM budgeting and experiment planning for GPT training."""

__version__ = "0.1.0"

# what identifies a measured point besides its device and recipe: the model shape, the batch and the vocabulary
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size")
