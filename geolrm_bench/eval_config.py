"""The options of an evaluation run (``geolrm-bench eval`` / ``sweep-views``) and its resume key.

:class:`EvalConfig` is the one source of the options: the CLI flags, their defaults and help
are generated from its fields (:mod:`geolrm_bench.options`). :func:`run_key` hashes everything
that changes an object's numbers, so a rerun redoes stale records only. Cheap to import (the
CLI builds its parsers from it): no torch, trimesh or pandas here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from geolrm_bench.errors import BenchError
from geolrm_bench.methods import MethodSpec, resolve_model_source
from geolrm_bench.model import weights as bundled_weights
from geolrm_bench.model.config import PRESETS
from geolrm_bench.options import option
from geolrm_bench.protocol import DEFAULT_LIMIT, DEFAULT_TEST_VIEWS, Protocol, parse_view_ids
from geolrm_bench.scoring import GEOMETRY_FRAMES


@dataclass
class EvalConfig:
    """Everything one evaluation run needs; the ``eval`` / ``sweep-views`` flags are generated
    from these fields (:mod:`geolrm_bench.options`), so defaults and help live here only."""

    dataset: str = option("sample", "dataset kind (gso, omni, scans, hope, meshes, sample, ycb) or a folder "
                                    "of GObjaverse-format renders (default: sample)")
    root: str | None = option(None, "dataset root (default: the kind's default root)")
    checkpoint: str | None = option(None, "official GeoLRM .ckpt, or a folder written by save_pretrained "
                                          "(default, with no --preset/--predictions: the bundled model "
                                          "model/weights/tiny-zeroverse)", group="source")
    preset: str | None = option(None, "model preset with RANDOM weights (pipeline checks only)",
                                choices=PRESETS, group="source")
    predictions: str | None = option(None, "evaluate another method: DIR/<object>/ holding a 3DGS .ply, a "
                                           "mesh, or the test views as <NNNNN>.png (normalised object frame)",
                                     group="source")
    method: str | None = option(None, "method name in the report")
    num_input_views: int = option(6, "N input views (default 6)", "--input-views", type=int)
    input_views: list[int] | None = option(None, "explicit input views, e.g. 0,4,8,12,16,20",
                                           "--input-view-ids",
                                           parse=lambda t: parse_view_ids(t, "--input-view-ids"))
    test_views: list[int] | None = option(None, "test views (default 28,31,34,37)", "--test-view-ids",
                                          parse=lambda t: parse_view_ids(t, "--test-view-ids"))
    limit: int | None = option(DEFAULT_LIMIT, f"seeded random subset of objects (default {DEFAULT_LIMIT}; "
                                              "all when fewer)", type=int)
    seed: int = option(0, "subset and token-subsampling seed", type=int)
    out: str | None = option(None, "run folder (default reports/<run>)")
    run: str | None = option(None, "run name (default eval-<dataset>-<method>-n<N>)")
    renders: str | None = option(None, "render cache (default <out>/renders)")
    gt_cache: str | None = None  # ground-truth point cache; default <out>/gt (the sweep shares one)
    address: str | None = option(None, "address of an existing Ray cluster")
    num_cpus: int | None = option(None, "CPUs of the local Ray (default: all)", type=int)
    local: bool = option(False, "run in this process without Ray")
    device: str = option("auto", "cpu, cuda or auto (default)")
    max_tokens: int | None = option(None, "reconstruction token cap", type=int)
    resolution: int = option(512, "render/evaluation resolution (px)", type=int)
    input_size: int | None = option(None, "model input size (default: preset's)", type=int)
    lpips_net: str = option("vgg", "LPIPS backbone (default vgg, as the official GeoLRM test step)",
                            choices=("vgg", "alex"))
    num_gt_points: int = option(16000, "points sampled (fixed seed) on the ground-truth surface "
                                       "(default 16000)", type=int)
    fscore_tau: float = 0.2
    quiet: bool = option(False, "no progress bar or log lines")
    baselines: bool = option(True, "also evaluate the two reference rows on the same objects and views: "
                                   "random weights of the same preset (seeded) and the nearest input view "
                                   "(default on; --no-baselines to skip)",
                             action=argparse.BooleanOptionalAction)
    pictures: bool = option(True, "write the qualitative grids pictures/<object>.png and overview.png "
                                  "(default on; --no-pictures to skip)",
                            action=argparse.BooleanOptionalAction)

    def __post_init__(self) -> None:
        if self.input_views:  # explicit ids fix N
            self.num_input_views = len(self.input_views)

    def protocol(self) -> Protocol:
        return Protocol(num_input_views=self.num_input_views, input_views=list(self.input_views or []),
                        test_views=list(self.test_views or DEFAULT_TEST_VIEWS), resolution=self.resolution,
                        limit=self.limit, seed=self.seed, num_gt_points=self.num_gt_points,
                        fscore_tau=self.fscore_tau)

    def method_name(self) -> str:
        if self.method:
            return self.method
        if self.predictions:
            return Path(self.predictions).resolve().name
        if self.checkpoint and bundled_weights.is_bundled(self.checkpoint):
            return "GeoLRM-bundled"
        return "GeoLRM" if self.checkpoint else f"GeoLRM-{self.preset or 'tiny'}"

    def with_default_model(self) -> EvalConfig:
        """This config with the default-model rule applied
        (:func:`geolrm_bench.methods.resolve_model_source`: the bundled model when no
        ``--checkpoint`` / ``--preset`` / ``--predictions``; BenchError when it is missing).
        ``--predictions`` together with ``--checkpoint``/``--preset`` is a BenchError."""
        if self.predictions and (self.checkpoint or self.preset):
            raise BenchError("--predictions evaluates another method's outputs: do not combine with "
                             "--checkpoint/--preset")
        checkpoint, preset = resolve_model_source(self.checkpoint, self.preset, self.predictions)
        return replace(self, checkpoint=checkpoint, preset=preset)

    def dataset_name(self) -> str:
        return Path(self.dataset).name if ("/" in self.dataset or os.sep in self.dataset) else self.dataset

    def run_name(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.method_name())
        return self.run or f"eval-{self.dataset_name()}-{safe}-n{self.protocol().num_input_views}"

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("reports") / self.run_name()




def method_spec(cfg: EvalConfig) -> MethodSpec:
    """The method a run evaluates."""
    return MethodSpec(checkpoint=cfg.checkpoint, preset=cfg.preset, predictions=cfg.predictions,
                      device=cfg.device, max_tokens=cfg.max_tokens, input_size=cfg.input_size, seed=cfg.seed)


#: the reference rows of every report (``--baselines``): name -> what the row is called
BASELINE_NAMES = {"random": "baseline: random weights", "nearest-view": "baseline: nearest input view"}


def baseline_specs(cfg: EvalConfig, preset: str | None) -> dict[str, MethodSpec]:
    """The baselines' methods, by name: ``random`` = random weights of ``preset`` (the evaluated
    model's preset; ``tiny`` when it has none), seeded with ``cfg.seed``, with the run's token
    cap and input size; ``nearest-view`` = :class:`geolrm_bench.methods.NearestViewMethod`.
    ``random`` is left out when the evaluated model IS random weights (the model row is that
    baseline)."""
    out = {}
    if cfg.predictions or cfg.checkpoint:
        out["random"] = MethodSpec(preset=preset or "tiny", device=cfg.device, max_tokens=cfg.max_tokens,
                                   input_size=cfg.input_size, seed=cfg.seed)
    out["nearest-view"] = MethodSpec(baseline="nearest-view", seed=cfg.seed)
    return out


def run_key(cfg: EvalConfig, protocol: Protocol, spec: MethodSpec | None = None) -> str:
    """A short hash of everything that changes an object's numbers (protocol + method; the
    method is ``spec`` when given, else the run's own)."""
    checkpoint = spec.checkpoint if spec is not None else cfg.checkpoint
    spec = (spec or method_spec(cfg)).identity()
    spec["checkpoint_files"] = checkpoint_fingerprint(checkpoint)  # a replaced file is redone
    proto = {k: v for k, v in protocol.to_dict().items() if k != "limit"}  # a larger subset reuses
    blob = json.dumps({"protocol": proto, "method": spec, "lpips": cfg.lpips_net,
                       "geometry": GEOMETRY_FRAMES},  # records of the older metre headline are redone
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_fingerprint(checkpoint: str | None) -> list:
    """``[name, size, mtime_ns]`` of the checkpoint file (or of every file in a checkpoint folder):
    cheap, and it changes when the weights at the same path are replaced."""
    if not checkpoint:
        return []
    p = Path(checkpoint)
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p] if p.is_file() else []
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
