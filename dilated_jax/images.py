"""Pictures of labels: class ids in a dataset's palette, side by side with their images, written as PNG."""

import numpy as np
from PIL import Image

from dilated_jax import files


def colourise(labels: np.ndarray, palette) -> np.ndarray:
  """(H, W) class ids -> (H, W, 3) uint8 colours of `palette`; IGNORE_LABEL (void) black."""
  table = np.zeros((256, 3), np.uint8)
  table[:len(palette)] = palette
  return table[labels]


def overlay(image: np.ndarray, colours: np.ndarray) -> np.ndarray:
  """The colours of a label map half over its RGB image."""
  return (0.5 * image + 0.5 * colours).astype(np.uint8)


def side_by_side(rows, gap: int = 4) -> np.ndarray:
  """One picture of rows of (H, W, 3) uint8 pictures, `gap` white pixels after each; a row's pictures share H."""
  return np.concatenate([np.concatenate([np.pad(p, ((0, gap), (0, gap), (0, 0)), constant_values=255) for p in row], 1)
                         for row in rows], 0)


def write_png(path: str, array: np.ndarray):
  """Writes through a temporary file, so an interrupted run never leaves a half-written PNG."""
  with files.replaced(path) as tmp:
    Image.fromarray(array).save(tmp, format='PNG')
