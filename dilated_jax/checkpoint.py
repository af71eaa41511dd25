"""Orbax checkpoints of a workdir: asynchronous saves, the last N kept plus the best by validation mIoU.

Reading goes step by step, newest first: a checkpoint that does not read back (truncated, half-written, garbage) is
named in a warning and the one before it is used (docs/decisions.md, "Corrupt checkpoints").
"""

import contextlib
import dataclasses
import gc
import json
import logging as std_logging
import os
import sys
import traceback
import warnings

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from dilated_jax import InputError, files

# Where resuming moves the checkpoints it found unreadable, beside checkpoints/: out of orbax's way (it would refuse
# to save a step whose folder exists), kept for a person to look at.
CORRUPT = 'corrupt_checkpoints'


def manager(workdir: str, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
  """The CheckpointManager of `workdir`/checkpoints: keeps the newest `keep` steps and the best by recorded mIoU."""
  _drop_closed_loop_errors()  # a save that the filesystem refuses leaves reads and writes behind, as a failed restore
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=True,
      read_only=read_only,
      create=not read_only,
      preservation_policy=policies.AnyPreservationPolicy([policies.LatestN(keep), KeepBest(workdir)]))
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options,
                              item_handlers={'state': ocp.StandardCheckpointHandler()})


@dataclasses.dataclass
class KeepBest:
  """Orbax preservation policy: keeps the step of the highest mIoU that `record_miou` wrote (read at each retention,
  since a step's mIoU is recorded after its save)."""

  workdir: str

  def should_preserve(self, checkpoints, *, context=None):
    best = best_step(self.workdir)
    return [c.step == best for c in checkpoints]


def initial_state(params, tx=None, trainable=(), batch_stats=None) -> dict:
  """What a checkpoint holds at step 0: the step, every parameter and, for training (`tx`, an optax transformation),
  the optimizer state of the `trainable` subtrees; converted weights (no `tx`) hold no optimizer state. A network
  with BatchNorm (a DRN) also holds its running statistics, `batch_stats`; the VGG networks have none, and their
  state no such entry, so that their checkpoints keep their layout."""
  state = {'step': jnp.zeros((), jnp.int32), 'params': params}
  if tx is not None:
    state['opt_state'] = tx.init({k: params[k] for k in trainable})
  if batch_stats:
    state['batch_stats'] = batch_stats
  return state


def eval_variables(state: dict):
  """What a Predictor runs from a state or `load_variables`: the parameters alone (no BatchNorm), or the flax
  variables {'params', 'batch_stats'}, whose running statistics evaluation normalises with."""
  if 'batch_stats' not in state:
    return state['params']
  return {'params': state['params'], 'batch_stats': state['batch_stats']}


def save(mngr: ocp.CheckpointManager, step: int, state, force: bool = False):
  """Starts an asynchronous save of the train state (step, params, opt_state) at `step`."""
  with _write_errors(mngr):  # the previous save's failure surfaces here
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force)


def wait(mngr: ocp.CheckpointManager, close: bool = False):
  """Waits for the save in flight (and closes the manager): a failed write is an OSError naming the folder."""
  with _write_errors(mngr):
    mngr.wait_until_finished()
    if close:
      mngr.close()


@contextlib.contextmanager
def _write_errors(mngr):
  """A save that the filesystem refused (a full disk, a quota, a permission: TensorStore reports the OS error
  code) becomes one OSError naming the checkpoint folder; the checkpoints before it are complete, and the step's
  unfinished `N.orbax-checkpoint-tmp` is replaced when a later run saves step N."""
  try:
    yield
  except Exception as e:  # noqa: BLE001 - orbax re-raises TensorStore's ValueError from its background threads
    if not isinstance(e, OSError) and 'os_error_code' not in str(e):
      raise
    raise OSError(f'{mngr.directory}: a checkpoint could not be written ({_one_line(e)}); the checkpoints '
                  f'before it are intact') from e


def record_miou(mngr: ocp.CheckpointManager, workdir: str, step: int, miou: float):
  """Records the validation mIoU of the checkpoint of `step`, once its save has finished, beside its arrays
  (STEP/metrics/metrics, where orbax writes metrics given at save time): the step then competes for 'best'.

  Saving first and evaluating after means an evaluation that fails or is preempted never costs the interval's
  training; a step whose evaluation did not finish simply has no mIoU.
  """
  wait(mngr)
  if jax.process_index() == 0:
    files.write_json(os.path.join(step_dir(workdir, step), 'metrics', 'metrics'), {'miou': float(miou)})
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('dilated_jax: mIoU recorded')


def best_step(workdir: str) -> int | None:
  """The step of the highest recorded mIoU (the newest of equals); None when no step has one."""
  scored = [(m['miou'], s) for s, m in _metrics(workdir).items() if isinstance(m, dict)]
  return max(scored)[1] if scored else None


def steps(workdir: str) -> list[int]:
  """The steps of the finished checkpoints of `workdir`, ascending (orbax writes `N.orbax-checkpoint-tmp`, then
  renames it to `N`)."""
  path = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(path):
    return []
  return sorted(int(n) for n in os.listdir(path) if _is_step_name(n) and os.path.isdir(os.path.join(path, n)))


def _is_step_name(name: str) -> bool:
  """'6', never '06' or '+6': the one spelling per step that orbax writes and `step_dir` gives."""
  return name.isdigit() and str(int(name)) == name


def _strays(workdir: str) -> list[str]:
  """Folders of checkpoints/ named as a step but not as orbax names one ('06'): orbax would read them as the step's."""
  path = os.path.join(os.path.abspath(workdir), 'checkpoints')
  return sorted(n for n in os.listdir(path) if n.isdigit() and not _is_step_name(n)) if os.path.isdir(path) else []


class Mismatch(InputError):
  """A checkpoint that reads back but holds another model or stage than the config's: an error, never set aside."""


def restore_latest(workdir: str, abstract_state):
  """(state, step) of the newest checkpoint of `workdir` that reads back onto `abstract_state`; (None, None) if none.

  Newer checkpoints that do not read back are named in a warning and moved to WORKDIR/corrupt_checkpoints/ (known
  bad); older ones are not looked at. A checkpoint of another model raises Mismatch, and when none reads back at all
  this raises ValueError: in both cases nothing is moved.
  """
  bad = _unreadable_metrics(workdir)  # orbax's manager reads every step's metrics: one broken file stops it
  strays = _strays(workdir)
  for name in strays:
    logging.warning('%s is not a checkpoint folder orbax wrote (steps are named %d): setting it aside',
                    os.path.join(os.path.abspath(workdir), 'checkpoints', name), int(name))
  errors = []
  for step in reversed(steps(workdir)):
    if step in bad:
      errors.append(f'{step}: its metrics do not read back')
      continue
    path = step_dir(workdir, step)
    try:
      state = _read(path, abstract_state, step)
    except Mismatch:
      raise
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise Exception, ValueError, KeyError, OSError...
      logging.warning('checkpoint %s does not read back (%s): trying the one before', path, _one_line(e))
      bad.append(step)
      errors.append(f'{step}: {_one_line(e)}')
      continue
    _set_aside(workdir, [str(b) for b in bad] + strays)
    return state, step
  if bad:
    raise InputError(f'{os.path.join(os.path.abspath(workdir), "checkpoints")}: no checkpoint reads back '
                     f'({"; ".join(errors)}); move them away to start afresh')
  _set_aside(workdir, strays)
  return None, None


def load_params(workdir: str, which: str = 'latest') -> dict:
  """The parameters of a finished or running workdir ('latest' or 'best' checkpoint), as host arrays."""
  return load_variables(workdir, which)['params']


def load_variables(workdir: str, which: str = 'latest') -> dict:
  """{'params'} and, for a network with BatchNorm, {'batch_stats'} of a workdir's 'latest' or 'best' checkpoint, as
  host arrays.

  A checkpoint that does not read back is named in a warning and the next newest is read instead.
  """
  path = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no checkpoints here (expected the workdir of a training run)')
  order = steps(workdir)[::-1]
  if not order:
    raise FileNotFoundError(f'{path}: no {which} checkpoint')
  best = best_step(workdir) if which == 'best' else None
  if best is not None:  # None: nothing evaluated yet (converted weights, a run cut short): the latest
    order = [best] + [s for s in order if s != best]
  errors = []
  for step in order:
    try:
      state = _read(step_dir(workdir, step), None, step)
      return jax.device_get({k: state[k] for k in ('params', 'batch_stats') if k in state})
    except Exception as e:  # noqa: BLE001 - see restore_latest
      logging.warning('checkpoint %s does not read back (%s): trying the one before', step_dir(workdir, step),
                      _one_line(e))
      errors.append(f'{step}: {_one_line(e)}')
  raise InputError(f'{path}: no checkpoint reads back ({"; ".join(errors)})')


def step_dir(workdir: str, step: int) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints', str(step))


# ------------------------------------------------------------------ reading one step


def _read(path: str, abstract_state, step: int):
  """The state saved in the step folder `path`, laid out as `abstract_state` (None: everything onto one local
  device, whatever topology wrote it). Raises Mismatch when it holds other arrays than `abstract_state`."""
  handler = ocp.CompositeCheckpointHandler(state=ocp.StandardCheckpointHandler(),
                                           metrics=ocp.JsonCheckpointHandler(filename='metrics'))
  with _quiet_unraisable(), ocp.Checkpointer(handler) as ckpt:
    meta = (ckpt.metadata(path).item_metadata or {}).get('state')
    if not meta or not {'step', 'params'} <= set(meta):  # orbax only warns when the metadata does not read back
      raise InputError('its metadata does not read back')
    if abstract_state is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      abstract_state = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
    else:
      _check_layout(path, meta, abstract_state)
    state = ckpt.restore(path, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))['state']
  saved = int(np.asarray(state['step'].addressable_data(0)))
  if saved != step:
    raise InputError(f'holds step {saved}')
  return state


@contextlib.contextmanager
def _quiet_unraisable():
  """Silences what orbax's reading coroutines leave behind when an array does not read back: exceptions nobody
  awaited, each printed with a page of TensorStore spec. The error that matters is raised, and named once."""
  _drop_closed_loop_errors()
  hook = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: None
  asyncio_log = std_logging.getLogger('asyncio')  # 'Task exception was never retrieved', for each failed read
  level = asyncio_log.level
  asyncio_log.setLevel(std_logging.CRITICAL)
  try:
    yield
  finally:
    with warnings.catch_warnings():  # and the coroutines it never awaited
      warnings.simplefilter('ignore', RuntimeWarning)
      gc.collect()
    asyncio_log.setLevel(level)
    sys.unraisablehook = hook


def _drop_closed_loop_errors():
  """Wraps sys.unraisablehook, once, to drop one message: TensorStore reads of a restore that failed (or of a save the
  filesystem refused) finish after orbax has closed its event loop, and their callbacks' `RuntimeError: Event loop
  is closed` (asyncio's `_check_closed`) would be printed from TensorStore's threads, a traceback per read, after
  the real error was named. Kept for the rest of the process, since those reads end at no time we know."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_closed_loop', False):
    return

  def hook(unraisable):
    last = traceback.extract_tb(unraisable.exc_traceback)[-1:] if unraisable.exc_traceback is not None else []
    if (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == 'Event loop is closed' and last
        and last[0].name == '_check_closed' and last[0].filename.endswith(os.path.join('asyncio', 'base_events.py'))):
      return
    previous(unraisable)

  hook.drops_closed_loop = True
  sys.unraisablehook = hook


def _check_layout(path, meta, abstract_state):
  """Mismatch naming the first array of `abstract_state` that the checkpoint lacks or holds in another shape."""
  want, got = _shapes(abstract_state), _shapes(meta)
  for name, shape in sorted(want.items(), key=lambda item: not item[0].startswith('params/')):  # params first
    if name not in got:
      raise Mismatch(f'{path} has no {name}: it was written by another model or stage (resume it with its own '
                     f'config, or give another --workdir)')
    if got[name] != shape:
      raise Mismatch(f'{path} holds {name} of shape {got[name]}, this config\'s model wants {shape} (resume it with '
                     f'its own config, or give another --workdir)')
  extra = sorted(set(got) - set(want))
  if extra:
    raise Mismatch(f'{path} holds {extra[0]}, which this config\'s model lacks (resume it with its own config, or '
                   f'give another --workdir)')


def _shapes(tree) -> dict[str, tuple]:
  """'params/front_end/fc6/kernel' -> shape, the same for dicts, lists and optax's named tuples."""
  def name(entry):
    for attr in ('key', 'name', 'idx'):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(name(e) for e in path): tuple(leaf.shape) for path, leaf in leaves}


def _metrics(workdir) -> dict:
  """step -> its saved metrics ({'miou': ...}), None without any, 'unreadable' when the file does not parse or holds
  no mIoU."""
  out = {}
  for step in steps(workdir):
    path = os.path.join(step_dir(workdir, step), 'metrics', 'metrics')
    out[step] = None
    if os.path.exists(path):
      try:
        with open(path) as f:
          metrics = json.load(f)
        # Every metrics file this project writes holds the step's mIoU, which the choice of 'best' reads.
        out[step] = metrics if isinstance(metrics, dict) and isinstance(metrics.get('miou'), (int, float)) \
            else 'unreadable'
      except (OSError, ValueError):
        out[step] = 'unreadable'
  return out


def _unreadable_metrics(workdir) -> list[int]:
  bad = [s for s, m in _metrics(workdir).items() if m == 'unreadable']
  for step in bad:
    logging.warning('checkpoint %s: its metrics file does not read back', step_dir(workdir, step))
  return bad


def _set_aside(workdir: str, names: list[str]):
  """Moves the folders `names` of checkpoints/ to WORKDIR/corrupt_checkpoints/ (process 0; every process waits)."""
  if not names:
    return
  if jax.process_index() == 0:
    folder = os.path.join(os.path.abspath(workdir), CORRUPT)
    os.makedirs(folder, exist_ok=True)
    for name in names:
      source = os.path.join(os.path.abspath(workdir), 'checkpoints', name)
      target, n = os.path.join(folder, name), 1
      while os.path.exists(target):
        target, n = os.path.join(folder, f'{name}.{n}'), n + 1
      os.replace(source, target)
      logging.warning('moved the unreadable checkpoint %s to %s', source, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('dilated_jax: corrupt checkpoints set aside')


def _one_line(e: BaseException) -> str:
  """The innermost cause of `e` (tensorstore's, which names the array and the byte range) on one short line."""
  while e.__cause__ is not None or e.__context__ is not None:
    e = e.__cause__ or e.__context__
  text = ' '.join(str(e).split()) or type(e).__name__
  return text if len(text) <= 300 else text[:300] + '...'
