"""Data: corpora (tfds builders over registry-shipped text or the user's own
files), sentencepiece tokenizers, and host-side example pipelines."""
