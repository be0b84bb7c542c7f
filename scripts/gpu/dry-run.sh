#!/usr/bin/env bash
# Proves the mechanics of scripts/gpu/run.sh here, without a GPU: a stand-in card (nvidia-smi),
# a stand-in CUDA folder and Vulkan ICD, and a stand-in bundle whose programs print what the real
# ones print, write into cubecl's cache folder, and (train-wgpu) hang. Checks: run.sh ends by its
# deadline and cuts the hanging step; what comes back is at most 8 plain files directly in OUT;
# every step is in summary.txt; the logs, the runs' summaries and the cache are packed; the bench
# ran PyTorch before burn in every case; a missing bundle is said so and still packed. Then
# scripts/gpu/check-bundle.sh on a bundle of real executables: passes, and fails on one that
# needs a library beyond the C runtime. Exit 1 at the first failed check.
#   scripts/gpu/dry-run.sh          (about 30 s; tests/gpu_scripts.rs runs it)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
t=$(mktemp -d)
# Stand-ins that hang write their pid to $t/pids: killed at the end (a step cut by `timeout`
# leaves no process behind, but one whose run.sh was killed with -9 does).
trap 'kill -9 $(cat "$t/pids" 2>/dev/null) 2>/dev/null; rm -rf "$t"' EXIT
fail() { echo "dry run FAILED: $*" >&2; exit 1; }

# The stand-in card and machine.
mkdir -p "$t/path" "$t/cuda/targets/x86_64-linux/lib" "$t/cuda/targets/x86_64-linux/include" "$t/icd"
cat >"$t/path/nvidia-smi" <<'EOF'
#!/usr/bin/env bash
case "$*" in
*name,driver_version*) echo "Stand-in H100 80GB HBM3, 580.00.00, 81559 MiB" ;;
*query-gpu=name*) echo "Stand-in H100 80GB HBM3" ;;
*query-compute-apps*) ;;
*) echo "GPU 0: Stand-in H100 80GB HBM3" ;;
esac
EOF
touch "$t/cuda/targets/x86_64-linux/lib/libnvrtc.so.13" \
    "$t/cuda/targets/x86_64-linux/include/cuda_bf16.h" "$t/cuda/targets/x86_64-linux/include/cuda_fp16.h"
echo '{}' >"$t/icd/nvidia_icd.json"

# The stand-in bundle.
b="$t/bundle"
mkdir -p "$b/lib"
touch "$b/lib/libvulkan.so.1"
cat >"$b/bf16-test" <<'EOF'
#!/usr/bin/env bash
echo "test result: ok. 5 passed; 0 failed"
EOF
cat >"$b/train-fixed" <<'EOF'
#!/usr/bin/env bash
[ -n "${DRY_HANG:-}" ] && echo $$ >>"$DRY_PIDS" && exec sleep 1000
# Writes a run's summary where --out says, and what cubecl would keep.
while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done
mkdir -p "$out/decpo/checkpoint" "$DECPO_GPU_CACHE/kernels"
echo '{"steps": 272}' >"$out/summary.json"
head -c 4096 /dev/zero >"$out/decpo/checkpoint/model-1.mpk"
echo ptx >"$DECPO_GPU_CACHE/kernels/stand-in.ptx"
echo "held-out: accuracy 0.983"
EOF
cat >"$b/bench" <<'EOF'
#!/usr/bin/env bash
echo burn >>"$DRY_ORDER"
# The last case hangs (a tuning that never ends): the bench's share of the deadline cuts it.
[ "$(grep -c burn "$DRY_ORDER")" -ge 4 ] && echo $$ >>"$DRY_PIDS" && exec sleep 1000
mkdir -p "$DECPO_GPU_CACHE/cuda-bf16"
echo tuned >"$DECPO_GPU_CACHE/cuda-bf16/stand-in.json"
echo '{"ms_per_iter": 100.0, "tokens_per_s": 1000.0}'
EOF
cat >"$b/train-wgpu" <<'EOF'
#!/usr/bin/env bash
echo $$ >>"$DRY_PIDS"
exec sleep 1000
EOF
cp "$b/bench" "$b/train"
chmod +x "$b"/* "$t/path/nvidia-smi"
tar -C "$b" -cJf "$t/bundle.tar.xz" .
cat >"$t/torch.py" <<'EOF'
import os
open(os.environ["DRY_ORDER"], "a").write("torch\n")
print('{"ms_per_iter": 50.0, "tokens_per_s": 2000.0}')
EOF

# run.sh keeps its cache in scripts/gpu/cache; the dry run's goes to a copy.
cache="$t/cache"
cp -r scripts/gpu/cache "$cache"
dry_env=(PATH="$t/path:$PATH" CUDA_HOME="$t/cuda" ICD_DIRS="$t/icd" BUNDLE="$t/bundle.tar.xz"
    BENCH_TORCH="$t/torch.py" DRY_ORDER="$t/order" DEADLINE_S=30 PACK_S=5 WGPU_S=8
    DECPO_GPU_CACHE="$cache" DRY_PIDS="$t/pids")
run() { env "${dry_env[@]}" "$@"; }

start=$SECONDS
run env OUT="$t/out" bash scripts/gpu/run.sh >"$t/run.log" 2>&1 || fail "run.sh exited $?: $(tail "$t/run.log")"
took=$((SECONDS - start))
echo "run.sh ended after $took s (deadline 30 s)"
# The hanging case runs the bench to its share of the deadline (30 - 5 packing - 8 wgpu - 5).
[ "$took" -ge 15 ] && [ "$took" -le 33 ] || fail "run.sh took $took s; its deadline was 30 s"

# What comes back: at most 8 plain files, directly in OUT.
entries=$(find "$t/out" -mindepth 1 | wc -l)
files=$(find "$t/out" -mindepth 1 -maxdepth 1 -type f | wc -l)
[ "$entries" -le 8 ] && [ "$entries" -eq "$files" ] ||
    fail "OUT holds $entries entries, $files of them plain files at its top: $(find "$t/out")"
for f in summary.txt bench.md bench.jsonl logs.tar.xz cache.tar.xz; do
    [ -s "$t/out/$f" ] || fail "no $f in OUT"
done
s="$t/out/summary.txt"
for step in preflight bf16-test train-bf16 train-f32 bench; do
    grep -q "^$step: exit 0 " "$s" || fail "$step did not end well: $(cat "$s")"
done
grep -q "^train-wgpu: exit 124 after .* (cut at 8 s)" "$s" || fail "the hanging step was not cut: $(cat "$s")"
for what in "NVRTC" "header cuda_bf16.h" "header cuda_fp16.h" "Vulkan loader: bundled" "NVIDIA Vulkan ICD"; do
    grep -q "^preflight: ok .*$what" "$s" || fail "preflight did not find $what: $(cat "$s")"
done
grep -q "Stand-in H100" "$s" || fail "the card is not in the summary"
rows=$(grep -c "| 0.50x |" "$t/out/bench.md" || true)
[ "$rows" -eq 3 ] || fail "bench.md has $rows rows of burn at 0.50x PyTorch: $(cat "$t/out/bench.md")"
grep -q "| failed | 2000 | n/a |" "$t/out/bench.md" || fail "the hanging case is not 'failed': $(cat "$t/out/bench.md")"
[ "$(tr '\n' ' ' <"$t/order")" = "torch burn torch burn torch burn torch burn " ] ||
    fail "the bench did not run PyTorch first: $(cat "$t/order")"
logs=$(tar -tJf "$t/out/logs.tar.xz")
for f in logs/preflight.log logs/bf16-test.log logs/train-bf16.log logs/train-wgpu.log \
    runs/bf16/summary.json runs/f32/summary.json; do
    grep -qx "\(\./\)\?$f" <<<"$logs" || fail "logs.tar.xz lacks $f"
done
grep -q "model-1.mpk" <<<"$logs" && fail "logs.tar.xz holds a checkpoint"
cached=$(tar -tJf "$t/out/cache.tar.xz")
for f in kernels/stand-in.ptx cuda-bf16/stand-in.json; do
    grep -q "$f" <<<"$cached" || fail "cache.tar.xz lacks $f"
done
echo "ok   run.sh: deadline, cut step, 5 files back, packing, PyTorch first"

# A step whose own limit (90 s) is past the deadline is cut at the deadline; what comes after
# is reported as not run.
start=$SECONDS
run env OUT="$t/out3" DEADLINE_S=12 DRY_HANG=1 STEPS="preflight train-f32 bench" \
    bash scripts/gpu/run.sh >"$t/run3.log" 2>&1 || fail "run.sh exited $?: $(tail "$t/run3.log")"
took=$((SECONDS - start))
[ "$took" -le 14 ] || fail "run.sh took $took s; its deadline was 12 s"
grep -q "^train-f32: exit 124 after .* (cut at [5-7] s)" "$t/out3/summary.txt" ||
    fail "train-f32 was not cut at the deadline: $(cat "$t/out3/summary.txt")"
grep -q "^bench: not run (the deadline: 12 s)" "$t/out3/summary.txt" ||
    fail "the bench is not reported as left out: $(cat "$t/out3/summary.txt")"
echo "ok   run.sh: a step past the deadline cut at it, the rest reported not run"

# Killed mid-way (the device call's own limit): what was done has come back already.
# (env execs setsid, which makes this process the leader of a group of its own.)
env "${dry_env[@]}" OUT="$t/out4" DEADLINE_S=60 DRY_HANG=1 setsid bash scripts/gpu/run.sh \
    >"$t/run4.log" 2>&1 &
killed=$!
for _ in $(seq 100); do
    grep -q "^bf16-test:" "$t/out4/summary.txt" 2>/dev/null && break
    sleep 0.1
done
sleep 2
kill -9 -- "-$killed" || fail "could not kill run.sh's process group"
{ wait "$killed" || true; } 2>/dev/null
tar -tJf "$t/out4/logs.tar.xz" 2>/dev/null | grep -q "logs/bf16-test.log" ||
    fail "after a kill, logs.tar.xz lacks the steps done before it"
echo "ok   run.sh: killed mid-way, the finished steps' logs were already packed"

# No bundle: said so, packed, exit 1.
if run env OUT="$t/out2" BUNDLE="$t/none.tar.xz" bash scripts/gpu/run.sh >"$t/run2.log" 2>&1; then
    fail "run.sh without a bundle exited 0"
fi
grep -q "no bundle at" "$t/out2/summary.txt" || fail "run.sh without a bundle did not say so"
echo "ok   run.sh without a bundle"

# check-bundle.sh on real executables, then on one that needs more than the C runtime.
mkdir -p "$t/real"
cp /bin/true "$t/real/train"
tar -C "$t/real" -cJf "$t/real.tar.xz" .
scripts/gpu/check-bundle.sh "$t/real.tar.xz" >"$t/check.log" || fail "check-bundle refused /bin/true: $(cat "$t/check.log")"
extra=$(command -v xz || true)   # needs liblzma.so.5
if [ -n "$extra" ]; then
    cp "$extra" "$t/real/bench"
    tar -C "$t/real" -cJf "$t/real.tar.xz" .
    if scripts/gpu/check-bundle.sh "$t/real.tar.xz" >"$t/check2.log"; then
        fail "check-bundle passed $extra, which needs more than the C runtime"
    fi
    grep -q "FAIL bench needs" "$t/check2.log" || fail "check-bundle did not name the library: $(cat "$t/check2.log")"
    echo "ok   check-bundle.sh: passes /bin/true, refuses $extra"
else
    fail "no executable here needs a library beyond the C runtime to test check-bundle.sh with"
fi
echo "dry run passed"
