"""Sentiment as text-to-text: the span-corruption T5 of
configs/t5_span_shakespeare.py fine-tuned to write "positive" or "negative"
for English movie-review snippets (sentence_polarity: 10,566 snippets, the
same fixed stratified 80/10/10 split as the BERT recipes), with the prefix
"sentiment: ". Test accuracy is exact match of the written label.

  python train.py --config configs/t5_span_shakespeare.py --workdir runs/t5_span
  python train.py --config configs/t5_sentiment.py --workdir runs/t5_sentiment
  python -m lmjax.generate --workdir runs/t5_sentiment --checkpoint best --prompt "a gorgeous, witty, seductive movie."

`--config configs/t5_sentiment.py:PATH` starts from another T5 run or a
Hugging Face T5 directory; `:smoke` trains a few steps from scratch.
"""

import dataclasses

from lmjax.config import CheckpointConfig, Config, DataConfig, DecodeConfig, LoggingConfig, TrainConfig
from lmjax.models.t5 import T5Config


def get_config(arg=None):
  cfg = Config(
      model=T5Config(dropout_rate=0.1),  # the architecture comes from train.init_from
      data=DataConfig(dataset="sentence_polarity", input_template="sentiment: {input}", max_seq_len=96,
                      max_target_len=8),  # "positive" is 4 pieces + end-of-text in the Shakespeare vocabulary
      # 8,453 training snippets / 32 = 264 steps per epoch: two epochs.
      train=TrainConfig(objective="seq2seq", init_from="runs/t5_span", steps=528, batch_size=32, learning_rate=3e-4,
                        warmup_steps=50, weight_decay=0.01, eval_every=132),
      checkpoint=CheckpointConfig(every=132, keep=1, best_metric="accuracy"),
      decode=DecodeConfig(num_beams=1, max_new_tokens=6),
      logging=LoggingConfig(every=22),
  )
  if arg == "smoke":
    cfg = dataclasses.replace(
        cfg, model=T5Config.preset("t5-tiny", vocab_size=512),
        train=dataclasses.replace(cfg.train, init_from="", steps=4, batch_size=8, warmup_steps=1, eval_every=2),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=2), logging=dataclasses.replace(cfg.logging, every=1))
  elif arg:
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=arg))
  return cfg
