"""The benchmark's analytic FLOP count, against XLA's own count of the same forward pass; the input benchmark's
arithmetic (accelerators' consumption from FLOPs and published peaks) and its stand-in datasets."""

import io
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from dilated_jax import benchmark
from dilated_jax import config as config_lib
from dilated_jax.data.info import DATASETS
from dilated_jax.models import build_model, model_config


@pytest.mark.parametrize('preset,stage', [('pascal_voc', 'joint'), ('pascal_voc', 'context'), ('camvid', 'joint')])
def test_analytic_flops_match_xla_cost_analysis(preset, stage):
  cfg = model_config(preset)
  cfg.front_end.width = 1 / 16
  model = build_model(cfg)
  x = jnp.zeros((1, 404, 420, 3))
  params = jax.jit(model.init)(jax.random.key(0), x)['params']
  if stage == 'context':
    scores = jax.eval_shape(lambda p: model.front_end.apply({'params': p['front_end']}, x), params)
    x = jnp.zeros(scores.shape)
    fn = lambda p, x: model.context_module.apply({'params': p['context_module']}, x)  # noqa: E731
    hw = scores.shape[1:3]
  else:
    fn = lambda p, x: model.apply({'params': p}, x)  # noqa: E731
    hw = x.shape[1:3]
  xla = jax.jit(fn).lower(params, x).compile().cost_analysis()['flops']
  analytic = benchmark.forward_flops(model, params, hw, stage)
  # XLA also counts biases, ReLUs and pooling, and skips the taps of a padding it folds into a convolution.
  assert abs(xla - analytic) <= 0.05 * analytic


# ------------------------------------------------------------------ the input benchmark's arithmetic and stand-ins


def test_vendor_peaks_and_the_images_per_second_one_accelerator_consumes():
  peaks = {name: peak / 1e12 for name, (peak, _) in benchmark.ACCELERATORS.items()}
  assert peaks == {'TPU v4': 275, 'TPU v5e': 197, 'TPU v5p': 459, 'A100': 312, 'H100 SXM': 989, 'H200': 989}
  # VOC front end, crop 500: 3 x 209 GFLOP per image; at half of 275 and 989 TFLOP/s, about 220 and 790 images/s.
  flops = benchmark.train_flops_per_image(model_config('pascal_voc'), (500, 500))
  assert 600e9 < flops < 660e9
  assert benchmark.accelerator_images_per_s(flops, 275e12) == pytest.approx(0.5 * 275e12 / flops)
  assert 200 < benchmark.accelerator_images_per_s(flops, 275e12) < 240
  assert 750 < benchmark.accelerator_images_per_s(flops, 989e12) < 830


def test_training_flops_per_image_are_three_forward_passes_as_xla_counts_the_step():
  """3 x the forward convolutions, from parameter shapes alone, against XLA's count of the whole training step."""
  cfg = model_config('camvid')
  cfg.front_end.width = 1 / 8
  model = build_model(cfg, with_context=False)
  crop = (404, 404)
  x = jnp.zeros((2,) + crop + (3,))
  params = jax.jit(model.init)(jax.random.key(0), x[:1])['params']
  labels = jnp.zeros((2, 4, 4), jnp.int32)

  def loss(p):
    logits = model.apply({'params': p}, x)
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0]) + 0 * labels.sum()

  xla = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()['flops']
  analytic = 2 * benchmark.train_flops_per_image(cfg, crop)
  # The first layer needs no input gradient, so the step is a little under 3 forward passes.
  assert 0.9 * analytic <= xla <= 1.05 * analytic


@pytest.mark.parametrize('preset', sorted(benchmark.RELEASED_IMAGES))
def test_stand_in_records_decode_to_the_sizes_and_formats_declared(preset):
  fmt, width, height = benchmark.RELEASED_IMAGES[preset]
  split = benchmark.encoded_split(preset, 1)
  record = split.records[0]
  with Image.open(io.BytesIO(record['image'])) as im:
    assert (im.format, im.size, im.mode) == (fmt, (width, height), 'RGB')
  image, label = split[0]
  assert image.shape == (height, width, 3) and image.dtype == np.uint8
  assert label.shape == (height, width) and int(label.max()) < DATASETS[preset].num_classes
  assert len(np.unique(label)) > 2  # shapes of several classes, not one flat label
  # Photo-like, not white noise (24 bit/px, which would make decoding unrepresentatively slow), nor flat colour.
  bits_per_pixel = 8 * len(record['image']) / (width * height)
  assert (2 if fmt == 'JPEG' else 6) < bits_per_pixel < (6 if fmt == 'JPEG' else 14)


def test_input_benchmark_end_to_end_on_a_tiny_setting(tmp_path):
  out = tmp_path / 'input.json'
  run = subprocess.run([sys.executable, '-m', 'dilated_jax.benchmark', '--input', '--preset=camvid', '--batch=2',
                        '--images=2', '--max_workers=1', '--seconds=0.2', f'--output={out}'],
                       capture_output=True, text=True, timeout=60)
  assert run.returncode == 0, run.stderr[-2000:]
  assert '| camvid |' in run.stdout and 'H100 SXM' in run.stdout
  (r,) = json.loads(out.read_text())
  assert [w['workers'] for w in r['workers']] == [0, 1] and all(w['images_per_s'] > 0 for w in r['workers'])
  assert (r['crop'], r['batch'], r['image_size']) == ([628, 628], 2, [480, 360])
  assert r['per_core_images_per_s'] == r['workers'][1]['images_per_cpu_s']
  h100 = r['accelerators']['H100 SXM']
  assert h100['images_per_s'] == pytest.approx(0.5 * 989e12 / r['train_flops_per_image'])
  assert h100['host_cores'] == pytest.approx(h100['images_per_s'] / r['per_core_images_per_s'])
  assert h100['host_cores_per_host'] == pytest.approx(8 * h100['host_cores'])


def test_input_benchmark_refuses_no_workers_in_one_line():
  run = subprocess.run([sys.executable, '-m', 'dilated_jax.benchmark', '--input', '--max_workers=0'],
                       capture_output=True, text=True, timeout=60)
  assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith('error: --max_workers:')


def test_overlap_compares_fed_and_constant_steps_of_one_run():
  cfg = config_lib.load('experiments/synthetic.py:stage=frontend')
  r = benchmark.overlap_benchmark(cfg, [0], steps=2, windows=1)
  (fed,) = r['fed']
  assert len(r['constant']) == 2 and fed['workers'] == 0
  around = (r['constant'][0]['step_s_median'] + r['constant'][1]['step_s_median']) / 2
  assert fed['constant_step_s'] == pytest.approx(around)
  assert fed['ratio'] == pytest.approx(fed['step_s_median'] / around)
  assert 0 <= fed['input_wait'] < 1


def test_alternate_times_each_function_in_rounds_and_a_very_slow_one_once(monkeypatch):
  """The median of `runs` timed calls after an untimed one; a function whose first call took over ONCE_S is not
  called again, that call its figure."""
  from dilated_jax import benchmark_layers

  monkeypatch.setattr(benchmark_layers, 'ONCE_S', 5.0)
  calls = {'fast': 0, 'slow': 0}

  def timed(name, seconds):
    def f():
      calls[name] += 1
      return seconds[calls[name] - 1]
    return f
  got = benchmark_layers.alternate({'fast': timed('fast', [4.0, 1.0, 3.0, 2.0]), 'slow': timed('slow', [7.0, 1.0])},
                                   runs=3)
  assert calls == {'fast': 4, 'slow': 1} and got == {'fast': 2.0, 'slow': 7.0}
