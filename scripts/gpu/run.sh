#!/usr/bin/env bash
# The GPU checks as one call on the device machine (NVIDIA H100/H200, CUDA 13 driver, PyTorch,
# no Rust, no network). Build the bundle here first (scripts/gpu/build.sh), then, with gpu-bin
# carried, from the repository root:
#   bash scripts/gpu/run.sh            (device tool: timeout_s 540; everything ends by DEADLINE_S)
# and afterwards, here: scripts/gpu/keep.sh <the folder the files came back to>
#
# Everything runs under one deadline (DEADLINE_S, default 480 s from the start): each step gets
# at most its own limit and what is left, the last PACK_S seconds are kept for packing, and a
# step cut by the deadline is reported as such. Steps, most valuable first (STEPS picks some):
#   preflight   card, driver, NVRTC and its headers, the Vulkan loader and the NVIDIA ICD
#   bf16-test   correctness: tests/bf16.rs on CUDA (fixed kernels): the DecPO step's loss,
#               rewards and gradients in bf16 against PyTorch's f32 reference
#   train-bf16  the embedded default job in bf16 on CUDA (fixed kernels): held-out results
#   train-f32   the same job in f32
#   bench       the side-by-side table (scripts/gpu/bench.py): PyTorch first, then burn on the
#               tuned build (autotune, its results kept in scripts/gpu/cache)
#   train-wgpu  the default job through Vulkan (wgpu)
# What comes back (the device tool brings back at most 8 files, no deeper than 2 folders), all
# directly in $OUT: summary.txt (every step: exit status, seconds; the preflight's findings),
# bench.md and bench.jsonl (the table and its raw rows), logs.tar.xz (every step's log and the
# runs' logs and summaries), cache.tar.xz (cubecl's autotune results and compiled kernels, to
# commit under scripts/gpu/cache so the next window starts warm). Packing runs after every step,
# so a call cut short still brings back what was done.
#
# Environment (the dry run, scripts/gpu/dry-run.sh, sets these to stand-ins): OUT (./gpu-out),
# BUNDLE (gpu-bin/bundle.tar.xz), CUDA_HOME (/usr/local/cuda-13.0), DEADLINE_S, PACK_S (20),
# STEPS, WGPU_S (60: the wgpu step's share), ICD_DIRS (where the NVIDIA Vulkan ICD is looked
# for), BENCH_TORCH (the PyTorch side, scripts/bench_torch.py).
set -uo pipefail
cd "$(dirname "$0")/../.."
started=$SECONDS
DEADLINE_S=${DEADLINE_S:-480}
PACK_S=${PACK_S:-20}
OUT=${OUT:-$PWD/gpu-out}
BUNDLE=${BUNDLE:-gpu-bin/bundle.tar.xz}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda-13.0}
STEPS=${STEPS:-preflight bf16-test train-bf16 train-f32 bench train-wgpu}
WGPU_S=${WGPU_S:-60}
BENCH_TORCH=${BENCH_TORCH:-scripts/bench_torch.py}
ICD_DIRS=${ICD_DIRS:-/usr/local/nvidia/share/vulkan/icd.d /usr/share/vulkan/icd.d /etc/vulkan/icd.d}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
scratch=$(mktemp -d)
logs="$scratch/logs"
work="$scratch/bundle"
mkdir -p "$logs" "$work" "$scratch/runs"
summary="$OUT/summary.txt"
export DECPO_GPU_CACHE=${DECPO_GPU_CACHE:-$PWD/scripts/gpu/cache}
mkdir -p "$DECPO_GPU_CACHE"
export RUST_BACKTRACE=1
cuda_lib="$CUDA_HOME/targets/x86_64-linux/lib"
# NVRTC, then the bundle's Vulkan loader and libGLdispatch, then the driver's own libraries
# (NVIDIA's Vulkan ICD names libGLX_nvidia.so.0 without a path).
export LD_LIBRARY_PATH="$cuda_lib:$CUDA_HOME/lib64:$work/lib:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
export CUDA_PATH=$CUDA_HOME

note() { echo "$*" | tee -a "$summary"; }
left() { echo $((DEADLINE_S - PACK_S - (SECONDS - started))); }

# Everything that comes back, rewritten after every step (a few seconds at most).
pack() {
    tar -C "$scratch" --exclude=checkpoint --exclude='*.safetensors' --exclude='*.mpk' \
        -cJf "$OUT/logs.tar.xz.part" logs runs 2>/dev/null &&
        mv "$OUT/logs.tar.xz.part" "$OUT/logs.tar.xz"
    tar -C "$DECPO_GPU_CACHE" -cJf "$OUT/cache.tar.xz.part" . 2>/dev/null &&
        mv "$OUT/cache.tar.xz.part" "$OUT/cache.tar.xz"
    local size
    size=$(stat -c %s "$OUT/cache.tar.xz" 2>/dev/null || echo 0)
    if [ "$size" -gt $((15 * 1024 * 1024)) ]; then
        # Over what one file may bring back: keep the autotune results, not the kernels.
        tar -C "$DECPO_GPU_CACHE" --exclude=./kernels -cJf "$OUT/cache.tar.xz" .
        note "cache.tar.xz: the compiled kernels left out ($((size / 1024 / 1024)) MiB with them)"
    fi
}

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
    local budget
    budget=$(left)
    if [ "$budget" -lt 5 ]; then
        note "$name: not run (the deadline: ${DEADLINE_S} s)"
        return 0
    fi
    [ "$limit" -gt "$budget" ] && limit=$budget
    echo "== $name ($(date +%T), at most $limit s): $*"
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" >"$logs/$name.log" 2>&1
    local rc=$?
    local cut=""
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && cut=" (cut at $limit s)"
    note "$name: exit $rc after $((SECONDS - t0)) s$cut"
    tail -n 12 "$logs/$name.log" | sed 's/^/   | /'
    pack
}

preflight() {
    echo "card and driver:"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "FAIL nvidia-smi"
    local nvrtc="" h found f
    for f in "$cuda_lib"/libnvrtc.so* "$CUDA_HOME"/lib64/libnvrtc.so*; do
        [ -e "$f" ] && nvrtc=$f && break
    done
    if [ -n "$nvrtc" ]; then echo "ok   NVRTC: $nvrtc"; else echo "FAIL NVRTC: no libnvrtc.so under $CUDA_HOME"; fi
    for h in cuda_bf16.h cuda_fp16.h; do
        found=""
        for f in "$CUDA_HOME"/targets/x86_64-linux/include/$h "$CUDA_HOME"/include/$h; do
            [ -e "$f" ] && found=$f && break
        done
        if [ -n "$found" ]; then
            echo "ok   header $h: $found"
        else
            echo "FAIL header $h: not under $CUDA_HOME (NVRTC compiles the bf16 kernels with it)"
        fi
    done
    if [ -e "$work/lib/libvulkan.so.1" ]; then
        echo "ok   Vulkan loader: bundled"
    elif ldconfig -p 2>/dev/null | grep -q libvulkan.so.1; then
        echo "ok   Vulkan loader: the machine's"
    else
        echo "FAIL Vulkan loader: neither bundled nor installed"
    fi
    local icd="" d
    for d in $ICD_DIRS; do
        for f in "$d"/nvidia_icd*.json; do
            [ -e "$f" ] && [ -z "$icd" ] && icd=$f
        done
    done
    if [ -n "$icd" ]; then echo "ok   NVIDIA Vulkan ICD: $icd"; else echo "FAIL NVIDIA Vulkan ICD: none in $ICD_DIRS"; fi
    echo "$icd" >"$scratch/icd"
}

: >"$summary"
note "run.sh: deadline ${DEADLINE_S} s, steps: $STEPS"
if ! tar -C "$work" -xJf "$BUNDLE"; then
    note "no bundle at $BUNDLE: run scripts/gpu/build.sh here and carry gpu-bin"
    pack
    exit 1
fi
export CUDA_HOME cuda_lib work scratch ICD_DIRS
export -f preflight
step preflight 20 bash -c preflight
grep -E '^(ok|FAIL)|, ' "$logs/preflight.log" 2>/dev/null | sed 's/^/preflight: /' >>"$summary"
step bf16-test 150 env DECPO_REPO_ROOT="$PWD" "$work/bf16-test" --nocapture --test-threads 1
step train-bf16 120 "$work/train-fixed" --dtype bf16 --out "$scratch/runs/bf16"
step train-f32 90 "$work/train-fixed" --out "$scratch/runs/f32"
bench_left=$(($(left) - WGPU_S))   # what the wgpu step needs is kept for it
step bench "$bench_left" python3 scripts/gpu/bench.py --bench "$work/bench" \
    --torch "$BENCH_TORCH" --out "$scratch/runs/bench" --until $(($(date +%s) + bench_left - 5))
cp "$scratch/runs/bench/table.md" "$OUT/bench.md" 2>/dev/null
cp "$scratch/runs/bench/results.jsonl" "$OUT/bench.jsonl" 2>/dev/null
icd=$(cat "$scratch/icd" 2>/dev/null)
step train-wgpu "$WGPU_S" env ${icd:+VK_DRIVER_FILES=$icd VK_ICD_FILENAMES=$icd} \
    "$work/train-wgpu" --out "$scratch/runs/wgpu"
note "run.sh: done after $((SECONDS - started)) s"
pack
rm -rf "$scratch"
