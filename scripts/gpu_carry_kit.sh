#!/usr/bin/env bash
# GPU carry kit (issue 14): fetch, on a machine WITH registry access, the wheels that an offline GPU
# node with a stock image lacks for `make gpu-check`, into gpu_kit/ (git-ignored), and check that the
# checkout plus the kit fit the 64 MiB that can be copied to such a node.
#
# What the check imports: torch, numpy and transformers (on the stock image), plus gsplat, which is
# optional (the gsplat-vs-ours step and the stage-2 training step on CUDA). gsplat's own needs
# (jaxtyping, rich, ninja, packaging, numpy, torch) are on the stock image, so only gsplat travels;
# it is a pure-Python wheel (6.5 MB) whose CUDA kernels are JIT-compiled on the node (nvcc + ninja).
# safetensors and tqdm are imported only by code the check does not run.
#
# Usage: scripts/gpu_carry_kit.sh [--python-version 3.12] [--out gpu_kit]
# Then copy the checkout (with gpu_kit/) to the node and run, there, from the checkout:
#   make gpu-check
# or, without make, the same in one line:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/gpu_site gpu_kit/*.whl && PYTHONPATH=$PWD:/tmp/gpu_site python3 -m geolrm_bench.gpu_check
set -euo pipefail

PYVER=3.12
OUT=gpu_kit
LIMIT_MIB=64
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYVER="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "gpu_carry_kit.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python

# the pinned version from the project's constraints (the one the CPU tests and the code target)
GSPLAT=$(grep -i '^gsplat==' constraints/constraints.txt | head -1)
if [ -z "$GSPLAT" ]; then echo "gpu_carry_kit.sh: no gsplat pin in constraints/constraints.txt" >&2; exit 2; fi

mkdir -p "$OUT"
rm -f "$OUT"/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform any --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$OUT" "$GSPLAT"

# provenance for the report: a copied checkout usually has no .git (gpu_check reads this file then)
if commit=$(git rev-parse HEAD 2>/dev/null); then
  [ -n "$(git status --porcelain --untracked-files=no)" ] && commit="$commit-dirty"
  echo "$commit" > "$OUT/COMMIT"
fi

kit_bytes=$(du -cb "$OUT"/*.whl | tail -1 | cut -f1)
tree_bytes=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
total=$((kit_bytes + tree_bytes))
printf 'gpu_carry_kit: %s\n' "$(cd "$OUT" && ls *.whl)"
awk -v k="$kit_bytes" -v t="$tree_bytes" -v l="$LIMIT_MIB" \
  'BEGIN { printf "kit %.1f MiB + tracked files %.1f MiB = %.1f MiB (limit %d MiB)\n", k / 1048576, t / 1048576, (k + t) / 1048576, l }'
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "gpu_carry_kit.sh: over the ${LIMIT_MIB} MiB limit" >&2
  exit 1
fi
echo "on the GPU node, from the checkout: make gpu-check"
echo "  (or: python3 -m pip install -q --no-index --no-deps --target /tmp/gpu_site $OUT/*.whl && PYTHONPATH=\$PWD:/tmp/gpu_site python3 -m geolrm_bench.gpu_check)"
