"""What every entry point does first: the fast XLA CPU path, and one clear line instead of a traceback on bad input."""

import functools
import importlib.metadata
import logging as std_logging
import os
import re
import sys
import tempfile
import threading
import traceback
import warnings

from absl import logging

from dilated_jax import InputError

# XLA CPU routes convolutions to YNNPACK by default, 2-3.5x slower here on unpadded and thin convolutions
# (docs/results/benchmark_cpu.md). The flag is experimental and an unknown XLA flag aborts the process, so it is set
# only for the jaxlib versions it was checked on. Setting it before the first computation is enough.
_NO_YNN_CONV = '--xla_cpu_experimental_ynn_fusion_type='
_CHECKED_JAXLIB = ('0.10.',)


def configure_xla():
  """Turns YNNPACK convolutions off on CPU for checked jaxlib versions, unless XLA_FLAGS already sets the flag."""
  flags = os.environ.get('XLA_FLAGS', '')
  if 'ynn_fusion_type' in flags or os.environ.get('DILATED_JAX_KEEP_YNN'):
    return
  try:
    version = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return
  if version.startswith(_CHECKED_JAXLIB):
    os.environ['XLA_FLAGS'] = f'{flags} {_NO_YNN_CONV}'.strip()


# Errors that mean bad input or settings: shown as one line, exit code 2. InputError is raised wherever a file, a
# config field or a flag is checked; OSError is the filesystem saying no (a missing file, a permission, a full
# disk). Anything else (a ValueError of a shape bug in an edited model, a KeyError) is a bug: full traceback.
USER_ERRORS = (InputError, OSError)


def check_writable(folder: str, field: str):
  """Makes `folder` and checks that a file can be written in it, before any work: OSError naming `field` and the
  folder otherwise (a read-only output would be found only after the computation)."""
  try:
    os.makedirs(folder, exist_ok=True)
    # A fresh name (O_EXCL): hosts sharing the folder may have processes of equal ids.
    fd, probe = tempfile.mkstemp(prefix='.write_test.', dir=folder)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise OSError(f'{field}: {folder} is not a writable folder ({e.strerror or e})') from None


def quiet_libraries():
  """Drops the INFO lines of orbax (several per checkpoint) from the log, keeping its warnings and errors (without
  their tracebacks: the error that stops the run is printed once, by the entry point); the same for tensorboardX's
  writer thread."""
  class Filter(std_logging.Filter):
    def filter(self, record):
      if 'orbax' not in record.pathname:
        return True
      if record.levelno >= std_logging.ERROR:  # a failed save: its line, not one traceback per background thread
        record.exc_info, record.exc_text = None, None
      return record.levelno >= std_logging.WARNING

  std_logging.getLogger('absl').addFilter(Filter())
  if not getattr(threading.excepthook, 'quiets_tensorboard', False):
    threading.excepthook = _tensorboard_errors_in_one_line(threading.excepthook)


def _tensorboard_errors_in_one_line(previous):
  """A thread excepthook that makes a failed write of tensorboardX's writer thread (a full disk, a quota) one warning
  line instead of a traceback; closing the writer raises it again, where the run reports it."""

  def hook(args):
    frames = traceback.extract_tb(args.exc_traceback) if args.exc_traceback is not None else []
    if issubclass(args.exc_type, OSError) and any(os.sep + 'tensorboardX' + os.sep in f.filename for f in frames):
      logging.warning('TensorBoard events not written: %s', ' '.join(str(args.exc_value).split()))
      return
    previous(args)

  hook.quiets_tensorboard = True
  return hook


def parse_flags(argv):
  """absl's flag parsing, with a bad flag or config override (`--config.totl_steps=5`) as one line and exit 2."""
  from absl import flags

  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - ml_collections raises AttributeError, ValueError, flags.Error...
    if os.environ.get('DILATED_JAX_DEBUG'):
      raise
    # ml_collections wraps the informative error (AttributeError: ... Did you mean "total_steps" ...) in flag errors.
    chain = [e]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
      chain.append(chain[-1].__cause__ or chain[-1].__context__)
    informative = [c for c in chain if not isinstance(c, (flags.Error, KeyError))]
    message = (informative or chain)[-1]
    while isinstance(message, BaseException):  # AttributeError(KeyError(text)): the text, not its repr
      message = message.args[0] if message.args else str(message)
    print('error: ' + ' '.join(message.split()), file=sys.stderr)
    sys.exit(2)


def run(main, config_from: str | None = None):
  """app.run(main) with clear errors: bad flags and bad input give one line and exit code 2.

  config_from: the flag naming a training run's workdir (or a comma-separated list of them, the first counting);
  without --config, the config is that workdir's config.json (`workdir_config`), overrides (`--config.x=...`)
  included.
  """
  from absl import app

  if config_from is not None:
    sys.argv[:] = with_workdir_config(sys.argv, config_from)
  app.run(entry_point(main), flags_parser=parse_flags)


# A config file (ml_collections' --config=FILE:ARG) whose get_config(WORKDIR) is the config a run saved there.
WORKDIR_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'workdir_config.py')


def with_workdir_config(argv: list[str], flag: str) -> list[str]:
  """argv with `--config=WORKDIR_CONFIG:WORKDIR` put first when it gives --`flag` but no --config."""
  if any(re.match(r'^--?config(=|$)', a) for a in argv[1:]):
    return list(argv)
  workdir = None
  for i, arg in enumerate(argv[1:], 1):
    match = re.match(rf'^--?{flag}(=(.*))?$', arg)
    if match:
      workdir = match.group(2) if match.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
  if not workdir:
    return list(argv)
  return [argv[0], f'--config={WORKDIR_CONFIG}:{workdir.split(",")[0]}', *argv[1:]]


def entry_point(main):
  """Wraps an absl main: configures XLA, and turns a user error into `error: <message>` and exit code 2."""

  @functools.wraps(main)
  def wrapped(argv):
    configure_xla()
    quiet_libraries()
    try:
      return main(argv)
    except USER_ERRORS as e:
      if os.environ.get('DILATED_JAX_DEBUG'):
        raise
      logging.flush()
      print('error: ' + ' '.join(str(e).split()), file=sys.stderr)  # one line, whatever a library raised
      # Reported: what orbax's abandoned tasks and coroutines (a save refused by a full disk) would print at exit
      # is noise now.
      std_logging.getLogger('asyncio').setLevel(std_logging.CRITICAL)
      warnings.filterwarnings('ignore', 'coroutine .* was never awaited', RuntimeWarning)
      sys.exit(2)

  return wrapped


def define_crf_flags():
  """--crf and --crf_params, of evaluate and predict."""
  from absl import flags

  flags.DEFINE_bool('crf', False, 'refine the probabilities with the dense CRF (arXiv 1511.07122 section 5, '
                    '"+ CRF"; the crf extra)')
  flags.DEFINE_string('crf_params', None, 'the CRF parameters `python -m dilated_jax.crf_search` wrote (implies '
                      "--crf; default: DeepLab's, dilated_jax.dense_crf.DenseCRFParams)")


def crf_from_flags():
  """The dense CRF's parameters that --crf / --crf_params ask for, or None."""
  from absl import flags

  from dilated_jax import crf_search, dense_crf

  if not (flags.FLAGS.crf or flags.FLAGS.crf_params):
    return None
  dense_crf.library()  # not installed: said now, not by the first worker after the network ran
  return crf_search.read_params(flags.FLAGS.crf_params) if flags.FLAGS.crf_params else dense_crf.DenseCRFParams()


def define_test_time_flags():
  """--ms and --flip, of evaluate and predict."""
  from absl import flags

  flags.DEFINE_bool('ms', False, "multi-scale testing at fyu/drn segment.py --ms's scales 0.5, 0.75, 1, 1.25, 1.5, "
                    '1.75 (sets eval.scales)')
  flags.DEFINE_bool('flip', None, 'also test the mirrored image (sets eval.flip; default: the config\'s)')


def test_time_from_flags(eval_cfg=None) -> tuple[tuple[float, ...], bool]:
  """(scales, flip) of the config's eval.scales / eval.flip (none: the single scale), with --ms and --flip over
  them; a bad value is one line naming the field."""
  from absl import flags

  from dilated_jax import inference

  scales = eval_cfg.scales if eval_cfg is not None else (1.0,)
  flip = eval_cfg.flip if eval_cfg is not None else False
  if flags.FLAGS.ms:
    scales = inference.DRN_MS_SCALES
  if flags.FLAGS.flip is not None:
    flip = flags.FLAGS.flip
  return inference.check_test_time(scales, flip)
