"""Checks that a directory written by `export` (or `save_hf_dir`) loads in transformers and gives
the log-probs transformers computed on the original GGUF (tests/fixtures/smollm2-golden.json).

    cargo run --release --bin export -- --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out target/smollm2-hf
    HF_HUB_OFFLINE=1 python3 scripts/check_hf_export.py target/smollm2-hf

Needs: pip install -r scripts/requirements.txt
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> int:
    export = Path(sys.argv[1])
    golden = json.loads((Path(__file__).parent.parent / "tests/fixtures/smollm2-golden.json").read_text())
    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32, attn_implementation="eager").eval()
    worst = 0.0
    for sentence in golden["sentences"]:
        ids = tok(sentence["text"], add_special_tokens=False).input_ids
        assert ids == sentence["input_ids"], f"token ids of {sentence['text']!r}: {ids} vs {sentence['input_ids']}"
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        logp = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None]).sum().item()
        rel = abs(logp - sentence["logp_sum"]) / abs(sentence["logp_sum"])
        worst = max(worst, rel)
        print(f"{sentence['text'][:40]!r:44} logp {logp:.6f} vs GGUF reference {sentence['logp_sum']:.6f} (rel {rel:.2e})")
    chat = golden["chat"]
    rendered = tok.apply_chat_template(chat["messages"], tokenize=False, add_generation_prompt=True)
    assert rendered == chat["rendered"], "chat template renders differently"
    print(f"chat template: identical; worst relative log-prob error {worst:.2e}")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
