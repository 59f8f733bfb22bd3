"""Ray start-up shared by the pipelines: join a cluster or start a quiet local one.

Ray is imported here only, inside :func:`init_ray` (an optional heavy dependency: the
``--local`` paths and the library never need it).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from geolrm_bench.errors import BenchError


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
