"""How fast a preset trains and predicts here, against this machine's own measured peak; how fast the input
pipeline feeds it, against what accelerators consume.

  python -m dilated_jax.benchmark --preset=pascal_voc --stage=joint --batch=2 --crop=500,500
  python -m dilated_jax.benchmark --preset=camvid --stage=frontend --batch=8 --crop=628,628 --dtype=bfloat16
  python -m dilated_jax.benchmark --input --preset=all
  python -m dilated_jax.benchmark --input_overlap --config=experiments/synthetic.py:stage=frontend
  python -m dilated_jax.benchmark --layers --output=docs/results/benchmark_cpu.json \
      --markdown=docs/results/benchmark_cpu.md

The step benchmark prints and (with --output) writes as JSON: compile time; train-step images/s (median and spread
of --runs timed steps after --warmup); inference latency per test tile; the step's FLOPs from XLA's cost analysis
beside an analytic count of the network's convolutions; achieved FLOP/s; the peak of a large matmul of the same
dtype timed in the same run; their ratio; peak memory; the input pipeline's own throughput.

--input: the training pipeline's images/s on the preset's front-end crops, decoding included, for 0 (a thread) to
--max_workers worker processes, beside today's baselines from the same run, and the images/s one accelerator
consumes at half its published bf16 peak, hence the host cores it needs.

--input_overlap: the step time of training fed by the pipeline against training on one constant batch.

--layers: the image stage and the context stage beside PyTorch's same network in one process, every convolution's
passes and the rest of the step (benchmark_layers.py).
"""

import io
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

from dilated_jax import InputError, checkpoint, cli, files, sharding
from dilated_jax import config as config_lib
from dilated_jax import data as datasets
from dilated_jax.data import pipeline
from dilated_jax.data.info import DATASETS
from dilated_jax.models import build_model
from dilated_jax.train import full_resolution, image_examples, make_train_step, optimizer


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


def conv_layers(model, params, hw, stage: str) -> list[dict]:
  """Every convolution of one forward pass on an (h, w) input, in order, from the kernels' shapes: part, name,
  kernel (kh, kw, c_in, c_out), dilation, padding ((top, bottom), (left, right)), in_hw, out_hw, flops (2 x its
  multiply-adds per image), and what comes with it in the model: pad_before (the context module's padding once),
  relu, dropout (the rate in training), pool_after (a 2x2 ceil-mode max pooling). in_hw is what the convolution
  reads: after pad_before, before its own padding."""
  from dilated_jax.models.layers import conv_padding

  h, w = hw
  out = []
  parts = [('context_module', model.context_module)] if stage == 'context' else [
      ('front_end', model.front_end), ('context_module', model.context_module)]
  for part, module in parts:
    if module is None:
      continue
    specs = module.layers()
    convs = [layer for layer in specs if not layer.pool]
    pad_before = 0
    if module.padding == 'pad_once':  # padded once by the receptive field's radius, then unpadded convolutions
      pad_before = sum(layer.dilation * (layer.kernel - 1) // 2 for layer in convs)
    mode = 'SAME' if module.padding.upper() == 'SAME' else 'VALID'
    for layer in specs:
      if layer.pool:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        out[-1]['pool_after'] = True
        continue
      first = layer is convs[0]
      if first:
        h, w = h + 2 * pad_before, w + 2 * pad_before
      kernel = tuple(params[part][layer.name]['kernel'].shape)
      padding = conv_padding(mode if layer.kernel > 1 else 'VALID', layer.kernel, layer.dilation)
      (pt, pb), (pl, pr) = padding
      ho, wo = h + pt + pb - layer.dilation * (kernel[0] - 1), w + pl + pr - layer.dilation * (kernel[1] - 1)
      last = layer is convs[-1]
      fc = part == 'front_end' and layer.name in ('fc6', 'fc7')
      out.append(dict(part=part, name=layer.name, kernel=kernel, dilation=layer.dilation, padding=padding,
                      in_hw=(h, w), out_hw=(ho, wo),
                      flops=2.0 * ho * wo * math.prod(kernel), pad_before=pad_before if first else 0,
                      relu=not last, dropout=module.dropout_rate if fc else 0.0, pool_after=False))
      h, w = ho, wo
  return out


def forward_flops(model, params, hw, stage: str) -> float:
  """2 x multiply-adds of every convolution of one forward pass on an (h, w) input, from the kernels' shapes."""
  return sum(layer['flops'] for layer in conv_layers(model, params, hw, stage))


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
  state = jax.device_put(checkpoint.initial_state(params, tx, trainable), repl)
  rng = np.random.default_rng(0)
  c = cfg.model.num_classes
  inputs = rng.normal(size=(batch,) + (tuple(out_hw) + (c,) if stage == 'context' else tuple(crop) + (3,)))
  batch_arrays = sharding.global_batch(mesh, {'image': inputs.astype(np.float32),
                                              'label': rng.integers(0, c, (batch,) + tuple(out_hw)).astype(np.int32)})
  step = make_train_step(model, stage, trainable, tx, c, jax.random.key(0), mesh, DATASETS[preset].mean_bgr)

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
                           rng=np.random.default_rng(i))
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
      ('configuration', f"{r['preset']} {r['stage']}{'' if r['width'] == 1 else ', width %g' % r['width']}, "
                        f"batch {r['batch']}, crop {r['crop'][0]}x{r['crop'][1]}, "
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


# ------------------------------------------------------------------ the input pipeline against the accelerators

# Dense bf16 peaks as the vendors publish them (FLOP/s per chip, no sparsity), and the chips of one host: Google's
# Cloud TPU v4, v5e, v5p pages (a VM of 4 chips; v5e's single-host v5litepod-8 has 8) and NVIDIA's A100 (SXM),
# H100 SXM and H200 datasheets (8 GPUs in an HGX or DGX server).
ACCELERATORS = {
    'TPU v4': (275e12, 4),
    'TPU v5e': (197e12, 4),
    'TPU v5p': (459e12, 4),
    'A100': (312e12, 8),
    'H100 SXM': (989e12, 8),
    'H200': (989e12, 8),
}
UTILISATION = 0.5  # of the bf16 peak: the yardstick for a well-fed training step

# The front-end stage of each preset, whose training crop and batch the input benchmark takes.
PRESET_EXPERIMENTS = {
    'pascal_voc': 'voc_frontend.py:data=voc_sbd',
    'camvid': 'camvid_dilation8.py:stage=frontend',
    'kitti': 'kitti_dilation7.py:stage=frontend',
    'cityscapes': 'cityscapes_dilation10.py:stage=frontend',
}

# How the releases this project reads ship their training images: format, width, height. VOC's JPEGs are at most
# 500 px wide, 500x375 the commonest; CamVid is SegNet's 480x360 PNG release (the paper's originals are 960x720,
# which it used at 640x480); KITTI (Ros et al.) about 1242x375 PNG; Cityscapes 2048x1024 PNG.
RELEASED_IMAGES = {
    'pascal_voc': ('JPEG', 500, 375),
    'camvid': ('PNG', 480, 360),
    'kitti': ('PNG', 1242, 375),
    'cityscapes': ('PNG', 2048, 1024),
}
# Sensor-like noise (std in grey levels) on smooth content: what sets an encoded photo's size and decoding time;
# white noise would make PNG decoding unrepresentatively slow. Chosen to give about the bits per pixel of the real
# files (Cityscapes' PNGs ~8.5, VOC's JPEGs ~4-5: release size / pixels); the report prints ours.
NOISE = {'JPEG': 8.0, 'PNG': 2.0}
JPEG_QUALITY = 95


def train_flops_per_image(cfg_model, crop) -> float:
  """FLOPs of one image of the front-end training step at `crop`: 3 x the forward convolutions (shapes only)."""
  model = build_model(cfg_model, with_context=False)
  x = jax.ShapeDtypeStruct((1,) + tuple(crop) + (3,), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  return 3 * forward_flops(model, params, tuple(crop), 'frontend')


def accelerator_images_per_s(flops_per_image: float, peak: float) -> float:
  """Training images/s one accelerator consumes at UTILISATION of `peak` FLOP/s."""
  return UTILISATION * peak / flops_per_image


def scene(width: int, height: int, num_classes: int, noise: float, rng: np.random.Generator):
  """A photo-like RGB uint8 image (smooth colour waves, a dozen flat shapes, blur, noise) and its label of shapes."""
  from PIL import Image, ImageDraw, ImageFilter

  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  waves = np.stack([128 + 80 * np.sin(2 * np.pi * (a * xx + b * yy) + phase)
                    for a, b, phase in zip(*(rng.normal(size=(2, 3)) / max(width, height)), rng.uniform(0, 6, 3))],
                   axis=-1)
  image = Image.fromarray(waves.clip(0, 255).astype(np.uint8))
  label = Image.new('L', (width, height), 0)
  draw, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
  for k in range(12):
    x0, y0 = rng.uniform(-0.1, 1, 2) * (width, height)
    size = rng.uniform(0.05, 0.4) * min(width, height)
    box = [x0, y0, x0 + size * rng.uniform(0.5, 2), y0 + size]
    colour, cls = tuple(int(v) for v in rng.integers(0, 256, 3)), int(rng.integers(1, num_classes))
    (draw.ellipse if k % 2 else draw.rectangle)(box, fill=colour)
    (draw_label.ellipse if k % 2 else draw_label.rectangle)(box, fill=cls)
  image = np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)), np.float32)
  image = (image + rng.normal(0, noise, image.shape)).clip(0, 255).astype(np.uint8)
  return image, np.asarray(label)


def encoded_split(preset: str, count: int, seed: int = 0):
  """A stand-in for a prepared training split of `preset`, in memory: builder.Split over `count` records holding
  the image encoded as the release ships it and the label as a PNG of class ids, as `prepare` writes them."""
  from PIL import Image

  from dilated_jax.data import builder

  fmt, width, height = RELEASED_IMAGES[preset]
  rng = np.random.default_rng(seed)
  records = []
  for i in range(count):
    image, label = scene(width, height, DATASETS[preset].num_classes, NOISE[fmt], rng)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({'quality': JPEG_QUALITY} if fmt == 'JPEG' else {}))
    records.append({'image': buffer.getvalue(), 'label': builder.png_bytes(Image.fromarray(label, 'L')),
                    'name': f'{preset}_{i:04d}'})
  return builder.Split(records, f'{preset} stand-in')


def experiment_config(preset: str):
  """The config of the preset's front-end experiment (experiments/ beside the package)."""
  folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'experiments')
  return config_lib.load(os.path.join(folder, PRESET_EXPERIMENTS[preset]))


def examples_per_cpu_s(fn, count: int, seconds: float) -> float:
  """Calls of fn(i) per CPU-second of this process over at least `seconds`, i cycling over range(count), after one
  untimed call: one core's rate, whatever else runs on the machine."""
  fn(0)
  done, cpu, t = 0, time.process_time(), time.perf_counter()
  while time.perf_counter() - t < seconds:
    fn(done % count)
    done += 1
  return done / (time.process_time() - cpu)


def cpu_seconds() -> float:
  """CPU time of this process and its live children (the input workers) so far: on a shared machine, what a
  measurement used, whatever else ran beside it."""
  import multiprocessing

  total = time.process_time()
  for child in multiprocessing.active_children():
    try:
      with open(f'/proc/{child.pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')  # utime, stime
    except (OSError, IndexError, ValueError):  # gone, or no /proc: counted as nothing
      pass
  return total


def pipeline_rate(make_example, num_examples: int, batch: int, workers: int, seconds: float) -> dict:
  """images/s of `pipeline.batches` with `workers` in the steady state: the time to the first batch (start-up:
  processes spawned, the source unpickled) and the batches already buffered by then are not counted."""
  t = time.perf_counter()
  it = pipeline.batches(make_example, num_examples, global_batch=batch, seed=0, start_step=0, stop_step=1 << 30,
                        workers=workers)
  try:
    next(it)
    startup = time.perf_counter() - t
    for _ in range(3 * max(workers, 1)):  # each worker's buffer of 2 and the batch it is building
      next(it)
    done, cpu, main_cpu, t = 0, cpu_seconds(), time.process_time(), time.perf_counter()
    while time.perf_counter() - t < seconds:
      next(it)
      done += 1
    elapsed, cpu, main_cpu = time.perf_counter() - t, cpu_seconds() - cpu, time.process_time() - main_cpu
  finally:
    it.close()
  # main_ms_per_image: what the training process spends receiving (with workers) or building (without) an image.
  return dict(workers=workers, images_per_s=done * batch / elapsed, images_per_cpu_s=done * batch / max(cpu, 1e-9),
              main_ms_per_image=1e3 * main_cpu / (done * batch), startup_s=startup, batches=done)


def input_benchmark(preset: str, max_workers: int, seconds: float, batch: int | None = None, crop=None,
                    images: int = 8, data_dir: str | None = None) -> dict:
  """The pipeline's images/s on the preset's training crops for workers 0..max_workers, decoding included, beside
  today's baselines measured in the same run and the accelerators' consumption. The images: an in-memory stand-in
  of `images` records, or with `data_dir` the prepared training split there."""
  from PIL import Image

  load_before = list(os.getloadavg())
  cfg = experiment_config(preset)
  if crop is not None:
    cfg.data.crop = tuple(crop)
  batch = batch or cfg.batch_size
  info = DATASETS[preset]
  model = build_model(cfg.model, with_context=False)
  t = time.perf_counter()
  if data_dir:
    cfg.data.dir = data_dir
    source = datasets.get_source(cfg.data, 'train')
  else:
    source = encoded_split(preset, images)
  generate_s = time.perf_counter() - t
  make_example, crop, _ = image_examples(cfg, source, model, info)
  decoded = [source[i] for i in range(min(images, len(source)))]
  from_arrays = pipeline.ImageExamples(decoded, info.num_classes, **make_example.args)
  image, _ = decoded[0]
  encoded = [source.records[i]['image'] for i in range(len(decoded))]
  encoded_bytes = np.mean([len(e) for e in encoded])
  with Image.open(io.BytesIO(encoded[0])) as im:
    image_format = im.format

  def train_example_alone(i):  # no decoding, no batching
    pipeline.train_example(*decoded[i], rng=np.random.default_rng(i), **make_example.args)

  def before_alone(i):  # the figure of docs/results/benchmark_cpu.md, measured here
    train_example_before(*decoded[i], rng=np.random.default_rng(i), mean_bgr=info.mean_bgr, **make_example.args)

  baseline = dict(
      before_per_cpu_s=examples_per_cpu_s(before_alone, len(decoded), seconds),
      train_example_per_cpu_s=examples_per_cpu_s(train_example_alone, len(decoded), seconds),
      decode_and_train_example_per_cpu_s=examples_per_cpu_s(lambda i: make_example(i, np.random.default_rng(i)),
                                                            len(source), seconds),
      arrays_workers0=pipeline_rate(from_arrays, len(decoded), batch, 0, seconds),
      arrays_workers1=pipeline_rate(from_arrays, len(decoded), batch, 1, seconds))
  rates = [pipeline_rate(make_example, len(source), batch, w, seconds) for w in range(max_workers + 1)]
  flops = train_flops_per_image(cfg.model, crop)
  # One core's rate: images per CPU-second of the 1-worker pipeline, the worker's and the training process's
  # (receiving the batches) together; on a quiet machine about its images/s, on a shared one still one core's.
  per_core = rates[1]['images_per_cpu_s']
  accelerators = {}
  for name, (peak, chips) in ACCELERATORS.items():
    consumed = accelerator_images_per_s(flops, peak)
    accelerators[name] = dict(peak_flops=peak, chips_per_host=chips, images_per_s=consumed,
                              host_cores=consumed / per_core, host_cores_per_host=chips * consumed / per_core)
  return dict(
      preset=preset, experiment=PRESET_EXPERIMENTS[preset], crop=list(crop), batch=batch,
      source=f'prepared, {data_dir}' if data_dir else 'stand-in', image_format=image_format,
      image_size=[image.shape[1], image.shape[0]], images=len(source),
      encoded_bytes=float(encoded_bytes), bits_per_pixel=8 * encoded_bytes / (image.shape[0] * image.shape[1]),
      generate_s=generate_s, seconds=seconds, baseline=baseline, workers=rates, per_core_images_per_s=per_core,
      scaling=rates[-1]['images_per_s'] / rates[1]['images_per_s'] if max_workers >= 1 else float('nan'),
      train_flops_per_image=flops, utilisation=UTILISATION, accelerators=accelerators, load_average_before=load_before,
      **machine())


def train_example_before(image_rgb, label, *, crop, margin, stride, out_hw, mean_bgr, rng, flip=True,
                         scale_range=(1.0, 1.0), label_offset=0, full_resolution=False):
  """`pipeline.train_example` as it was before the grain pipeline (one thread, float32 sent to the devices): the
  whole image made BGR minus the mean, padded, then cropped. The baseline the per-core target is measured against."""
  del scale_range, full_resolution  # the benchmark's stages take labels at the output stride
  image, label = pipeline.pad_to_crop(pipeline.to_network_input(image_rgb, mean_bgr), label, margin, crop)
  y, x = int(rng.integers(image.shape[0] - crop[0] + 1)), int(rng.integers(image.shape[1] - crop[1] + 1))
  image, label = image[y:y + crop[0], x:x + crop[1]], label[y:y + crop[0], x:x + crop[1]]
  if flip and rng.random() < 0.5:
    image, label = image[:, ::-1], label[:, ::-1]
  return {'image': np.ascontiguousarray(image),
          'label': pipeline.label_slice(label, margin + label_offset, stride, out_hw)}


def machine() -> dict:
  return dict(machine=f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs',
              cores_available=pipeline.resolve_workers(-1), load_average=list(os.getloadavg()),
              time=time.strftime('%Y-%m-%d %H:%M:%S'))


def input_report(results: list[dict]) -> str:
  """The input benchmark of one or more presets as three Markdown tables."""
  lines = ['| preset | training images | crop, batch | workers | images/s | per worker | vs 1 worker | '
           'images per CPU-second | training process, ms per image | start-up |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in results:
    one = r['workers'][1]['images_per_s'] if len(r['workers']) > 1 else float('nan')
    for k, w in enumerate(r['workers']):
      head = (f"| {r['preset']} | {r['source']}: {r['image_format']} {r['image_size'][0]}x{r['image_size'][1]}, "
              f"{r['encoded_bytes'] / 1e3:.0f} kB ({r['bits_per_pixel']:.1f} bit/px) | {r['crop'][0]}, {r['batch']} "
              if k == 0 else '| | | ')
      per = w['images_per_s'] / w['workers'] if w['workers'] else float('nan')
      lines.append(f"{head}| {w['workers'] or '0 (thread)'} | {w['images_per_s']:.0f} | "
                   f"{'' if np.isnan(per) else f'{per:.0f}'} | {w['images_per_s'] / one:.2f}x | "
                   f"{w['images_per_cpu_s']:.0f} | {w['main_ms_per_image']:.1f} | {w['startup_s']:.1f} s |")
  lines += ['', 'images per CPU-second (one core\'s rate):', '',
            '| preset | before: float32, whole image padded, one thread (no decoding) | now: train_example alone | '
            'same arrays, batches(workers=0) | same arrays, 1 worker (vs before) | decoding + train_example | '
            'decoded, 1 worker (per core) |', '|---|---|---|---|---|---|---|']
  for r in results:
    b = r['baseline']
    before = b['before_per_cpu_s']
    lines.append(f"| {r['preset']} | {before:.0f} | {b['train_example_per_cpu_s']:.0f} | "
                 f"{b['arrays_workers0']['images_per_cpu_s']:.0f} | {b['arrays_workers1']['images_per_cpu_s']:.0f} "
                 f"({b['arrays_workers1']['images_per_cpu_s'] / before:.2f}x) | "
                 f"{b['decode_and_train_example_per_cpu_s']:.0f} | {r['per_core_images_per_s']:.0f} |")
  names = list(ACCELERATORS)
  lines += ['', f'one accelerator at {UTILISATION:.0%} of its bf16 peak: training images/s, and the host cores '
            'that feed it at the per-core rate above:', '', '| preset (train GFLOP/image) | ' + ' | '.join(
      f'{n} ({ACCELERATORS[n][0] / 1e12:.0f} TFLOP/s)' for n in names) + ' |', '|---' * (len(names) + 1) + '|']
  for r in results:
    cells = [f"{a['images_per_s']:.0f} img/s: {a['host_cores']:.1f} cores ({a['host_cores_per_host']:.0f} per "
             f"{a['chips_per_host']}-chip host)" for a in (r['accelerators'][n] for n in names)]
    lines.append(f"| {r['preset']} ({r['train_flops_per_image'] / 1e9:.0f}) | " + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


# ------------------------------------------------------------------ training fed by the pipeline vs a constant batch


def training_source(cfg):
  """The config's training split: the built-in scenes, a prepared dataset in data.dir, or else the in-memory
  stand-in of the same preset (`encoded_split`, 32 records); and which of them it is."""
  if cfg.data.name == 'synthetic':
    return datasets.get_source(cfg.data, 'train'), 'the built-in synthetic scenes'
  try:
    return datasets.get_source(cfg.data, 'train'), f'the prepared dataset in {cfg.data.dir}'
  except FileNotFoundError:
    return encoded_split(cfg.data.name, 32), f'an in-memory stand-in of {cfg.data.name} (encoded images)'


def overlap_benchmark(cfg, workers: list[int], steps: int, windows: int, devices=None) -> dict:
  """Step time of training fed by the pipeline (one run per worker count) against a constant batch on the devices.

  The same jitted step, in the loop of train.py: `pipeline.batches` through `sharding.prefetch_to_mesh`, metrics
  summed on the device and read once per window of `steps` steps (as a log line does). Per phase, the median over
  `windows` windows of the time per step; constant-batch phases run first, between and after the fed ones, so that
  each fed phase is compared with the constant phases on either side (this machine's speed drifts).
  """
  if cfg.stage == 'context':
    raise InputError('--config: the context stage trains on cached scores, not images; give a frontend or joint stage')
  if cfg.stage not in ('frontend', 'joint'):
    raise InputError(f'--config: the overlap benchmark times the frontend and joint stages, got stage {cfg.stage}')
  load_before = list(os.getloadavg())
  mesh = sharding.make_mesh(devices)
  info = datasets.dataset_info(cfg.data)
  model = build_model(cfg.model, with_context=cfg.stage != 'frontend', mean_bgr=info.mean_bgr)
  source, source_kind = training_source(cfg)
  make_example, crop, _ = image_examples(cfg, source, model, info)
  rng = jax.random.key(cfg.seed)
  variables = jax.jit(model.init)(rng, jnp.zeros((1,) + crop + (3,)))
  params = variables['params']
  tx = optimizer(cfg)
  trainable = tuple(params)
  state = checkpoint.initial_state(params, tx, trainable, variables.get('batch_stats'))  # a DRN's statistics too
  holder = {'state': jax.device_put(state, sharding.replicated(mesh))}
  step_fn = make_train_step(model, cfg.stage, trainable, tx, cfg.model.num_classes, rng, mesh, info.mean_bgr,
                            upsample=cfg.model.upsample, full_resolution=full_resolution(cfg))
  n, batch = len(source), cfg.batch_size
  constant = sharding.global_batch(mesh, pipeline.ProcessBatch(make_example, n, batch, cfg.seed, range(batch))(0))

  def window(next_batch):
    """(seconds per step, fraction of the time spent waiting for input, CPU seconds per step) over `steps` steps."""
    acc, wait, cpu, t = None, 0.0, cpu_seconds(), time.perf_counter()
    for _ in range(steps):
      t_in = time.perf_counter()
      b = next_batch()
      wait += time.perf_counter() - t_in
      holder['state'], m = step_fn(holder['state'], b)
      acc = m if acc is None else jax.tree.map(jnp.add, acc, m)
    jax.device_get(acc)
    elapsed = time.perf_counter() - t
    return elapsed / steps, wait / elapsed, (cpu_seconds() - cpu) / steps

  def phase(next_batch, warmup: bool) -> dict:
    if warmup:
      window(next_batch)
    timed = np.array([window(next_batch) for _ in range(windows)])
    return dict(step_s_median=float(np.median(timed[:, 0])), step_s=timed[:, 0].tolist(),
                input_wait=float(np.median(timed[:, 1])), cpu_s_per_step=float(np.median(timed[:, 2])))

  t = time.perf_counter()
  holder['state'], m = step_fn(holder['state'], constant)  # compiles (the state is donated: keep the new one)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t
  constants = [phase(lambda: constant, warmup=True)]
  fed = []
  for w in workers:
    t = time.perf_counter()
    local = pipeline.batches(make_example, n, global_batch=batch, seed=cfg.seed, start_step=0, stop_step=1 << 30,
                             process_index=jax.process_index(), process_count=jax.process_count(), workers=w)
    inputs = sharding.prefetch_to_mesh(local, mesh)
    try:
      first = next(inputs)
      startup = time.perf_counter() - t
      pending = [first]
      result = phase(lambda: pending.pop() if pending else next(inputs), warmup=True)
    finally:
      inputs.close()
    constants.append(phase(lambda: constant, warmup=False))
    around = (constants[-2]['step_s_median'] + constants[-1]['step_s_median']) / 2
    cpu_around = (constants[-2]['cpu_s_per_step'] + constants[-1]['cpu_s_per_step']) / 2
    fed.append(dict(result, workers=w, startup_s=startup, constant_step_s=around,
                    ratio=result['step_s_median'] / around, constant_cpu_s_per_step=cpu_around,
                    cpu_ratio=result['cpu_s_per_step'] / cpu_around))
  return dict(
      config=cfg.to_dict(), stage=cfg.stage, dataset=cfg.data.name, source=source_kind, batch=batch, crop=list(crop),
      width=cfg.model.front_end.width, devices=mesh.size, compile_s=compile_s, steps=steps, windows=windows,
      constant=constants, fed=fed, load_average_before=load_before, **machine())


def overlap_report(r: dict) -> str:
  """One overlap run as a Markdown table: per worker count, the step time fed by the pipeline beside the constant."""
  lines = [f"{r['dataset']} {r['stage']}, width {r['width']:g}, crop {r['crop'][0]}x{r['crop'][1]}, batch "
           f"{r['batch']}, {r['devices']} device(s); input: {r['source']}; medians of {r['windows']} windows of "
           f"{r['steps']} steps; load average {r['load_average'][0]:.2f}", '',
           '| workers | step, constant batch | step, fed by the pipeline | ratio | input wait | CPU s per step, '
           'constant / fed (ratio) | start-up |', '|---|---|---|---|---|---|---|']
  for f in r['fed']:
    lines.append(f"| {f['workers'] or '0 (thread)'} | {1e3 * f['constant_step_s']:.1f} ms | "
                 f"{1e3 * f['step_s_median']:.1f} ms | {f['ratio']:.3f} | {100 * f['input_wait']:.1f}% | "
                 f"{f['constant_cpu_s_per_step']:.3f} / {f['cpu_s_per_step']:.3f} ({f['cpu_ratio']:.3f}) | "
                 f"{f['startup_s']:.1f} s |")
  return '\n'.join(lines)


FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.input and FLAGS.input_overlap:
    raise InputError('--input_overlap: give --input or --input_overlap, not both')
  if FLAGS.input_overlap:
    if FLAGS.config is None:
      raise InputError('--config: --input_overlap needs a training config, e.g. '
                       'experiments/synthetic.py:stage=frontend')
    try:
      workers = [int(w) for w in FLAGS.overlap_workers.split(',')]
    except ValueError:
      raise InputError(f'--overlap_workers: expected worker counts such as 0,1,2, got '
                       f'{FLAGS.overlap_workers!r}') from None
    if min(workers) < 0 or FLAGS.steps < 1 or FLAGS.windows < 1:
      raise InputError('--overlap_workers, --steps, --windows: expected counts >= 0, >= 1 and >= 1')
    devices = jax.devices()[:FLAGS.devices] if FLAGS.devices else None
    result = overlap_benchmark(FLAGS.config, workers, FLAGS.steps, FLAGS.windows, devices)
    print(overlap_report(result))
    write_output(FLAGS.output, [result])
    return
  crop = tuple(int(v) for v in FLAGS.crop.split(','))
  if len(crop) != 2:
    raise InputError(f'--crop: expected H,W, got {FLAGS.crop!r}')
  if FLAGS.input:
    max_workers = pipeline.resolve_workers(FLAGS.max_workers)
    if max_workers < 1 or FLAGS.seconds <= 0:
      raise InputError(f'--max_workers: expected -1 (the cores available) or >= 1, got {FLAGS.max_workers}'
                       if max_workers < 1 else f'--seconds: expected > 0, got {FLAGS.seconds}')
    presets = sorted(PRESET_EXPERIMENTS) if FLAGS.preset == 'all' else [FLAGS.preset]
    results = []
    for preset in presets:
      logging.info('input pipeline of %s: 0..%d workers', preset, max_workers)
      results.append(input_benchmark(preset, max_workers, FLAGS.seconds, FLAGS.batch if FLAGS['batch'].present
                                     else None, crop if FLAGS['crop'].present else None, FLAGS.images,
                                     FLAGS.data_dir))
    print(input_report(results))
    write_output(FLAGS.output, results)
    return
  if FLAGS.preset == 'all':
    raise InputError('--preset: all is for --input; the step benchmark takes one preset')
  if FLAGS.layers:
    layers_main(crop)
    return
  devices = jax.devices()[:FLAGS.devices] if FLAGS.devices else None
  logging.info('benchmarking %s %s', FLAGS.preset, FLAGS.stage)
  result = benchmark(FLAGS.preset, FLAGS.stage, FLAGS.batch, crop, FLAGS.dtype, devices, FLAGS.runs, FLAGS.warmup,
                     FLAGS.width)
  print(report(result))
  write_output(FLAGS.output, [result])


def layers_main(crop):
  """--layers: `benchmark_layers.compare` for each of --dtypes; --output and --markdown hold this run alone."""
  import sys

  from dilated_jax import benchmark_layers

  if FLAGS.stage == 'context':
    raise InputError('--stage: --layers times the image stage (frontend or joint) and the context stage of '
                     '--context_preset; give frontend or joint')
  context_crop = tuple(int(v) for v in FLAGS.context_crop.split(','))
  dtypes = FLAGS.dtypes.split(',')
  if len(context_crop) != 2 or not set(dtypes) <= {'float32', 'bfloat16'} or FLAGS.runs < 1:
    raise InputError(f'--context_crop, --dtypes, --runs: expected H,W, float32 and/or bfloat16, >= 1; got '
                     f'{FLAGS.context_crop!r}, {FLAGS.dtypes!r}, {FLAGS.runs}')
  for path in (FLAGS.output, FLAGS.markdown):
    if path:
      cli.check_writable(os.path.dirname(os.path.abspath(path)), '--output/--markdown')
  results = []
  for dtype in dtypes:
    logging.info('%s %s and the context stage of %s beside PyTorch, %s', FLAGS.preset, FLAGS.stage,
                 FLAGS.context_preset or FLAGS.preset, dtype)
    results.append(benchmark_layers.compare(
        FLAGS.preset, FLAGS.stage, FLAGS.batch, crop, FLAGS.context_preset or FLAGS.preset, FLAGS.context_batch,
        context_crop, dtype, FLAGS.runs, FLAGS.torch_layout, FLAGS.width, FLAGS.torch_onednn))
  command = 'python -m dilated_jax.benchmark ' + ' '.join(sys.argv[1:])
  page = benchmark_layers.render(results, command)
  print(page)
  if FLAGS.output:
    with open(FLAGS.output + '.tmp', 'w') as f:
      json.dump(results, f, indent=1)
    os.replace(FLAGS.output + '.tmp', FLAGS.output)
  if FLAGS.markdown:
    with open(FLAGS.markdown + '.tmp', 'w') as f:
      f.write(page)
    os.replace(FLAGS.markdown + '.tmp', FLAGS.markdown)


def write_output(path, new: list[dict]):
  """Appends `new` to the JSON list in `path` (none: nothing written)."""
  if not path:
    return
  results = []
  if os.path.exists(path):
    with open(path) as f:
      results = json.load(f)
  files.write_json(path, results + new)


if __name__ == '__main__':
  from ml_collections import config_flags

  flags.DEFINE_enum('preset', 'pascal_voc', sorted(DATASETS) + ['all'], 'network preset (all: every one, --input)')
  flags.DEFINE_enum('stage', 'joint', ['frontend', 'context', 'joint'], 'what the step trains')
  flags.DEFINE_integer('batch', 2, "global batch (--input: the preset's front-end batch unless given)")
  flags.DEFINE_string('crop', '500,500', "training crop H,W, margin included (--input: the preset's unless given)")
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'compute dtype (parameters stay float32)')
  flags.DEFINE_float('width', 1.0, "front_end.width (1: the paper's network)")
  flags.DEFINE_integer('devices', 0, 'devices to use (0: all)')
  flags.DEFINE_integer('runs', 5, 'timed steps')
  flags.DEFINE_integer('warmup', 2, 'untimed steps after compilation')
  flags.DEFINE_string('output', None, 'append the result to this JSON list (--layers: write this run\'s)')
  flags.DEFINE_bool('layers', False, 'the steps, every convolution\'s passes and the rest of the step, ours beside '
                    'PyTorch\'s same network (the bench extra), and the peak')
  flags.DEFINE_string('dtypes', 'float32', '--layers: compute dtypes, comma-separated')
  flags.DEFINE_string('context_preset', None, '--layers: the context stage\'s preset (default --preset)')
  flags.DEFINE_integer('context_batch', 4, '--layers: the context stage\'s batch')
  flags.DEFINE_string('context_crop', '900,900', '--layers: the crop whose front-end scores the context stage reads')
  flags.DEFINE_enum('torch_layout', 'auto', ['auto', 'nchw', 'channels_last'],
                    '--layers: PyTorch\'s memory layout (auto: NCHW on CPU, channels-last on GPU)')
  flags.DEFINE_enum('torch_onednn', 'auto', ['auto', 'on', 'off'],
                    "--layers: PyTorch's CPU convolutions through oneDNN (its default) or not; auto: its steps timed "
                    'both ways, the faster compared with ours and used for the tables')
  flags.DEFINE_string('markdown', None, '--layers: write the page of this run here')
  flags.DEFINE_bool('input', False, 'benchmark the input pipeline against the accelerators instead of the step')
  flags.DEFINE_integer('max_workers', -1, '--input: worker processes up to this count (-1: the cores available)')
  flags.DEFINE_float('seconds', 4.0, '--input: seconds timed per measurement, after the warm-up')
  flags.DEFINE_integer('images', 8, '--input: distinct training images of the in-memory stand-in dataset')
  flags.DEFINE_string('data_dir', None, '--input: read the prepared training split there instead of a stand-in')
  flags.DEFINE_bool('input_overlap', False, 'step time fed by the pipeline against a constant batch (--config)')
  config_flags.DEFINE_config_file('config', None, '--input_overlap: the training config', lock_config=True)
  flags.DEFINE_string('overlap_workers', '0,1,2', '--input_overlap: worker counts to try')
  flags.DEFINE_integer('steps', 10, '--input_overlap: steps per timed window')
  flags.DEFINE_integer('windows', 5, '--input_overlap: timed windows per phase')
  cli.run(main)
