#!/usr/bin/env bash
# CPU benchmark: decpo (burn, `bench` binary) vs the PyTorch baseline (scripts/bench_torch.py)
# on the same work, printed as a markdown table with the burn/pytorch tokens/s ratio.
#
# Usage (from anywhere):
#   scripts/bench_cpu.sh                       # --preset all --batch 4 --seq 128, 2 threads
#   PRESET=tiny BATCH=2 SEQ=64 THREADS=2 scripts/bench_cpu.sh [extra args for both, e.g. --iters 5]
#   PRESET=tiny BATCH=2 SEQ=64 scripts/bench_cpu.sh --mode decpo_step --lora   # one DecPO step
# Both programs print one JSON line per case:
#   {"impl":...,"preset":...,"batch":B,"seq":T,"mode":...,"tokens_per_s":x,"ms_per_iter":y,"threads":n}
# decpo_step lines also carry "lora":true|false and "peak_rss_mib":m (BATCH = pairs there). The
# table gets a lora column and per-program peak-RSS columns when any line has those fields
# ("n/a" where one side lacks them); a line without "lora" counts as lora=false. Peak RSS is the
# process peak, so it is only clean with one preset and one mode per run.
# Raw JSON lines are kept in $OUT_DIR (default: a temp dir, path printed at the end).
set -uo pipefail
cd "$(dirname "$0")/.."

PRESET=${PRESET:-all}
BATCH=${BATCH:-4}
SEQ=${SEQ:-128}
THREADS=${THREADS:-2}
OUT_DIR=${OUT_DIR:-$(mktemp -d)}
common=(--preset "$PRESET" --batch "$BATCH" --seq "$SEQ")

echo "== decpo-burn: cargo run --release --bin bench -- ${common[*]} $*" >&2
RAYON_NUM_THREADS=$THREADS cargo run --release --bin bench -- "${common[@]}" "$@" >"$OUT_DIR/burn.jsonl"
burn_rc=$?
[ $burn_rc -ne 0 ] && echo "warning: burn bench exited with $burn_rc" >&2

echo "== pytorch: python3 scripts/bench_torch.py ${common[*]} --threads $THREADS $*" >&2
python3 scripts/bench_torch.py "${common[@]}" --threads "$THREADS" "$@" >"$OUT_DIR/pytorch.jsonl"
torch_rc=$?
[ $torch_rc -ne 0 ] && echo "warning: pytorch bench exited with $torch_rc" >&2

python3 - "$OUT_DIR/burn.jsonl" "$OUT_DIR/pytorch.jsonl" <<'PY'
import json, sys

def load(path):
    rows = {}
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return rows
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[(r["preset"], r["mode"], r["batch"], r["seq"], bool(r.get("lora", False)))] = r
    return rows

burn, torch_ = load(sys.argv[1]), load(sys.argv[2])
keys = list(torch_) + [k for k in burn if k not in torch_]
everything = list(burn.values()) + list(torch_.values())
# Extra columns only when some line has the field, so the forward-mode table stays as before.
show_lora = any("lora" in r for r in everything)
show_rss = any("peak_rss_mib" in r for r in everything)
def f(r, k):
    return f"{r[k]:.1f}" if r and k in r else "n/a"
head = ["preset", "mode"] + (["lora"] if show_lora else []) + ["batch", "seq", "burn tok/s",
        "burn ms/iter", "pytorch tok/s", "pytorch ms/iter", "burn/pytorch"]
align = ["---", "---"] + (["---"] if show_lora else []) + ["---:"] * 7
if show_rss:
    head += ["burn peak RSS MiB", "pytorch peak RSS MiB"]
    align += ["---:", "---:"]
print("| " + " | ".join(head) + " |")
print("|" + "|".join(align) + "|")
for k in keys:
    b, t = burn.get(k), torch_.get(k)
    ratio = f"{b['tokens_per_s'] / t['tokens_per_s']:.2f}x" if b and t and t["tokens_per_s"] > 0 else "n/a"
    cells = [k[0], k[1]] + (["yes" if k[4] else "no"] if show_lora else []) + [
        str(k[2]), str(k[3]), f(b, "tokens_per_s"), f(b, "ms_per_iter"),
        f(t, "tokens_per_s"), f(t, "ms_per_iter"), ratio]
    if show_rss:
        cells += [f(b, "peak_rss_mib"), f(t, "peak_rss_mib")]
    print("| " + " | ".join(cells) + " |")
PY
echo "raw JSON lines: $OUT_DIR/burn.jsonl $OUT_DIR/pytorch.jsonl" >&2
