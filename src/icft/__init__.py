"""icft: Incremental Curriculum-Based Fine-Tuning of language models for medical work."""

__version__ = "0.1.0"
