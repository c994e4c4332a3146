"""The models (every architecture), generation with a KV cache, chat and export (``python -m model --help``).
No training code."""
