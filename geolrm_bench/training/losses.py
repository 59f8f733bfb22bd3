"""Training losses of both stages, each a small pure function of tensors (TRAINING.md section 2).

Stage 1 (proposal): ``occupancy_bce`` + ``geo_scal_loss`` (weights 1, 1).
Stage 2 (reconstruction): ``image_mse`` + 2 ``lpips_loss`` + 1 ``mask_mse`` + 0.2 ``edge_aware_log_l1``
+ 0.05 ``depth_tv``, every term a mean over the supervised views of the micro-batch.

Shapes: images ``[B, V, 3, H, W]`` in [0, 1]; alpha and depth ``[B, V, 1, H, W]`` (depth = camera z,
world units; rendered depth is the alpha-weighted sum, 0 on empty pixels, as the official renderer);
occupancy logits and targets ``[B, R, R, R]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


# ----------------------------------------------------------------------------- stage 1
def occupancy_bce(logits: Tensor, target: Tensor) -> Tensor:  # [B, R, R, R] x2 -> scalar
    """``BCEWithLogits`` averaged over all B·R^3 voxels, no class weights (serializer_wrapper.py:131)."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="mean")


def geo_scal_loss(logits: Tensor, target: Tensor) -> Tensor:  # [B, R, R, R] x2 -> scalar
    """MonoScene geometric scene-class-affinity loss on a binary occupancy (loss_util.py:83-110).

    With ``p = sigmoid(logits)`` and ``g`` the 0/1 target, sums over the WHOLE batch::

        P = sum(g p) / sum(p)            (precision)
        R = sum(g p) / sum(g)            (recall)
        S = sum((1-g)(1-p)) / sum(1-g)   (specificity)
        L = BCE(P, 1) + BCE(R, 1) + BCE(S, 1) = -log P - log R - log S   (logs clamped at -100)

    A batch statistic: under DDP each worker computes it on its own micro-batch (as the official
    per-GPU code), so it is not the loss of the concatenated global batch.
    """
    p = torch.sigmoid(logits.float()).reshape(-1)
    g = target.float().reshape(-1)
    inter = (g * p).sum()
    precision = inter / p.sum()
    recall = inter / g.sum()
    spec = ((1 - g) * (1 - p)).sum() / (1 - g).sum()
    # BCE(x, 1) = -max(log x, -100), written out: F.binary_cross_entropy raises on NaN input, and a
    # diverged run must report a non-finite loss, not crash
    return sum(-torch.log(x).clamp(min=-100.0) for x in (precision, recall, spec))


# ----------------------------------------------------------------------------- stage 2
def image_mse(pred: Tensor, target: Tensor) -> Tensor:  # [B, V, 3, H, W] x2 in [0, 1] -> scalar
    """MSE of the images mapped to [-1, 1] (= 4x the [0, 1] MSE), mean over B·V·3·H·W."""
    return F.mse_loss(pred * 2 - 1, target * 2 - 1)


def lpips_loss(net: torch.nn.Module, pred: Tensor, target: Tensor) -> Tensor:  # -> scalar
    """LPIPS (frozen ``lpips.LPIPS`` network, e.g. VGG) averaged over the B·V images.

    ``pred``/``target`` ``[B, V, 3, H, W]`` in [0, 1]; the network gets [-1, 1] (normalize=False,
    as torchmetrics in the official code). Differentiable in ``pred``.
    """
    p = pred.reshape(-1, *pred.shape[-3:]) * 2 - 1
    t = target.reshape(-1, *target.shape[-3:]) * 2 - 1
    return net(p, t).mean()


def mask_mse(pred_alpha: Tensor, target_alpha: Tensor) -> Tensor:  # [B, V, 1, H, W] x2 -> scalar
    """MSE of rendered alpha (sum a_i T_i) against the GT alpha, mean over all pixels."""
    return F.mse_loss(pred_alpha, target_alpha)


def edge_aware_log_l1(pred_depth: Tensor, target_depth: Tensor, target_rgb: Tensor,
                      valid: Tensor) -> Tensor:  # [B,V,1,H,W], [B,V,1,H,W], [B,V,3,H,W], [B,V,1,H,W] bool
    """Edge-aware log-L1 depth loss, 'scalar' form (loss_util.py EdgeAwareLogL1).

    ``l = log(1 + |D_pred - D_gt|)``; forward differences of the TARGET rgb (in [0, 1]) weight it:
    ``w_x = exp(-mean_c |I[..., x+1] - I[..., x]|)`` applied to ``l`` at pixel x (likewise y).
    Loss = mean of ``w_x l`` over the valid x-pairs + mean of ``w_y l`` over the valid y-pairs, a pair
    valid when its first pixel is (valid = GT alpha > 0, not depth > 0: zeroed edge depths count
    as D = 0, as in the official code). A direction with no valid pair contributes 0.
    """
    ll = torch.log1p((pred_depth - target_depth).abs())
    gx = (target_rgb[..., :, 1:] - target_rgb[..., :, :-1]).abs().mean(dim=-3, keepdim=True)
    gy = (target_rgb[..., 1:, :] - target_rgb[..., :-1, :]).abs().mean(dim=-3, keepdim=True)
    lx = torch.exp(-gx) * ll[..., :, :-1]
    ly = torch.exp(-gy) * ll[..., :-1, :]
    mx, my = valid[..., :, :-1], valid[..., :-1, :]
    zero = ll.sum() * 0.0
    loss_x = lx[mx].mean() if bool(mx.any()) else zero
    loss_y = ly[my].mean() if bool(my.any()) else zero
    return loss_x + loss_y


def depth_tv(pred_depth: Tensor) -> Tensor:  # [..., H, W] -> scalar
    """Total variation of the rendered depth: mean |dx D| + mean |dy D| over all pixels."""
    dx = (pred_depth[..., :, 1:] - pred_depth[..., :, :-1]).abs().mean()
    dy = (pred_depth[..., 1:, :] - pred_depth[..., :-1, :]).abs().mean()
    return dx + dy


STAGE1_TERMS = ("bce", "geo")
STAGE2_TERMS = ("mse", "lpips", "mask", "depth", "tv")


def weighted_total(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """``sum_k weights[k] * terms[k]`` over the terms present (a term with weight 0 is skipped)."""
    total = None
    for k, v in terms.items():
        w = float(weights.get(k, 0.0))
        if w == 0.0:
            continue
        total = w * v if total is None else total + w * v
    if total is None:
        raise ValueError(f"every loss weight is 0 for terms {sorted(terms)}")
    return total
