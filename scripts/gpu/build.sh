#!/usr/bin/env bash
# Builds what the GPU checks (scripts/gpu/run.sh) run, on a CPU machine with no nvcc, into
# gpu-bin/ (git-ignored; pass it in the device tool's `carry`):
#   gpu-bin/bundle.tar.xz   train + bench (--features cuda), the bf16 test built for CUDA,
#                           train built for wgpu, and libvulkan.so.1 from Debian's libvulkan1
#                           (the GPU machine has NVIDIA's Vulkan driver but maybe not the loader).
# Stripped and xz-compressed, so that all of it stays under the 64 MiB a device call carries.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CUDARC_CUDA_VERSION=13000   # no nvcc here: cudarc is told the CUDA version
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p gpu-bin "$stage/lib"

echo "== cuda: train, bench" >&2
cargo build --release --features cuda --bin train --bin bench
cp target/release/train "$stage/train"
cp target/release/bench "$stage/bench"

echo "== cuda: the bf16 test" >&2
test_bin=$(cargo test --release --features cuda --test bf16 --no-run --message-format=json \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "bf16" and m.get("executable"):
        print(m["executable"])')
cp "$test_bin" "$stage/bf16-test"

echo "== wgpu: train" >&2
cargo build --release --features wgpu --bin train
cp target/release/train "$stage/train-wgpu"

echo "== libvulkan1 (Debian)" >&2
( cd "$stage" && apt-get download libvulkan1 2>/dev/null && dpkg-deb -x libvulkan1_*.deb deb )
cp -L "$stage"/deb/usr/lib/x86_64-linux-gnu/libvulkan.so.1 "$stage/lib/"
rm -rf "$stage"/deb "$stage"/*.deb

strip "$stage"/train "$stage"/bench "$stage"/bf16-test "$stage"/train-wgpu
ls -la "$stage" >&2
tar -C "$stage" -cJf gpu-bin/bundle.tar.xz .
size=$(stat -c %s gpu-bin/bundle.tar.xz)
echo "gpu-bin/bundle.tar.xz: $((size / 1024 / 1024)) MiB" >&2
if [ "$size" -gt $((60 * 1024 * 1024)) ]; then
  echo "error: the bundle is over 60 MiB; the device call carries 64 MiB in all" >&2
  exit 1
fi
