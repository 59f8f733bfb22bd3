"""Weights: the official GeoLRM checkpoint (``geolrm.ckpt``) and our own safetensors format.

Official checkpoint (hub ``LinShan/GeoLRM``, file ``geolrm.ckpt``): a flat torch state_dict
(or ``{"state_dict": ...}``) with prefixes ``serializer.`` and ``lrm_generator.``; its 920
tensors are listed in ``model/official_keys.tsv`` (key, shape, dtype). DINOv2 keys follow
transformers 4.x names; ``model/dino_keys_tf4_to_tf5.tsv`` maps them to transformers 5 names
(both directions are accepted, whatever the installed version uses). ``lpips.*`` keys of the
training metric are ignored. Any other missing, unexpected or mis-shaped key is an error
(:class:`BenchError` naming the key and both shapes): nothing is dropped silently.

The official checkpoint is loaded into the ``paper`` preset with ``compat=True`` by default,
which reproduces the official forward pass (quirks listed in :mod:`geolrm_bench.model.config`).

Own weights: ``save_pretrained(model, dir)`` writes ``model.safetensors`` + ``config.json``
atomically; ``from_pretrained(dir)`` reads them back.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from geolrm_bench.errors import BenchError
from geolrm_bench.io import atomic_dir
from geolrm_bench.model.config import ModelConfig, get_config

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "official_keys.tsv"
DINO_KEY_MAP = HERE / "dino_keys_tf4_to_tf5.tsv"
IGNORED_PREFIXES = ("lpips.",)


def official_manifest(path: str | Path = MANIFEST) -> list[tuple[str, tuple[int, ...], str]]:
    """Rows ``(key, shape, dtype)`` of ``official_keys.tsv`` (shape ``()`` for scalars)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        dims = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
        rows.append((key, dims, dtype))
    return rows


@lru_cache(maxsize=1)
def dino_key_map() -> dict[str, str]:
    """transformers-4 DINOv2 key -> transformers-5 key (full official prefixes)."""
    pairs = {}
    for line in DINO_KEY_MAP.read_text().splitlines():
        if line.strip():
            old, new = line.split("\t")
            pairs[old] = new
    return pairs


def _rename_dino_keys(sd: Mapping[str, Tensor], target_keys: set[str]) -> dict[str, Tensor]:
    """Rename DINO keys between transformers 4 and 5 names so that they match ``target_keys``."""
    fwd = dino_key_map()
    bwd = {v: k for k, v in fwd.items()}
    out = {}
    for key, value in sd.items():
        if key not in target_keys:
            if key in fwd and fwd[key] in target_keys:
                key = fwd[key]
            elif key in bwd and bwd[key] in target_keys:
                key = bwd[key]
        if key in out:
            raise BenchError(f"checkpoint holds key {key!r} twice (transformers 4 and 5 DINO names)")
        out[key] = value
    return out


def _unwrap(obj, path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise BenchError("not a state_dict (expected a mapping of tensors or {'state_dict': ...})", path)
    return dict(obj)


def match_state_dict(model: torch.nn.Module, sd: Mapping[str, Tensor], source: str = "checkpoint",
                     ignore_prefixes: tuple[str, ...] = IGNORED_PREFIXES) -> dict[str, Tensor]:
    """Map ``sd`` onto ``model``'s keys (DINO renames, ignored prefixes) and check it exactly.

    Returns the renamed state dict. Raises :class:`BenchError` for the first missing,
    unexpected or mis-shaped key, naming the key and both shapes.
    """
    expected = model.state_dict(keep_vars=True)
    sd = {k: v for k, v in sd.items() if not k.startswith(ignore_prefixes)}
    sd = _rename_dino_keys(sd, set(expected))
    for key, param in expected.items():
        if key not in sd:
            raise BenchError(f"{source}: missing key {key!r} (model expects shape {tuple(param.shape)})")
        if tuple(sd[key].shape) != tuple(param.shape):
            raise BenchError(f"{source}: key {key!r} has shape {tuple(sd[key].shape)}, "
                             f"the model expects {tuple(param.shape)}")
    extra = sorted(set(sd) - set(expected))
    if extra:
        raise BenchError(f"{source}: unexpected key {extra[0]!r} with shape {tuple(sd[extra[0]].shape)} "
                         f"({len(extra)} unexpected in all; the model has no such tensor)")
    return sd


def build_empty(cfg: ModelConfig):
    """A GeoLRM with parameters on the meta device (no memory, no init cost): load with assign."""
    from geolrm_bench.model.geolrm import GeoLRM

    with torch.device("meta"):
        return GeoLRM(cfg)


def load_into(model, sd: dict[str, Tensor], source: str = "checkpoint"):
    """Check and load ``sd`` into ``model`` (meta or real), fp32 floats, strict. Empties ``sd``."""
    renamed = match_state_dict(model, sd, source)
    sd.clear()  # the caller's references go: parameters below take over the tensors
    expected = model.state_dict(keep_vars=True)
    for key in list(renamed):
        if renamed[key].is_floating_point():
            target = expected[key].dtype if expected[key].is_floating_point() else torch.float32
            renamed[key] = renamed[key].to(target)
    model.load_state_dict(renamed, strict=True, assign=True)
    renamed.clear()
    return model


def _torch_load(path: Path):
    """``torch.load(weights_only=True)`` on the CPU; any failure is a one-line BenchError naming the file."""
    try:
        with warnings.catch_warnings():  # torch's notice on non-default pickle protocols: a failure
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, weights_only=True, map_location="cpu")  # is reported below
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        # torch's own message is a paragraph; keep its first sentence so the error stays one line
        first = str(err).strip().split(". ")[0].splitlines()[0][:200]
        raise BenchError(
            f"cannot read checkpoint with torch.load(weights_only=True): {type(err).__name__}: {first}",
            path) from None


def load_official(
    path: str | Path,
    config: ModelConfig | str = "paper",
    compat: bool = True,
    device: str | torch.device = "cpu",
):
    """Load the official ``geolrm.ckpt`` into a :class:`geolrm_bench.model.geolrm.GeoLRM`.

    Args:
        path: the checkpoint (raw state_dict or ``{"state_dict": ...}``), read with
            ``torch.load(weights_only=True, map_location="cpu")``.
        config: preset name or config (shapes must match the checkpoint; ``paper`` does).
        compat: reproduce the official forward pass (default True; see :mod:`geolrm_bench.model.config`).
        device: where the model goes.
    Returns:
        The model in eval mode (BatchNorm running statistics, no dropout).
    """
    path = Path(path)
    if not path.is_file():
        raise BenchError("official checkpoint not found", path)
    cfg = get_config(config) if isinstance(config, str) else config.replace()
    cfg.compat = compat
    sd = _unwrap(_torch_load(path), path)
    model = load_into(build_empty(cfg), sd, source=str(path))
    return model.to(device).eval()


def save_pretrained(model, directory: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    with atomic_dir(directory, markers=("config.json", "model.safetensors")) as tmp:
        sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt", "preset": model.cfg.name})
        (tmp / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    return directory


def from_pretrained(directory: str | Path, device: str | torch.device = "cpu", compat: bool | None = None):
    """Load a model written by :func:`save_pretrained` (strict key and shape check)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, weights = directory / "config.json", directory / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise BenchError("missing file of a saved GeoLRM (expected config.json + model.safetensors)", p)
    try:
        cfg = ModelConfig.from_dict(json.loads(cfg_path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise BenchError(f"bad model config: {err}", cfg_path) from None
    if compat is not None:
        cfg.compat = compat
    model = load_into(build_empty(cfg), _load_safetensors(weights, load_file), source=str(weights))
    return model.to(device).eval()


def _load_safetensors(path: Path, loader) -> dict:
    """``loader(path)`` with a truncated or corrupt file turned into a one-line BenchError naming it."""
    try:
        return loader(str(path))
    except Exception as err:  # noqa: BLE001 - SafetensorError and friends: a bad file
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise BenchError(f"unreadable safetensors file, truncated or corrupt ({type(err).__name__}: {first})",
                         path) from None


def validate_checkpoint(path: str | Path, config: ModelConfig | str = "paper") -> str:
    """Check a checkpoint without building the real model: readable, and every key and shape
    what the model expects (the model is built on the meta device). Returns its kind
    (``official`` or ``pretrained``); a BenchError naming the file otherwise.

    Cheap enough for a driver process before it starts remote workers: a ``save_pretrained``
    folder is checked from the safetensors header alone; an official ``.ckpt`` is memory-mapped.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise BenchError("checkpoint not found", path)
    if path.is_dir():
        cfg_path, weights = path / "config.json", path / "model.safetensors"
        for p in (cfg_path, weights):
            if not p.is_file():
                raise BenchError("missing file of a saved GeoLRM (config.json + model.safetensors)", p)
        try:
            cfg = ModelConfig.from_dict(json.loads(cfg_path.read_text()))
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as err:
            raise BenchError(f"bad model config: {err}", cfg_path) from None

        def _header(name: str) -> dict:
            with safe_open(name, framework="pt") as f:
                return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}

        sd = _load_safetensors(weights, _header)
        match_state_dict(build_empty(cfg), sd, source=str(weights))
        return "pretrained"
    cfg = get_config(config) if isinstance(config, str) else config.replace()
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be memory-mapped: read them
        obj = _torch_load(path)
    sd = _unwrap(obj, path)
    match_state_dict(build_empty(cfg), sd, source=str(path))
    return "official"
