#!/usr/bin/env python
"""lmjax training entry point.

  python train.py --config configs/bert_tiny_pretrain.py --workdir runs/bert_tiny \
      [--set train.steps=40 --set train.learning_rate=5e-4 ...]

--config takes a recipe file, optionally with an argument for its
get_config (`configs/bert_tiny_pretrain.py:smoke`). Re-running the same
command resumes from the newest checkpoint in --workdir.
"""

from __future__ import annotations

import argparse
import sys

from lmjax.errors import cli


@cli
def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="recipe file, e.g. configs/bert_tiny_pretrain.py[:ARG]")
  parser.add_argument("--workdir", required=True, help="where config, tokenizer, checkpoints and metrics go")
  parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config field, e.g. --set train.steps=40 (repeatable)")
  args = parser.parse_args(argv)
  from lmjax import config as config_lib  # noqa: PLC0415  (keep --help fast)
  from lmjax import trainer  # noqa: PLC0415
  cfg = config_lib.override(config_lib.load_recipe(args.config), args.overrides)
  trainer.train(cfg, args.workdir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
