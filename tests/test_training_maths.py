"""The training maths against references written from the definitions in numpy: Caffe's SGD solver (momentum, step
schedule, weight decay and learning-rate multipliers), the softmax loss normalised over the non-void cells of the
global batch, and inverted dropout in fc6 and fc7."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dilated_jax import config, sharding
from dilated_jax.data.info import IGNORE_LABEL
from dilated_jax.models import DilatedConv, build_model
from dilated_jax.train import loss_and_metrics, make_train_step, optimizer, update_if

# What the paper's prototxts give every convolution (param { lr_mult decay_mult } of weights, then biases).
LR_MULT = {'kernel': 1.0, 'bias': 2.0}
DECAY_MULT = {'kernel': 1.0, 'bias': 0.0}


# ------------------------------------------------------------------ Caffe's SGD solver


def caffe_lr(base_lr, gamma, stepvalues, it):
  """lr_policy "multistep": base_lr gamma^k, k = how many stepvalues iteration `it` (0 for the first) has reached."""
  return base_lr * gamma ** sum(it >= s for s in stepvalues)


def caffe_sgd(params, grads, base_lr, gamma, stepvalues, momentum, weight_decay, lr_inside_momentum=True):
  """SGDSolver: per blob, g <- diff + weight_decay decay_mult w; v <- momentum v + lr lr_mult g; w <- w - v.

  `params` maps each leaf's path (a tuple ending in 'kernel' or 'bias') to an array; `grads` is one such dict per
  iteration. Returns the parameters after each iteration and the change of each. lr_inside_momentum=False is
  optax.sgd's order (v <- momentum v + g; w <- w - lr v), used only to show that the data tell the two apart.
  """
  w = {k: np.asarray(v, np.float64) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  history = []
  for it, grad in enumerate(grads):
    lr = caffe_lr(base_lr, gamma, stepvalues, it)
    deltas = {}
    for k in w:
      name = k[-1]
      g = grad[k] + weight_decay * DECAY_MULT[name] * w[k]
      if lr_inside_momentum:
        v[k] = momentum * v[k] + lr * LR_MULT[name] * g
        deltas[k] = -v[k]
      else:
        v[k] = momentum * v[k] + g
        deltas[k] = -lr * LR_MULT[name] * v[k]
      w[k] = w[k] + deltas[k]
    history.append(({k: x.copy() for k, x in w.items()}, deltas))
  return history


def flat(tree):
  """{('front_end', 'conv1_1', 'kernel'): array, ...} of a nested dict."""
  return {tuple(p.key for p in path): np.asarray(x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def small_param_tree(rng):
  """Kernels and biases at nested paths as the model's, values of a few units."""
  shapes = {'front_end': {'conv1_1': {'kernel': (3, 3, 2, 4), 'bias': (4,)},
                          'fc6': {'kernel': (1, 1, 4, 3), 'bias': (3,)}},
            'context_module': {'ctx_conv1_1': {'kernel': (3, 3, 3, 3), 'bias': (3,)}}}
  return jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32) * 3, shapes,
                      is_leaf=lambda s: isinstance(s, tuple))


def test_optimizer_is_caffes_sgd_across_learning_rate_drops():
  """Caffe's update, step by step: the rate inside the momentum buffer, multiplied by lr_gamma at each of lr_steps,
  weight decay on kernels only (decay_mult 0 on biases), biases at twice the rate (lr_mult 2)."""
  cfg = config.base()
  cfg.update(lr=0.1, lr_steps=(2, 4), lr_gamma=0.5, weight_decay=0.02)  # momentum and bias_lr_mult: the defaults
  rng = np.random.default_rng(0)
  params = small_param_tree(rng)
  grads = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params) for _ in range(6)]
  want = caffe_sgd(flat(params), [flat(g) for g in grads], cfg.lr, cfg.lr_gamma, cfg.lr_steps, cfg.momentum,
                   cfg.weight_decay)

  tx = optimizer(cfg)
  state, p = tx.init(params), jax.tree.map(jnp.asarray, params)
  update = jax.jit(lambda p, state, g: update_if(jnp.bool_(True), tx, g, state, p), donate_argnums=(0, 1))
  for it, g in enumerate(grads):  # as make_train_step applies it
    before = flat(p)
    p, state, finite = update(p, state, g)
    assert finite
    want_w, want_delta = want[it]
    got_w = flat(p)
    got_delta = {k: got_w[k] - before[k] for k in got_w}
    for k in want_w:
      np.testing.assert_allclose(got_delta[k], want_delta[k], rtol=2e-5, atol=1e-6,  # w' - w: w's rounding
                                 err_msg=f'update of {"/".join(k)} at iteration {it}')
      np.testing.assert_allclose(got_w[k], want_w[k], rtol=2e-5, atol=1e-6,
                                 err_msg=f'{"/".join(k)} after iteration {it}')

  # The data tell each wrong rule apart from the right one by far more than the tolerance.
  last = lambda h: np.concatenate([x.ravel() for x in h[-1][1].values()])
  right = last(want)
  grads_np = [flat(g) for g in grads]
  wrong = {'optax.sgd order': last(caffe_sgd(flat(params), grads_np, cfg.lr, cfg.lr_gamma, cfg.lr_steps,
                                             cfg.momentum, cfg.weight_decay, lr_inside_momentum=False)),
           'no lr drop': last(caffe_sgd(flat(params), grads_np, cfg.lr, 1.0, (), cfg.momentum, cfg.weight_decay))}
  for name, delta in wrong.items():
    assert np.abs(delta - right).max() > 100 * 2e-5 * np.abs(right).max(), name


def test_an_update_is_applied_only_when_allowed_and_an_overflow_is_flagged():
  """update_if: not ok, the parameters and momentum come back as given (bit for bit); ok, as tx gives them; finite
  gradients that overflow the parameters update them and say so."""
  cfg = config.base()
  rng = np.random.default_rng(1)
  params = small_param_tree(rng)
  grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
  tx = optimizer(cfg)
  state = tx.update(grads, tx.init(params), params)[1]  # a momentum buffer that is not zero
  step = jax.jit(lambda ok, p, s, g: update_if(ok, tx, g, s, p))
  held = step(jnp.bool_(False), params, state, grads)
  for got, given in zip(jax.tree.leaves(held[:2]), jax.tree.leaves((params, state))):
    np.testing.assert_array_equal(got, given)
  assert held[2]
  updates, want_state = tx.update(grads, state, params)
  moved = step(jnp.bool_(True), params, state, grads)
  for got, want in zip(jax.tree.leaves(moved[:2]), jax.tree.leaves((optax.apply_updates(params, updates),
                                                                      want_state))):
    np.testing.assert_allclose(got, want, rtol=1e-6)
  fc6 = ('front_end', 'fc6', 'kernel')
  assert not np.allclose(flat(moved[0])[fc6], flat(params)[fc6])
  cfg.lr = 1.0
  tx = optimizer(cfg)
  huge = jax.tree.map(lambda x: np.full_like(x, 3e38), params)  # w - lr g = 6e38
  overflowed = jax.jit(update_if, static_argnums=1)(jnp.bool_(True), tx, jax.tree.map(np.negative, huge),
                                                    tx.init(huge), huge)
  assert not overflowed[2] and not np.isfinite(flat(overflowed[0])[fc6]).all()


def test_biases_take_no_weight_decay_and_twice_the_rate():
  """One step from zero momentum, zero gradient: a kernel moves by -lr wd w, a bias not at all; zero decay and a unit
  gradient: a bias moves by -2 lr, a kernel by -lr."""
  cfg = config.base()
  cfg.update(lr=0.1, weight_decay=0.02)
  params = {'front_end': {'fc7': {'kernel': np.full((1, 1, 2, 2), 5.0, np.float32),
                                  'bias': np.full((2,), 5.0, np.float32)}}}
  tx = optimizer(cfg)
  updates, _ = tx.update(jax.tree.map(np.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates['front_end']['fc7']['kernel'], -0.1 * 0.02 * 5.0, rtol=1e-6)
  np.testing.assert_array_equal(updates['front_end']['fc7']['bias'], 0.0, err_msg='weight decay reached a bias')
  cfg.weight_decay = 0.0
  tx = optimizer(cfg)
  updates, _ = tx.update(jax.tree.map(np.ones_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates['front_end']['fc7']['kernel'], -0.1, rtol=1e-6)
  np.testing.assert_allclose(updates['front_end']['fc7']['bias'], -0.2, rtol=1e-6,
                             err_msg='biases must learn at lr_mult 2')


# ------------------------------------------------------------------ loss and accuracy


def reference_loss(logits, labels):
  """Softmax cross-entropy summed over the cells whose label is not 255, divided by their number (normalization
  VALID; Caffe divides by max(count, 1)); accuracy over the same cells; d loss / d logits."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  valid = labels != IGNORE_LABEL
  count = max(valid.sum(), 1)
  safe = np.where(valid, labels, 0)
  p_true = np.take_along_axis(p, safe[..., None], -1)[..., 0]
  loss = -np.log(p_true)[valid].sum() / count
  accuracy = (np.argmax(z, -1) == labels)[valid].sum() / count
  onehot = np.eye(z.shape[-1])[safe]
  grad = np.where(valid[..., None], p - onehot, 0.0) / count
  return loss, accuracy, grad


def void_heavy_labels(rng, shape, num_classes):
  """Labels with about 60% void cells, unevenly spread: some images all void, some with none."""
  labels = rng.integers(0, num_classes, size=shape)
  labels[rng.random(shape) < 0.6] = IGNORE_LABEL
  labels[0] = IGNORE_LABEL
  labels[1] = rng.integers(0, num_classes, size=shape[1:])
  return labels


def test_loss_and_accuracy_are_means_over_the_non_void_cells():
  """loss_and_metrics, the loss the train step differentiates: mean cross-entropy over cells != 255, and the
  gradient it gives the logits; void cells neither add to the sum nor to the count."""
  rng = np.random.default_rng(1)
  c = 5
  logits = (rng.normal(size=(4, 6, 7, c)) * 3).astype(np.float32)
  labels = void_heavy_labels(rng, (4, 6, 7), c)
  assert 0.4 < (labels == IGNORE_LABEL).mean() < 0.8
  want_loss, want_acc, want_grad = reference_loss(logits, labels)
  loss, m = loss_and_metrics(jnp.asarray(logits), jnp.asarray(labels), c)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5, err_msg='loss: mean over the non-void cells')
  np.testing.assert_allclose(m['loss'], want_loss, rtol=1e-5)
  np.testing.assert_allclose(m['accuracy'], want_acc, rtol=1e-6, err_msg='accuracy: over the non-void cells')
  grad = jax.grad(lambda z: loss_and_metrics(z, jnp.asarray(labels), c)[0])(jnp.asarray(logits))
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7, err_msg='d loss / d logits')
  # A batch with no labelled cell: loss 0 and a zero gradient (Caffe's max(count, 1)), not NaN.
  void = np.full(labels.shape, IGNORE_LABEL)
  loss, m = loss_and_metrics(jnp.asarray(logits), jnp.asarray(void), c)
  assert float(loss) == 0.0 and float(m['accuracy']) == 0.0
  grad = jax.grad(lambda z: loss_and_metrics(z, jnp.asarray(void), c)[0])(jnp.asarray(logits))
  np.testing.assert_array_equal(grad, 0.0)


def test_train_step_reports_the_loss_and_accuracy_of_the_global_batch():
  """The jitted step over 8 devices, one image each, void spread unevenly over them: its loss and accuracy are those
  of the whole batch's non-void cells, not a mean of per-device means."""
  assert jax.device_count() == 8, 'tests/conftest.py asks for 8 simulated CPU devices'
  c = 5
  cfg = config.base()
  cfg.model.num_classes = c
  cfg.model.context.update(dilations=(1, 2), initialisation='random')
  model = build_model(cfg.model)
  rng = np.random.default_rng(2)
  x = rng.normal(size=(8, 6, 6, c)).astype(np.float32)
  labels = void_heavy_labels(rng, (8, 6, 6), c).astype(np.int32)
  labels[2, :, :3] = IGNORE_LABEL
  params = {'context_module': model.context_module.init(jax.random.key(0), x[:1])['params']}
  logits = np.asarray(model.context_module.apply({'params': params['context_module']}, x))
  want_loss, want_acc, _ = reference_loss(logits, labels)
  per_device = [reference_loss(logits[i:i + 1], labels[i:i + 1])[0] for i in range(8)]
  assert abs(np.mean(per_device) - want_loss) > 1e-2 * want_loss  # the data tell the two normalisations apart

  mesh = sharding.make_mesh()
  tx = optimizer(cfg)
  state = jax.device_put({'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params)},
                         sharding.replicated(mesh))
  step = make_train_step(model, 'context', ('context_module',), tx, c, jax.random.key(0), mesh, None)
  _, m = step(state, sharding.global_batch(mesh, {'image': x, 'label': labels}))
  np.testing.assert_allclose(m['loss'], want_loss, rtol=1e-5, err_msg='loss of the global batch')
  np.testing.assert_allclose(m['accuracy'], want_acc, rtol=1e-6, err_msg='accuracy of the global batch')
  assert np.asarray(m['confusion']).sum() == (labels != IGNORE_LABEL).sum()


# ------------------------------------------------------------------ dropout


def fc_inputs_and_outputs(model, params, x, train, seed=0):
  """Each of fc6, fc7 and final: (what it was given, what it returned), from one forward pass."""
  seen = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, DilatedConv) and context.method_name == '__call__':
      seen[context.module.name] = (np.asarray(args[0]), np.asarray(out))
    return out

  with nn.intercept_methods(record):
    model.apply({'params': params}, x, train=train, rngs={'dropout': jax.random.key(seed)})
  return seen


@pytest.mark.parametrize('rate', [None, 0.2])  # None: the config's default
def test_dropout_after_fc6_and_fc7_is_inverted_dropout_at_the_configured_rate(rate):
  """In training, each fc6 and fc7 activation is zeroed with probability model.front_end.dropout_rate and the others
  are multiplied by 1 / (1 - rate); at evaluation both dropouts are the identity."""
  cfg = config.base()
  cfg.model.num_classes = 3
  cfg.model.front_end.update(block_convs=(1,), block_channels=(2,), block_dilations=(1,), pools=0, fc6_kernel=1,
                             fc6_dilation=1, fc_channels=256)
  if rate is not None:
    cfg.model.front_end.dropout_rate = rate
  rate = cfg.model.front_end.dropout_rate
  model = build_model(cfg.model, with_context=False)
  x = jax.random.normal(jax.random.key(1), (2, 18, 18, 3))
  params = model.init(jax.random.key(0), x)['params']
  for name in ('fc6', 'fc7'):  # every activation positive, so that each zero is a dropped one
    layer = params['front_end'][name]
    layer.update(kernel=layer['kernel'] * 0.01, bias=jnp.full_like(layer['bias'], 10.0))

  seen = fc_inputs_and_outputs(model, params, x, train=True)
  for layer, after in (('fc6', 'fc7'), ('fc7', 'final')):
    given = np.maximum(seen[layer][1], 0)  # the ReLU of the layer's output
    assert given.min() > 0
    out = seen[after][0]  # what the next layer received
    kept = out != 0
    n = kept.size
    assert n > 100_000
    fraction = kept.mean()
    err = np.sqrt(rate * (1 - rate) / n)
    assert abs(fraction - (1 - rate)) < 5 * err, f'{layer}: kept {fraction:.4f} of activations, want {1 - rate}'
    np.testing.assert_allclose(out[kept], given[kept] / (1 - rate), rtol=1e-6,
                               err_msg=f'{layer}: kept activations must be scaled by 1 / (1 - rate)')

  seen = fc_inputs_and_outputs(model, params, x, train=False)
  np.testing.assert_array_equal(seen['fc7'][0], np.maximum(seen['fc6'][1], 0), err_msg='fc6 dropout at evaluation')
  np.testing.assert_array_equal(seen['final'][0], np.maximum(seen['fc7'][1], 0), err_msg='fc7 dropout at evaluation')
