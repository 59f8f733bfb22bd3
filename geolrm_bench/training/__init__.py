"""Training GeoLRM (issue 11): losses, schedule, view sampling, data, config and the per-step logic.

Pure torch/numpy (no Ray): :mod:`geolrm_bench.pipelines.train` runs :func:`runner.train_worker` on Ray
Train; the same function runs in one process with :class:`runner.LocalHooks`.
"""
