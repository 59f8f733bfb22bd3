"""Qualitative pictures of an evaluation: one grid per object and an overview of all objects.

Per object (``<run>/pictures/<object>.png``, :func:`object_grid`): a label strip of
:data:`LABEL_W` px on the left, then four rows of square tiles of ``tile`` px:

1. the N input views;
2. the T ground-truth test views;
3. the T predicted test views (same order);
4. the absolute error ``|pred - gt|`` averaged over RGB, times :data:`ERROR_GAIN`, clipped to 1,
   in grey (black = no error).

So the picture is ``LABEL_W + max(N, T) * tile`` px wide and ``4 * tile`` px high
(:func:`grid_size`); empty cells are white. The overview (``<run>/overview.png``,
:func:`overview_from_grids`) has one row per object: its name in the label strip, then its N
inputs, T ground truths, T predictions and T error tiles side by side at ``thumb`` px
(:func:`overview_size`). Images are ``[V, 3, H, W]`` floats in [0, 1] (the evaluation's
layout); tiles are box-downscaled with PIL. Pure array functions plus two PNG writers.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from geolrm_bench.io import write_bytes_atomic

#: width (px) of the label strip on the left of every picture
LABEL_W = 96
#: the error row shows ``min(1, ERROR_GAIN * |pred - gt|)``
ERROR_GAIN = 4.0
#: row labels of the per-object grid
ROW_LABELS = ("inputs", "ground truth", "predicted", f"|error| x{ERROR_GAIN:g}")
#: default tile sizes (px): per-object grid and overview
TILE, THUMB = 256, 64


def grid_size(num_inputs: int, num_tests: int, tile: int = TILE) -> tuple[int, int]:
    """``(width, height)`` in px of an object's grid."""
    return LABEL_W + max(num_inputs, num_tests) * tile, 4 * tile


def overview_size(num_objects: int, num_inputs: int, num_tests: int, thumb: int = THUMB) -> tuple[int, int]:
    """``(width, height)`` in px of the overview of ``num_objects`` objects."""
    return LABEL_W + (num_inputs + 3 * num_tests) * thumb, num_objects * thumb


def _tiles(images: np.ndarray, tile: int) -> list[np.ndarray]:
    """``[V, 3, H, W]`` floats in [0, 1] -> V uint8 ``[tile, tile, 3]`` (box-downscaled)."""
    out = []
    for im in np.asarray(images, np.float32):
        u8 = np.round(np.clip(im.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
        pil = Image.fromarray(u8)
        if pil.size != (tile, tile):
            pil = pil.resize((tile, tile), Image.Resampling.BOX)
        out.append(np.asarray(pil))
    return out


def error_images(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``[T, 3, H, W]``: ``min(1, ERROR_GAIN * mean_rgb |pred - gt|)`` repeated in 3 channels."""
    e = np.abs(np.asarray(pred, np.float32) - np.asarray(gt, np.float32)).mean(axis=1, keepdims=True)
    return np.repeat(np.clip(ERROR_GAIN * e, 0, 1), 3, axis=1)


def _label(canvas: Image.Image, text: str, y: int, h: int) -> None:
    draw = ImageDraw.Draw(canvas)
    draw.text((4, y + h // 2 - 6), text[:15], fill=(0, 0, 0))


def object_grid(inputs: np.ndarray, gt: np.ndarray, pred: np.ndarray, tile: int = TILE) -> np.ndarray:
    """The per-object grid (layout in the module docstring) as uint8 ``[H, W, 3]``."""
    if np.shape(gt) != np.shape(pred):
        raise ValueError(f"ground truth {np.shape(gt)} and prediction {np.shape(pred)} differ")
    n, t = len(inputs), len(gt)
    w, h = grid_size(n, t, tile)
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    for r, row in enumerate((inputs, gt, pred, error_images(pred, gt))):
        for c, im in enumerate(_tiles(row, tile)):
            canvas.paste(Image.fromarray(im), (LABEL_W + c * tile, r * tile))
        _label(canvas, ROW_LABELS[r], r * tile, tile)
    return np.asarray(canvas)


def grid_tiles(grid: np.ndarray, num_inputs: int, num_tests: int, tile: int) -> list[np.ndarray]:
    """The tiles of an :func:`object_grid` back, in overview order: inputs, ground truths,
    predictions, errors (each ``[tile, tile, 3]``)."""
    out = []
    for r, count in enumerate((num_inputs, num_tests, num_tests, num_tests)):
        for c in range(count):
            x = LABEL_W + c * tile
            out.append(grid[r * tile:(r + 1) * tile, x:x + tile])
    return out


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def write_object_picture(path: str | Path, inputs: np.ndarray, gt: np.ndarray, pred: np.ndarray,
                         tile: int = TILE) -> Path:
    """Write :func:`object_grid` to ``path`` (PNG, atomically)."""
    return write_bytes_atomic(path, _png_bytes(object_grid(inputs, gt, pred, tile)))


def overview_from_grids(grids: Sequence[tuple[str, str | Path]], num_inputs: int, num_tests: int,
                        path: str | Path, tile: int = TILE, thumb: int = THUMB) -> Path | None:
    """Write the overview of ``grids`` (``(object name, grid PNG)`` pairs, in row order) to
    ``path``; a grid that is missing or of another layout is skipped. None when none is usable."""
    rows = []
    expect = grid_size(num_inputs, num_tests, tile)
    for name, p in grids:
        try:
            with Image.open(p) as im:
                if im.size != expect:
                    continue
                grid = np.asarray(im.convert("RGB"))
        except OSError:
            continue
        rows.append((name, grid_tiles(grid, num_inputs, num_tests, tile)))
    if not rows:
        return None
    w, h = overview_size(len(rows), num_inputs, num_tests, thumb)
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    for r, (name, tiles) in enumerate(rows):
        for c, t in enumerate(tiles):
            small = Image.fromarray(np.ascontiguousarray(t)).resize((thumb, thumb), Image.Resampling.BOX)
            canvas.paste(small, (LABEL_W + c * thumb, r * thumb))
        _label(canvas, name, r * thumb, thumb)
    return write_bytes_atomic(path, _png_bytes(np.asarray(canvas)))
