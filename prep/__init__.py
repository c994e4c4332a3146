"""Offline prep: raw text -> token files (``python -m prep --help``). Imports no training code."""
