r"""Resident memory of the context stage on a Cityscapes-sized score cache: 2,975 maps of 128x256x19 float32 (7.4 GB),
synthetic, written by the cache's writer, then read by the training pipeline, batch 100, as
experiments/cityscapes_dilation10.py:stage=context trains.

  python experiments/measure/cityscapes_cache_memory.py --cache_dir=/tmp/cityscapes_cache [--steps=30]

Each mode runs in a process of its own (peak resident memory is per process):
  pipeline  the batches of `steps` steps built by the workers and placed on the mesh, no training step;
  train     the same with the context stage's jitted step (Dilation10 context module; the front end's parameters held
            as the stage holds them);
  step      the same step on one batch held in memory, no cache read: what the step itself takes on this machine.
Prints the peak resident memory of the process (ru_maxrss) and of its input workers (psutil, sampled every 0.2 s),
as Markdown. The cache is deleted at the end unless --keep. Needs 10 GB free in --cache_dir.
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time

from absl import flags, logging
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from dilated_jax import cli  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('cache_dir', None, 'folder for the 7.4 GB synthetic cache (deleted at the end unless --keep)')
flags.DEFINE_integer('images', 2975, 'images in the cache (Cityscapes train: 2,975)')
flags.DEFINE_integer('steps', 30, 'steps of the pipeline mode (30 x 100 images: one epoch over the cache)')
flags.DEFINE_integer('train_steps', 5, 'steps of the train and step modes (one takes a minute on a 2-core CPU)')
flags.DEFINE_list('modes', ['pipeline', 'train', 'step'], 'what to measure, each in its own process')
flags.DEFINE_integer('workers', -1, 'input worker processes (-1: one per core, as data.workers)')
flags.DEFINE_bool('keep', False, 'keep the cache')
flags.DEFINE_string('child', None, 'internal: run this mode in this process')

SHAPE = (128, 256, 19)  # Dilation10's front-end map of a 1024x2048 image: 1x2 tiles of 1024 px, stride 8
NEEDED = 10 << 30


def config():
  from dilated_jax import config as base_config
  return base_config.load(os.path.join(ROOT, 'experiments/cityscapes_dilation10.py:stage=context'))


def write_cache(path: str, n: int):
  """A synthetic cache, one image at a time: scores that vary per image, labels of the 19 classes and void."""
  from dilated_jax import score_cache

  rng = np.random.default_rng(0)
  pool = rng.normal(size=(8,) + SHAPE).astype(np.float32)
  labels = rng.integers(0, SHAPE[2], (8,) + SHAPE[:2]).astype(np.uint8)
  labels[:, :, -20:] = 255
  writer = score_cache.CacheWriter(path + '.tmp', (n,) + SHAPE)
  try:
    for i in range(n):
      writer.append(pool[i % 8] + np.float32(i / n), labels[i % 8])
    writer.close()
  except BaseException:
    shutil.rmtree(path + '.tmp', ignore_errors=True)
    raise
  os.rename(path + '.tmp', path)


class Children:
  """Peak resident memory of this process's children (the input workers), sampled in a thread."""

  def __init__(self, every_s: float = 0.2):
    import psutil

    self.me, self.every_s, self.peak_each, self.peak_sum, self.count = psutil.Process(), every_s, 0, 0, 0
    self.stop = threading.Event()
    self.thread = threading.Thread(target=self.watch, daemon=True)
    self.thread.start()

  def watch(self):
    while not self.stop.is_set():
      rss = []
      for c in self.me.children(recursive=True):
        try:
          if any('spawn_main' in a for a in c.cmdline()):  # grain's workers, not multiprocessing's resource tracker
            rss.append(c.memory_info().rss)
        except Exception:  # noqa: BLE001 - a child that just exited
          pass
      self.count = max(self.count, len(rss))
      self.peak_each = max([self.peak_each] + rss)
      self.peak_sum = max(self.peak_sum, sum(rss))
      self.stop.wait(self.every_s)

  def close(self):
    self.stop.set()
    self.thread.join()


def psutil_rss() -> int:
  import psutil
  return psutil.Process().memory_info().rss


def measure(mode: str, path: str, steps: int, workers: int) -> dict:
  """Runs `mode` in this process; its figures."""
  import jax
  import jax.numpy as jnp

  from dilated_jax import checkpoint, score_cache, sharding, train
  from dilated_jax.data import pipeline
  from dilated_jax.models import build_model

  cfg = config()
  mesh = sharding.make_mesh()
  workers = pipeline.resolve_workers(workers)
  children = Children()
  t0 = time.perf_counter()
  cache = score_cache.ScoreCache(path)
  if mode in ('train', 'step'):
    model = build_model(cfg.model, with_context=True)
    x = jnp.zeros((1,) + SHAPE)
    ctx = jax.jit(model.context_module.init)(jax.random.key(0), x)['params']
    # The front end's parameters are in the stage's state (not trained): zeros of their shapes take their memory.
    crop = (2 * model.front_end.margin + 8 * 16,) * 2
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + crop + (3,)))['params']['front_end']
    params = {'front_end': jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), 'context_module': ctx}
    tx = train.optimizer(cfg)
    state = jax.device_put(checkpoint.initial_state(params, tx, ('context_module',)), sharding.replicated(mesh))
    step_fn = train.make_train_step(model, 'context', ('context_module',), tx, cfg.model.num_classes,
                                    jax.random.key(0), mesh, None)
  make = pipeline.ScoreExamples(cache, cfg.data.flip)
  if mode == 'step':
    one = pipeline.ProcessBatch(make, len(cache), cfg.batch_size, cfg.seed, range(cfg.batch_size))(0)
    inputs = (sharding.global_batch(mesh, one) for _ in range(steps))
  else:
    local = pipeline.batches(make, len(cache), global_batch=cfg.batch_size, seed=cfg.seed, start_step=0,
                             stop_step=steps, workers=workers)
    inputs = sharding.prefetch_to_mesh(local, mesh)
  seen, rss = 0, {'rss_start_mb': round(psutil_rss() / 2**20)}
  for step, batch in enumerate(inputs, 1):
    assert batch['image'].shape == (cfg.batch_size,) + SHAPE
    if mode == 'pipeline':
      jax.block_until_ready(batch)
    else:
      state, m = step_fn(state, batch)
      loss = float(m['loss'])  # waits for the step
      logging.info('%s: step %d/%d, loss %.4f, %.1f s', mode, step, steps, loss, time.perf_counter() - t0)
    seen += cfg.batch_size
    if step == 2:
      rss['rss_after_step_2_mb'] = round(psutil_rss() / 2**20)
  rss['rss_end_mb'] = round(psutil_rss() / 2**20)
  seconds = time.perf_counter() - t0
  children.close()
  return {'mode': mode, 'steps': steps, 'images': seen, 'workers': workers, 'seconds': round(seconds, 1),
          'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
          'workers_seen': children.count, 'worker_peak_rss_mb': round(children.peak_each / 2**20),
          'workers_peak_rss_sum_mb': round(children.peak_sum / 2**20), **rss}


def main(argv):
  del argv
  if FLAGS.child:
    print(json.dumps(measure(FLAGS.child, FLAGS.cache_dir, FLAGS.steps, FLAGS.workers)))
    return
  if not FLAGS.cache_dir:
    raise ValueError('--cache_dir: required, a folder with 10 GB free')
  os.makedirs(FLAGS.cache_dir, exist_ok=True)
  free = shutil.disk_usage(FLAGS.cache_dir).free
  size = FLAGS.images * (int(np.prod(SHAPE)) * 4 + int(np.prod(SHAPE[:2])))  # float32 scores, uint8 labels
  if free < NEEDED:
    raise OSError(f'--cache_dir: {FLAGS.cache_dir} has {free / 2**30:.1f} GB free; the measurement needs 10 GB '
                  f'(a {size / 2**30:.1f} GB cache); give a folder on another disk or fewer --images')
  path = os.path.join(FLAGS.cache_dir, 'train_synthetic')
  try:
    t = time.perf_counter()
    if not os.path.exists(path):
      write_cache(path, FLAGS.images)
    written = {'mode': 'write', 'images': FLAGS.images, 'seconds': round(time.perf_counter() - t, 1),
               'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    rows = [written]
    for mode in FLAGS.modes:
      steps = FLAGS.steps if mode == 'pipeline' else FLAGS.train_steps
      r = subprocess.run([sys.executable, os.path.abspath(__file__), f'--child={mode}', f'--cache_dir={path}',
                          f'--steps={steps}', f'--workers={FLAGS.workers}'], capture_output=True, text=True)
      if r.returncode:
        sys.stderr.write(r.stderr[-3000:])
        raise RuntimeError(f'mode {mode}: exit code {r.returncode}')
      rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
  finally:
    if not FLAGS.keep:
      shutil.rmtree(path, ignore_errors=True)
  print(f'cache: {FLAGS.images} x {"x".join(map(str, SHAPE))} float32 scores + uint8 labels, {size / 1e9:.2f} GB '
        f'({size / 2**30:.2f} GiB)')
  print('| mode | steps | images read | seconds | process RSS: before the first batch, after step 2, at the end, '
        'peak (MB) | worker processes | peak RSS per worker (MB) | peak RSS of all workers (MB) |')
  print('|---|---|---|---|---|---|---|---|')
  for r in rows:
    figures = ', '.join(str(r[k]) for k in ('rss_start_mb', 'rss_after_step_2_mb', 'rss_end_mb') if k in r)
    print(f'| {r["mode"]} | {r.get("steps", "")} | {r["images"]} | {r["seconds"]} | '
          f'{figures + ", " if figures else ""}**{r["peak_rss_mb"]}** | {r.get("workers_seen", "")} | '
          f'{r.get("worker_peak_rss_mb", "")} | {r.get("workers_peak_rss_sum_mb", "")} |')


if __name__ == '__main__':
  cli.run(main)
