"""vramfit: VRAM budgeting and experiment planning for GPT training."""

__version__ = "0.1.0"

