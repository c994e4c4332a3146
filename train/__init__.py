"""The training loop shared by pretraining and SFT (``python -m train --help``)."""
