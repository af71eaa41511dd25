"""Converts a released weights file into a workdir checkpoint that train, evaluate and predict accept.

  python -m dilated_jax.weights.convert --preset camvid --weights dilation8_camvid.caffemodel --workdir runs/camvid8

Writes DIR/checkpoints (orbax, step 0: {'step', 'params'}) and DIR/weights.json (the source, which layers came from
it, which were initialised as in training, what was not used). Then, for example:

  python -m dilated_jax.train --config=experiments/camvid_dilation8.py:stage=joint --config.init_from=DIR ...
  python -m dilated_jax.evaluate --config=experiments/camvid_dilation8.py:stage=joint --workdir=DIR
  python -m dilated_jax.predict --preset camvid --weights DIR --output_dir OUT image.png

Layers the file lacks (`final` and the context module of an ImageNet VGG-16) get the network's own initialisation,
so that the checkpoint is a whole network; a released model must hold every layer of its preset.
"""

import os

from absl import flags
import jax
import jax.numpy as jnp

from dilated_jax import InputError, checkpoint, cli, files
from dilated_jax.data.info import DATASETS
from dilated_jax.models import model_config
from dilated_jax.weights import importer


def convert(preset: str, weights: str, workdir: str, width: float = 1.0) -> importer.Imported:
  """Imports `weights` onto the `preset` network (front-end width `width`) and saves it as workdir's checkpoint."""
  model_cfg = model_config(preset)
  model_cfg.front_end.width = width
  checkpoints = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if os.path.isdir(checkpoints) and os.listdir(checkpoints):
    raise InputError(f'workdir: {workdir} already holds checkpoints; converting into it would mix two networks '
                     '(choose a new workdir)')
  params, imported = importer.initialise(importer.init_params(model_cfg), weights, model_cfg, DATASETS[preset].mean_bgr)
  os.makedirs(workdir, exist_ok=True)
  state = checkpoint.initial_state(jax.tree.map(jnp.asarray, params))
  with checkpoint.manager(workdir, keep=1) as mngr:
    checkpoint.save(mngr, 0, state, force=True)
    mngr.wait_until_finished()
  record = {'source': os.path.abspath(weights), 'format': imported.format, 'preset': preset, 'width': width,
            'imported': imported.layers, 'notes': imported.notes}
  files.write_json(os.path.join(workdir, 'weights.json'), record)
  return imported


FLAGS = flags.FLAGS


def main(argv):
  if argv[1:]:
    raise InputError(f'unexpected arguments {argv[1:]}: everything is given by flags')
  imported = convert(FLAGS.preset, FLAGS.weights, FLAGS.workdir, FLAGS.width)
  for note in imported.notes:
    print(f'note: {note}')
  print(f'wrote {os.path.join(FLAGS.workdir, "checkpoints")}: {len(imported.layers)} layers from {FLAGS.weights} '
        f'({imported.format})')


if __name__ == '__main__':
  flags.DEFINE_enum('preset', None, sorted(DATASETS), 'the network the weights are for (fyu/dilation datasets)')
  flags.DEFINE_string('weights', None, '.caffemodel, torchvision VGG-16 state dict (.pth / .npz)')
  flags.DEFINE_string('workdir', None, 'where the checkpoint goes; must not hold checkpoints yet')
  flags.DEFINE_float('width', 1.0, "front_end.width of the file's network: 1 for the released models and VGG-16")
  flags.mark_flags_as_required(['preset', 'weights', 'workdir'])
  cli.run(main)
