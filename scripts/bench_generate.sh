#!/usr/bin/env bash
# Generation speed side by side: decpo's `generate` and transformers' `generate` on the same GGUF
# weights (dequantised to f32 by both), greedy, the same number of new tokens, THREADS threads
# each. First one chat prompt alone, then BATCH chat prompts decoded together (left-padded, each
# row stopping at its own EOS; tokens/s counts every row's new tokens up to its EOS). Prints one
# line per program and run, and whether the texts agree.
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
BATCH=${BATCH:-32}
out=$(mktemp)
batch_out=$(mktemp)
prompts=$(mktemp)
python3 - "$BATCH" >"$prompts" <<'PY'
import sys
topics = ["staying healthy", "sleeping better", "saving money", "learning a language", "cooking rice",
          "running a first 5k", "writing an essay", "reading more books", "keeping plants alive",
          "making friends", "studying for exams", "drinking more water", "travelling light",
          "starting to meditate", "fixing a flat tyre", "painting a room", "learning to swim",
          "managing stress", "taking better photos", "public speaking", "growing tomatoes",
          "keeping a journal", "baking bread", "cycling in the rain", "cleaning a kitchen",
          "playing chess", "learning the guitar", "packing for a move", "training a puppy",
          "working from home", "planning a picnic", "staying focused"]
n = int(sys.argv[1])
for i in range(n):
    print(f"Give me one tip for {topics[i % len(topics)]}.")
PY

cargo build --release "$@" --bin generate >&2
RAYON_NUM_THREADS=$THREADS cargo run -q --release "$@" --bin generate -- --model "$MODEL" --chat \
    --prompt "$PROMPT" --max-new-tokens "$NEW" >"$out" 2>&1
ours=$(grep -E "new tokens in" "$out")
echo "decpo generate, one prompt: $ours"
RAYON_NUM_THREADS=$THREADS cargo run -q --release "$@" --bin generate -- --model "$MODEL" --chat \
    --prompts "$prompts" --max-new-tokens "$NEW" >"$batch_out" 2>"$batch_out.err"
echo "decpo generate, $BATCH prompts together: $(grep -E "new tokens in" "$batch_out.err")"

python3 - "$MODEL" "$PROMPT" "$NEW" "$THREADS" "$out" "$prompts" "$batch_out" <<'PY'
import json, os, sys, time
model_path, prompt, new, threads, ours_path, prompts_path, batch_path = sys.argv[1:8]
new, threads = int(new), int(threads)
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

# The batch, left-padded as transformers does it for decoder-only models.
tok.padding_side = "left"
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
questions = [l.strip() for l in open(prompts_path) if l.strip()]
texts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
         for q in questions]
enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
eos = tok.eos_token_id
with torch.no_grad():
    start = time.perf_counter()
    out = model.generate(**enc, max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id)
    secs = time.perf_counter() - start
rows = out[:, enc["input_ids"].shape[1]:].tolist()
count = sum(next((i + 1 for i, t in enumerate(r) if t == eos), len(r)) for r in rows)
print(f"transformers generate, {len(rows)} prompts together: {count} new tokens in {secs:.2f} s ({count / secs:.1f} tokens/s)")
ours = [json.loads(l)["completion"] for l in open(batch_path) if l.strip()]
theirs = [tok.decode(r, skip_special_tokens=True).strip() for r in rows]
same = sum(a.strip() == b for a, b in zip(ours, theirs))
print(f"same text in the batch: {same} of {len(theirs)} rows")
PY
