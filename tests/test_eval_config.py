"""One source for the eval options, the typed record and the method interface (issue 10)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from geolrm_bench import methods
from geolrm_bench.eval_config import EvalConfig
from geolrm_bench.model.config import PRESETS
from geolrm_bench.options import add_options, cli_fields, config_from_args, flag_of
from geolrm_bench.scoring import ObjectRecord


def _parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_options(p, EvalConfig, **kw)
    return p


def test_flags_defaults_and_choices_come_from_the_dataclass():
    p = _parser()
    by_dest = {a.dest: a for a in p._actions}
    for f in cli_fields(EvalConfig):
        a = by_dest[f.name]
        assert flag_of(f) in a.option_strings and a.help == f.metadata["cli"]["help"]
        if not isinstance(f.default, bool):
            assert a.default == f.default  # written once, in the dataclass
    assert by_dest["preset"].choices == list(PRESETS)
    assert by_dest["lpips_net"].choices == ["vgg", "alex"]
    assert {"gt_cache", "fscore_tau"}.isdisjoint(by_dest)  # plain fields: not on the command line
    assert config_from_args(EvalConfig, p.parse_args([])) == EvalConfig()


def test_parsed_values_and_mutually_exclusive_sources():
    p = _parser()
    cfg = config_from_args(EvalConfig, p.parse_args(
        ["--preset", "tiny", "--input-view-ids", "0,8,16", "--test-view-ids", "28,31", "--local",
         "--resolution", "64", "--limit", "3"]))
    assert (cfg.preset, cfg.input_views, cfg.test_views, cfg.local, cfg.resolution, cfg.limit) == (
        "tiny", [0, 8, 16], [28, 31], True, 64, 3)
    assert cfg.num_input_views == 3 and cfg.protocol().input_views == [0, 8, 16]
    with pytest.raises(SystemExit):
        p.parse_args(["--preset", "tiny", "--checkpoint", "x.ckpt"])
    with pytest.raises(SystemExit):
        p.parse_args(["--preset", "huge"])
    sweep = _parser(skip=("num_input_views", "input_views"))
    assert "num_input_views" not in vars(sweep.parse_args([]))


def test_object_record_writes_only_what_was_computed_in_field_order():
    ok = ObjectRecord(object="a", method="m", dataset="d", run_key="k", num_input_views=6, render_s=0.5,
                      warnings=[], psnr=20.0, ssim=0.9, lpips=0.1)
    ok.fill_missing_geometry()
    d = ok.to_dict()
    assert list(d)[:10] == ["object", "status", "error", "method", "dataset", "run_key", "num_input_views",
                            "views", "render_s", "warnings"]
    assert "gt_unit_m" not in d and d["chamfer"] != d["chamfer"]  # NaN until scored
    failed = ObjectRecord(object="b", status="failed", error="x", num_input_views=6).to_dict()
    assert failed == {"object": "b", "status": "failed", "error": "x", "num_input_views": 6, "views": []}


def test_every_method_has_the_one_predict_signature():
    base = inspect.signature(methods.Method.predict)
    for cls in (methods.GeoLRMMethod, methods.PredictionsMethod):
        assert issubclass(cls, methods.Method)
        assert list(inspect.signature(cls.predict).parameters) == list(base.parameters)
    assert methods.CheckpointKind.of_checkpoint(".") is methods.CheckpointKind.PRETRAINED
    assert methods.CheckpointKind.OFFICIAL == "official" and f"{methods.CheckpointKind.RANDOM}" == "random"
    spec = methods.MethodSpec(preset="tiny", device="cpu", threads=2)
    assert "device" not in spec.identity() and "threads" not in spec.identity()
    assert dataclasses.replace(spec, threads=None).identity() == spec.identity()


@pytest.mark.parametrize("model", [{"preset": "tiny"}, {"checkpoint": "x.ckpt"}])
def test_predictions_with_a_model_is_one_error_for_eval_and_sweep(tmp_path, model):
    from geolrm_bench.errors import BenchError
    from geolrm_bench.pipelines.evaluate import run_eval, run_sweep

    cfg = EvalConfig(dataset="sample", predictions=str(tmp_path), out=str(tmp_path / "run"), **model)
    for run in (run_eval, run_sweep):
        with pytest.raises(BenchError, match="do not combine with --checkpoint/--preset"):
            run(cfg)
    assert not (tmp_path / "run").exists()  # refused before any output was made
