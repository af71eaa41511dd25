"""The CRF-RNN layer (models/crf.py) and the dense-CRF post-processing (dense_crf.py) against a brute-force dense
mean field written from the definitions (crf_reference.py)."""

import dataclasses

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

import crf_reference as ref
from dilated_jax import InputError, dense_crf
from dilated_jax.models.crf import MeanFieldCRF


def layer_scores(crf: MeanFieldCRF, unaries, image, params=None, train=False):
  """The layer's S_T for one (H, W, C) image, with its initial parameters updated by `params`."""
  variables = crf.init(jax.random.key(0), unaries[None], image[None])
  variables = {'params': {**variables['params'], **(params or {})}}
  return np.asarray(crf.apply(variables, unaries[None], image[None], train=train)[0])


def test_layer_equals_brute_force_dense_mean_field():
  """A window covering the image and no downsampling: every pair, as the N^2 reference, with a learnt (random)
  compatibility and weights that are not the initial ones."""
  h, w, c = 7, 9, 4
  image, probs, _ = ref.scene(h, w, c)
  unaries = np.log(probs)
  mu = np.random.default_rng(1).normal(size=(c, c)).astype(np.float32)
  crf = MeanFieldCRF(theta_alpha=4.0, theta_beta=40.0, theta_gamma=1.5, window=2 * max(h, w) - 1, downsample=1,
                     train_iterations=3)
  got = layer_scores(crf, unaries, image.astype(np.float32), train=True,
                     params={'compatibility': mu, 'spatial_weight': 1.5, 'bilateral_weight': 2.5})
  want = ref.mean_field(unaries, image, 4.0, 40.0, 1.5, w_spatial=1.5, w_bilateral=2.5, iterations=3, compatibility=mu)
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_layer_window_keeps_only_pairs_inside_it():
  """A 5 x 5 window at full resolution: the reference with the bilateral kernel cut to the same pairs."""
  h, w, c = 8, 10, 3
  image, probs, _ = ref.scene(h, w, c, seed=2)
  crf = MeanFieldCRF(theta_alpha=20.0, theta_beta=60.0, theta_gamma=1.0, window=5, downsample=1, test_iterations=4)
  got = layer_scores(crf, np.log(probs), image.astype(np.float32))
  want = ref.mean_field(np.log(probs), image, 20.0, 60.0, 1.0, 3.0, 5.0, iterations=4, window=5)
  np.testing.assert_allclose(got, want, atol=2e-5)
  uncut = ref.mean_field(np.log(probs), image, 20.0, 60.0, 1.0, 3.0, 5.0, iterations=4)
  assert np.abs(uncut - want).max() > 1e-2  # the cut matters here, so the comparison above can fail


def test_layer_leaves_out_the_padding_of_a_batch():
  """An image padded to a batch's size, its padding marked invalid: at downsample 1 its pixels get exactly the
  scores of the image alone (no message from the padding, none of it in a normaliser); at downsample 2 the padding
  still sends nothing, checked against noise put there."""
  h, w, c, ph, pw = 6, 7, 3, 9, 11
  image, probs, _ = ref.scene(h, w, c, seed=3)
  unaries = np.log(probs)
  rng = np.random.default_rng(4)
  padded_u = rng.normal(size=(ph, pw, c)).astype(np.float32)
  padded_u[:h, :w] = unaries
  padded_im = rng.uniform(0, 255, (ph, pw, 3)).astype(np.float32)
  padded_im[:h, :w] = image
  valid = np.zeros((1, ph, pw), np.float32)
  valid[0, :h, :w] = 1
  for downsample in (1, 2):
    crf = MeanFieldCRF(theta_alpha=4.0, theta_beta=40.0, theta_gamma=1.5, window=2 * -(-pw // downsample) - 1,
                       downsample=downsample,
                       test_iterations=3)
    variables = crf.init(jax.random.key(0), padded_u[None], padded_im[None])
    got = np.asarray(crf.apply(variables, padded_u[None], padded_im[None], valid)[0, :h, :w])
    noise = rng.normal(size=padded_u.shape).astype(np.float32) * 5
    noise[:h, :w] = 0
    other = np.asarray(crf.apply(variables, (padded_u + noise)[None], padded_im[None], valid)[0, :h, :w])
    np.testing.assert_allclose(other, got, atol=1e-5)  # what the padding holds does not reach the image
    if downsample == 1:
      want = ref.mean_field(unaries, image, 4.0, 40.0, 1.5, 3.0, 5.0, iterations=3)
      np.testing.assert_allclose(got, want, atol=2e-5)
      unmasked = np.asarray(crf.apply(variables, padded_u[None], padded_im[None])[0, :h, :w])
      assert np.abs(unmasked - want).max() > 1e-2  # the padding would matter, so the comparison above can fail


def test_layer_iterations_for_training_and_test():
  h, w, c = 6, 6, 3
  image, probs, _ = ref.scene(h, w, c)
  crf = MeanFieldCRF(theta_alpha=3.0, theta_beta=30.0, window=11, downsample=1, train_iterations=2,
                     test_iterations=5)
  for train, iterations in ((True, 2), (False, 5)):
    want = ref.mean_field(np.log(probs), image, 3.0, 30.0, 3.0, 3.0, 5.0, iterations)
    np.testing.assert_allclose(layer_scores(crf, np.log(probs), image.astype(np.float32), train=train), want,
                               atol=2e-5)


def test_one_iteration_with_zero_weights_is_the_softmax_of_the_unaries():
  h, w, c = 12, 10, 5
  image, probs, _ = ref.scene(h, w, c)
  unaries = np.random.default_rng(3).normal(size=(h, w, c)).astype(np.float32) * 3
  crf = MeanFieldCRF(test_iterations=1, window=3, downsample=2)
  s = layer_scores(crf, unaries, image.astype(np.float32), params={'spatial_weight': 0.0, 'bilateral_weight': 0.0})
  np.testing.assert_allclose(jax.nn.softmax(s), jax.nn.softmax(unaries), atol=1e-6)
  q = dense_crf.refine(probs, image, dense_crf.DenseCRFParams(w_bilateral=0.0, w_spatial=0.0, iterations=1))
  np.testing.assert_allclose(q, probs, atol=1e-6)


def test_layer_gradients():
  """Unaries, kernel weights and compatibility, through pooling, the window and the bilinear upsampling, in float64."""
  h, w, c = 6, 7, 3
  image, probs, _ = ref.scene(h, w, c)
  crf = MeanFieldCRF(theta_alpha=5.0, theta_beta=50.0, theta_gamma=1.0, window=3, downsample=2, train_iterations=2)
  with jax.enable_x64(True):
    unaries = jnp.asarray(np.log(probs), jnp.float64)[None]
    im = jnp.asarray(image, jnp.float64)[None]
    params = crf.init(jax.random.key(0), unaries, im)['params']
    params = {**params, 'compatibility': params['compatibility'] + 0.1 * jnp.arange(c * c).reshape(c, c)}
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(params))
    check_grads(jax.jit(lambda p, u: crf.apply({'params': p}, u, im, train=True)), (params, unaries), order=1,
                modes=('fwd', 'rev'))


def test_layer_jits_and_downsampled_bilateral_stays_close_to_exact():
  """Downsampling and a truncated window approximate the exact kernel: labels agree on most pixels here."""
  h, w, c = 24, 32, 4
  image, probs, _ = ref.scene(h, w, c)
  exact = MeanFieldCRF(theta_alpha=8.0, theta_beta=20.0, window=2 * w - 1, downsample=1)
  approx = MeanFieldCRF(theta_alpha=8.0, theta_beta=20.0, window=9, downsample=2)
  u, im = np.log(probs)[None], image.astype(np.float32)[None]
  variables = exact.init(jax.random.key(0), u, im)  # the same parameters: only the fields differ
  s_exact = jax.jit(exact.apply)(variables, u, im)[0]
  s_approx = jax.jit(approx.apply)(variables, u, im)[0]
  agree = float((s_exact.argmax(-1) == s_approx.argmax(-1)).mean())
  assert agree > 0.95, agree


def test_dense_crf_agrees_with_brute_force_within_the_lattice_gap():
  """pydensecrf2's permutohedral lattice approximates the Gaussian filters. Measured on 32 x 40 scenes of six seeds:
  one message (K~ P) is off by 1.8-2.1% (spatial kernel) and 2.3-3.8% (bilateral, theta_beta 13) of its norm; after
  10 iterations Q is off by 0.0002-0.0006 on average, and labels agree on 99.9-100% of the pixels. The test allows
  about twice the worst of these."""
  h, w, c = 32, 40, 4
  image, probs, _ = ref.scene(h, w, c)
  params = dense_crf.DenseCRFParams(theta_alpha=80.0, theta_beta=13.0)
  k_spatial, k_bilateral = ref.kernels(image, params.theta_alpha, params.theta_beta, params.theta_gamma)
  for one_kernel, weights, allowed in ((k_spatial, dict(w_spatial=1.0, w_bilateral=0.0), 0.04),
                                       (k_bilateral, dict(w_spatial=0.0, w_bilateral=1.0), 0.08)):
    q = dense_crf.refine(probs, image, dataclasses.replace(params, iterations=1, **weights))
    # log Q = log P + message - log Z: the message up to a per-pixel constant (removed by centring over labels).
    got = np.log(q) - np.log(probs)
    want = (one_kernel @ probs.reshape(-1, c)).reshape(h, w, c)
    got, want = (x - x.mean(-1, keepdims=True) for x in (got, want))
    gap = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert gap < allowed, gap
  q = dense_crf.refine(probs, image, params)
  want = ref.softmax(ref.mean_field(np.log(probs), image, 80.0, 13.0, 3.0, 3.0, 4.0, params.iterations))
  assert np.abs(q - want).mean() < 0.0012
  assert (q.argmax(-1) == want.argmax(-1)).mean() > 0.998


def test_dense_crf_in_worker_processes_keeps_order():
  """refine_all over 2 spawned workers gives what refine gives here, image by image, in the input's order."""
  pairs = [ref.scene(12 + i, 16, 3, seed=i)[:2][::-1] for i in range(5)]
  params = dense_crf.DenseCRFParams(iterations=3)
  here = [dense_crf.refine(p, im, params) for p, im in pairs]
  there = list(dense_crf.refine_all(iter(pairs), params, workers=2))
  assert [q.shape for q in there] == [q.shape for q in here]
  for a, b in zip(here, there):
    np.testing.assert_array_equal(a, b)
  labels = list(dense_crf.refine_all(pairs, params, workers=2, labels=True))
  for a, b in zip(here, labels):
    np.testing.assert_array_equal(a.argmax(-1), b)


@pytest.mark.parametrize('fields, named', [
    (dict(theta_alpha=-80.0), 'crf.theta_alpha'),
    (dict(theta_beta=0.0), 'crf.theta_beta'),
    (dict(theta_gamma=float('inf')), 'crf.theta_gamma'),  # NaN fails every comparison; infinity does not
    (dict(w_bilateral=-1.0), 'crf.w_bilateral'),
    (dict(w_spatial='3'), 'crf.w_spatial'),
    (dict(iterations=0), 'crf.iterations'),
    (dict(iterations=2.5), 'crf.iterations'),
])
def test_bad_dense_crf_settings_name_the_field(fields, named):
  with pytest.raises(InputError) as e:
    dense_crf.DenseCRFParams(**fields)
  assert str(e.value).startswith(named + ':') and '\n' not in str(e.value)


def test_bad_dense_crf_inputs():
  image, probs, _ = ref.scene(8, 8, 3)
  for bad_probs, bad_image, what in ((probs, image[:7], 'RGB image'), (probs, image.astype(np.float32), 'uint8')):
    with pytest.raises(InputError, match=what):
      dense_crf.refine(bad_probs, bad_image, dense_crf.DenseCRFParams())
  with pytest.raises(InputError, match='crf.theta: not a CRF parameter'):
    dense_crf.DenseCRFParams.from_dict({'theta': 3})


@pytest.mark.parametrize('fields, named', [
    (dict(theta_alpha=-1.0), 'crf.theta_alpha'),
    (dict(theta_beta=0.0), 'crf.theta_beta'),
    (dict(theta_gamma=-3.0), 'crf.theta_gamma'),
    (dict(w_spatial=-3.0), 'crf.w_spatial'),
    (dict(window=4), 'crf.window'),
    (dict(window=0), 'crf.window'),
    (dict(window=17), 'crf.window'),  # 16 x 12 pixels at downsample 2: 8 x 6 cells, covered by 15
    (dict(window=15, downsample=0), 'crf.downsample'),
    (dict(window=15, test_iterations=0), 'crf.test_iterations'),
    (dict(window=15, train_iterations=-5), 'crf.train_iterations'),
])
def test_bad_layer_settings_name_the_field(fields, named):
  crf = MeanFieldCRF(**{'downsample': 2, **fields})
  u, im = jnp.zeros((1, 12, 16, 3)), jnp.zeros((1, 12, 16, 3))
  with pytest.raises(InputError) as e:
    crf.init(jax.random.key(0), u, im)
  assert str(e.value).startswith('model.' + named + ':') and '\n' not in str(e.value)  # the config's field


def test_the_widest_window_that_covers_the_image_is_allowed():
  u, im = jnp.zeros((1, 12, 16, 3)), jnp.zeros((1, 12, 16, 3))
  crf = MeanFieldCRF(window=15, downsample=2)  # 8 x 6 cells: 15 reach every cell from every other
  assert crf.apply(crf.init(jax.random.key(0), u, im), u, im).shape == u.shape
