"""Export of a finished two-stage run as the bundled model (geolrm_bench.training.bundle)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from geolrm_bench.errors import BenchError
from geolrm_bench.model.checkpoint import from_pretrained, save_pretrained
from geolrm_bench.model.config import get_config
from geolrm_bench.model.geolrm import GeoLRM
from geolrm_bench.training.bundle import export_bundled, main


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _fake_run(root: Path, stage: str, steps: int, step_time: float, val_metric: str, vals: list[float],
              model: GeoLRM | None = None, started: float | None = None, commit: str | None = None) -> Path:
    """A run folder with the files the trainer writes (status, config, metrics, validation)."""
    run = root / stage
    if model is not None:
        save_pretrained(model, run)
    run.mkdir(parents=True, exist_ok=True)
    (run / "status.json").write_text(json.dumps({"status": "done", "step": steps}))
    cfg = {"stage": stage, "data": "/d", "preset": "tiny", "out": str(run), "proposal": None,
           "steps": steps, "batch_size": 2 if stage == "proposal" else 1, "accumulate": 1, "lr": 2e-4,
           "warmup": 2, "total_steps": steps, "grad_clip": 10.0, "val_objects": 2}
    (run / "train_config.json").write_text(json.dumps(cfg))
    _write_csv(run / "metrics.csv", [{"step": s, "loss": 1.0 / s, "step_time_s": step_time}
                                     for s in range(1, steps + 1)])
    _write_csv(run / "validation.csv", [{"step": (i + 1) * 10, "metric": val_metric, "mean": v, "objects": ""}
                                        for i, v in enumerate(vals)])
    if started is not None:
        (root / f"{stage}.started_at").write_text(f"{started}\n")
    if commit is not None:
        (root / f"{stage}.git_commit").write_text(commit + "\n")
    return run


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path, Path, Path, GeoLRM]:
    torch.manual_seed(0)
    model = GeoLRM(get_config("tiny"))
    s1 = _fake_run(tmp_path / "runs", "proposal", 4, 1.5, "iou", [0.2, 0.3])
    s2 = _fake_run(tmp_path / "runs", "reconstruction", 3, 2.0, "psnr", [12.0, 15.5], model=model,
                   commit="abc123")
    data = tmp_path / "gt"
    for i in range(5):  # 5 objects with occupancy, 2 of them held out for validation
        (data / "occupancy" / f"o{i}").mkdir(parents=True)
        (data / "occupancy" / f"o{i}" / "pts.npy").write_bytes(b"x")
    (data / "occupancy" / "no-pts").mkdir()
    (data / "manifest.jsonl").write_text("{}\n")
    synth = tmp_path / "synth"
    synth.mkdir()
    (synth / "manifest.jsonl").write_text("{}\n")
    return s1, s2, synth, data, model


def test_export_copies_model_and_states_facts(runs, tmp_path: Path) -> None:
    s1, s2, synth, data, model = runs
    out = export_bundled(s1, s2, synth, data, tmp_path / "weights" / "tiny-test")
    loaded = from_pretrained(out)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    facts = json.loads((out / "provenance.json").read_text())
    assert facts["procedural_objects"] == 3 and facts["validation_objects"] == 2  # 5 with pts.npy - 2
    assert facts["real_objects"] == 0
    assert facts["steps_stage1"] == 4 and facts["steps_stage2"] == 3
    # no start stamp: wall time falls back to the sum of step times (4 x 1.5 s + 3 x 2.0 s = 12 s)
    assert facts["wall_minutes"] == pytest.approx(12 / 60, abs=0.05)
    assert facts["git_commit"] == "abc123" and facts["git_commit_stage1"].startswith("unknown")
    assert facts["validation"] == {"stage1": {"iou": 0.3}, "stage2": {"psnr": 15.5}}
    text = (out / "TRAINING.md").read_text()
    assert "12.00 dB (first check) -> 15.50 dB" in text and "not the paper's model" in text
    assert (out / "curves.png").stat().st_size > 1000


def test_export_uses_the_recorded_start_time(runs, tmp_path: Path) -> None:
    s1, s2, synth, data, _ = runs
    status_mtime = (s1 / "status.json").stat().st_mtime
    (s1.parent / "proposal.started_at").write_text(f"{status_mtime - 600}\n")  # started 10 min before done
    out = export_bundled(s1, s2, synth, data, tmp_path / "w")
    facts = json.loads((out / "provenance.json").read_text())
    assert facts["wall_minutes_stage1"] == pytest.approx(10.0, abs=0.05)


def test_unfinished_or_swapped_runs_are_refused(runs, tmp_path: Path, capsys) -> None:
    s1, s2, synth, data, _ = runs
    with pytest.raises(BenchError, match="expected a proposal run"):
        export_bundled(s2, s1, synth, data, tmp_path / "w")
    (s2 / "status.json").write_text(json.dumps({"status": "running", "step": 1}))
    assert main(["--proposal", str(s1), "--reconstruction", str(s2), "--synth", str(synth),
                 "--data", str(data), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "not done" in err and str(s2) in err and len(err.strip().splitlines()) == 1
