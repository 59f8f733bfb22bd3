"""``geolrm-bench train`` on Ray Train: ``TorchTrainer`` (DDP; gloo on CPU, NCCL on GPU).

Composition only: the per-worker loop is :func:`geolrm_bench.training.runner.train_worker`; this
module supplies its engine hooks (rank, device, checkpoints through ``ray.train.report``) and starts
the trainer. The same code path runs 1 CPU worker or N GPU workers on a cluster (``--address``).

Checkpoints and resume: every ``checkpoint_every`` updates rank 0 writes the full training state
(model, optimizer, scheduler, RNG states, data position = update counter; ``state.pt``) plus the
model (``save_pretrained``) into a folder that ``ray.train.report`` persists as
``RUN/ray/checkpoint_<step>`` (Ray keeps the newest ``keep_checkpoints``). A worker failure restarts
the worker group from the newest one (``FailureConfig(max_failures)``). Rerunning the same command
after a crash or ``kill -9`` resumes: Ray Train restores its run state from ``RUN/ray`` and
``ray.train.get_checkpoint()`` returns the newest checkpoint; if the kill came before Ray recorded
it, the newest folder with a ``COMPLETE`` mark (written last) is used instead.

Multi-node: ``RUN`` must be on a filesystem every node sees (Ray Train persists checkpoints there).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from geolrm_bench.errors import BenchError
from geolrm_bench.io import read_json
from geolrm_bench.pipelines.cluster import init_ray, thread_env
from geolrm_bench.training.config import TrainConfig
from geolrm_bench.training.data import find_objects
from geolrm_bench.training.runner import Hooks, newest_complete, read_state, train_local, train_worker

RAY_DIR = "ray"  # RUN/ray: Ray Train's run state and checkpoints


class RayHooks(Hooks):
    """Engine hooks inside a Ray Train worker."""

    def __init__(self, cfg: TrainConfig):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        device = ray.train.torch.get_device() if cfg.use_gpu else "cpu"
        super().__init__(cfg.out, device)

    def load_latest(self) -> tuple[dict | None, str | None]:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                if (Path(d) / "state.pt").is_file():
                    state, _ = read_state(Path(d))
                    return state, str(ckpt.path)
        # killed after the folder was persisted but before Ray recorded it: newest complete one
        return read_state(newest_complete(self.run_dir / RAY_DIR))

    def save_checkpoint(self, step: int, write, metrics: dict) -> Path | None:
        import ray.train

        name = f"checkpoint_{step:08d}"
        if self.rank != 0:  # report is a collective: every worker calls it, rank 0 brings the files
            ray.train.report(metrics, checkpoint_dir_name=name)
            return None
        with tempfile.TemporaryDirectory(prefix="geolrm-ckpt-") as tmp:
            write(Path(tmp))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=name)
        return self.run_dir / RAY_DIR / name


def _worker_fn(config: dict) -> None:
    cfg = TrainConfig.from_dict(config)
    train_worker(cfg, RayHooks(cfg))


def _init_ray(cfg: TrainConfig, threads: int):
    # log_to_driver is off in init_ray: the driver draws the progress bar itself (from metrics.csv)
    return init_ray(cfg.address, None if cfg.address else max(os.cpu_count() or 1, cfg.num_workers * threads),
                    thread_env(threads))


class _Progress:
    """A tqdm bar on the driver that follows ``RUN/metrics.csv`` (written by rank 0) from a thread."""

    def __init__(self, run_dir: Path, total: int, stage: str, enabled: bool):
        self.path, self.total, self.stage = run_dir / "metrics.csv", total, stage
        self.enabled = enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.enabled:
            self._thread.join(timeout=5)

    def _last_row(self) -> dict | None:
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return None
        if len(lines) < 2:
            return None
        head, last = lines[0].split(","), lines[-1].split(",")
        return dict(zip(head, last)) if len(last) == len(head) else None

    def _run(self) -> None:
        from tqdm import tqdm

        bar = tqdm(total=self.total, desc=f"train {self.stage}", unit="step", dynamic_ncols=True)
        try:
            while not self._stop.wait(1.0):
                row = self._last_row()
                if row and row.get("step", "").isdigit():
                    bar.n = int(row["step"])
                    bar.set_postfix(loss=row.get("loss"), lr=row.get("lr"), refresh=False)
                    bar.refresh()
            row = self._last_row()
            if row and row.get("step", "").isdigit():
                bar.n = int(row["step"])
                bar.refresh()
        finally:
            bar.close()


def _last_line(err: BaseException) -> str:
    """The worker's own exception line out of Ray's wrapped traceback text."""
    lines = [x.strip() for x in str(err).splitlines() if x.strip()]
    return (lines[-1] if lines else type(err).__name__)[:300]


def run_training(cfg: TrainConfig, local: bool = False) -> dict:
    """Train one stage (resuming a previous run in ``cfg.out``); returns the run's ``status.json``."""
    cfg.out = Path(cfg.out).resolve()
    cfg.data = Path(cfg.data).resolve()
    for attr in ("init", "proposal"):
        if getattr(cfg, attr):
            setattr(cfg, attr, str(Path(getattr(cfg, attr)).resolve()))
    for attr in ("init", "proposal"):
        if getattr(cfg, attr) and not Path(getattr(cfg, attr)).exists():
            raise BenchError(f"--{attr} not found (expected a run folder or an official .ckpt)",
                             getattr(cfg, attr))
    find_objects(cfg.data)  # fail here, in one line, before starting Ray (warnings name bad objects)
    cfg.out.mkdir(parents=True, exist_ok=True)
    if local:
        return train_local(cfg, "cuda" if cfg.use_gpu else "cpu")
    threads = cfg.threads_per_worker or max(1, (os.cpu_count() or 1) // cfg.num_workers)
    if cfg.threads_per_worker is None and not cfg.use_gpu:
        cfg.threads_per_worker = threads
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    show_progress, cfg.progress = cfg.progress, False  # workers draw nothing; the driver follows metrics.csv
    ray, own = _init_ray(cfg, threads)
    try:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        trainer = TorchTrainer(
            _worker_fn,
            train_loop_config=cfg.to_dict(),
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                         resources_per_worker={"CPU": threads}),
            run_config=RunConfig(name=RAY_DIR, storage_path=str(cfg.out),
                                 checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                                 failure_config=FailureConfig(max_failures=cfg.max_failures)),
        )
        try:
            with _Progress(cfg.out, cfg.steps, cfg.stage, show_progress):
                result = trainer.fit()
            error = result.error
        except SystemExit:  # Ray Train's SIGINT handler aborts the run, then calls sys.exit
            raise KeyboardInterrupt from None
        except Exception as e:  # noqa: BLE001 - Ray wraps worker errors; report their last line
            error = e
        if error is not None:
            raise BenchError(f"training failed: {_last_line(error)}", cfg.out)
    finally:
        if own:
            ray.shutdown()
    status = read_json(cfg.out / "status.json")
    if status.get("status") != "done":
        reason = status.get("reason") or (
            f"training stopped at update {status.get('step')} (status {status.get('status')}); rerun the "
            f"same command to resume from {status.get('last_checkpoint')}")
        raise BenchError(reason, cfg.out)
    return status
