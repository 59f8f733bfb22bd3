"""geolrm-bench: render, voxelize, reconstruct and evaluate under the GeoLRM protocols."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__version__ = "0.1.0"


def _add_checkout_layout() -> None:
    """Let an uninstalled source checkout import ``geolrm_bench.model`` / ``geolrm_bench.pipelines``.

    Those packages live in the repository's top-level ``model/`` and ``pipelines/`` folders and
    are mapped under this package by pyproject's package-dir, which only an installation (wheel
    or editable) applies. On an offline GPU node the checkout runs with ``PYTHONPATH=<repo>`` and
    no install (``make gpu-check``, README "GPU check"), so the repository root joins this
    package's search path there. Installed packages find the mapped folders themselves and are
    left alone.
    """
    root = Path(__file__).resolve().parent.parent
    if not ((root / "pyproject.toml").is_file() and (root / "model" / "geolrm.py").is_file()):
        return
    if importlib.util.find_spec(f"{__name__}.model") is None:
        __path__.append(str(root))


_add_checkout_layout()
