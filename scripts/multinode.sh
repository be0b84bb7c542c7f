#!/usr/bin/env bash
# Starts N nodes of one `train` run on this machine over loopback, to try multi-node training:
# node 0 listens on 127.0.0.1:$PORT and the others connect to it; all share one run directory
# (--out, default runs/multinode), where node 0 writes the checkpoints, log.jsonl and the
# exported model and node r its log-node-r.jsonl. Each node's messages go to OUT/node-r.log. When a node fails the
# others are stopped, and the script exits with its status.
#
#   scripts/multinode.sh 2                                   # the embedded job on 2 nodes
#   scripts/multinode.sh 2 -- --max-steps 40 --accumulation 2
#   scripts/multinode.sh 2 -- --resume                       # go on from the last checkpoint
#
# Environment: TRAIN (the binary; default: built with cargo --release), PORT (29500),
# OUT (runs/multinode), RAYON_NUM_THREADS (default: this machine's cores / N, at least 1).
set -euo pipefail

nodes=${1:?usage: scripts/multinode.sh N [-- train flags]}
shift
[[ ${1:-} == "--" ]] && shift
port=${PORT:-29500}
out=${OUT:-runs/multinode}

if [[ -z ${TRAIN:-} ]]; then
    cargo build --release --bin train
    TRAIN=$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/train
fi
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-$(( $(nproc) / nodes > 0 ? $(nproc) / nodes : 1 ))}
mkdir -p "$out"

pids=()
stop_all() { kill "${pids[@]}" 2>/dev/null || true; }
trap stop_all INT TERM
for ((r = 0; r < nodes; r++)); do
    "$TRAIN" --out "$out" --nodes "$nodes" --rank "$r" \
        --main-address "127.0.0.1:$port" \
        "$@" >"$out/node-$r.log" 2>&1 &
    pids+=($!)
done
echo "started $nodes nodes (pids ${pids[*]}); messages in $out/node-*.log"

status=0
for ((left = nodes; left > 0; left--)); do
    # Whichever node ends first (the nodes are this shell's only jobs): a failure stops the rest.
    if ! wait -n; then
        status=1
        stop_all
    fi
done
for ((r = 0; r < nodes; r++)); do
    # Its error if it stopped with one, else its last line.
    last=$(grep -m 1 '^Error' "$out/node-$r.log" || grep -v '^\s*$' "$out/node-$r.log" | tail -n 1)
    echo "== node $r: $last"
done
exit $status
