#!/usr/bin/env bash
# GPU check (one CUDA GPU, H100/H200 class; target <= 8 min): build the pretrained default VLM, warm-start
# it, run the federated alignment (three agent processes, mTLS, CKKS) with `mor demo --quick --model`,
# then a bf16 GRPO probe that prints step time, tokens/s, peak GPU memory, KL and reward.
# Fails loudly (non-zero) without CUDA and on any failing step. Run from the repository root after
# `bash deploy/bootstrap.sh` (or with an equivalent .venv). Work files go to $MOR_GPU_WORK (default a temp dir).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
MOR=.venv/bin/mor
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
WORK="${MOR_GPU_WORK:-$(mktemp -d /tmp/mor-gpu.XXXXXX)}"
export MOR_CACHE_DIR="$WORK/cache"
fail() { echo "GPU CHECK FAILED: $*" >&2; exit 1; }
stamp() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(stamp)" 'BEGIN { printf "%.1f", b - a }'; }

[ -x "$PY" ] || fail "no .venv: run bash deploy/bootstrap.sh first"
command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: this script needs a CUDA machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || fail "nvidia-smi cannot see a GPU"
"$PY" - <<'PYEOF' || fail "torch cannot use CUDA (the CPU-only torch wheel? install a CUDA build of torch==2.13.0)"
import sys, torch
if not torch.cuda.is_available():
    sys.exit(1)
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
PYEOF

echo "== 1. build the default VLM (SmolLM2-135M-Instruct + vision tower) into $MOR_CACHE_DIR"
t=$(stamp); "$MOR" model build || fail "mor model build"; echo "build: $(took "$t") s"
BASE="$MOR_CACHE_DIR/smolvlm-smollm2-135m-v1-seed0"   # where mor demo / mor eval look too

echo "== 2. warm start (vision tower + connector + LoRA r=8), held-out score"
t=$(stamp)
"$MOR" model warmstart --model "$BASE" --steps 150 --batch-size 32 --lora-r 8 --examples 960 | tee "$WORK/warm.log" \
    || fail "mor model warmstart"
echo "warm start: $(took "$t") s"
WARM=$(grep -o "$MOR_CACHE_DIR/warm/warm-[0-9a-f]*" "$WORK/warm.log" | tail -1)
[ -d "$WARM" ] || fail "warm-started checkpoint not found in the warm start output"

echo "== 3. federated alignment: server + three agent processes (mor demo --quick --model)"
t=$(stamp)
"$MOR" demo --quick --model "$WARM" --out "$WORK/demo" --overwrite || fail "mor demo"
echo "federated demo: $(took "$t") s"
"$PY" - "$WORK/demo/results.json" <<'PYEOF' || fail "demo results"
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({k: r[k] for k in r if k in ("ok", "kl_finite", "epsilon_within_budget", "training", "timings")},
                 indent=1, default=str)[:4000])
PYEOF

echo "== 4. bf16 GRPO probe on the GPU"
t=$(stamp)
"$PY" deploy/gpu/grpo_probe.py "$WARM" "$WORK/probe" 6 | tee "$WORK/probe.json" || fail "bf16 GRPO probe"
echo "probe: $(took "$t") s"
echo "GPU CHECK PASSED (work files in $WORK)"
