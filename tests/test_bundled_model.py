"""The bundled model (model/weights/tiny-zeroverse) loads and reproduces its committed report.

The committed evaluation of the bundled model on the sample set
(``reports/eval-sample-GeoLRM-bundled-n6/per_object.csv``) is the reference: one object is
evaluated again from scratch (rendered, reconstructed, scored) and must give the same numbers.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geolrm_bench.model.geolrm import GeoLRM
from geolrm_bench.model.weights import BUNDLED

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "reports" / "eval-sample-GeoLRM-bundled-n6"
SAMPLE = REPO / "data" / "sample"


def test_bundled_weights_load_with_their_provenance():
    model = GeoLRM.from_pretrained(BUNDLED)
    assert model.cfg.name == "tiny" and not model.cfg.compat
    facts = json.loads((BUNDLED / "provenance.json").read_text())
    assert facts["procedural_objects"] > 0 and facts["steps_stage2"] > 0
    # trained: the weights differ from a fresh model of the same preset built from the same seed
    torch.manual_seed(0)
    fresh = GeoLRM(model.cfg)
    name = "lrm_generator.renderer.latent_decoder.2.weight"
    assert not torch.allclose(model.state_dict()[name], fresh.state_dict()[name])
    assert (BUNDLED / "TRAINING.md").is_file() and (BUNDLED / "curves.png").is_file()


@pytest.mark.slow
def test_bundled_model_reproduces_the_committed_metrics_of_one_object(tmp_path):
    if not (SAMPLE / "index.json").is_file():
        pytest.skip("data/sample is not installed (make data-sample)")
    with (REPORT / "per_object.csv").open(newline="") as f:
        committed = {r["object"]: r for r in csv.DictReader(f)}
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "geolrm_bench.cli", "eval", "--dataset", "sample", "--limit", "1",
         "--seed", "0", "--input-views", "6", "--no-baselines", "--no-pictures", "--local", "--quiet",
         "--out", str(out), "--renders", str(tmp_path / "renders")],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = list(out.rglob("per_object.csv"))
    assert len(reports) == 1, reports
    with reports[0].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    row = rows[0]
    ref = committed[row["object"]]
    assert abs(float(row["psnr"]) - float(ref["psnr"])) < 0.05, (row["psnr"], ref["psnr"])
    assert abs(float(row["ssim"]) - float(ref["ssim"])) < 2e-3, (row["ssim"], ref["ssim"])
    assert abs(float(row["lpips"]) - float(ref["lpips"])) < 2e-3, (row["lpips"], ref["lpips"])
    assert abs(float(row["chamfer"]) - float(ref["chamfer"])) < 2e-3, (row["chamfer"], ref["chamfer"])
