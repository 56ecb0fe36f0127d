"""Hugging Face checkpoint import and export, one module per family
(`lmjax.convert.bert`). Weights go through safetensors only."""
