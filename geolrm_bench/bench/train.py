"""Benchmark section ``train``: one training step of the ``tiny`` preset per stage on the CPU.

1. Step time split into data (loading + view sampling), forward, rasterization, LPIPS, backward and
   optimizer (clip + AdamW + schedule), averaged over 3 updates after one warm-up update; official
   batch sizes (stage 1: 2 objects, stage 2: 1), accumulation 1, 112 px inputs and supervision,
   token cap min(4096, 1024) = 1024 (4,096 Gaussians). Data: a sphere and a box rendered at 128 px
   by the occupancy-gt pipeline (made here, in a temporary folder).
2. FLOPs of one forward + backward from ``torch.utils.flop_counter`` (matmuls, convolutions,
   attention: the rasterizer's elementwise work is not counted) against this machine's measured
   fp32 matmul throughput (1024^2 matrices, same thread count): achieved / peak.
3. Data-parallel scaling: samples/s of stage 1 with 1 worker x 1 thread vs 2 workers x 1 thread
   (torch DDP over gloo, the backend Ray Train uses on CPUs; Ray's start-up is not timed), 4 updates
   after a warm-up, 1 object per worker per update. Goal (issue 11): >= 1.7x. On a machine whose
   cores are shared with other work the ratio is a lower bound.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

PHASES = ("data", "forward", "raster", "lpips", "backward", "optimizer")


def make_data(folder: Path, resolution: int = 128) -> Path:
    """occupancy-gt output for a sphere and a box (``folder/data``)."""
    import trimesh

    from geolrm_bench.pipelines import occupancy_gt as pipe

    meshes = folder / "meshes"
    meshes.mkdir(parents=True, exist_ok=True)
    trimesh.creation.icosphere(subdivisions=3, radius=2.0).export(meshes / "sphere.ply")
    trimesh.creation.box(extents=(3.0, 2.0, 1.0)).export(meshes / "box.stl")
    pipe.run_occupancy_gt(pipe.OccupancyGTConfig(dataset="meshes", root=meshes, out=folder / "data",
                                                 render_resolution=resolution, local=True, progress=False,
                                                 report_dir=folder / "report"))
    return folder / "data"


def _config(stage: str, data: Path, out: Path, **kw):
    from geolrm_bench.training.config import TrainConfig

    values = dict(stage=stage, data=data, out=out, preset="tiny", accumulate=1, warmup=0, total_steps=100,
                  val_every=0, progress=False)
    values.update(kw)
    return TrainConfig(**values)


def step_split(stage: str, data: Path, out: Path, steps: int = 3) -> tuple[dict[str, float], object]:
    """Mean seconds per update and phase (after one warm-up update); also returns the StepModules."""
    from geolrm_bench.training import loop
    from geolrm_bench.training.data import TrainDataset

    cfg = _config(stage, data, out)
    sm = loop.setup(loop.build_model(cfg), cfg)
    ds = TrainDataset(data, sm.model.cfg.grid_res, sm.model.cfg.input_size,
                      cfg.render_size or sm.model.cfg.input_size)
    sums: dict[str, float] = {}
    for s in range(steps + 1):
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        mbs = [loop.make_batch(ds, [i % len(ds) for i in range(s, s + cfg.batch_size)],
                               loop.step_rng(cfg.seed, s, 0, 0), cfg)]
        timings["data"] = time.perf_counter() - t0
        loop.train_step(sm, mbs, timings)
        timings["total"] = time.perf_counter() - t0
        if s > 0:
            for k, v in timings.items():
                sums[k] = sums.get(k, 0.0) + v / steps
    sums["batch"] = cfg.batch_size
    sums["_batch_example"] = mbs[0]
    return sums, sm


def step_flops(sm, batch) -> int:
    """FLOPs of one forward + backward of ``batch`` (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    from geolrm_bench.training import loop

    loop.set_modes(sm)
    sm.optimizer.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as fc:
        total, _, _ = loop.forward_losses(sm, batch)
        total.backward()
    return int(fc.get_total_flops())


def matmul_gflops(n: int = 1024, reps: int = 8) -> float:
    """Measured fp32 matmul throughput (GFLOP/s) with the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def _scaling_worker(rank: int, world: int, port: int, cfg_dict: dict, steps: int, out_file: str) -> None:
    import torch.distributed as dist

    from geolrm_bench.training import loop
    from geolrm_bench.training.config import TrainConfig
    from geolrm_bench.training.data import ShardedOrder, TrainDataset

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = TrainConfig.from_dict(cfg_dict)
    sm = loop.setup(loop.build_model(cfg), cfg, ddp=world > 1)
    ds = TrainDataset(cfg.data, sm.model.cfg.grid_res, sm.model.cfg.input_size, sm.model.cfg.input_size)
    order = ShardedOrder(len(ds), cfg.seed, rank, world, cfg.batch_size, 1)

    def step(s):
        batch = loop.make_batch(ds, order.items(s, 0), loop.step_rng(cfg.seed, s, rank, 0), cfg)
        loop.train_step(sm, [batch])

    step(0)
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        step(s)
    if world > 1:
        dist.barrier()
    dt = time.perf_counter() - t0
    if rank == 0:
        Path(out_file).write_text(f"{world * cfg.batch_size * steps / dt}\n")
    if world > 1:
        dist.destroy_process_group()


def samples_per_second(data: Path, out: Path, world: int, steps: int = 4) -> float:
    import socket

    import torch.multiprocessing as mp

    cfg = _config("proposal", data, out, batch_size=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out.mkdir(parents=True, exist_ok=True)
    result = out / f"sps_{world}.txt"
    mp.spawn(_scaling_worker, args=(world, port, cfg.to_dict(), steps, str(result)), nprocs=world, join=True)
    return float(result.read_text())


def main() -> None:
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="geolrm-bench-train-") as tmp:
        tmp = Path(tmp)
        data = make_data(tmp)
        peak = matmul_gflops()
        rows, flop_rows = [], []
        for stage in ("proposal", "reconstruction"):
            split, sm = step_split(stage, data, tmp / stage)
            batch = split.pop("_batch_example")
            rows.append([stage, int(split.pop("batch")), f"{split['total']:.2f}",
                         *[f"{split.get(p, 0.0):.2f}" for p in PHASES]])
            flops = step_flops(sm, batch)
            compute = split.get("forward", 0) + split.get("raster", 0) + split.get("lpips", 0) + \
                split.get("backward", 0)
            achieved = flops / compute / 1e9 if compute > 0 else float("nan")
            flop_rows.append([stage, f"{flops / 1e9:.1f}", f"{achieved:.1f}", f"{peak:.1f}",
                              f"{achieved / peak:.2f}"])
        print(f"Step time of the tiny preset, seconds per update ({threads} torch threads, 112 px, "
              "accumulation 1; mean of 3 after a warm-up):")
        print(tabulate(rows, headers=["stage", "objects", "total", *PHASES], tablefmt="github"))
        print("\nFLOPs of one forward + backward (torch.utils.flop_counter; rasterizer elementwise work "
              "not counted) vs measured fp32 matmul throughput:")
        print(tabulate(flop_rows, headers=["stage", "GFLOP/step", "achieved GFLOP/s", "matmul GFLOP/s",
                                           "ratio"], tablefmt="github"))
        one = samples_per_second(data, tmp / "scale", 1)
        two = samples_per_second(data, tmp / "scale", 2)
        print("\nData-parallel scaling, stage 1 (DDP over gloo, 1 thread per worker, 1 object per worker "
              "and update):")
        print(tabulate([["1 x 1 thread", f"{one:.2f}", "1.00"], ["2 x 1 thread", f"{two:.2f}",
                                                                  f"{two / one:.2f}"]],
                       headers=["workers", "samples/s", "speed-up"], tablefmt="github"))
        print(f"goal >= 1.7x: {'met' if two / one >= 1.7 else 'NOT met'} "
              f"({os.cpu_count()} CPUs{'' if (os.cpu_count() or 1) >= 2 else ', too few for 2 workers'})")


if __name__ == "__main__":
    main()
