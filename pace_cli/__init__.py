"""pace: fine-tune vision transformers with adapters and the PACE regulariser."""

__version__ = "0.1.0"
