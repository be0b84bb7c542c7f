#!/usr/bin/env bash
# The GPU checks of issue 6, as one script for the device machine (NVIDIA H100/H200, CUDA 13
# driver, PyTorch installed, no Rust, no network). Build first, here: scripts/gpu/build.sh, then
# run from the repository root with gpu-bin carried:
#   bash scripts/gpu/run.sh                      steps 1-5 (at most 580 s: one device call)
#   STEPS="train-f32 train-dp train-dp-one" bash scripts/gpu/run.sh    the rest, a second call
# Everything is written under $OUT (default ./gpu-out). The device tool allows 10 minutes a call
# and 15 minutes of device time a session, and cubecl's first autotune of a matmul shape takes
# 25-30 s: the autotune cache is kept in ./gpu-autotune (git-ignored), which a warm machine keeps
# between calls, so a second call runs with tuned kernels.
# Steps, each logged to $OUT/<step>.log, each with its own time limit; a failing step does not
# stop the others:
#   1. card and driver (nvidia-smi)
#   2. correctness: the bf16 tests on CUDA (tests/bf16.rs): the DecPO step's loss, rewards and
#      gradients against PyTorch's f32 reference, the f32 islands, LoRA in f32
#   3. the side-by-side DecPO step benchmark against PyTorch eager (scripts/gpu/bench.py)
#   4. training: the embedded default job (`train`, no arguments: SFT then DecPO on the small
#      Llama) with --dtype bf16; held-out reward accuracy before/after, wall time
#   5. wgpu: the same job on the same card through Vulkan
#   6. the same job in f32 on CUDA, to compare with step 4
#   7. data parallel: the job with its DecPO steps shared out over two workers (--devices
#      cuda:0,cuda:1 where the machine has two GPUs, else two workers on cuda:0), 2 micro-batches
#      a step; compare with step 8, the same settings on one device
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
work=$(mktemp -d)
tar -C "$work" -xJf gpu-bin/bundle.tar.xz
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib:$work/lib:${LD_LIBRARY_PATH:-}"
export DECPO_AUTOTUNE_DIR="$PWD/gpu-autotune"   # one cubecl autotune cache per backend and dtype
STEPS=${STEPS:-card bf16-test bench train-bf16 train-wgpu}
export RUST_BACKTRACE=1

step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  case " $STEPS " in *" $name "*) ;; *) return ;; esac
  echo "== $name ($(date +%T)): $*"
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "   exit $rc after $((SECONDS - start)) s; last lines:"
  tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
}

step card 10 nvidia-smi
step bf16-test 90 env DECPO_REPO_ROOT="$PWD" "$work/bf16-test" --nocapture --test-threads 1
step bench 270 python3 scripts/gpu/bench.py --bench "$work/bench" --out "$OUT/bench" --side-timeout 60
step train-bf16 120 "$work/train" --dtype bf16 --out "$OUT/runs/bf16"
icd=$(ls /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json 2>/dev/null | head -1)
step train-wgpu 90 env ${icd:+VK_ICD_FILENAMES=$icd} "$work/train-wgpu" --out "$OUT/runs/wgpu"
step train-f32 120 "$work/train" --out "$OUT/runs/f32"
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
pair=cuda:0,cuda:0; [ "${gpus:-0}" -ge 2 ] && pair=cuda:0,cuda:1
dp=(--dtype bf16 --micro-batch 8 --accumulation 2)
step train-dp 120 "$work/train" "${dp[@]}" --devices "$pair" --out "$OUT/runs/dp"
step train-dp-one 120 "$work/train" "${dp[@]}" --devices cuda:0 --out "$OUT/runs/dp-one"
[ -f "$OUT/bench.log" ] && { echo "== table"; cat "$OUT/bench.log"; }
