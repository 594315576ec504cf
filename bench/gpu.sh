#!/usr/bin/env bash
# The GPU figures on a lent GPU machine, run from the repository root there after `bash bench/gpu_pack.sh` here:
#   device run: command "bash bench/gpu.sh [bench|mainjob|all]", carry [".gpu"]
# bench:   the environment check, bench_patching.py (default batch and a larger one), bench_gpu.py (bf16 training
#          throughput and MFU for LoRA and full fine-tuning, one profiled step, DeepSpeed ZeRO-3 against plain);
# mainjob: `snakemake --cores all results/act_patch/gemma_gemma.json` with bench/config.gpu.yaml (bf16 training,
#          random weights of each model's shape), each job's time from benchmarks/.
# Two calls (bench, then mainjob while the machine is warm) let a failed first part be seen before the second runs.
# Output: $OUT/gpu.log, $OUT/bench_gpu.json, $OUT/mainjob.tgz (benchmarks/, logs/, results/act_patch/).
set -uo pipefail
PART=${1:-all}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1
T0=$(date +%s)
stamp() { echo "== $(( $(date +%s) - T0 )) s: $*"; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
for part in site hf; do
  [[ -d .gpu/$part ]] || tar xJf ".gpu/$part.tar.xz" -C .gpu \
    || { echo "bench/gpu.sh: .gpu/$part.tar.xz missing: run bench/gpu_pack.sh here" >&2; exit 2; }
done
export PYTHONPATH=$PWD/.gpu/site:$PWD
stamp "environment ($PART), figures from commit $(cat .gpu/commit 2>/dev/null)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 - <<'EOF' || exit 3
import importlib
for name in ("torch", "transformers", "peft", "accelerate", "nnsight", "snakemake", "deepspeed", "pandas", "pyarrow"):
    module = importlib.import_module(name)
    print(f"{name} {getattr(module, '__version__', '?')}", end="; ")
import torch
print(f"\nGPU: {torch.cuda.get_device_name()}, capability {torch.cuda.get_device_capability()}")
EOF

if [[ ! -f .gpu/prepared/gemma/manifest.json ]]; then
  stamp "random weights of each model's shape"
  python3 - <<'EOF' || exit 4
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from pipeline.models import prepare_model
specs = {}
for key in ("smollm", "gemma"):
    folder = f".gpu/hf/{key}"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32).save_pretrained(folder)
    specs[key] = {"source": "hf", "path": f"./{folder}", "dtype": "float32"}
    prepare_model(key, specs, f".gpu/prepared/{key}")
    print(key, open(f".gpu/prepared/{key}/manifest.json").read().replace("\n", " "))
EOF
fi

if [[ $PART == bench || $PART == all ]]; then
  for batch in 64 512; do
    stamp "bench_patching.py, batch $batch"
    timeout 150 python3 bench/bench_patching.py --model-dir .gpu/prepared/smollm --pairs 64 --batch-size "$batch"
  done
  stamp "bench_gpu.py"
  timeout 300 python3 bench/bench_gpu.py --model-dir .gpu/prepared/gemma --json "$OUT/bench_gpu.json"
fi

if [[ $PART == mainjob || $PART == all ]]; then
  stamp "the main job"
  timeout "${MAINJOB_SECONDS:-420}" python3 -m snakemake results/act_patch/gemma_gemma.json --cores all \
    --configfile bench/config.gpu.yaml
  stamp "main job ended ($?)"
  for f in benchmarks/*/*; do printf '%s\t%s\n' "$f" "$(tail -1 "$f" | cut -f1)"; done
  tar czf "$OUT/mainjob.tgz" benchmarks logs results/act_patch 2>/dev/null
fi
stamp "done"
