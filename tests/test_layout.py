"""One import root: importing the package never creates another top-level project module name.

``model/`` and ``pipelines/`` sit at the top of the repository but install as
``geolrm_bench.model`` and ``geolrm_bench.pipelines`` (pyproject package-dir). Run in a fresh
interpreter from a directory other than the repository root, so the checkout is not on
``sys.path`` by accident and only the installed mapping can resolve the imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_PROBE = r"""
import importlib, json, pkgutil, sys
import geolrm_bench, geolrm_bench.cli, geolrm_bench.model, geolrm_bench.pipelines, geolrm_bench.commands
for pkg in (geolrm_bench.model, geolrm_bench.pipelines, geolrm_bench.commands):
    for m in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{m.name}")
ours = {k: getattr(v, "__file__", None) for k, v in sys.modules.items() if k.split(".")[0] == "geolrm_bench"}
print(json.dumps({"top": sorted({k.split(".")[0] for k in sys.modules}), "ours": ours}))
"""


def test_single_import_root(tmp_path):
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    folders = {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".")}
    leaked = set(info["top"]) & (folders - {"geolrm_bench"})
    assert not leaked, f"top-level project module names imported: {sorted(leaked)}"
    assert {"geolrm_bench.model.geolrm", "geolrm_bench.pipelines.evaluate",
            "geolrm_bench.commands.evaluate"} <= set(info["ours"])
    for name, file in info["ours"].items():  # every module of the root comes from this checkout
        assert file is None or Path(file).resolve().is_relative_to(REPO), (name, file)
