"""Orbax checkpoints of a workdir: asynchronous saves, the last N kept plus the best by validation mIoU."""

import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


def manager(workdir: str, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
  """The CheckpointManager of `workdir`/checkpoints; a step saved with metrics {'miou': ...} competes for 'best'."""
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=True,
      read_only=read_only,
      create=not read_only,
      best_fn=lambda m: m['miou'],
      keep_checkpoints_without_metrics=True,
      preservation_policy=policies.AnyPreservationPolicy([
          policies.LatestN(keep),
          policies.BestN(get_metric_fn=lambda m: m['miou'], n=1, keep_checkpoints_without_metrics=False)]))
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options,
                              item_handlers={'state': ocp.StandardCheckpointHandler()})


def save(mngr: ocp.CheckpointManager, step: int, state, metrics: dict | None = None, force: bool = False):
  """Starts an asynchronous save of the train state (step, params, opt_state) at `step`."""
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), metrics=metrics, force=force)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """The state saved at `step`, laid out (shapes, dtypes, shardings) as `abstract_state`."""
  return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))['state']


def load_params(workdir: str, which: str = 'latest') -> dict:
  """The parameters of a finished or running workdir ('latest' or 'best' checkpoint), as host arrays."""
  path = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no checkpoints here (expected the workdir of a training run)')
  with manager(workdir, read_only=True) as mngr:
    step = mngr.best_step() if which == 'best' else mngr.latest_step()
    if step is None and which == 'best':  # nothing evaluated yet (converted weights, a run cut short): the latest
      step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f'{path}: no {which} checkpoint')
    # Onto one local device, whatever topology wrote it (a TPU pod's checkpoint on a laptop, 2 hosts on 1).
    meta = mngr.item_metadata(step)['state']
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))['state']
  return jax.device_get(state['params'])
