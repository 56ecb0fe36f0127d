"""Translation of user-interface text, English -> German: the span-corruption
T5 of configs/t5_span_shakespeare.py fine-tuned on Django's message catalogs
(`django==6.1.3` wheel: ~730 msgid -> msgstr pairs, placeholders such as
%(name)s kept; split 80/10/10 by source string) with the task prefix
"translate English to German: ". The validation split is decoded with beam
search (4 beams) every eval_every steps; the best BLEU is kept; the test
report gives BLEU and chrF (sacrebleu) beside the copy-the-input baseline.

  python train.py --config configs/t5_span_shakespeare.py --workdir runs/t5_span
  python train.py --config configs/t5_translate_de.py --workdir runs/t5_translate_de
  python -m lmjax.generate --workdir runs/t5_translate_de --checkpoint best --prompt "Save and continue editing"

`--config configs/t5_translate_de.py:PATH` starts from another T5 run or a
Hugging Face T5 directory; `:smoke` trains a few steps from scratch.
"""

import dataclasses

from lmjax.config import CheckpointConfig, Config, DataConfig, DecodeConfig, LoggingConfig, TrainConfig
from lmjax.models.t5 import T5Config


def get_config(arg=None):
  cfg = Config(
      # The architecture comes from train.init_from; this sets the training-time fields.
      model=T5Config(dropout_rate=0.1),
      data=DataConfig(dataset="django_translation/de", input_template="translate English to German: {input}",
                      max_seq_len=96, max_target_len=96),
      train=TrainConfig(objective="seq2seq", init_from="runs/t5_span", steps=600, batch_size=16, learning_rate=3e-4,
                        warmup_steps=30, weight_decay=0.01, eval_every=150),
      checkpoint=CheckpointConfig(every=150, keep=1, best_metric="bleu"),
      decode=DecodeConfig(num_beams=4, length_penalty=1.0, max_new_tokens=96, batch_size=64),
      logging=LoggingConfig(every=25),
  )
  if arg == "smoke":
    cfg = dataclasses.replace(
        cfg, model=T5Config.preset("t5-tiny", vocab_size=512),
        train=dataclasses.replace(cfg.train, init_from="", steps=4, batch_size=4, warmup_steps=1, eval_every=2),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=2), logging=dataclasses.replace(cfg.logging, every=1),
        decode=dataclasses.replace(cfg.decode, num_beams=2, max_new_tokens=8))
  elif arg:
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=arg))
  return cfg
