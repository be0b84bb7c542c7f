#!/usr/bin/env bash
# Checks a bundle for the GPU machine (scripts/gpu/build.sh makes it): every executable at its
# top level needs only the C runtime and glibc symbols no newer than GLIBC_MAX (the machine's
# glibc is unknown ahead; 2.35 is Ubuntu 22.04's), and the bundle together with the working tree
# that travels with it (tracked and untracked-not-ignored files) stays 2 MiB under the 64 MiB a
# device call carries. Exit 1 with the reasons otherwise.
#   scripts/gpu/check-bundle.sh gpu-bin/bundle.tar.xz
set -euo pipefail
bundle=${1:?usage: scripts/gpu/check-bundle.sh BUNDLE.tar.xz}
GLIBC_MAX=${GLIBC_MAX:-2.35}
LIMIT_MIB=${LIMIT_MIB:-64}
cd "$(dirname "$0")/../.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
tar -C "$dir" -xJf "$bundle"
allowed=" libc.so.6 libm.so.6 libgcc_s.so.1 ld-linux-x86-64.so.2 libdl.so.2 libpthread.so.0 librt.so.1 "
fail=0
for f in "$dir"/*; do
    [ -f "$f" ] && [ -x "$f" ] || continue
    name=$(basename "$f")
    if ! readelf -h "$f" >/dev/null 2>&1; then
        echo "FAIL $name: not an ELF executable"
        fail=1
        continue
    fi
    needed=$(readelf -d "$f" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')
    for lib in $needed; do
        case "$allowed" in
        *" $lib "*) ;;
        *) echo "FAIL $name needs $lib, which the GPU machine may not have"; fail=1 ;;
        esac
    done
    newest=$(objdump -T "$f" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
    if [ -n "$newest" ] && [ "$(printf '%s\n%s\n' "$newest" "$GLIBC_MAX" | sort -V | tail -1)" != "$GLIBC_MAX" ]; then
        echo "FAIL $name needs glibc $newest, newer than $GLIBC_MAX"
        fail=1
    else
        echo "ok   $name: needs ${needed:-nothing}(glibc ${newest:-none} or newer)"
    fi
done
tree=$(git ls-files -z --cached --others --exclude-standard |
    xargs -0 stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
size=$(stat -c %s "$bundle")
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
echo "size: bundle $(mib "$size") MiB + working tree $(mib "$tree") MiB = $(mib $((size + tree))) MiB of $LIMIT_MIB"
if [ $((size + tree)) -gt $(((LIMIT_MIB - 2) * 1024 * 1024)) ]; then
    echo "FAIL over $((LIMIT_MIB - 2)) MiB: the device call would refuse it"
    fail=1
fi
exit $fail
