"""Ray start-up shared by the pipelines: join a cluster or start a quiet local one.

Ray is imported here only, inside :func:`init_ray` (an optional heavy dependency: the
``--local`` paths and the library never need it).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from geolrm_bench.errors import BenchError

#: Thread-pool sizes set in every Ray worker (llvmpipe, OpenMP, MKL, OpenBLAS).
THREAD_ENV_VARS = ("LP_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env(threads: int | float) -> dict[str, str]:
    """Environment for Ray workers: every thread pool sized to ``threads`` (at least 1).

    Without this, llvmpipe and the BLAS/OpenMP pools start one thread per core of the machine in
    *every* worker, so N workers oversubscribe the cores N-fold. The variables must be set before
    those libraries load, which Ray's ``runtime_env`` ``env_vars`` guarantees (they are in the
    worker's environment from its start). ``RAY_AUTH_MODE`` and ``PYOPENGL_PLATFORM`` pass through.
    """
    n = str(max(1, round(threads)))
    env = {k: os.environ[k] for k in ("RAY_AUTH_MODE", "PYOPENGL_PLATFORM") if k in os.environ}
    env.update({k: n for k in THREAD_ENV_VARS})
    return env


def sigterm_as_interrupt() -> Callable[[], None]:
    """Turn SIGTERM into KeyboardInterrupt (clean Ray shutdown); returns a restore function.

    Call it after ``ray.init``, which installs its own SIGTERM handler."""
    try:
        old = signal.getsignal(signal.SIGTERM)

        def handler(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, handler)
        return lambda: signal.signal(signal.SIGTERM, old)
    except ValueError:  # not the main thread
        return lambda: None


def init_ray(address: str | None = None, num_cpus: int | None = None,
             env_vars: dict[str, str] | None = None) -> tuple[Any, bool]:
    """Connect to ``address`` or start a local Ray with ``num_cpus`` (default: every core).

    No dashboard, workers' logs not forwarded, Ray's own logging at ERROR. ``env_vars`` become
    the job's ``runtime_env`` (set in every worker process from its start). ``RAY_AUTH_MODE``
    defaults to ``disabled`` (a local, single-user cluster).

    Returns:
        ``(ray module, started)``: ``started`` is False when Ray was already initialised in
        this process, in which case the caller must not shut it down.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        import ray  # heavy optional dependency: loaded only when a pipeline runs on Ray
    except ImportError as e:  # pragma: no cover - ray is a dependency
        raise BenchError(f"ray is not installed ({e}); use --local") from None
    if ray.is_initialized():
        return ray, False
    kw: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                              configure_logging=True)
    if env_vars:
        kw["runtime_env"] = {"env_vars": dict(env_vars)}
    if address:
        ray.init(address=address, **kw)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kw)
    return ray, True
