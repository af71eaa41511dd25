"""This project beside PyTorch's same network in one process: the train steps, every convolution's three passes, the
rest of the step, and the peak (`python -m dilated_jax.benchmark --layers`, README "Speed").

JAX and PyTorch take turns on each measurement, repeated `runs` times, medians reported: on a shared machine both see
the same conditions, and the load average is recorded beside the figures. The peak is one figure: XLA's float32
4096^3 (GPU: bfloat16 8192^3) matmul timed in the same rounds as the steps; "of peak" is the useful FLOPs of a step
(3 x the forward convolutions) per second over it.
"""

import os
import platform
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from dilated_jax import InputError, sharding
from dilated_jax import config as config_lib
from dilated_jax.benchmark import conv_layers
from dilated_jax.data import pipeline
from dilated_jax.data.info import DATASETS, IGNORE_LABEL
from dilated_jax.models import build_model, layers as model_layers
from dilated_jax.train import loss_and_metrics, make_train_step, optimizer

PASSES = ('forward', 'input_grad', 'kernel_grad')


def _torch():
  try:
    import torch

    from dilated_jax import torch_reference
  except ImportError:
    raise InputError('--layers: PyTorch is not installed; `pip install -e .[bench]` (or bring your own torch, '
                     'docs/decisions.md, "Speed is measured beside PyTorch")') from None
  return torch, torch_reference


def jax_seconds(fn) -> float:
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


ONCE_S = 60.0


def alternate(fns: dict, runs: int) -> dict:
  """{name: median seconds} of `runs` rounds calling each (name: zero-argument timed function) in turn, after one
  untimed round (compilation, allocation). A function whose first call took over ONCE_S seconds is not called again:
  that call is its figure (a pathological library path, e.g. oneDNN's fc6 kernel gradient on AVX2: minutes a call,
  where compilation and allocation are seconds)."""
  once = {name: f() for name, f in fns.items()}
  once = {name: t for name, t in once.items() if t > ONCE_S}
  times = {name: [t] for name, t in once.items()} | {name: [] for name in fns if name not in once}
  for _ in range(runs):
    for name, f in fns.items():
      if name not in once:
        times[name].append(f())
  return {name: float(np.median(t)) for name, t in times.items()}


def random_array(key, shape, dtype):
  return jax.random.normal(jax.random.key(key), shape, jnp.float32).astype(dtype)


def jax_conv_passes(layer: dict, batch: int, dtype) -> dict:
  """Zero-argument functions running each pass of the layer's convolution in its formulations: forward (the public
  layer's lax.conv_general_dilated), input_grad_xla (its transpose, as JAX derives it), input_grad_matmul
  (layers.conv_input_grad_matmul), kernel_grad (the transpose XLA derives)."""
  x_shape = (batch,) + tuple(layer['in_hw']) + (layer['kernel'][2],)
  y_shape = (batch,) + tuple(layer['out_hw']) + (layer['kernel'][3],)
  x, k, dy = (random_array(i, s, dtype) for i, s in enumerate((x_shape, layer['kernel'], y_shape)))
  d, pad = layer['dilation'], layer['padding']
  conv = model_layers.conv
  fns = {
      'forward': jax.jit(lambda x, k: conv(x, k, d, pad)),
      'input_grad_xla': jax.jit(lambda dy, k: model_layers.conv_input_grad_xla(dy, k, x_shape, d, pad)),
      'input_grad_matmul': jax.jit(lambda dy, k: model_layers.conv_input_grad_matmul(dy, k, x_shape, d, pad)),
      'kernel_grad': jax.jit(lambda x, dy: jax.vjp(lambda k: conv(x, k, d, pad), k)[1](dy)[0]),
  }
  args = {'forward': (x, k), 'input_grad_xla': (dy, k), 'input_grad_matmul': (dy, k), 'kernel_grad': (x, dy)}
  return {name: (lambda f=f, a=args[name]: jax_seconds(lambda: f(*a))) for name, f in fns.items()}


def layer_table(model, params, hw, stage: str, batch: int, dtype: str, runs: int, torch_options: dict) -> list[dict]:
  """Per convolution: its shapes and FLOPs, and the seconds of each pass in each formulation, ours and PyTorch's."""
  torch, ref = _torch()
  device = ref.device_of(jax.default_backend())
  tdtype = getattr(torch, dtype)
  rows = []
  for i, layer in enumerate(conv_layers(model, params, hw, stage)):
    # The first convolution reads the batch: no input gradient is computed in training.
    first = i == 0
    ours = jax_conv_passes(layer, batch, jnp.dtype(dtype))
    theirs, _ = ref.conv_passes(layer, batch, device, tdtype, torch_options['channels_last'])
    fns = {}
    for name in PASSES:
      for ours_name in ([name] if name != 'input_grad' else ['input_grad_xla', 'input_grad_matmul']):
        if not (first and name == 'input_grad'):
          fns[f'ours_{ours_name}'] = ours[ours_name]
      if not (first and name == 'input_grad'):
        fns[f'torch_{name}'] = lambda f=theirs[name]: ref.seconds(f, device)
    seconds = alternate(fns, runs)
    x_shape = (batch,) + tuple(layer['in_hw'])
    y_shape = (batch,) + tuple(layer['out_hw'])
    by_matmul = not first and model_layers.input_grad_by_matmul(x_shape, y_shape)
    rows.append(dict({k: v for k, v in layer.items() if k in ('part', 'name', 'kernel', 'dilation', 'padding',
                                                               'in_hw', 'out_hw')},
                     flops=layer['flops'] * batch, seconds=seconds, input_grad_by_matmul=by_matmul))
    logging.info('%s: ours %.0f ms, PyTorch %.0f ms (the passes of a train step)', layer['name'],
                 1e3 * conv_seconds(rows[-1], 'ours'), 1e3 * conv_seconds(rows[-1], 'torch'))
    del ours, theirs, fns
  return rows


def conv_seconds(row: dict, who: str) -> float:
  """The seconds a train step spends in this convolution: the passes it runs, in the formulation the model uses."""
  s = row['seconds']
  if who == 'torch':
    return sum(s.get(f'torch_{p}', 0.0) for p in PASSES)
  dx = s.get('ours_input_grad_matmul' if row['input_grad_by_matmul'] else 'ours_input_grad_xla', 0.0)
  return s['ours_forward'] + dx + s['ours_kernel_grad']


# ------------------------------------------------------------------ the rest of the step


def parts_table(model, params, hw, stage: str, batch: int, dtype: str, runs: int, cfg, mean_bgr,
                torch_options) -> dict:
  """Seconds of the step's other parts, forward and backward, ours and PyTorch's, at the step's shapes: the input's
  conversion, bias + ReLU of every layer, the poolings, the dropouts, the context module's padding, the loss, and
  the optimizer's update of the trained parameters."""
  torch, ref = _torch()
  device = ref.device_of(jax.default_backend())
  tdtype = getattr(torch, dtype)
  jdtype = jnp.dtype(dtype)
  convs = conv_layers(model, params, hw, stage)
  mean = mean_bgr
  out_shape = (batch,) + tuple(convs[-1]['out_hw']) + (convs[-1]['kernel'][3],)
  shapes = {
      'bias + ReLU': [(batch,) + tuple(c['out_hw']) + (c['kernel'][3],) for c in convs if c['relu']],
      'max pooling': [(batch,) + tuple(c['out_hw']) + (c['kernel'][3],) for c in convs if c['pool_after']],
      'dropout': [(batch,) + tuple(c['out_hw']) + (c['kernel'][3],) for c in convs if c['dropout']],
      'padding once (context)': [(batch,) + tuple(c['in_hw']) + (c['kernel'][2],) for c in convs if c['pad_before']],
  }
  pad = next((c['pad_before'] for c in convs if c['pad_before']), 0)
  rate = next((c['dropout'] for c in convs if c['dropout']), 0.0)

  def jax_vjp(fn, shape_list):
    """fn's forward and backward on each shape, one jitted computation."""
    def run(xs, gs):
      outs = []
      for x, g in zip(xs, gs):
        y, back = jax.vjp(fn, x)
        outs.append((y, back(g)))
      return outs
    xs = [random_array(i, s, jdtype) for i, s in enumerate(shape_list)]
    gs = [random_array(i + 100, jax.eval_shape(fn, x).shape, jdtype) for i, x in enumerate(xs)]
    f = jax.jit(run)
    return lambda: jax_seconds(lambda: f(xs, gs))

  def torch_vjp(fn, shape_list):
    xs = [torch.randn(s[0], s[3], s[1], s[2]).to(device, tdtype).requires_grad_() for s in shape_list]
    gs = [torch.randn_like(fn(x)) for x in xs]

    def run():
      for x, g in zip(xs, gs):
        fn(x).backward(g)
    return lambda: ref.seconds(run, device)

  jax_bias = jnp.zeros((), jdtype)
  torch_bias = torch.zeros((), dtype=tdtype, device=device)
  key = jax.random.key(0)
  fns = {}
  pairs = {
      'bias + ReLU': (lambda x: jax.nn.relu(x + jax_bias), lambda x: torch.relu(x + torch_bias)),
      'max pooling': (model_layers.max_pool_ceil, lambda x: torch.nn.functional.max_pool2d(x, 2, 2, ceil_mode=True)),
      'dropout': (lambda x: _dropout(x, rate, key), lambda x: torch.nn.functional.dropout(x, rate)),
      'padding once (context)': (lambda x: jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))),
                                 lambda x: torch.nn.functional.pad(x, (pad,) * 4)),
  }
  for name, (ours, theirs) in pairs.items():
    if shapes[name]:
      fns[f'ours_{name}'] = jax_vjp(ours, shapes[name])
      fns[f'torch_{name}'] = torch_vjp(theirs, shapes[name])

  # The loss and its gradient with respect to the scores.
  c = out_shape[-1]
  labels = np.random.default_rng(0).integers(0, c, out_shape[:3]).astype(np.int32)
  logits = random_array(7, out_shape, jdtype)
  loss_grad = jax.jit(jax.grad(lambda z: loss_and_metrics(z, labels, c)[0]))
  fns['ours_loss'] = lambda: jax_seconds(lambda: loss_grad(logits))
  t_logits = torch.randn(out_shape[0], c, *out_shape[1:3], device=device).requires_grad_()
  t_labels = torch.from_numpy(labels.astype(np.int64)).to(device)
  fns['torch_loss'] = lambda: ref.seconds(lambda: torch.nn.functional.cross_entropy(
      t_logits, t_labels, ignore_index=IGNORE_LABEL).backward(), device)

  if stage != 'context':  # the RGB uint8 batch made BGR minus the mean on the device
    images = np.random.default_rng(0).integers(0, 256, (batch,) + tuple(hw) + (3,), dtype=np.uint8)
    j_images = jnp.asarray(images)
    convert = jax.jit(lambda x: pipeline.to_network_input(x, mean))
    fns['ours_input'] = lambda: jax_seconds(lambda: convert(j_images))
    t_images = torch.from_numpy(images).to(device).permute(0, 3, 1, 2)
    t_mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    fns['torch_input'] = lambda: ref.seconds(lambda: (t_images.flip(1).float() - t_mean).contiguous(), device)

  # The update of every trained parameter: ours inside the jitted step (with the non-finite check), PyTorch's SGD.
  trained = {k: params[k] for k in (('context_module',) if stage == 'context' else tuple(params))}
  trained = jax.tree.map(lambda p: random_array(3, p.shape, jnp.float32), trained)
  tx = optimizer(cfg)
  opt_state = tx.init(trained)
  update = jax.jit(_sgd_update(tx), donate_argnums=(0, 1))
  holder = {'state': (trained, opt_state)}
  grads = jax.tree.map(lambda p: p * 1e-3, trained)

  def ours_update():
    *holder['state'], finite = update(*holder['state'], grads)
    return holder['state'], finite
  fns['ours_optimizer update'] = lambda: jax_seconds(ours_update)
  step = ref.TrainStep(convs, cfg, mean, device, **torch_options)
  for p in step.net.parameters():
    p.grad = torch.randn_like(p) * 1e-3
  fns['torch_optimizer update'] = lambda: ref.seconds(step.optimizer.step, device)

  seconds = alternate(fns, runs)
  names = [n[len('ours_'):] for n in fns if n.startswith('ours_')]
  return {n: {'ours': seconds[f'ours_{n}'], 'torch': seconds[f'torch_{n}'],
              'count': len(shapes.get(n, [None]))} for n in names}


def _dropout(x, rate, key):
  keep = jax.random.bernoulli(key, 1 - rate, x.shape)
  return jnp.where(keep, x / (1 - rate), 0).astype(x.dtype)


def _sgd_update(tx):
  from dilated_jax.train import _all_finite, update_if

  # As the train step: the gradients checked, the update, its check.
  return lambda params, opt_state, grads: update_if(_all_finite(grads), tx, grads, opt_state, params)


# ------------------------------------------------------------------ the whole steps


def _onednn_key(enabled: bool) -> str:
  return f'torch_onednn_{"on" if enabled else "off"}'


def step_pair(preset: str, stage: str, batch: int, crop, dtype: str, runs: int, torch_options: dict,
              width: float = 1.0, onednn=(True,)) -> dict:
  """The train step of `stage` (front end, joint, or context on cached scores at the crop's output size), ours and
  PyTorch's, timed in turn; with the model, parameters and config for the other tables. PyTorch's step runs with
  each of the `onednn` settings (its CPU convolutions through oneDNN or not); seconds['torch'] is the faster, and
  'torch_onednn' says which."""
  torch, ref = _torch()
  device = ref.device_of(jax.default_backend())
  cfg = config_lib.base(preset)
  cfg.model.dtype = dtype
  cfg.model.front_end.width = width
  if stage == 'context' and not cfg.model.context.dilations:
    raise InputError(f'--preset: {preset} has no context module')
  mesh = sharding.make_mesh(jax.devices()[:1])
  model = build_model(cfg.model, with_context=stage != 'frontend')
  info = DATASETS[preset]
  x = jnp.zeros((1,) + tuple(crop) + (3,))
  params = jax.jit(model.init)(jax.random.key(0), x)['params']
  out_hw = tuple(jax.eval_shape(lambda p, x: model.front_end.apply({'params': p['front_end']}, x), params,
                                x).shape[1:3])
  hw = out_hw if stage == 'context' else tuple(crop)
  trainable = ('context_module',) if stage == 'context' else tuple(params)
  tx = optimizer(cfg)
  state = jax.device_put({'step': jnp.zeros((), jnp.int32), 'params': params,
                          'opt_state': tx.init({k: params[k] for k in trainable})}, sharding.replicated(mesh))
  rng = np.random.default_rng(0)
  c = cfg.model.num_classes
  convs = conv_layers(model, params, hw, stage)
  label_hw = tuple(convs[-1]['out_hw'])
  image = (rng.normal(size=(batch,) + hw + (c,)).astype(np.float32) if stage == 'context'
           else rng.integers(0, 256, (batch,) + hw + (3,), dtype=np.uint8))
  arrays = {'image': image, 'label': rng.integers(0, c, (batch,) + label_hw).astype(np.int32)}
  step = make_train_step(model, stage, trainable, tx, c, jax.random.key(0), mesh, info.mean_bgr)
  t = time.perf_counter()
  compiled = step.lower(state, sharding.global_batch(mesh, arrays)).compile()
  compile_s = time.perf_counter() - t
  holder = {'state': state}

  def ours():
    holder['state'], m = compiled(holder['state'], sharding.global_batch(mesh, arrays))
    return m['loss']

  theirs = ref.TrainStep(convs, cfg, info.mean_bgr, device, **torch_options)
  t_batch = theirs.batch(arrays)
  # The peak in the same rounds as the steps: this machine's speed drifts within minutes.
  n = (4096 if jax.default_backend() == 'cpu' else 8192) if width == 1 else 1024  # narrow: a test of the code
  peak_dtype = jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16
  a = random_array(0, (n, n), peak_dtype)
  matmul = jax.jit(lambda x: x @ x)
  def torch_step(setting):
    def run():
      theirs.onednn = setting
      return theirs(*t_batch)
    return lambda: ref.seconds(run, device)
  seconds = alternate({'ours': lambda: jax_seconds(ours),
                       **{_onednn_key(o): torch_step(o) for o in onednn},
                       'peak_matmul': lambda: jax_seconds(lambda: matmul(a))}, runs)
  peak = dict(peak_flops=2.0 * n ** 3 / seconds.pop('peak_matmul'), peak_n=n, peak_dtype=jnp.dtype(peak_dtype).name)
  torch_onednn = min(onednn, key=lambda o: seconds[_onednn_key(o)])
  seconds['torch'] = seconds[_onednn_key(torch_onednn)]
  logging.info('%s %s step: ours %.2f s, PyTorch %s (compiled in %.1f s)', preset, stage, seconds['ours'],
               ', '.join(f'{k[6:]} {v:.2f} s' for k, v in seconds.items() if k.startswith('torch_')), compile_s)
  holder.clear()  # the memory of both steps, before the per-layer tables
  theirs = t_batch = None
  flops = 3 * sum(layer['flops'] for layer in convs) * batch  # the forward pass and a backward of twice its cost
  return dict(preset=preset, stage=stage, width=width, batch=batch, crop=list(crop), hw=list(hw), dtype=dtype,
              flops=flops, compile_s=compile_s, seconds=seconds, torch_onednn=torch_onednn, model=model, cfg=cfg,
              **peak,
              params=jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params))  # donated: shapes


def dtype_probe(runs: int, n: int = 4096, width: float = 1.0) -> dict:
  """FLOP/s of an n^3 matmul and of fc6's convolution (2 x 40 x 40 x 512 -> 4096 at width 1, 7x7, dilation 4) in
  float32 and bfloat16, ours and PyTorch's: what each framework gets from the machine in each dtype."""
  torch, ref = _torch()
  device = ref.device_of(jax.default_backend())
  cin, cout = (max(8, round(c * width)) for c in (512, 4096))
  fc6 = dict(kernel=(7, 7, cin, cout), dilation=4, padding=((0, 0), (0, 0)), in_hw=(40, 40), out_hw=(16, 16))
  fc6_flops = 2.0 * 2 * 16 * 16 * 7 * 7 * cin * cout
  out = {}
  for dtype in ('float32', 'bfloat16'):
    a = random_array(0, (n, n), jnp.dtype(dtype))
    mm = jax.jit(lambda x: x @ x)
    ta = torch.randn(n, n, device=device).to(getattr(torch, dtype))
    ours_conv = jax_conv_passes(fc6, 2, jnp.dtype(dtype))['forward']
    theirs_conv = ref.conv_passes(fc6, 2, device, getattr(torch, dtype))[0]['forward']
    s = alternate({'ours_matmul': lambda: jax_seconds(lambda: mm(a)),
                   'torch_matmul': lambda: ref.seconds(lambda: ta @ ta, device),
                   'ours_fc6': ours_conv, 'torch_fc6': lambda: ref.seconds(theirs_conv, device)}, runs)
    out[dtype] = {k: (2.0 * n ** 3 if k.endswith('matmul') else fc6_flops) / v for k, v in s.items()}
  return dict(out, fc6=fc6['kernel'])


def cpu_model() -> str:
  """The CPU's model name and the flags that matter for these figures (AMX, AVX-512, bfloat16 dot products)."""
  try:
    with open('/proc/cpuinfo') as f:
      text = f.read()
  except OSError:
    return platform.processor() or platform.machine()
  name = next((line.split(':', 1)[1].strip() for line in text.splitlines() if line.startswith('model name')), '?')
  flags = next((line.split(':', 1)[1].split() for line in text.splitlines() if line.startswith('flags')), [])
  wanted = [f for f in ('avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile') if f in flags]
  return f"{name} ({', '.join(wanted) or 'no AVX-512'})"


def compare(preset: str, stage: str, batch: int, crop, context_preset: str, context_batch: int, context_crop,
            dtype: str, runs: int, torch_layout: str, width: float = 1.0, torch_onednn: str = 'auto') -> dict:
  """Every figure of the module docstring for one dtype: the steps, the per-layer tables, the other parts.

  torch_onednn: 'on' / 'off' PyTorch's CPU convolutions through oneDNN or not; 'auto' (on a CPU) times its steps
  both ways and builds each step's other tables with the faster (oneDNN's kernel gradient of fc6 can take minutes
  on an AVX2 CPU, docs/decisions.md). A GPU's convolutions are cuDNN's either way.
  """
  torch, ref = _torch()
  backend = jax.default_backend()
  channels_last = torch_layout == 'channels_last' or (torch_layout == 'auto' and backend == 'gpu')
  torch_options = dict(channels_last=channels_last, autocast=dtype == 'bfloat16')
  onednn = {'on': (True,), 'off': (False,), 'auto': (True, False) if backend == 'cpu' else (True,)}[torch_onednn]
  if backend == 'gpu':
    torch.backends.cudnn.benchmark = True  # what a GPU user switches on
  t0, load_before = time.perf_counter(), list(os.getloadavg())
  result = dict(dtype=dtype, backend=backend, device_kind=jax.devices()[0].device_kind, runs=runs,
                torch_layout='channels_last' if channels_last else 'NCHW', torch_autocast=dtype == 'bfloat16',
                steps=[], load_average_before=load_before)
  for p, s, b, c in ((preset, stage, batch, crop), (context_preset, 'context', context_batch, context_crop)):
    step = step_pair(p, s, b, c, dtype, runs, torch_options, width, onednn)
    model, params, cfg = step.pop('model'), step.pop('params'), step.pop('cfg')
    with ref.onednn_convolutions(step['torch_onednn']):
      step['layers'] = layer_table(model, params, tuple(step['hw']), s, b, dtype, runs, torch_options)
      step['parts'] = parts_table(model, params, tuple(step['hw']), s, b, dtype, runs, cfg, DATASETS[p].mean_bgr,
                                  dict(torch_options, onednn=step['torch_onednn']))
    step['load_average'] = list(os.getloadavg())
    result['steps'].append(step)
  best = max(result['steps'], key=lambda s: s['peak_flops'])  # the peak: the faster of the two steps' rounds
  n = best['peak_n']
  result.update(peak_flops=best['peak_flops'], peak_dtype=best['peak_dtype'], peak_n=n,
                probe=dtype_probe(runs, min(n, 4096), width), probe_n=min(n, 4096),
                seconds=time.perf_counter() - t0, load_average_after=list(os.getloadavg()))
  result.update(machine=cpu_model() if backend == 'cpu' else jax.devices()[0].device_kind, cpus=os.cpu_count(),
                jax=jax.__version__, torch=torch.__version__, torch_threads=torch.get_num_threads(),
                xla_flags=os.environ.get('XLA_FLAGS', ''), time=time.strftime('%Y-%m-%d %H:%M'))
  return result


# ------------------------------------------------------------------ the page


def _ms(seconds, flops=None) -> str:
  if seconds is None:
    return '-'
  text = f'{1e3 * seconds:.0f}' if seconds >= 0.01 else f'{1e3 * seconds:.1f}'
  return f'{text} ({flops / seconds / 1e9:.0f})' if flops else text


def _giga(flops_per_s) -> str:
  g = flops_per_s / 1e9
  return f'{g:.0f}' if g >= 10 else f'{g:.2g}'  # an emulated dtype runs at a fraction of a GFLOP/s


def _shape(row, batch) -> str:
  kh, kw, cin, cout = row['kernel']
  (pt, pb), (pl, pr) = row['padding']
  pad = '' if not (pt or pb or pl or pr) else f', pad {pt}' if len({pt, pb, pl, pr}) == 1 else f', pad {row["padding"]}'
  return (f"{row['in_hw'][0]}x{row['in_hw'][1]}x{cin} -> {row['out_hw'][0]}x{row['out_hw'][1]}x{cout}, "
          f"{kh}x{kw}{'' if row['dilation'] == 1 else ' d%d' % row['dilation']}{pad}")


def _onednn_note(step: dict) -> str:
  return '' if len([k for k in step['seconds'] if k.startswith('torch_onednn_')]) < 2 else (
      ', oneDNN' if step['torch_onednn'] else ', without oneDNN')


def step_name(step: dict) -> str:
  what = {'joint': 'front end + context module', 'frontend': 'front end', 'context': 'context module on cached '
          f"{step['hw'][0]}x{step['hw'][1]} scores"}[step['stage']]
  crop = '' if step['stage'] == 'context' else f", crop {step['crop'][0]}"
  return f"{step['preset']} {step['stage']} ({what}{crop}, batch {step['batch']}, {step['dtype']})"


def render(results: list[dict], command: str) -> str:
  """The Markdown page of one or more `compare` results (one per dtype)."""
  first = results[0]
  lines = [
      f"# Speed on this {'CPU' if first['backend'] == 'cpu' else 'GPU'}, beside PyTorch",
      '',
      f"Written by `{command}` ({sum(r['seconds'] for r in results) / 60:.0f} minutes) on {first['time']}: "
      f"{first['machine']}, {first['cpus']} cores; jax {first['jax']}, torch {first['torch']} "
      f"({first['torch_threads']} threads, {first['torch_layout']}); XLA_FLAGS `{first['xla_flags'] or '(none)'}`. "
      f"Medians of {first['runs']} runs, ours and PyTorch's in turn in one process; load average "
      f"{first['load_average_before'][0]:.1f} before, {results[-1]['load_average_after'][0]:.1f} after "
      f"({first['cpus']} cores). The JSON beside this page holds every figure.",
      '',
      f"**Peak**: {first['peak_flops'] / 1e9:.0f} GFLOP/s, XLA's {first['peak_dtype']} "
      f"{first['peak_n']}^3 matmul timed in the rounds of the steps below (the faster stage's median); \"of peak\" "
      "below is a step's useful FLOPs (3 x its forward convolutions) per second over it.",
      '',
      '| step | FLOPs | ours | PyTorch | PyTorch time / ours | ours, of peak |',
      '|---|---|---|---|---|---|']
  for r in results:
    for s in r['steps']:
      o, t = s['seconds']['ours'], s['seconds']['torch']
      lines.append(f"| {step_name(s)} | {s['flops'] / 1e9:.0f} G | {o:.2f} s ({s['batch'] / o:.2f} images/s) | "
                   f"{t:.2f} s ({s['batch'] / t:.2f} images/s){_onednn_note(s)} | **{t / o:.2f}x** | "
                   f"{s['flops'] / o / 1e9:.0f} GFLOP/s, {100 * s['flops'] / o / r['peak_flops']:.0f}% |")
  if any(s['flops'] / s['seconds']['ours'] > r['peak_flops'] for r in results for s in r['steps']):
    lines += ['', 'Over 100% of peak: on this machine XLA\'s matmul is slower than its convolutions (PyTorch\'s matmul '
              f"in the last table: {_giga(first['probe']['float32']['torch_matmul'])} GFLOP/s); the peak stays the "
              'same-run XLA matmul, as on every page.']
  both = [s for r in results for s in r['steps'] if {_onednn_key(True), _onednn_key(False)} <= set(s['seconds'])]
  if both:
    lines += ['', 'PyTorch\'s step was timed both with its CPU convolutions through oneDNN (its default) and without '
              '(`torch.backends.mkldnn.enabled = False`: its own im2col and BLAS); the faster is the figure above and '
              'runs the tables below: ' + '; '.join(
                  f"{step_name(s)}: oneDNN {s['seconds']['torch_onednn_on']:.2f} s, without "
                  f"{s['seconds']['torch_onednn_off']:.2f} s" for s in both) + '.']
  for r in results:
    for s in r['steps']:
      lines += ['', f'## {step_name(s)}: where the time goes', '',
                'Each convolution alone (no bias) at the step\'s shapes, ms (GFLOP/s). Input gradient: ours as XLA '
                'derives it (a convolution of the padded output gradient) and as `conv_input_grad_matmul`; **bold** '
                'is the one the model runs here (`layers.input_grad_by_matmul`). The first layer reads the batch: '
                'no input gradient.', '',
                '| layer | input -> output, kernel | GFLOP | forward: ours | PyTorch | input grad: XLA | matmul | '
                'PyTorch | kernel grad: ours | PyTorch | step total: ours | PyTorch |',
                '|---|---|---|---|---|---|---|---|---|---|---|---|']
      for row in s['layers']:
        sec, f = row['seconds'], row['flops']
        xla, mm = sec.get('ours_input_grad_xla'), sec.get('ours_input_grad_matmul')
        used_mm = row['input_grad_by_matmul']
        xla_cell = _ms(xla, f) if xla is None or used_mm else f'**{_ms(xla, f)}**'
        mm_cell = f'**{_ms(mm, f)}**' if used_mm else _ms(mm, f)
        lines.append(f"| {row['name']} | {_shape(row, s['batch'])} | {f / 1e9:.1f} | {_ms(sec['ours_forward'], f)} | "
                     f"{_ms(sec['torch_forward'], f)} | {xla_cell} | {mm_cell} | "
                     f"{_ms(sec.get('torch_input_grad'), f)} | {_ms(sec['ours_kernel_grad'], f)} | "
                     f"{_ms(sec['torch_kernel_grad'], f)} | {_ms(conv_seconds(row, 'ours'))} | "
                     f"{_ms(conv_seconds(row, 'torch'))} |")
      conv = {w: sum(conv_seconds(row, w) for row in s['layers']) for w in ('ours', 'torch')}
      parts = {w: sum(p[w] for p in s['parts'].values()) for w in ('ours', 'torch')}
      lines += ['', '| the rest of the step, forward and backward | ours, ms | PyTorch, ms |', '|---|---|---|']
      for name, p in s['parts'].items():
        count = f" ({p['count']})" if p['count'] > 1 else ''
        lines.append(f"| {name}{count} | {_ms(p['ours'])} | {_ms(p['torch'])} |")
      step = s['seconds']
      lines += [f"| **sum of the convolutions' passes** | {_ms(conv['ours'])} | {_ms(conv['torch'])} |",
                f"| **sum of the parts above** | {_ms(parts['ours'])} | {_ms(parts['torch'])} |",
                f"| **the whole step** | {_ms(step['ours'])} | {_ms(step['torch'])} |",
                f"| the whole step less both sums (fusion saves: negative) | "
                f"{_ms(step['ours'] - conv['ours'] - parts['ours'])} | "
                f"{_ms(step['torch'] - conv['torch'] - parts['torch'])} |"]
  probe = first['probe']
  cin, cout = probe['fc6'][2:]
  lines += ['', '## float32 and bfloat16 on this machine', '',
            f"| GFLOP/s | {first['probe_n']}^3 matmul: ours | PyTorch | fc6 forward (2x40x40x{cin} -> {cout}, "
            '7x7 d4): ours | PyTorch |', '|---|---|---|---|---|']
  for dtype, p in ((d, probe[d]) for d in ('float32', 'bfloat16')):
    lines.append(f"| {dtype} | {_giga(p['ours_matmul'])} | {_giga(p['torch_matmul'])} | {_giga(p['ours_fc6'])} | "
                 f"{_giga(p['torch_fc6'])} |")
  return '\n'.join(lines) + '\n'
