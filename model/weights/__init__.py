"""The bundled GeoLRM model: where it lives, and what it is.

:data:`BUNDLED` is the folder of the model that ``eval``, ``sweep-views`` and ``reconstruct``
use when neither ``--checkpoint`` nor ``--preset`` is given (one rule,
:func:`geolrm_bench.methods.resolve_model_source`). It is a ``GeoLRM.save_pretrained`` folder
(``config.json`` + ``model.safetensors``) trained by ``make train-bundled`` (``TRAINING.md``
beside the weights says how), plus a small ``provenance.json`` that reports read to open with
what the model is (:func:`describe`). Its keys (all optional; a missing one is shown as ``?``):

- ``name`` (str): the model's name, e.g. ``"tiny-zeroverse"``;
- ``preset`` (str): the model preset it was trained from (default: ``config.json``'s ``name``);
- ``procedural_objects`` (int): procedural (``synth``) training objects;
- ``real_objects`` (int): real scanned training objects;
- ``steps_stage1`` / ``steps_stage2`` (int): optimizer steps of the proposal / reconstruction stage;
- ``device`` (str): where it was trained, e.g. ``"CPU"`` or ``"CPU (2 cores)"``;
- ``wall_minutes`` (float): training wall time in minutes;
- ``git_commit`` (str): the commit the training ran from.

Light on purpose (no torch): the CLI and the report writer import it.
"""

from __future__ import annotations

import json
from pathlib import Path

from geolrm_bench.errors import BenchError

#: the bundled model's folder (repository ``model/weights/tiny-zeroverse``; installed as package data)
BUNDLED: Path = Path(__file__).resolve().parent / "tiny-zeroverse"
#: the provenance file beside the weights (keys: see the module docstring)
PROVENANCE_FILE = "provenance.json"
PROVENANCE_KEYS = ("name", "preset", "procedural_objects", "real_objects", "steps_stage1", "steps_stage2",
                   "device", "wall_minutes", "git_commit")


def is_bundled(path: str | Path | None) -> bool:
    """True when ``path`` is the bundled model's folder (:data:`BUNDLED`, read at call time)."""
    if not path:
        return False
    try:
        return Path(path).resolve() == Path(BUNDLED).resolve()
    except OSError:
        return False


def read_provenance(folder: str | Path) -> dict:
    """``folder/provenance.json`` as a dict with every :data:`PROVENANCE_KEYS` key (None when
    absent), ``preset`` filled from ``config.json``'s ``name`` when missing. A missing or
    unreadable file gives all-None values (the report then says to read ``TRAINING.md``)."""
    folder = Path(folder)
    out: dict = dict.fromkeys(PROVENANCE_KEYS)
    for fname, keys in ((PROVENANCE_FILE, PROVENANCE_KEYS), ("config.json", ("name",))):
        try:
            data = json.loads((folder / fname).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        if fname == "config.json":
            out["preset"] = out["preset"] or data.get("name")
        else:
            out.update({k: data.get(k) for k in keys})
    return out


def describe(folder: str | Path, prov: dict | None = None) -> str:
    """One sentence for the top of a report, e.g. ``Bundled GeoLRM (tiny preset), trained on 900
    procedural + 12 real objects for 1500 + 400 steps on CPU in 85 min; not the paper's model``."""
    p = prov if prov is not None else read_provenance(folder)

    def v(k: str) -> str:
        return "?" if p.get(k) is None else str(p[k])

    head = f"Bundled GeoLRM {p.get('name') or Path(folder).name!s} ({v('preset')} preset)"
    if all(p.get(k) is None for k in ("procedural_objects", "real_objects", "steps_stage1", "steps_stage2")):
        return f"{head}, trained by `make train-bundled` (see {Path(folder).name}/TRAINING.md); " \
               "not the paper's model"
    steps = v("steps_stage1") + (f" + {v('steps_stage2')}" if p.get("steps_stage2") is not None else "")
    wall = f" in {float(p['wall_minutes']):.0f} min" if isinstance(p.get("wall_minutes"), int | float) else ""
    return (f"{head}, trained on {v('procedural_objects')} procedural + {v('real_objects')} real objects "
            f"for {steps} steps on {p.get('device') or 'CPU'}{wall}; not the paper's model")


def missing_message(folder: str | Path) -> str:
    """The one-line reason when the bundled model is absent (raised as a BenchError)."""
    return (f"no bundled model at {folder} (config.json + model.safetensors): train it with "
            "`make train-bundled`, pass --checkpoint CKPT, or --preset tiny for random weights")


def check(folder: str | Path) -> Path:
    """``folder`` when it holds a loadable-looking model (config.json + a .safetensors), else a
    one-line BenchError saying how to get one."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise BenchError(missing_message(folder))
    return folder
