"""Export a trained two-stage run as the bundled model (``model/weights/<name>/``).

``python -m geolrm_bench.training.bundle --proposal RUN1 --reconstruction RUN2 --synth DIR
--data DIR --out model/weights/tiny-zeroverse`` copies the stage-2 run's final model
(``config.json`` + ``model.safetensors``, which hold both networks: the frozen stage-1 proposal
and the trained reconstruction network) and writes beside it, from the runs' own files:

- ``provenance.json``: the facts a report states about the model (keys documented in
  :func:`provenance_facts`);
- ``curves.png``: both stages' training losses and held-out validation curves;
- ``TRAINING.md``: data recipe and counts with hashes, the exact commands, steps, wall time,
  machine, git commit and the curves.

Nothing here trains; ``make train-bundled`` runs the whole recipe and then this export.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from geolrm_bench.errors import BenchError, one_line
from geolrm_bench.io import read_json, sha256_file, write_json_atomic, write_text_atomic
from geolrm_bench.metrics.cost import cpu_name
from geolrm_bench.reports import git_commit

WEIGHT_FILES = ("config.json", "model.safetensors")


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _run_summary(run: Path) -> dict[str, Any]:
    """Steps, wall time and last validation of one training run folder."""
    if not (run / "status.json").is_file():
        raise BenchError("not a finished training run (no status.json)", run)
    status = read_json(run / "status.json")
    if status.get("status") != "done":
        raise BenchError(f"training run is not done (status {status.get('status')!r})", run)
    cfg = read_json(run / "train_config.json")
    rows = _read_csv(run / "metrics.csv")
    val = _read_csv(run / "validation.csv")
    step_seconds = sum(float(r["step_time_s"]) for r in rows if r.get("step_time_s"))
    started = run.parent / f"{run.name}.started_at"  # `make train-bundled`: epoch seconds at the start
    if started.is_file():
        wall = (run / "status.json").stat().st_mtime - float(started.read_text().split()[0])
    else:
        wall = step_seconds

    def at(row: dict | None) -> dict[str, float]:  # every metric of that row's validation step
        return {r["metric"]: float(r["mean"]) for r in val if r["step"] == row["step"]} if row else {}

    first_val, last_val = at(val[0] if val else None), at(val[-1] if val else None)
    commit_file = run.parent / f"{run.name}.git_commit"  # `make train-bundled`: HEAD at the start
    commit = commit_file.read_text().strip() if commit_file.is_file() else "unknown (not recorded)"
    return {"stage": cfg["stage"], "steps": int(status["step"]), "wall_s": round(wall, 1), "commit": commit,
            "in_step_s": round(step_seconds, 1), "config": cfg, "validation_last": last_val,
            "validation_first": first_val, "metrics": rows, "validation": val}


def provenance_facts(name: str, s1: dict, s2: dict, synth_root: Path, data_dir: Path) -> dict[str, Any]:
    """``provenance.json``. Keys:

    ``name`` (folder name), ``preset``, ``procedural_objects`` (synth objects trained on),
    ``real_objects`` (real scans trained on; 0 here), ``validation_objects`` (held-out synth
    objects used for the training curves, never the evaluation set), ``steps_stage1``,
    ``steps_stage2`` (optimizer updates), ``wall_minutes`` (both stages, wall clock),
    ``wall_minutes_stage1``, ``wall_minutes_stage2``, ``device`` (e.g. ``CPU (2 cores, ...)``),
    ``git_commit`` (of the code that trained stage 2), ``git_commit_stage1``,
    ``synth_manifest_sha256``, ``occupancy_manifest_sha256``,
    ``validation`` (last held-out values per stage: IoU, PSNR).
    """
    occ_root = data_dir / "occupancy"
    n_objects = len([p for p in occ_root.iterdir() if (p / "pts.npy").is_file()]) if occ_root.is_dir() else 0
    n_val = int(s2["config"].get("val_objects", 0))
    return {
        "name": name,
        "preset": s2["config"]["preset"],
        "procedural_objects": n_objects - n_val,
        "real_objects": 0,
        "validation_objects": n_val,
        "steps_stage1": s1["steps"],
        "steps_stage2": s2["steps"],
        "wall_minutes": round((s1["wall_s"] + s2["wall_s"]) / 60, 1),
        "wall_minutes_stage1": round(s1["wall_s"] / 60, 1),
        "wall_minutes_stage2": round(s2["wall_s"] / 60, 1),
        "device": f"CPU ({os.cpu_count()} cores, {cpu_name()})",
        "git_commit": s2["commit"],
        "git_commit_stage1": s1["commit"],
        "git_commit_export": git_commit(),
        "synth_manifest_sha256": sha256_file(synth_root / "manifest.jsonl")
        if (synth_root / "manifest.jsonl").is_file() else "",
        "occupancy_manifest_sha256": sha256_file(data_dir / "manifest.jsonl")
        if (data_dir / "manifest.jsonl").is_file() else "",
        "validation": {"stage1": s1["validation_last"], "stage2": s2["validation_last"]},
    }


def plot_curves(s1: dict, s2: dict, path: Path) -> None:
    """Stage-1 loss + IoU, stage-2 loss + PSNR, against optimizer updates."""
    import matplotlib  # noqa: PLC0415 - headless backend chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for ax, run, keys, title in ((axes[0], s1, ("loss", "bce", "geo"), "stage 1 (proposal) losses"),
                                 (axes[2], s2, ("loss", "mse", "lpips", "mask", "depth"),
                                  "stage 2 (reconstruction) losses")):
        steps = [int(r["step"]) for r in run["metrics"]]
        for k in keys:
            if run["metrics"] and k in run["metrics"][0]:
                ax.plot(steps, [float(r[k]) for r in run["metrics"]], lw=0.8, label=k)
        ax.set_yscale("log")
        ax.set_xlabel("update")
        ax.set_title(title)
        ax.legend(fontsize=7)
    for ax, run, metric in ((axes[1], s1, "iou"), (axes[3], s2, "psnr")):
        pts = [(int(r["step"]), float(r["mean"])) for r in run["validation"] if r["metric"] == metric]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-")
        ax.set_xlabel("update")
        ax.set_title(f"held-out {metric} (procedural objects)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def _command(cfg: dict) -> str:
    """The ``geolrm-bench train`` command line that reproduces a run from its saved config."""
    flags = ["geolrm-bench train", f"--stage {cfg['stage']}", f"--data {cfg['data']}",
             f"--preset {cfg['preset']}", f"--out {cfg['out']}"]
    if cfg.get("proposal"):
        flags.append(f"--proposal {cfg['proposal']}")
    flags += [f"--steps {cfg['steps']}", f"--batch-size {cfg['batch_size']}",
              f"--accumulate {cfg['accumulate']}", f"--lr {cfg['lr']:g}", "--local",
              f"--config warmup={cfg['warmup']}", f"--config total_steps={cfg['total_steps']}"]
    return " \\\n    ".join(flags)


def training_markdown(facts: dict, s1: dict, s2: dict, synth_cmd: str, occ_cmd: str) -> str:
    c1, c2 = s1["config"], s2["config"]
    v1, v2 = s2["validation_first"], s2["validation_last"]
    lines = [
        f"# Bundled model `{facts['name']}`: how it was trained",
        "",
        f"A GeoLRM with the `{facts['preset']}` preset (about 2M parameters; 32^3 occupancy grid, at most "
        "1,024 tokens x 4 Gaussians), trained with `geolrm-bench train` (both stages, the official losses) "
        f"on **{facts['procedural_objects']} procedural objects** (Zeroverse-style, `geolrm-bench synth`) "
        f"and {facts['real_objects']} real objects, on {facts['device']}. **It is not the paper's model**: "
        "a small "
        "network trained for minutes on a CPU, bundled so that the evaluation measures a trained model "
        "rather than random weights. The held-out evaluation set (`data/sample`) was never trained on "
        "(checked by geometry hash in `tests/test_synth.py`).",
        "",
        "Reproduce from scratch: `make train-bundled` (writes this folder).",
        "",
        "## Data",
        f"- `{synth_cmd}`: 300 objects, seed 0; synth manifest sha256 `{facts['synth_manifest_sha256']}`.",
        f"- `{occ_cmd}`: 40 views at 256 px and 128^3 occupancy per object; manifest sha256 "
        f"`{facts['occupancy_manifest_sha256']}`.",
        f"- The last {facts['validation_objects']} objects by name are held out for the validation curves; "
        f"{facts['procedural_objects']} objects are trained on.",
        "",
        "## Stages",
        "| | stage 1 (proposal) | stage 2 (reconstruction) |",
        "|---|---|---|",
        f"| optimizer updates | {s1['steps']} | {s2['steps']} |",
        f"| objects per update | {c1['batch_size'] * c1['accumulate']} | "
        f"{c2['batch_size'] * c2['accumulate']} |",
        f"| AdamW lr, warmup, T_max | {c1['lr']:g}, {c1['warmup']}, {c1['total_steps']} | "
        f"{c2['lr']:g}, {c2['warmup']}, {c2['total_steps']} |",
        f"| grad clip | {c1['grad_clip']} | {c2['grad_clip']} |",
        f"| wall time | {facts['wall_minutes_stage1']} min | {facts['wall_minutes_stage2']} min |",
        f"| held-out validation | IoU {s1['validation_last'].get('iou', float('nan')):.3f} | "
        f"PSNR {v1.get('psnr', float('nan')):.2f} dB (first check) -> "
        f"{v2.get('psnr', float('nan')):.2f} dB |",
        "",
        f"Total wall time {facts['wall_minutes']} min (machine shared with other work while training).",
        "",
        "Deviations from the official recipe (every one a named option of `geolrm-bench train`): the "
        "`tiny` preset instead of the paper's 334M-parameter model; far fewer updates (T_max set to the "
        "run length, warmup shortened); stage 2 at lr 2e-4 with 1 object per update (official 1e-4, 8 x 32 "
        "objects) so a CPU-minutes budget moves the weights; inputs and supervision at the preset's "
        "112 px. Everything else is the official recipe (losses and weights, view sampling, random "
        "target background, frozen proposal in eval mode, predicted-occupancy tokens).",
        "",
        "## Commands",
        "```",
        _command(c1),
        "",
        _command(c2),
        "```",
        "",
        "## Provenance",
        f"- git commit of the code that trained stage 1: `{facts['git_commit_stage1']}`; stage 2: "
        f"`{facts['git_commit']}`; exported at `{facts['git_commit_export']}`",
        f"- machine: {facts['device']}, {platform.platform()}, Python {platform.python_version()}",
        "",
        "![curves](curves.png)",
        "",
    ]
    return "\n".join(lines)


def export_bundled(proposal: Path, reconstruction: Path, synth_root: Path, data_dir: Path, out: Path,
                   synth_cmd: str = "geolrm-bench synth --count 300 --seed 0 --out data/synth",
                   occ_cmd: str = "geolrm-bench occupancy-gt --dataset synth --root data/synth "
                                  "--out data/synth-gt --render-resolution 256") -> Path:
    """Copy the final model and write provenance, curves and TRAINING.md into ``out``."""
    s1, s2 = _run_summary(proposal), _run_summary(reconstruction)
    if s1["stage"] != "proposal" or s2["stage"] != "reconstruction":
        raise BenchError("expected a proposal run and a reconstruction run", f"{proposal}, {reconstruction}")
    for f in WEIGHT_FILES:
        if not (reconstruction / f).is_file():
            raise BenchError(f"missing {f} (the final model) in the reconstruction run", reconstruction)
    out.mkdir(parents=True, exist_ok=True)
    for f in WEIGHT_FILES:
        tmp = out / f".{f}.tmp"
        shutil.copyfile(reconstruction / f, tmp)
        os.replace(tmp, out / f)
    facts = provenance_facts(out.name, s1, s2, synth_root, data_dir)
    write_json_atomic(out / "provenance.json", facts)
    plot_curves(s1, s2, out / "curves.png")
    write_text_atomic(out / "TRAINING.md", training_markdown(facts, s1, s2, synth_cmd, occ_cmd))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proposal", required=True, type=Path, help="finished stage-1 run folder")
    ap.add_argument("--reconstruction", required=True, type=Path, help="finished stage-2 run folder")
    ap.add_argument("--synth", required=True, type=Path, help="the synth objects' folder")
    ap.add_argument("--data", required=True, type=Path, help="the occupancy-gt folder trained on")
    ap.add_argument("--out", required=True, type=Path,
                    help="bundle folder, e.g. model/weights/tiny-zeroverse")
    args = ap.parse_args(argv)
    try:
        out = export_bundled(args.proposal, args.reconstruction, args.synth, args.data, args.out)
    except BenchError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"bundled model written to {out} (config.json, model.safetensors, provenance.json, curves.png, "
          "TRAINING.md)")
    print(json.dumps(read_json(out / "provenance.json"), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
