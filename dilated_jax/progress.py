"""Progress lines for long loops: items done, speed and ETA, at most one line every `every_s` seconds."""

import time

from absl import logging


def duration(seconds: float) -> str:
  """'4m07s', '1h02m', or '?' when unknown."""
  if not seconds >= 0:  # NaN or negative
    return '?'
  if seconds >= 3600:
    return f'{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m'
  return f'{int(seconds // 60)}m{int(seconds % 60):02d}s'


class Progress:
  """`update(n)` after each n items of `total`; logs 'WHAT: done/total items, x/s, ETA' every `every_s` seconds and
  at the end (process 0 of several only, when `main`)."""

  def __init__(self, what: str, total: int, unit: str = 'images', every_s: float = 10.0, main: bool = True):
    self.what, self.total, self.unit, self.every_s, self.main = what, total, unit, every_s, main
    self.done, self.t0 = 0, time.perf_counter()
    self.last = self.t0

  def update(self, n: int = 1):
    self.done = min(self.done + n, self.total)
    now = time.perf_counter()
    if self.main and (now - self.last >= self.every_s or self.done == self.total):
      self.last = now
      speed = self.done / max(now - self.t0, 1e-9)
      eta = (self.total - self.done) / speed if speed > 0 else float('nan')
      logging.info('%s: %d/%d %s, %.1f %s/s, ETA %s', self.what, self.done, self.total, self.unit, speed, self.unit,
                   duration(eta))
