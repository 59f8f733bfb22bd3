"""The one accumulator behind the stateful metrics (``PSNR``, ``SSIM``, ``LPIPS``).

torchmetrics style: the maths lives once in a functional form returning per-view values
``[B]`` (``psnr``, ``ssim``, the LPIPS network); a stateful metric is a thin wrapper that
feeds batches through it with ``update(pred, target, ...)`` and averages every view seen
with ``compute()``. A subclass implements :meth:`ViewMeanMetric.values` and nothing else,
unless it keeps extra statistics (``PSNR``'s pooled MSE).
"""

from __future__ import annotations

from torch import Tensor


class ViewMeanMetric:
    """Mean of a per-view metric over every view passed to :meth:`update` since :meth:`reset`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every view seen."""
        self.sum_values = 0.0
        self.num_views = 0

    def values(self, pred, target, **kwargs) -> Tensor:
        """Per-view values ``[B]`` (float64) of one batch: the functional form. Subclasses define it."""
        raise NotImplementedError

    def update(self, pred, target, **kwargs) -> Tensor:
        """Add a batch ``[B, C, H, W]`` (images in [0, 1]); returns its per-view values ``[B]``."""
        return self._accumulate(self.values(pred, target, **kwargs))

    def _accumulate(self, v: Tensor) -> Tensor:
        self.sum_values += float(v.sum())
        self.num_views += int(v.numel())
        return v

    def compute(self) -> float:
        """Mean over every view seen; a ``ValueError`` before the first :meth:`update`."""
        if self.num_views == 0:
            raise ValueError(f"{type(self).__name__}.compute() called before any update()")
        return self.sum_values / self.num_views
