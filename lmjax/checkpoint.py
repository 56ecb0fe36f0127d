"""Orbax checkpoints under WORKDIR/checkpoints/STEP.

Each checkpoint holds three items: `state` (step, parameters, optimizer state),
`data` (the input pipeline's position, JSON) and `meta` (model family, model
config and every parameter's shape, JSON). `meta` is read first on restore so
that a workdir holding a different model is refused with a clear message
before Orbax sees mismatched arrays. Saves are async and atomic; the newest
`keep` are kept. Restoring onto a different mesh reshards (the abstract
target carries the new shardings).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from lmjax.errors import LmjaxError


def _first_line(error: BaseException, limit: int = 300) -> str:
  text = str(error).strip().splitlines()
  return (text[0] if text else "")[:limit]


def move_to_damaged(step_dir: Path, name: str) -> Path:
  """Moves a checkpoint directory that does not read back to WORKDIR/damaged/NAME
  (NAME.2, ... if taken): kept for inspection, out of Orbax's way."""
  root = step_dir.parent.parent / "damaged"
  root.mkdir(exist_ok=True)
  target, n = root / name, 1
  while target.exists():
    n += 1
    target = root / f"{name}.{n}"
  shutil.move(str(step_dir), target)
  return target


def param_shapes(params) -> dict[str, list[int]]:
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in flat}


def check_meta(saved: dict, meta: dict, directory: Path, step: int) -> None:
  """Raises a clear error when a checkpoint's meta describes a different model than `meta`."""
  if saved.get("family") != meta["family"]:
    raise LmjaxError(
        f"{directory} holds a checkpoint of a {saved.get('family')!r} model, but this run builds "
        f"a {meta['family']!r} model. Use a fresh --workdir, or the config that wrote it.")
  old, new = saved.get("shapes", {}), meta["shapes"]
  if old != new:
    cfg_old, cfg_new = saved.get("model", {}), meta["model"]
    changed = [f"{k}: {cfg_old.get(k)} in the checkpoint vs {cfg_new.get(k)} now"
               for k in sorted(set(cfg_old) | set(cfg_new)) if cfg_old.get(k) != cfg_new.get(k)]
    shapes = [f"{k}: {old.get(k, 'absent')} in the checkpoint vs {new.get(k, 'absent')} now"
              for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)][:2]
    if sorted(map(str, old.values())) == sorted(map(str, new.values())) and not changed:
      raise LmjaxError(
          f"{directory} (step {step}) holds the same model under other parameter names "
          f"(e.g. {'; '.join(shapes)}): it was written by an older lmjax. Load it with that version and export it "
          "(lmjax.convert), or start a fresh --workdir.")
    raise LmjaxError(
        f"{directory} (step {step}) holds a checkpoint of a different model shape "
        f"({'; '.join(changed) or 'parameter shapes differ'}; e.g. {'; '.join(shapes)}). "
        f"Use a fresh --workdir for a new model, or restore the model settings it was trained with.")


def saved_steps(workdir: Path) -> list[int]:
  """Steps of the finished checkpoints under WORKDIR/checkpoints (without opening a manager)."""
  root = Path(workdir) / "checkpoints"
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())


def _reader(workdir: Path):
  return ocp.CheckpointManager(Path(workdir).resolve() / "checkpoints",
                               item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                              "meta": ocp.JsonCheckpointHandler()},
                               options=ocp.CheckpointManagerOptions(create=False))


def read_meta(workdir: Path, step: int) -> dict:
  """The `meta` item of checkpoint `step` (family, model kind as "task", model config, shapes)."""
  manager = _reader(workdir)
  try:
    return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
  finally:
    manager.close()


def read_params(workdir: Path, step: int, abstract_params, meta: dict):
  """Only the parameters of checkpoint `step`, placed as `abstract_params` says.

  Orbax restores the `params` subtree of the `state` item alone: the
  optimizer state is neither built nor read.
  """
  directory = Path(workdir).resolve() / "checkpoints"
  manager = _reader(workdir)
  try:
    check_meta(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta, meta,
               directory, step)
    target = {"params": abstract_params}
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))
    return restored.state["params"]
  finally:
    manager.close()


class Checkpointer:

  def __init__(self, workdir: Path, *, every: int, keep: int, async_save: bool):
    self.directory = Path(workdir).resolve() / "checkpoints"
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(1, every), max_to_keep=max(1, keep),
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict, meta: dict, *, force: bool = False) -> bool:
    """Starts saving `step` (asynchronously when configured). A failed write (disk
    full, no permission) surfaces here or at `wait` as an LmjaxError; the
    checkpoints finished before it stay as they were (Orbax writes each into a
    temporary directory and renames it when complete)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                              meta=ocp.args.JsonSave(meta))
    with self._reporting_failures(step):
      saved = self.manager.save(step, args=args, force=force)
    if saved:
      self._pending = step
    return saved

  _pending: int | None = None
  _failed: bool = False

  def _reporting_failures(self, step: int):
    import contextlib  # noqa: PLC0415

    @contextlib.contextmanager
    def guard():
      try:
        yield
      except LmjaxError:
        raise
      except Exception as e:  # noqa: BLE001  (TensorStore / OSError / Orbax errors of a failed write)
        self._failed = True
        failed = self._pending if self._pending is not None else step
        done = [s for s in saved_steps(self.directory.parent) if s < failed]
        resume = f"step {done[-1]}" if done else "the start (no checkpoint was finished)"
        raise LmjaxError(
            f"Saving the checkpoint of step {failed} in {self.directory} failed ({type(e).__name__}: "
            f"{_first_line(e)}). The checkpoints finished before it are intact. Free space or fix the permissions "
            f"there, then run the same command: it resumes from {resume}.") from None
    return guard()

  def check_compatible(self, step: int, meta: dict) -> None:
    """Raises a clear error when the checkpoint holds a different model."""
    saved = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    check_meta(saved, meta, self.directory, step)

  def restore(self, step: int, abstract_state, meta: dict):
    """Returns (state, data_state) for `step`, placed as `abstract_state` says."""
    self.check_compatible(step, meta)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored.state, restored.data

  def restore_newest(self, abstract_state, meta: dict):
    """(step, state, data_state) of the newest checkpoint that reads back whole.

    A newer checkpoint that fails to read (truncated or corrupted files, a
    missing item) is moved to WORKDIR/damaged/STEP-N (kept, not deleted) with
    a warning naming the step and the error, once an older one has been read.
    A checkpoint of another model is an LmjaxError, not damage. When none
    reads, nothing is moved and the error names each failure.
    """
    failures = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        saved = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
      except Exception as e:  # noqa: BLE001  (Orbax / TensorStore / JSON errors alike)
        failures.append((step, e))
        continue
      check_meta(saved, meta, self.directory, step)
      if saved.get("optimizer") != meta.get("optimizer"):
        raise LmjaxError(
            f"{self.directory} (step {step}) holds an optimizer state of another layout "
            f"({saved.get('optimizer') or 'an older lmjax'}; this lmjax writes {meta.get('optimizer')}), so "
            "training cannot continue from it. Its parameters still load (lmjax.predict, lmjax.generate, "
            "train.init_from of a fine-tuning run); train on in a fresh --workdir, or with the lmjax that wrote it.")
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001
        failures.append((step, e))
        continue
      for bad, error in failures:
        moved = move_to_damaged(self.directory / str(bad), f"step-{bad}")
        warnings.warn(f"checkpoint step {bad} in {self.directory} could not be read "
                      f"({type(error).__name__}: {_first_line(error)}); moved it to {moved} and resumed from "
                      f"step {step}, the newest that reads back.", stacklevel=2)
      if failures:
        self.manager.reload()
      return step, restored.state, restored.data
    if failures:
      listed = "; ".join(f"step {s}: {type(e).__name__}: {_first_line(e)}" for s, e in failures)
      raise LmjaxError(f"No checkpoint in {self.directory} could be read ({listed}). Nothing was moved or "
                       "deleted: move the damaged step directories away to start over, or use a fresh --workdir.")
    return None


  def wait(self):
    with self._reporting_failures(self._pending or 0):
      self.manager.wait_until_finished()

  def close(self):
    if self._failed:  # already reported: close quietly
      try:
        self.manager.close()
      except Exception:  # noqa: BLE001, S110
        pass
      return
    with self._reporting_failures(self._pending or 0):
      self.manager.wait_until_finished()
    self.manager.close()


# Error rates (word / phoneme / character): lower is better, like losses.
ERROR_RATES = ("wer", "per", "cer")


def lower_is_better(metric: str) -> bool:
  return metric.endswith("loss") or metric.split("/")[0] in ERROR_RATES


class BestCheckpoint:
  """WORKDIR/best: the parameters of the best evaluation so far by one metric.

  Holds one checkpoint (items `params` and `meta`, the latter with the metric,
  its value and the step), written synchronously when an evaluation beats it.
  The final test report and `lmjax.predict` read it.
  """

  @staticmethod
  def exists(workdir: Path) -> bool:
    """Whether WORKDIR/best holds a checkpoint (without creating the directory)."""
    root = Path(workdir) / "best"
    return root.is_dir() and any(p.name.isdigit() for p in root.iterdir())

  def __init__(self, workdir: Path, metric: str):
    self.metric = metric
    self.minimize = lower_is_better(metric)
    self.directory = Path(workdir).resolve() / "best"
    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def info(self) -> dict | None:
    """{"step", "metric", "value"} of the kept checkpoint, or None (also when it
    does not read back: it is then moved aside, as `_set_aside` says)."""
    step = self.manager.latest_step()
    if step is None:
      return None
    try:
      return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
    except Exception as e:  # noqa: BLE001  (Orbax / TensorStore / JSON errors of a damaged checkpoint)
      self._set_aside(step, e)
      return None

  def _set_aside(self, step: int, error: BaseException) -> None:
    """Moves a best checkpoint that does not read back to WORKDIR/damaged/best-step-N, with a warning."""
    target = move_to_damaged(self.directory / str(step), f"best-step-{step}")
    self.manager.reload()
    warnings.warn(f"the best checkpoint (step {step}) in {self.directory} could not be read "
                  f"({type(error).__name__}: {_first_line(error)}); moved it to {target}. The next evaluation "
                  "starts a new best.", stacklevel=3)

  def update(self, step: int, params, metrics: dict, meta: dict) -> bool:
    """Saves `params` if metrics[metric] beats the kept value; True if it did."""
    if self.metric not in metrics:
      raise LmjaxError(f"checkpoint.best_metric={self.metric!r} is not an evaluation metric; choose one of "
                       f"{', '.join(k for k, v in metrics.items() if isinstance(v, float))}.")
    value = float(metrics[self.metric])
    kept = self.info()
    if kept is not None:
      if step <= kept["step"]:  # a resumed run re-evaluating a step it already judged
        return False
      if (value >= kept["value"]) if self.minimize else (value <= kept["value"]):
        return False
    info = {**meta, "step": step, "metric": self.metric, "value": value}
    try:
      self.manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                      meta=ocp.args.JsonSave(info)), force=True)
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001  (a failed write: disk full, permission)
      raise LmjaxError(f"Saving the best checkpoint (step {step}) in {self.directory} failed ({type(e).__name__}: "
                       f"{_first_line(e)}). Free space or fix the permissions there, then run the same command: "
                       "it resumes from the last periodic checkpoint.") from None
    return True

  def restore_params(self, abstract_params):
    """The kept parameters, or None when they do not read back (moved aside with a warning)."""
    step = self.manager.latest_step()
    if step is None:
      raise LmjaxError(f"{self.directory} holds no checkpoint.")
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params)))
    except Exception as e:  # noqa: BLE001
      self._set_aside(step, e)
      return None
    return restored.params

  def close(self):
    self.manager.close()
