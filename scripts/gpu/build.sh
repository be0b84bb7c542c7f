#!/usr/bin/env bash
# Builds what the GPU checks (scripts/gpu/run.sh) run, on a CPU machine with no nvcc, into
# gpu-bin/bundle.tar.xz (git-ignored; name gpu-bin in the device tool's `carry`):
#   train, bench             --features cuda (autotune): the benchmark, tuned
#   train-fixed, bf16-test   --features cuda-fixed: the correctness test and the training runs,
#                            which never wait on tuning
#   train-wgpu               --features wgpu
#   lib/                     Debian's Vulkan loader (libvulkan1) and libGLdispatch (libglvnd0,
#                            which NVIDIA's Vulkan driver loads), in case the machine lacks them
# Stripped and xz-compressed. Then it checks the bundle: every binary needs only the C runtime
# (libc, libm, libgcc_s, the loader) and glibc symbols no newer than GLIBC_MAX (2.35: Ubuntu
# 22.04 and later run it), and the bundle with the working tree that travels stays under the
# 64 MiB a device call carries. The earlier two-feature build (cuda, wgpu) took about an hour on
# 2 cores; this one adds cuda-fixed, not yet timed. The Debian packages are fetched first, so a
# missing one costs seconds, not the hour.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CUDARC_CUDA_VERSION=13000   # no nvcc here: cudarc is told the CUDA version
GLIBC_MAX=${GLIBC_MAX:-2.35}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p gpu-bin "$stage/lib" "$stage/deb"

echo "== Debian packages: libvulkan1, libglvnd0" >&2
( cd "$stage/deb" && apt-get download libvulkan1 libglvnd0 )
for deb in "$stage"/deb/*.deb; do dpkg-deb -x "$deb" "$stage/deb/root"; done
cp -L "$stage"/deb/root/usr/lib/x86_64-linux-gnu/libvulkan.so.1 \
    "$stage"/deb/root/usr/lib/x86_64-linux-gnu/libGLdispatch.so.0 "$stage/lib/"
rm -rf "$stage/deb"

# The path of test target $1's executable from `cargo test ... --no-run` (json on stdin).
test_executable() {
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1"
}

echo "== cuda (autotune): train, bench" >&2
cargo build --release --features cuda --bin train --bin bench
cp target/release/train "$stage/train"
cp target/release/bench "$stage/bench"

echo "== cuda-fixed: train, the bf16 test" >&2
cargo build --release --features cuda-fixed --bin train
cp target/release/train "$stage/train-fixed"
cp "$(cargo test --release --features cuda-fixed --test bf16 --no-run --message-format=json |
    test_executable bf16)" "$stage/bf16-test"

echo "== wgpu: train" >&2
cargo build --release --features wgpu --bin train
cp target/release/train "$stage/train-wgpu"

strip "$stage"/train "$stage"/bench "$stage"/train-fixed "$stage"/bf16-test "$stage"/train-wgpu
ls -la "$stage" "$stage/lib" >&2
tar -C "$stage" -cJf gpu-bin/bundle.tar.xz .
scripts/gpu/check-bundle.sh gpu-bin/bundle.tar.xz
