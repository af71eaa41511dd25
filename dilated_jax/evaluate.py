"""Full-image evaluation of a training run with the authors' test-time tiling (fyu/dilation test.py, test_image).

  python -m dilated_jax.evaluate --workdir=DIR [--split=test] [--checkpoint=best|latest] [--crf [--crf_params=F]]
      [--ms] [--flip]

The network, dataset and tiles are those of DIR/config.json, the run's own config (`--config.eval.tile=...` and any
other field overridable; `--config=experiments/X.py:ARG` gives another config). Prints the per-class IoU table in
the paper's column order and writes it as JSON in DIR/eval/ (SPLIT_CHECKPOINT.json; with --crf, the dense CRF's
labels: SPLIT_CHECKPOINT_crf.json, the "+ CRF" rows of `tables`). Multi-scale and flip testing (eval.scales,
eval.flip; --ms: fyu/drn segment.py's six scales, --flip) sum each scale's log-probabilities resized back to the
image and write SPLIT_CHECKPOINT_ms.json (_flip, _ms_flip), the scales and flip in it; `tables` gives it no paper
row (every paper figure is single-scale).
"""

import os

from absl import flags, logging
import jax
from ml_collections import config_flags

from dilated_jax import cli, files, sharding
from dilated_jax import data as datasets
from dilated_jax.data import pipeline
from dilated_jax.inference import evaluate, is_multiscale, report, restore, result_suffix

FLAGS = flags.FLAGS


def main(argv):
  del argv
  cfg = FLAGS.config
  info = datasets.dataset_info(cfg.data)
  source = datasets.get_source(cfg.data, FLAGS.split)
  crf = cli.crf_from_flags()
  scales, flip = cli.test_time_from_flags(cfg.eval)
  multiscale = is_multiscale(scales, flip)
  predictor, params = restore(FLAGS.workdir, FLAGS.checkpoint, cfg, info, sharding.make_mesh())
  if jax.process_index() == 0:  # where the result goes, before the evaluation
    cli.check_writable(os.path.join(FLAGS.workdir, 'eval'), '--workdir')
  workers = pipeline.resolve_workers(cfg.data.workers)
  result = evaluate(predictor, params, source, info, cfg.eval.batch_size, workers, crf=crf,
                    boundary_width=cfg.eval.boundary_width, scales=scales if multiscale else None, flip=flip)
  result.update(split=FLAGS.split, checkpoint=FLAGS.checkpoint, workdir=os.path.abspath(FLAGS.workdir),
                dataset=cfg.data.name, protocol='full images, tiled as fyu/dilation test.py, mIoU over classes present')
  if crf:
    result['crf_params_file'] = os.path.abspath(FLAGS.crf_params) if FLAGS.crf_params else None
  title = (f'{cfg.data.name} {FLAGS.split}' + (' + CRF' if crf else '')
           + (f', scales {",".join(f"{s:g}" for s in scales)}{" + flip" if flip else ""}' if multiscale else ''))
  print(report(result, info, title))
  boundary = (f'  within {result["boundary_width"]} px of label edges {100 * result["boundary_miou"]:.2f}'
              if 'boundary_miou' in result else '')
  print(f'mIoU {100 * result["miou"]:.2f}{boundary}  pixel accuracy {100 * result["pixel_accuracy"]:.2f}  '
        f'({len(source)} images)')
  if jax.process_index() == 0:
    suffix = result_suffix(scales, flip) + ('_crf' if crf else '')
    out = os.path.join(FLAGS.workdir, 'eval', f'{FLAGS.split}_{FLAGS.checkpoint}{suffix}.json')
    files.write_json(out, result)
    logging.info('wrote %s', out)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'experiment config file (default: WORKDIR/config.json)',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'workdir of the training run to evaluate')
  flags.DEFINE_string('split', 'test', 'dataset split')
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'which checkpoint of the workdir')
  cli.define_crf_flags()
  cli.define_test_time_flags()
  flags.mark_flags_as_required(['workdir'])
  cli.run(main, config_from='workdir')
