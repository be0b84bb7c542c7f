#!/usr/bin/env bash
# Generation speed side by side: decpo's `generate` and transformers' `generate` on the same GGUF
# weights (dequantised to f32 by both), the same chat prompt, greedy, the same number of new
# tokens, THREADS threads each. Prints one line per program and whether the tokens agree.
#
# Usage (from anywhere; needs scripts/fetch-models.sh and pip install -r scripts/requirements.txt):
#   scripts/bench_generate.sh                     # SmolLM2-135M-Instruct, 48 new tokens, 2 threads
#   MODEL=... PROMPT=... NEW=64 THREADS=2 scripts/bench_generate.sh [extra cargo args, e.g. --no-default-features --features ndarray]
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
PROMPT=${PROMPT:-Give me one tip for staying healthy.}
NEW=${NEW:-48}
THREADS=${THREADS:-2}
out=$(mktemp)

cargo build --release "$@" --bin generate >&2
RAYON_NUM_THREADS=$THREADS cargo run -q --release "$@" --bin generate -- --model "$MODEL" --chat \
    --prompt "$PROMPT" --max-new-tokens "$NEW" >"$out" 2>&1
ours=$(grep -E "new tokens in" "$out")
echo "decpo generate: $ours"

python3 - "$MODEL" "$PROMPT" "$NEW" "$THREADS" "$out" <<'PY'
import os, sys, time
model_path, prompt, new, threads, ours_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(threads)
d, f = os.path.dirname(model_path) or ".", os.path.basename(model_path)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                              return_tensors="pt", return_dict=True)["input_ids"]
with torch.no_grad():
    model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False)
    secs = time.perf_counter() - start
n = out.shape[1] - ids.shape[1]
text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
print(f"transformers generate: {ids.shape[1]} prompt tokens, {n} new tokens in {secs:.2f} s ({n / secs:.1f} tokens/s)")
ours = open(ours_path).read()
print("same text:", text.strip() in ours)
PY
