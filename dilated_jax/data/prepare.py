r"""Prepares one of the paper's datasets from the files you downloaded, for training and evaluation to read.

  python -m dilated_jax.data.prepare --dataset=camvid --manual_dir=/path/to/CamVid --data_dir=data

--dataset: pascal_voc (VOC 2012 + SBD), coco (COCO images with VOC classes), camvid, kitti, cityscapes; the layout
each expects is in README.md, "Datasets". The splits are written as array_record files to
DATA_DIR/<dataset>/1.0.0/; configs read them with --config.data.dir=DATA_DIR. Missing files stop it before anything
is written; a failed or interrupted run (Ctrl-C, SIGTERM) removes what it wrote. Running it again on a prepared
dataset does nothing.
"""

import signal
import sys
import time

from absl import flags

from dilated_jax import cli
from dilated_jax.data import MODULES, builder, builder_class

FLAGS = flags.FLAGS


def main(argv):
  del argv
  # SIGTERM as an exception, so that the half-written dataset is removed on the way out.
  signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
  start = time.time()
  counts = builder.prepare(builder_class(FLAGS.dataset), FLAGS.manual_dir, FLAGS.data_dir)
  print(f'{FLAGS.dataset} in {FLAGS.data_dir}: ' + ', '.join(f'{s} {n} images' for s, n in counts.items()) +
        f' ({time.time() - start:.0f} s)')


if __name__ == '__main__':
  flags.DEFINE_enum('dataset', None, list(MODULES), 'which dataset')
  flags.DEFINE_string('manual_dir', None, 'the folder of the downloaded dataset, in its released layout')
  flags.DEFINE_string('data_dir', 'data', 'where prepared datasets go (the configs\' data.dir)')
  flags.mark_flags_as_required(['dataset', 'manual_dir'])
  cli.run(main)
