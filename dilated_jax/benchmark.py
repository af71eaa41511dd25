"""How fast a preset trains and predicts here, against this machine's own measured peak.

  python -m dilated_jax.benchmark --preset=pascal_voc --stage=joint --batch=2 --crop=500,500
  python -m dilated_jax.benchmark --preset=camvid --stage=frontend --batch=8 --crop=628,628 --dtype=bfloat16

Prints and (with --output) writes as JSON: compile time; train-step images/s (median and spread of --runs timed
steps after --warmup); inference latency per test tile; the step's FLOPs from XLA's cost analysis beside an analytic
count of the network's convolutions; achieved FLOP/s; the peak of a large matmul of the same dtype timed in the same
run; their ratio; peak memory; the input pipeline's own throughput.
"""

import json
import math
import os
import platform
import resource
import time

from absl import flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from dilated_jax import cli, sharding
from dilated_jax.data import pipeline
from dilated_jax.data.info import DATASETS
from dilated_jax.models import build_model
from dilated_jax.train import make_train_step, optimizer
from dilated_jax import config as config_lib


def timed(fn, runs: int, warmup: int) -> np.ndarray:
  """Seconds of `runs` calls of fn() (which blocks until done) after `warmup` untimed calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return np.array(times)


def forward_flops(model, params, hw, stage: str) -> float:
  """2 x multiply-adds of every convolution of one forward pass on an (h, w) input, from the kernels' shapes."""
  h, w = hw
  total = 0.0
  parts = [('context_module', model.context_module)] if stage == 'context' else [
      ('front_end', model.front_end), ('context_module', model.context_module)]
  for part, module in parts:
    if module is None:
      continue
    valid = module.padding.upper() == 'VALID' or module.padding == 'pad_once'
    if module.padding == 'pad_once':  # padded once by the receptive field's radius, then unpadded convolutions
      radius = sum(layer.dilation * (layer.kernel - 1) // 2 for layer in module.layers())
      h, w = h + 2 * radius, w + 2 * radius
    for layer in module.layers():
      if layer.pool:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        continue
      kh, kw, cin, cout = params[part][layer.name]['kernel'].shape
      if valid:
        h, w = h - layer.dilation * (kh - 1), w - layer.dilation * (kw - 1)
      total += 2.0 * h * w * kh * kw * cin * cout
  return total


def matmul_peak(dtype, n: int, runs: int) -> float:
  """FLOP/s of an n x n x n matmul in `dtype` on the default device: the machine's practical peak."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  seconds = timed(lambda: f(a).block_until_ready(), runs, 2)
  return 2.0 * n ** 3 / float(np.median(seconds))


def peak_memory_bytes() -> tuple[int, str]:
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device peak_bytes_in_use'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'process max RSS'


def benchmark(preset: str, stage: str, batch: int, crop, dtype: str, devices, runs: int, warmup: int,
              width: float = 1.0) -> dict:
  """Every figure of the module docstring for one configuration."""
  cfg = config_lib.base(preset)
  cfg.model.dtype = dtype
  cfg.model.front_end.width = width
  mesh = sharding.make_mesh(devices)
  model = build_model(cfg.model, with_context=stage != 'frontend')
  fe = model.front_end
  x = jnp.zeros((1,) + tuple(crop) + (3,))
  params = jax.jit(model.init)(jax.random.key(0), x)['params']
  out_hw = jax.eval_shape(lambda p, x: model.apply({'params': p}, x), params, x).shape[1:3]
  trainable = ('context_module',) if stage == 'context' else tuple(params)
  tx = optimizer(cfg)
  repl = sharding.replicated(mesh)
  state = jax.device_put({'step': jnp.zeros((), jnp.int32), 'params': params,
                          'opt_state': tx.init({k: params[k] for k in trainable})}, repl)
  rng = np.random.default_rng(0)
  c = cfg.model.num_classes
  inputs = rng.normal(size=(batch,) + (tuple(out_hw) + (c,) if stage == 'context' else tuple(crop) + (3,)))
  batch_arrays = sharding.global_batch(mesh, {'image': inputs.astype(np.float32),
                                              'label': rng.integers(0, c, (batch,) + tuple(out_hw)).astype(np.int32)})
  step = make_train_step(model, stage, trainable, tx, c, jax.random.key(0), mesh)

  t = time.perf_counter()
  compiled = step.lower(state, batch_arrays).compile()
  compile_s = time.perf_counter() - t
  xla_flops = float(compiled.cost_analysis().get('flops', float('nan')))
  holder = {'state': state}

  def one_step():
    holder['state'], m = compiled(holder['state'], batch_arrays)
    jax.block_until_ready(m['loss'])

  step_s = timed(one_step, runs, warmup)
  fwd = forward_flops(model, params, tuple(crop) if stage != 'context' else tuple(out_hw), stage) * batch
  # A train step is the forward pass and a backward pass of about twice its cost.
  analytic = 3 * fwd

  # Inference on one test tile: the deploy input (tile + 2 margin), front end and context module.
  tile = DATASETS[preset].tile
  deploy = build_model(cfg.model)
  tile_x = jnp.zeros((1, tile[0] + 2 * fe.margin, tile[1] + 2 * fe.margin, 3))
  deploy_params = jax.jit(deploy.init)(jax.random.key(0), jnp.zeros((1,) + tuple(crop) + (3,)))['params']
  infer = jax.jit(lambda p, x: deploy.apply({'params': p}, x)).lower(deploy_params, tile_x).compile()
  infer_s = timed(lambda: infer(deploy_params, tile_x).block_until_ready(), max(3, runs // 2), 1)

  # The input pipeline alone, on images of the dataset's typical size (VOC-like 500x375 for pascal_voc).
  image = rng.integers(0, 256, (375, 500, 3) if preset == 'pascal_voc' else (tile[0], tile[1], 3), dtype=np.uint8)
  label = rng.integers(0, c, image.shape[:2], dtype=np.uint8)
  n_examples = 4 * batch
  t = time.perf_counter()
  for i in range(n_examples):
    pipeline.train_example(image, label, crop=tuple(crop), margin=fe.margin, stride=fe.stride, out_hw=out_hw,
                           mean_bgr=DATASETS[preset].mean_bgr, rng=np.random.default_rng(i))
  pipeline_ips = n_examples / (time.perf_counter() - t)

  peak = matmul_peak(jnp.dtype(dtype), 4096 if jax.default_backend() == 'cpu' else 8192, 5)
  median = float(np.median(step_s))
  memory, memory_kind = peak_memory_bytes()
  return dict(
      preset=preset, stage=stage, width=width, batch=batch, crop=list(crop), dtype=dtype, devices=mesh.size,
      backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind, jax=jax.__version__,
      machine=f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs',
      xla_flags=os.environ.get('XLA_FLAGS', ''),
      compile_s=compile_s, step_s_median=median, step_s_min=float(step_s.min()), step_s_max=float(step_s.max()),
      images_per_s=batch / median, tile=list(tile), inference_tile_s_median=float(np.median(infer_s)),
      step_flops_xla=xla_flops, step_flops_analytic=analytic, achieved_flops=xla_flops / median,
      peak_matmul_flops=peak, fraction_of_peak=xla_flops / median / peak, peak_memory_bytes=memory,
      peak_memory_kind=memory_kind, pipeline_images_per_s=pipeline_ips, runs=runs, warmup=warmup)


def report(r: dict) -> str:
  """The figures of one run as a short Markdown table."""
  rows = [
      ('configuration', f"{r['preset']} {r['stage']}{'' if r['width'] == 1 else ', width %g' % r['width']}, batch {r['batch']}, crop {r['crop'][0]}x{r['crop'][1]}, "
                        f"{r['dtype']}, {r['devices']} device(s), {r['backend']} ({r['device_kind']})"),
      ('compile', f"{r['compile_s']:.1f} s"),
      ('train step', f"{r['step_s_median']:.3f} s median (min {r['step_s_min']:.3f}, max {r['step_s_max']:.3f}, "
                     f"{r['runs']} runs): {r['images_per_s']:.2f} images/s"),
      ('step FLOPs', f"{r['step_flops_xla'] / 1e9:.1f} G (XLA) vs {r['step_flops_analytic'] / 1e9:.1f} G "
                     f"(analytic: 3 x the forward convolutions)"),
      ('achieved', f"{r['achieved_flops'] / 1e9:.0f} GFLOP/s = {100 * r['fraction_of_peak']:.0f}% of the "
                   f"measured {r['dtype']} matmul peak {r['peak_matmul_flops'] / 1e9:.0f} GFLOP/s"),
      ('inference', f"{1e3 * r['inference_tile_s_median']:.0f} ms per {r['tile'][0]}x{r['tile'][1]} tile"),
      ('peak memory', f"{r['peak_memory_bytes'] / 2 ** 30:.2f} GiB ({r['peak_memory_kind']})"),
      ('input pipeline', f"{r['pipeline_images_per_s']:.0f} images/s on one core "
                         f"({r['pipeline_images_per_s'] / r['images_per_s']:.0f}x the step's need)"),
  ]
  return '\n'.join(['| figure | value |', '|---|---|'] + [f'| {k} | {v} |' for k, v in rows])


FLAGS = flags.FLAGS


def main(argv):
  del argv
  crop = tuple(int(v) for v in FLAGS.crop.split(','))
  if len(crop) != 2:
    raise ValueError(f'--crop: expected H,W, got {FLAGS.crop!r}')
  devices = jax.devices()[:FLAGS.devices] if FLAGS.devices else None
  logging.info('benchmarking %s %s', FLAGS.preset, FLAGS.stage)
  result = benchmark(FLAGS.preset, FLAGS.stage, FLAGS.batch, crop, FLAGS.dtype, devices, FLAGS.runs, FLAGS.warmup,
                     FLAGS.width)
  print(report(result))
  if FLAGS.output:
    results = []
    if os.path.exists(FLAGS.output):
      with open(FLAGS.output) as f:
        results = json.load(f)
    with open(FLAGS.output + '.tmp', 'w') as f:
      json.dump(results + [result], f, indent=1)
    os.replace(FLAGS.output + '.tmp', FLAGS.output)


if __name__ == '__main__':
  flags.DEFINE_enum('preset', 'pascal_voc', sorted(DATASETS), 'network preset')
  flags.DEFINE_enum('stage', 'joint', ['frontend', 'context', 'joint'], 'what the step trains')
  flags.DEFINE_integer('batch', 2, 'global batch')
  flags.DEFINE_string('crop', '500,500', 'training crop H,W, margin included')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'compute dtype (parameters stay float32)')
  flags.DEFINE_float('width', 1.0, "front_end.width (1: the paper's network)")
  flags.DEFINE_integer('devices', 0, 'devices to use (0: all)')
  flags.DEFINE_integer('runs', 5, 'timed steps')
  flags.DEFINE_integer('warmup', 2, 'untimed steps after compilation')
  flags.DEFINE_string('output', None, 'append the result to this JSON list')
  cli.run(main)
