"""Trains one stage of the dilation network (arXiv 1511.07122, section 5 and appendix A): front end, context
module, or both jointly.

  python -m dilated_jax.train --config=experiments/synthetic.py:stage=frontend --workdir=runs/synthetic/frontend

Rerunning the same command in the same workdir resumes from the last checkpoint, data order included. The context
stage trains on the front end's scores, computed once and cached beside the front end (as the paper did). What
differs between the stages is `stages.STAGES`; `train` is the loop, and each part it calls has a name here.
"""

import contextlib
import json
import os
import signal
import time

from absl import flags, logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax

from dilated_jax import InputError, checkpoint, cli, files, images, metrics, progress, score_cache, sharding, weights
from dilated_jax import data as datasets
from dilated_jax import receptive_field as rf
from dilated_jax.data import pipeline
from dilated_jax.data.info import IGNORE_LABEL
from dilated_jax.inference import Predictor, evaluate, report
from dilated_jax.models import build_model, crf as crf_lib, label_offset
from dilated_jax.stages import SCORES, STAGES, Stage, output_region

# ------------------------------------------------------------------ loss, optimizer, the step


def loss_and_metrics(logits, labels, num_classes: int):
  """Softmax cross-entropy averaged over non-ignored cells (Caffe's normalization VALID), accuracy, confusion."""
  valid = labels != IGNORE_LABEL
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
  count = jnp.maximum(valid.sum(), 1)
  loss = jnp.where(valid, nll, 0.0).sum() / count
  preds = jnp.argmax(logits, axis=-1)
  accuracy = jnp.where(valid, preds == labels, False).sum() / count
  return loss, {'loss': loss, 'accuracy': accuracy, 'confusion': metrics.confusion_matrix(labels, preds, num_classes)}


def optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Caffe's SGD: v <- momentum v - lr (g + wd w), w <- w + v; weight decay on kernels only, bias lr x bias_lr_mult;
  lr by Caffe's step or poly policy (cfg.lr_policy)."""
  if cfg.lr_policy == 'poly':  # Caffe's iter counts from 0, as optax's step: lr at the first update, 0 after the last
    schedule = optax.polynomial_schedule(cfg.lr, 0.0, cfg.lr_power, cfg.total_steps)
  else:
    schedule = optax.piecewise_constant_schedule(cfg.lr, {int(s): cfg.lr_gamma for s in cfg.lr_steps})
  leaf_is = lambda name: lambda params: jax.tree_util.tree_map_with_path(lambda p, _: p[-1].key == name, params)
  return optax.chain(
      optax.masked(optax.add_decayed_weights(cfg.weight_decay), leaf_is('kernel')),
      optax.masked(optax.scale(cfg.bias_lr_mult), leaf_is('bias')),
      optax.scale_by_schedule(lambda step: -schedule(step)),
      # The learning rate goes into the momentum buffer, as in Caffe (optax.sgd would apply it after the trace).
      optax.trace(decay=cfg.momentum))


def make_train_step(model, stage: str, trainable, tx, num_classes: int, rng, mesh, mean_bgr, crf=None,
                    upsample: str = 'zoom', full_resolution: bool = False):
  """The jitted step (state, batch) -> (state, metrics): data-parallel over `mesh`, the state donated.

  The batch goes through `stage`'s forward pass (`stages.Stage.forward`, with the CRF layer `crf` on top in the CRF
  stages; `full_resolution`: the scores upsampled, loss_resolution 'full'); only the subtrees named in `trainable` get
  gradients and updates. A network with BatchNorm (the state holds batch_stats: a DRN) normalises with the batch's
  statistics, and the running averages of the trained subtrees are updated; evaluation uses those.
  """
  forward = STAGES[stage].forward

  def train_step(state, batch):
    dropout_rng = jax.random.fold_in(jax.random.fold_in(rng, 1), state['step'])
    batch_stats = state.get('batch_stats')

    def loss_fn(t):
      logits, stats = forward(model, {**state['params'], **t}, batch['image'], dropout_rng, mean_bgr, batch_stats,
                              crf, upsample, full_resolution)
      loss, step_metrics = loss_and_metrics(logits, batch['label'], num_classes)
      return loss, (step_metrics, stats)

    t = {k: state['params'][k] for k in trainable}
    grads, (step_metrics, stats) = jax.grad(loss_fn, has_aux=True)(t)
    # A non-finite loss or gradient leaves the state as it was, so that nothing bad can reach a checkpoint; the host
    # reads the flag with the metrics it fetches anyway and stops there (docs/decisions.md).
    ok = jnp.isfinite(step_metrics['loss']) & _all_finite(grads)
    t, opt_state, updated_finite = update_if(ok, tx, grads, state['opt_state'], t)
    new = {'step': state['step'] + ok.astype(state['step'].dtype), 'params': {**state['params'], **t},
           'opt_state': opt_state}
    if batch_stats is not None:  # a held (untrained) subtree keeps its statistics, as its parameters
      new['batch_stats'] = jax.tree.map(lambda a, b: jnp.where(ok, a, b),
                                        {k: stats[k] if k in trainable else v for k, v in batch_stats.items()},
                                        batch_stats)
    return new, {**step_metrics, 'finite': ok & updated_finite}

  repl = sharding.replicated(mesh)
  return jax.jit(train_step, in_shardings=(repl, sharding.batch_sharded(mesh)), out_shardings=(repl, repl),
                 donate_argnums=0)


def update_if(ok, tx, grads, opt_state, params):
  """(params, opt_state) after `tx`'s update where `ok`, else as given; and whether the new parameters are finite.

  A `lax.cond`, not a `jnp.where` over old and new state: XLA then writes the donated state once, in place, where a
  select reads both versions of every array (on CPU 0.42 against 1.2 s for the 141M parameters of the VOC joint
  step, docs/decisions.md). An update of finite values is finite unless it overflows float32; that, the last check,
  is only flagged: the host stops at the flag before any checkpoint is written.
  """
  def update():
    updates, new_opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_opt_state

  params, opt_state = jax.lax.cond(ok, update, lambda: (params, opt_state))
  return params, opt_state, _all_finite(params)


def _all_finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class FiniteFlags:
  """The steps' non-finite flags, kept on device until the host reads the device anyway (docs/decisions.md)."""

  def __init__(self, workdir, batch_size: int, num_examples: int, seed: int):
    self.workdir, self.batch_size, self.num_examples, self.seed = workdir, batch_size, num_examples, seed
    self.pending = []

  def add(self, step, finite, loss):
    self.pending.append((step, finite, loss))

  def check(self):
    """Raises at the first step since the last check whose loss, gradient or update was not finite."""
    pending, self.pending = jax.device_get(self.pending), []
    for s, ok, loss in pending:
      if not ok:
        records = pipeline.example_indices(s - 1, self.batch_size, self.num_examples, self.seed)
        last = checkpoint.steps(self.workdir)
        raise InputError(
            f'step {s}: non-finite loss ({float(loss)}), gradient or update, not applied; its batch holds the '
            f'training records {records.tolist()}; training stopped there, '
            + (f'the last checkpoint, {checkpoint.step_dir(self.workdir, last[-1])}, is intact' if last
               else 'no checkpoint written'))


# ------------------------------------------------------------------ what a run is, checked before anything is written


class Run:
  """The model, data and evaluation of a config's stage, each checked: one line naming a field otherwise."""

  def __init__(self, cfg: ml_collections.ConfigDict, devices=None):
    check_settings(cfg)
    self.stage: Stage = STAGES[cfg.stage]
    self.mesh = sharding.make_mesh(devices)
    if cfg.batch_size % self.mesh.size:
      raise InputError(f'batch_size: {cfg.batch_size} does not split over {self.mesh.size} devices')
    self.info = datasets.dataset_info(cfg.data)
    if cfg.model.num_classes != self.info.num_classes:
      raise InputError(f'model.num_classes: {cfg.model.num_classes}, but {self.info.name} has '
                       f'{self.info.num_classes} classes')
    self.model = build_model(cfg.model, with_context=self.stage.with_context is not False,
                             mean_bgr=self.info.mean_bgr)
    if self.stage.with_context and self.model.context_module is None:
      raise InputError(f'model.context.dilations: stage {cfg.stage} needs a context module, got none')
    self.crf = crf_lib.build(cfg.model.crf) if self.stage.with_crf else None
    has = {'front_end': True, 'context_module': self.model.context_module is not None, 'crf': self.crf is not None}
    self.trains = tuple(k for k in self.stage.trains if has[k])  # the trained subtrees this network has
    self.train_source = datasets.get_source(cfg.data, 'train')
    self.val_source = datasets.get_source(cfg.data, cfg.eval.split)
    for split, source in (('train', self.train_source), (cfg.eval.split, self.val_source)):
      if not len(source):
        raise InputError(f'data: the {split} split of {self.info.name} holds no images')
    self.predictor = Predictor(cfg.model, self.info, cfg.eval.tile, self.mesh,
                               with_context=self.model.context_module is not None,
                               tiles_per_device=cfg.eval.tiles_per_device, crf=self.crf is not None)
    self.image_examples, self.crop, self.out_hw = image_examples(cfg, self.train_source, self.model, self.info)
    if self.stage.needs_trained_front_end and not cfg.init_from and not cfg.weights:
      raise InputError(f'init_from: stage {cfg.stage} starts from the workdir of the previous stage; none given')
    if cfg.init_from and cfg.weights:
      raise InputError('weights: give init_from (a workdir) or weights (a weights file), not both')
    self.workers = pipeline.resolve_workers(cfg.data.workers)


def full_resolution(cfg) -> bool:
  """Whether the stage's labels and loss are at full resolution over the crop's output region (stages.output_region):
  the CRF stages', or loss_resolution 'full'."""
  return STAGES[cfg.stage].with_crf or cfg.loss_resolution == 'full'


def image_examples(cfg, source, model, info):
  """make_example(i, rng) of the image stages (frontend, joint, crf), the training crop (arXiv 1511.07122 section 4)
  and the size of its output."""
  fe = model.front_end
  crop = tuple(cfg.data.crop)
  if crop == (0, 0):  # the whole image: all images must share one size
    h, w = pipeline.read_record(source, 0, info.num_classes)[0].shape[:2]
    crop = (h + 2 * fe.margin, w + 2 * fe.margin)
  try:
    out_hw = tuple(rf.output_size(c, fe.layers(), fe.padding) for c in crop)
  except ValueError:
    field = rf.receptive_field(fe.layers())[0]
    raise InputError(f'data.crop: {crop} is smaller than the receptive field of the front end\'s unpadded layers '
                     f'({field} px, model.front_end): nothing is left of it (e.g. {2 * fe.margin + 16 * fe.stride} '
                     f'would do)') from None
  if fe.padding.upper() == 'VALID' and any((c - 2 * fe.margin) % fe.stride for c in crop):
    raise InputError(f'data.crop: {crop} cannot be taken by this front end: expected crop - {2 * fe.margin} '
                     f'to be a multiple of {fe.stride} (e.g. {2 * fe.margin + 16 * fe.stride})')

  make_example = pipeline.ImageExamples(source, info.num_classes, crop=crop, margin=fe.margin, stride=fe.stride,
                                        out_hw=out_hw, flip=cfg.data.flip,
                                        scale_range=tuple(cfg.data.scale_range),
                                        label_offset=label_offset(cfg.model.upsample, fe.stride),
                                        full_resolution=full_resolution(cfg))
  return make_example, crop, out_hw


def score_examples(cfg, run: Run, state, workdir):
  """make_example(i, rng) of the context stage, and its example count: the front end's score maps of every training
  image, computed once (fyu/dilation test.py --bin) and cached beside that front end, where the other context runs
  from it find them (or in this workdir, when that folder cannot be written)."""
  front_end = Predictor(cfg.model, run.info, cfg.eval.tile, run.mesh, with_context=False,
                        tiles_per_device=cfg.eval.tiles_per_device)
  folder = cfg.init_from if os.access(cfg.init_from, os.W_OK) else workdir
  front = {k: {'front_end': state[k]['front_end']} for k in ('params', 'batch_stats') if k in state}
  cache = score_cache.cached_scores(folder, run.train_source, front_end, checkpoint.eval_variables(front), cfg.data,
                                    run.workers, batch_size=cfg.eval.batch_size)
  return pipeline.ScoreExamples(cache, cfg.data.flip), len(cache)


# ------------------------------------------------------------------ resume or initialise


def resume_or_initialise(cfg, run: Run, tx, workdir) -> tuple[dict, int]:
  """(state, step): this workdir's newest readable checkpoint, or, in a new workdir, the network's initialisation
  with what the stage loads from init_from or the weights file put in place."""
  stage, repl = run.stage, sharding.replicated(run.mesh)
  rng = jax.random.key(cfg.seed)
  shapes = jax.eval_shape(lambda r: initial_variables(run, r), rng)  # no compilation, no initialisation: may resume
  abstract = jax.eval_shape(
      lambda v: checkpoint.initial_state(v['params'], tx, run.trains, v.get('batch_stats')), shapes)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), abstract)
  state, step = checkpoint.restore_latest(workdir, abstract)
  if state is not None:
    if step > cfg.total_steps:  # its evaluation would be labelled with a step its parameters are not from
      raise InputError(f'total_steps: {cfg.total_steps}, but {checkpoint.step_dir(workdir, step)} is already '
                       f'past it (run to at least {step} steps, or give another --workdir)')
    logging.info('resumed from %s', checkpoint.step_dir(workdir, step))
    return state, step
  # Code that runs once: on CPU, LLVM's optimisation of the initialisers' unrolled random-bit generation took 15 of
  # the 17 s this compilation took for a 1/32 VGG (every run's start, every test's); unoptimised 2 s, values within
  # an ulp of it (docs/decisions.md).
  options = {'xla_backend_optimization_level': 0} if run.mesh.devices.flat[0].platform == 'cpu' else None
  init = jax.jit(lambda r: initial_variables(run, r)).lower(rng).compile(compiler_options=options)
  variables = jax.device_get(init(rng))
  params, batch_stats = variables['params'], variables.get('batch_stats')
  if cfg.init_from:  # the subtrees the stage loads (context: the front end), or everything the workdir has
    loaded = checkpoint.load_variables(cfg.init_from, 'latest')
    keys = stage.loads or tuple(loaded['params'])
    params = _merge(params, loaded['params'], keys=keys, source=cfg.init_from)
    if batch_stats:  # a DRN's running statistics go with its parameters
      batch_stats = _merge(batch_stats, loaded.get('batch_stats', {}), keys=[k for k in keys if k in batch_stats],
                           source=cfg.init_from)
  if cfg.weights and batch_stats:  # a DRN: fyu/drn's ImageNet drn.py or its segment.py DRNSeg state dict
    params, batch_stats = _drn_weights(cfg.weights, run.model.front_end, params, batch_stats,
                                       stage.needs_trained_front_end)
  elif cfg.weights:  # ImageNet VGG-16 (front end) or a released model (all it holds)
    params, imported = weights.initialise(params, cfg.weights, cfg.model, run.info.mean_bgr,
                                          need_final=stage.needs_trained_front_end)
    logging.info('from %s: %s; %s', cfg.weights, ', '.join(imported.layers), '; '.join(imported.notes))
  return jax.device_put(checkpoint.initial_state(params, tx, run.trains, batch_stats), repl), 0


def initial_variables(run: Run, rng) -> dict:
  """The network's variables at initialisation, on a crop of the training size; in the CRF stages with the CRF
  layer's parameters beside them, as 'crf' (Potts compatibility, the configured kernel weights)."""
  variables = run.model.init(rng, jnp.zeros((1,) + run.crop + (3,)))
  if run.crf is None:
    return variables
  hw = output_region(run.model.front_end, run.out_hw)[1]
  crf = run.crf.init(rng, jnp.zeros((1,) + hw + (run.info.num_classes,)), jnp.zeros((1,) + hw + (3,)))
  return {**variables, 'params': {**variables['params'], 'crf': crf['params']}}


def _drn_weights(path, model, params, batch_stats, need_seg: bool):
  """params and batch_stats with the DRN front end's from a fyu/drn file (weights.load_drn checks every tensor)."""
  front = {'params': params['front_end'], 'batch_stats': batch_stats['front_end']}
  loaded, notes = weights.load_drn(path, model, front)
  if need_seg and any(n.startswith('seg:') for n in notes):
    raise InputError(f'{path}: no seg layer (ImageNet weights): a context or joint stage starts from a trained '
                     'DRNSeg (a segment.py file), not from an ImageNet DRN')
  logging.info('from %s: the DRN front end; %s', path, '; '.join(notes) or 'every tensor')
  return {**params, 'front_end': loaded['params']}, {**batch_stats, 'front_end': loaded['batch_stats']}


def _merge(params, loaded, keys, source):
  """params with the subtrees `keys` replaced by those of `loaded`, after checking every shape."""
  out = dict(params)
  for key in keys:
    if key not in params:
      continue
    if key not in loaded:
      raise InputError(f'init_from: {source} has no {key} parameters (found {sorted(loaded)})')
    want = jax.tree_util.tree_flatten_with_path(params[key])[0]
    got = dict(jax.tree_util.tree_flatten_with_path(loaded[key])[0])
    for path, leaf in want:
      name = key + jax.tree_util.keystr(path)
      if path not in got:
        raise InputError(f'init_from: {source} lacks {name}')
      if got[path].shape != leaf.shape:
        raise InputError(f'init_from: {name} in {source} has shape {got[path].shape}, the model wants {leaf.shape}')
    out[key] = loaded[key]
  return out



# ------------------------------------------------------------------ preemption, profiling, logging


class Preemption:
  """Whether to stop, asked after each step: SIGTERM sets a flag. Several processes must agree on the step to stop
  at: JAX's preemption service (which watches SIGTERM itself) gives it to all of them."""

  def __init__(self):
    self.several = jax.process_count() > 1
    self.signal = None
    if self.several:
      from jax.experimental import multihost_utils
      self._reached = multihost_utils.reached_preemption_sync_point
    else:
      self._previous = signal.signal(signal.SIGTERM, lambda signum, frame: setattr(self, 'signal', signum))

  def at(self, step: int) -> bool:
    return self._reached(step) if self.several else self.signal is not None

  def during_evaluation(self):
    """What evaluate asks between batches (None with several processes: they agree on steps only)."""
    return None if self.several else lambda: self.signal is not None

  def close(self):
    if not self.several:
      signal.signal(signal.SIGTERM, self._previous)


class Profile:
  """A jax.profiler trace of the steps profile_steps = (first, last) into WORKDIR/tb, where TensorBoard's profile
  plugin (xprof) shows it beside the scalars; () profiles nothing."""

  def __init__(self, steps, workdir):
    self.first, self.last = tuple(steps) or (0, -1)
    self.folder, self.on = os.path.join(workdir, 'tb'), False

  def before(self, step: int):
    if not self.on and self.first <= step <= self.last:  # a resumed run may start inside the range
      jax.profiler.start_trace(self.folder)
      self.on = True

  def after(self, step: int, state):
    if self.on and step == self.last:
      self.close(state)

  def close(self, state=None):
    if self.on:
      jax.block_until_ready(state)  # the profiled steps' device work, not only their dispatch
      jax.profiler.stop_trace()
      self.on = False
      logging.info('profile of steps %d..%d written to %s/plugins/profile', self.first, self.last, self.folder)


class Log:
  """Progress lines, a JSON-lines file and TensorBoard events, written by process 0 only."""

  def __init__(self, workdir, total_steps, batch_size, start_step: int):
    self.total, self.batch = total_steps, batch_size
    self.main = jax.process_index() == 0
    self.tb = None
    if self.main:
      from tensorboardX import SummaryWriter  # no TensorFlow needed
      # purge_step: TensorBoard hides the events of the steps past the resumed checkpoint that a killed run wrote,
      # as metrics.jsonl drops its lines (the resumed run logs those steps again).
      self.tb = SummaryWriter(os.path.join(workdir, 'tb'), purge_step=start_step + 1)
      path = os.path.join(workdir, 'metrics.jsonl')
      _keep_lines_up_to(path, start_step)
      self.jsonl = open(path, 'a')
    self.t0, self.step0 = time.time(), None
    self.input_wait, self.interval_start = 0.0, None  # seconds waited for input batches since the last line

  def write(self, step, scalars: dict, kind: str):
    if not self.main:
      return
    for k, v in scalars.items():
      if np.isfinite(v):  # the first line's speed is unknown (compilation)
        self.tb.add_scalar(f'{kind}/{k}', v, step)
    self.jsonl.write(json.dumps({'step': step, 'kind': kind, **scalars}) + '\n')
    self.jsonl.flush()

  def images(self, step, pictures: dict):
    """Pictures (name -> (H, W, 3) uint8) in TensorBoard's images tab."""
    if self.main:
      for name, picture in pictures.items():
        self.tb.add_image(name, picture, step, dataformats='HWC')

  @contextlib.contextmanager
  def waiting_for_input(self):
    t = time.perf_counter()
    yield
    self.input_wait += time.perf_counter() - t

  def progress(self, step, scalars: dict):
    if not self.main:
      return
    now = time.time()
    if self.step0 is None:  # the first interval includes compilation: time from here on
      self.t0, self.step0 = now, step
      speed = wait = float('nan')
    else:
      speed = (step - self.step0) * self.batch / (now - self.t0)
      wait = self.input_wait / (now - self.interval_start)
    self.input_wait, self.interval_start = 0.0, now
    eta = (self.total - step) * self.batch / speed if speed > 0 else float('nan')
    # input_wait: the fraction of the time since the last line that the loop waited for a batch.
    scalars = dict(scalars, images_per_sec=speed, input_wait=wait)
    self.write(step, scalars, 'train')
    speed_text = '(compiling)' if np.isnan(speed) else f'{speed:.1f} img/s, input wait {100 * wait:.0f}%'
    logging.info('step %d/%d  loss %.4f  acc %.3f  mIoU %.3f  %s  ETA %s', step, self.total,
                 scalars['loss'], scalars['accuracy'], scalars['miou'], speed_text, progress.duration(eta))

  def close(self):
    if not self.main:
      return
    self.jsonl.close()
    try:
      self.tb.close()
    except OSError:  # a full disk. tensorboardX would try again at exit, and its thread read a torn-down queue:
      writer = self.tb.file_writer.event_writer  # two more tracebacks after the run's error line
      writer._closed = True  # noqa: SLF001 - no public way to give up on a writer
      writer._worker.stop()  # noqa: SLF001
      raise


def _keep_lines_up_to(path, step):
  """Drops the lines of metrics.jsonl past `step`: a run killed after its last checkpoint logged steps that the
  resumed run computes and logs again (and maybe half a line)."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line)['step'] <= step:
          kept.append(line if line.endswith('\n') else line + '\n')
      except (ValueError, KeyError, TypeError):
        pass
  files.write_text(path, ''.join(kept))


def _close_all(closers, quiet: bool = False):
  """Calls every closer, even after one fails; then raises the first failure, or (quiet: another error is already
  on its way) logs each as a warning line."""
  errors = []
  for close in closers:
    try:
      close()
    except Exception as e:  # noqa: BLE001 - collected, then raised or logged
      errors.append(e)
  if errors and not quiet:
    raise errors[0]
  for e in errors:
    logging.warning('while stopping: %s', ' '.join(str(e).split()))


def prediction_pictures(run: Run, params, count: int, split: str) -> dict:
  """The first `count` images of the evaluation split: image | ground truth | prediction, in the dataset's palette
  (every process computes; process 0 writes them)."""
  pairs = [run.val_source[i] for i in range(min(count, len(run.val_source)))]
  pictures = {}
  for i, (image, label) in enumerate(pairs):
    fill = [np.zeros_like(image)] * (run.mesh.size - 1)  # one image per call, the batch filled up per device
    prediction = np.argmax(run.predictor.probabilities(params, [image] + fill)[0], -1).astype(np.uint8)
    colours = [images.colourise(x, run.info.palette) for x in (label, prediction)]
    pictures[f'{split}/prediction_{i}'] = images.side_by_side([[image, *colours]])
  return pictures


# ------------------------------------------------------------------ training


def train(cfg: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """Trains cfg.stage in `workdir` (resuming if it holds a checkpoint) on `devices` (default all); returns the final
  evaluation."""
  run = Run(cfg, devices)
  workdir = os.path.abspath(workdir)
  cli.check_writable(workdir, 'workdir')
  _write_config(cfg, workdir)

  tx = optimizer(cfg)
  state, start = resume_or_initialise(cfg, run, tx, workdir)
  mngr = checkpoint.manager(workdir, cfg.keep_checkpoints)
  if run.stage.feeds == SCORES:
    make_example, num_examples = score_examples(cfg, run, state, workdir)
  else:
    make_example, num_examples = run.image_examples, len(run.train_source)
  step_fn = make_train_step(run.model, run.stage.name, run.trains, tx, cfg.model.num_classes,
                            jax.random.key(cfg.seed), run.mesh, run.info.mean_bgr, run.crf, cfg.model.upsample,
                            full_resolution(cfg))

  # --- the loop's companions. Closed at the end, in this order, whatever happened: the input workers stop, the last
  # save is waited for, the logs and the profile are written, the SIGTERM handler is restored.
  preemption, profile = Preemption(), Profile(cfg.profile_steps, workdir)
  log = Log(workdir, cfg.total_steps, cfg.batch_size, start)
  finite = FiniteFlags(workdir, cfg.batch_size, num_examples, cfg.seed)
  inputs = sharding.prefetch_to_mesh(_local_batches(cfg, make_example, num_examples, start, run.workers), run.mesh)
  closers = [inputs.close, lambda: checkpoint.wait(mngr, close=True), log.close, profile.close, preemption.close]
  logging.info('stage %s: steps %d..%d, global batch %d on %d devices (%d processes)', cfg.stage, start,
               cfg.total_steps, cfg.batch_size, run.mesh.size, jax.process_count())

  # --- the loop
  acc, result, stop = None, None, False
  try:
    for step in range(start + 1, cfg.total_steps + 1):
      profile.before(step)
      with log.waiting_for_input():
        batch = next(inputs)
      state, m = step_fn(state, batch)
      profile.after(step, state)
      # Metrics and the finite flags stay on device until a log line, an evaluation or a checkpoint reads the
      # device anyway: no extra host synchronisation.
      finite.add(step, m.pop('finite'), m['loss'])
      acc = m if acc is None else jax.tree.map(jnp.add, acc, m)
      stop = preemption.at(step)
      evaluate_now = (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.total_steps
      save_now = evaluate_now or step % cfg.checkpoint_every == 0 or stop
      if step % cfg.log_every == 0 or evaluate_now or save_now:
        finite.check()
      if step % cfg.log_every == 0 or step == cfg.total_steps:
        log_training(log, step, jax.device_get(acc), cfg.log_every)
        acc = None
      if save_now:  # before the evaluation, which may fail or be preempted: the interval's training is kept
        checkpoint.save(mngr, step, state, force=True)
      if evaluate_now and not stop:
        result = evaluate_and_record(cfg, run, checkpoint.eval_variables(state), step, log, mngr, workdir,
                                     preemption)
        stop = result is None  # SIGTERM during the evaluation: the step's checkpoint is written, exit now
      if stop:
        logging.warning('preempted (SIGTERM): checkpoint at step %d written, exiting', step)
        break
  except BaseException:
    _close_all(closers, quiet=True)  # the run's own error is the one to report
    raise
  _close_all(closers)

  # --- the report
  if stop:
    raise SystemExit(128 + signal.SIGTERM)
  if result is None:  # resumed after the last step: evaluate the final parameters again
    result = evaluate(run.predictor, checkpoint.eval_variables(state), run.val_source, run.info, cfg.eval.batch_size,
                      run.workers, boundary_width=cfg.eval.boundary_width)
  result.update(split=cfg.eval.split, step=cfg.total_steps, stage=cfg.stage, dataset=cfg.data.name)
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, 'eval', f'{cfg.eval.split}_final.json'), result)
    print(report(result, run.info, f'{cfg.stage} {cfg.eval.split}'))
  return result


def _local_batches(cfg, make_example, num_examples: int, start: int, workers: int):
  """This process's rows of every global batch from step `start` on, built by `workers` processes."""
  per_process = cfg.batch_size // jax.process_count()
  rows = pipeline.example_indices(start, cfg.batch_size, num_examples, cfg.seed)[
      jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
  logging.info('process %d/%d: its rows of the first batch are the training records %s (%d input workers)',
               jax.process_index(), jax.process_count(), rows.tolist(), workers)
  return pipeline.batches(make_example, num_examples, global_batch=cfg.batch_size, seed=cfg.seed, start_step=start,
                          stop_step=cfg.total_steps, process_index=jax.process_index(),
                          process_count=jax.process_count(), workers=workers)


def log_training(log: Log, step: int, acc: dict, log_every: int):
  """The progress line of the steps since the last one, from their summed metrics."""
  n = log_every if step % log_every == 0 else step % log_every
  log.progress(step, {'loss': float(acc['loss']) / n, 'accuracy': float(acc['accuracy']) / n,
                      'miou': metrics.scores(acc['confusion'])['miou']})


def evaluate_and_record(cfg, run: Run, params, step: int, log: Log, mngr, workdir, preemption) -> dict | None:
  """The evaluation of `step` (None when a SIGTERM abandoned it): logged, drawn for TensorBoard, and, on validation
  data only (never on the test set), recorded for the choice of the 'best' checkpoint."""
  result = evaluate(run.predictor, params, run.val_source, run.info, cfg.eval.batch_size, run.workers,
                    stop=preemption.during_evaluation(), boundary_width=cfg.eval.boundary_width)
  if result is None:
    return None
  log.write(step, {k: result[k] for k in ('miou', 'pixel_accuracy', 'boundary_miou') if k in result}, cfg.eval.split)
  if cfg.eval.tensorboard_images:
    log.images(step, prediction_pictures(run, params, cfg.eval.tensorboard_images, cfg.eval.split))
  if cfg.eval.split != 'test':
    checkpoint.record_miou(mngr, workdir, step, result['miou'])
  if jax.process_index() == 0:
    logging.info('step %d: %s mIoU %.4f', step, cfg.eval.split, result['miou'])
  return result


# Counts a run needs at least: field -> minimum (eval_every 0: at the end only; data.workers -1: one per core).
MINIMUMS = {'batch_size': 1, 'total_steps': 1, 'log_every': 1, 'checkpoint_every': 1, 'keep_checkpoints': 1,
            'eval_every': 0, 'eval.batch_size': 1, 'eval.tiles_per_device': 1, 'eval.tensorboard_images': 0,
            'data.workers': -1}


LR_POLICIES = ('step', 'poly')
LOSS_RESOLUTIONS = ('output', 'full')


def check_settings(cfg):
  """One line naming the first field of `cfg` a run cannot use: a stage not in STAGES, a count below what a run
  needs (`keep_checkpoints` 0 would let retention delete the checkpoint just written, the preemption one included),
  a profile range that is not two steps, a loss resolution the stage cannot have."""
  if cfg.stage not in STAGES:
    raise InputError(f'stage: expected one of {tuple(STAGES)}, got {cfg.stage!r}')
  for field, least in MINIMUMS.items():
    value = cfg
    for key in field.split('.'):
      value = value[key]
    if not isinstance(value, int) or value < least:
      raise InputError(f'{field}: expected an integer >= {least}, got {value!r}')
  if cfg.lr_policy not in LR_POLICIES:
    raise InputError(f'lr_policy: expected one of {LR_POLICIES}, got {cfg.lr_policy!r}')
  if cfg.lr_policy == 'poly' and tuple(cfg.lr_steps):
    raise InputError(f"lr_steps: {tuple(cfg.lr_steps)} are the 'step' policy's; lr_policy 'poly' decays every step")
  if cfg.loss_resolution not in LOSS_RESOLUTIONS:
    raise InputError(f'loss_resolution: expected one of {LOSS_RESOLUTIONS}, got {cfg.loss_resolution!r}')
  if cfg.loss_resolution == 'full' and STAGES[cfg.stage].feeds == SCORES:
    raise InputError(f"loss_resolution: 'full' needs an image stage; stage {cfg.stage} trains on the front end's "
                     "cached scores, labelled at the output's resolution")
  steps = tuple(cfg.profile_steps)
  if steps and (len(steps) != 2 or not all(isinstance(s, int) for s in steps) or not 1 <= steps[0] <= steps[1]):
    raise InputError(f'profile_steps: expected () or (first, last) with 1 <= first <= last, got {steps}')


def _write_config(cfg, workdir):
  """config.json of the run; a rerun with other settings is logged, since it resumes the same checkpoints."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, 'config.json')
  text = cfg.to_json_best_effort(indent=1, sort_keys=True)
  if os.path.exists(path):
    with open(path) as f:
      if f.read() != text:
        logging.warning('%s differs from this run\'s config; keeping the first, resuming its checkpoints', path)
    return
  files.write_text(path, text)  # a run killed here leaves no half-written config to be "kept"


FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.multihost:
    # On TPU pods and SLURM or MPI clusters JAX finds the other processes; elsewhere give the three flags below.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU hosts only; ignored on GPU and TPU
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  train(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'experiment config file', lock_config=True)
  flags.DEFINE_string('workdir', None, 'where checkpoints, logs and results go; rerun to resume')
  flags.DEFINE_bool('multihost', False, 'call jax.distributed.initialize() (TPU pods, several GPU hosts)')
  flags.DEFINE_string('coordinator_address', None, 'with --multihost: host:port of process 0, if not found alone')
  flags.DEFINE_integer('num_processes', None, 'with --multihost: number of processes, if not found alone')
  flags.DEFINE_integer('process_id', None, 'with --multihost: this process, if not found alone')
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main)
