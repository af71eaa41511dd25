r"""Speed of the two CRFs of issue 15 at VOC size (500x375, 21 classes), beside the network's own inference, and what
the JAX layer's window and downsampling cost in precision, on this machine's CPU:

  python experiments/measure/crf_speed.py [--images=6] [--runs=3]

- dense CRF (dilated_jax.dense_crf, pydensecrf2, 10 iterations): seconds per image in this process (one core), and
  images/s through `refine_all` over --workers processes;
- the JAX layer (dilated_jax.models.crf.MeanFieldCRF, its defaults: window 11 cells of 4 x 4 pixels): one image,
  jitted, at test (T = 5 and 10) and as a training step (T = 5, forward and backward), median of --runs; compile
  time; XLA's temporary buffer size;
- the pascal_voc network (front end + Large context module) on the one 528 x 528 test tile a 500x375 image needs;
- precision: on a 94x125 image (a quarter of VOC's side), the layer at several (window, downsample) against the
  exact dense bilateral kernel (all N^2 pairs), T = 10: labels that agree and mean |Q - Q_exact|; and the dense CRF
  with the same parameters, whose lattice approximates the same kernels.

The image is a photo-like synthetic scene (dilated_jax.benchmark.scene) and the probabilities its label's one-hot,
blurred and noised. Prints Markdown and the load average (os.getloadavg) before and after each part: the machine may
be shared, and seconds are only comparable within one run.
"""

import os
import sys
import time

from absl import app, flags
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from dilated_jax import cli  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer('images', 6, 'images through the dense CRF')
flags.DEFINE_integer('workers', -1, 'dense-CRF worker processes for the parallel figure (-1: one per core)')
flags.DEFINE_integer('runs', 3, 'timed runs of each JAX function (after one untimed)')
flags.DEFINE_bool('network', True, 'also time the pascal_voc network on one test tile')
flags.DEFINE_bool('precision', True, 'also measure the window and downsampling against the exact kernel')

H, W, C = 375, 500, 21


def load() -> str:
  return ', '.join(f'{x:.1f}' for x in os.getloadavg())


def example(h: int, w: int, seed: int):
  """(probs (h, w, C) float32, RGB uint8 image): the scene's label one-hot, blurred at 1/8 and noised, as softmax."""
  from PIL import Image

  from dilated_jax import benchmark

  rng = np.random.default_rng(seed)
  image, label = benchmark.scene(w, h, C, noise=4.0, rng=rng)
  coarse = np.asarray(Image.fromarray(label).resize((w // 8, h // 8), Image.NEAREST))
  logits = 3.0 * np.eye(C)[coarse] + rng.normal(0, 1, coarse.shape + (C,))
  logits = np.stack([np.asarray(Image.fromarray(logits[..., k].astype(np.float32)).resize((w, h), Image.BILINEAR))
                     for k in range(C)], -1)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return (e / e.sum(-1, keepdims=True)).astype(np.float32), image


def timed(fn, runs: int) -> float:
  """Median seconds of `runs` calls of fn() after one untimed call."""
  from dilated_jax import benchmark

  return float(np.median(benchmark.timed(fn, runs, warmup=1)))


def dense_crf_speed():
  from dilated_jax import dense_crf
  from dilated_jax.data import pipeline

  params = dense_crf.DenseCRFParams()
  pairs = [example(H, W, seed) for seed in range(FLAGS.images)]
  print(f'load {load()}')
  t = time.perf_counter()
  for probs, image in pairs:
    dense_crf.refine(probs, image, params)
  one_core = (time.perf_counter() - t) / len(pairs)
  workers = pipeline.resolve_workers(FLAGS.workers)
  t = time.perf_counter()
  for _ in dense_crf.refine_all(pairs, params, workers=workers, labels=True):
    pass
  parallel = len(pairs) / (time.perf_counter() - t)
  print(f'| dense CRF, {params.iterations} iterations, one process | {one_core:.2f} s per image | '
        f'{1 / one_core:.2f} images/s per core |')
  print(f'| dense CRF, refine_all over {workers} workers (process start included) | | {parallel:.2f} images/s |')
  print(f'load {load()}')


def layer_speed():
  import jax
  import jax.numpy as jnp

  from dilated_jax.models.crf import MeanFieldCRF

  probs, image = example(H, W, 0)
  u, im = jnp.log(jnp.asarray(probs))[None], jnp.asarray(image, jnp.float32)[None]
  crf = MeanFieldCRF()
  params = crf.init(jax.random.key(0), u, im)['params']
  print(f'load {load()}')
  for iterations in (5, 10):
    layer = crf.clone(test_iterations=iterations)
    fn = jax.jit(lambda p, u, im: layer.apply({'params': p}, u, im))
    t = time.perf_counter()
    compiled = fn.lower(params, u, im).compile()
    compile_s = time.perf_counter() - t
    seconds = timed(lambda: compiled(params, u, im).block_until_ready(), FLAGS.runs)
    temp = compiled.memory_analysis().temp_size_in_bytes
    print(f'| JAX layer, test, T = {iterations} | {seconds:.2f} s per image | compile {compile_s:.1f} s, '
          f'temporaries {temp / 2 ** 20:.0f} MiB |')

  def loss(p, u):
    s = crf.apply({'params': p}, u, im, train=True)
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(s) * jax.nn.softmax(u), -1))

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  t = time.perf_counter()
  compiled = grad.lower(params, u).compile()
  compile_s = time.perf_counter() - t
  seconds = timed(lambda: jax.block_until_ready(compiled(params, u)), FLAGS.runs)
  temp = compiled.memory_analysis().temp_size_in_bytes
  print(f'| JAX layer, training step (forward + backward), T = {crf.train_iterations} | {seconds:.2f} s per image | '
        f'compile {compile_s:.1f} s, temporaries {temp / 2 ** 20:.0f} MiB |')
  print(f'load {load()}')


def network_speed():
  import jax
  import jax.numpy as jnp

  from dilated_jax import config
  from dilated_jax.data.info import DATASETS
  from dilated_jax.models import build_model

  model = build_model(config.base('pascal_voc').model)
  tile = DATASETS['pascal_voc'].tile
  margin = model.front_end.margin
  x = jnp.zeros((1, tile[0] + 2 * margin, tile[1] + 2 * margin, 3))
  params = jax.jit(model.init)(jax.random.key(0), x)['params']
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x)).lower(params, x).compile()
  print(f'load {load()}')
  seconds = timed(lambda: forward(params, x).block_until_ready(), FLAGS.runs)
  print(f'| pascal_voc network (front end + Large), one {tile[0]}x{tile[1]} tile ({x.shape[1]}x{x.shape[2]} input) '
        f'| {seconds:.2f} s per image | |')
  print(f'load {load()}')


def exact_bilateral_mean_field(u, image, crf):
  """The layer's update with the bilateral kernel over all N^2 pixel pairs (an N x N matrix): the reference."""
  import jax
  import jax.numpy as jnp

  from dilated_jax.models import crf as crf_lib

  _, h, w, c = u.shape
  yx = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing='ij'), -1).reshape(-1, 2) / crf.theta_alpha
  f = np.concatenate([yx, np.asarray(image, np.float64).reshape(-1, 3) / crf.theta_beta], -1)
  distance = np.zeros((h * w, h * w))
  for i in range(f.shape[1]):  # one feature at a time, in float64: N x N x 5 would not fit
    distance += (f[:, None, i] - f[None, :, i]) ** 2
  k = jnp.asarray(np.exp(-0.5 * distance), jnp.float32)
  del distance
  norm = jax.lax.rsqrt(k.sum(1))[:, None]
  spatial = crf_lib.SpatialFilter(jnp.ones((1, h, w), jnp.float32), crf.theta_gamma)
  mu = 1 - jnp.eye(c)
  s = u
  for _ in range(crf.test_iterations):
    q = jax.nn.softmax(s, -1)
    bilateral = (norm * (k @ (norm * q.reshape(-1, c)))).reshape(q.shape)
    s = u - (crf.w_spatial * spatial(q) + crf.w_bilateral * bilateral) @ mu.T
  return s


def precision():
  import jax
  import jax.numpy as jnp

  from dilated_jax import dense_crf
  from dilated_jax.models.crf import MeanFieldCRF

  h, w = H // 4 + 1, W // 4
  probs, image = example(h, w, 1)
  u, im = jnp.log(jnp.asarray(probs))[None], jnp.asarray(image, jnp.float32)[None]
  crf = MeanFieldCRF()
  params = crf.init(jax.random.key(0), u, im)['params']
  q_exact = jax.nn.softmax(exact_bilateral_mean_field(u, image, crf), -1)
  print(f'load {load()}; {h}x{w} image, theta_alpha {crf.theta_alpha}, theta_beta {crf.theta_beta}, '
        f'T = {crf.test_iterations}')
  print('| window (cells) | downsample | reach (pixels) | labels as exact | mean abs(Q - Q_exact) | '
        'kernel per image at 500x375 |')
  print('|---|---|---|---|---|---|')
  for window, downsample in ((5, 1), (11, 1), (21, 1), (5, 4), (11, 4), (21, 4), (11, 8), (21, 8)):
    layer = crf.clone(window=window, downsample=downsample)
    q = jax.nn.softmax(jax.jit(layer.apply)({'params': params}, u, im), -1)
    agree = float((q.argmax(-1) == q_exact.argmax(-1)).mean())
    cells = -(-H // downsample) * -(-W // downsample)
    print(f'| {window} | {downsample} | {window // 2 * downsample} | {100 * agree:.2f}% | '
          f'{float(jnp.abs(q - q_exact).mean()):.4f} | {cells * window ** 2 * 4 / 2 ** 20:.0f} MiB |')
  # The same CRF through pydensecrf2's permutohedral lattice: its approximation gap at this size.
  lattice = dense_crf.refine(probs, image, dense_crf.DenseCRFParams(
      theta_alpha=crf.theta_alpha, theta_beta=crf.theta_beta, theta_gamma=crf.theta_gamma,
      w_bilateral=crf.w_bilateral, w_spatial=crf.w_spatial, iterations=crf.test_iterations))
  agree = float((lattice.argmax(-1) == np.asarray(q_exact[0]).argmax(-1)).mean())
  print(f'| dense CRF (pydensecrf2 lattice) | | | {100 * agree:.2f}% | {np.abs(lattice - q_exact[0]).mean():.4f} | |')
  print(f'load {load()}')


def main(argv):
  del argv
  cli.configure_xla()
  print(f'# CRF speed, load average {load()} (1, 5, 15 min), {os.cpu_count()} CPUs')
  print('| what | time | note |')
  print('|---|---|---|')
  dense_crf_speed()
  layer_speed()
  if FLAGS.network:
    network_speed()
  if FLAGS.precision:
    precision()


if __name__ == '__main__':
  app.run(main)
