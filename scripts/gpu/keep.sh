#!/usr/bin/env bash
# After a GPU window: puts what scripts/gpu/run.sh brought back where the repository keeps it.
#   scripts/gpu/keep.sh DIR     (DIR: the device tool's files_at)
# cache.tar.xz replaces scripts/gpu/cache (cubecl's autotune results and compiled kernels: the
# next window starts warm); summary.txt, bench.md, bench.jsonl and the logs go to
# reports/gpu/<date>/. Then commit both.
set -euo pipefail
from=${1:?usage: scripts/gpu/keep.sh DIR}
cd "$(dirname "$0")/../.."
to=reports/gpu/$(date +%F)
mkdir -p "$to"
if [ -f "$from/cache.tar.xz" ]; then
    rm -rf scripts/gpu/cache
    mkdir -p scripts/gpu/cache
    tar -C scripts/gpu/cache -xJf "$from/cache.tar.xz"
    echo "scripts/gpu/cache: $(du -sh scripts/gpu/cache | cut -f1), $(find scripts/gpu/cache -type f | wc -l) files"
fi
for f in summary.txt bench.md bench.jsonl; do
    [ -f "$from/$f" ] && cp "$from/$f" "$to/"
done
[ -f "$from/logs.tar.xz" ] && tar -C "$to" -xJf "$from/logs.tar.xz"
echo "kept in $to:"
find "$to" -type f | sort
