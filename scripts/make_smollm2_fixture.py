#!/usr/bin/env python3
"""Build the SmolLM2-135M-Instruct (GGUF, Q4_1) reference fixture used by the Rust tests.

Makes:
  tests/fixtures/smollm2-golden.json

Reference model: transformers' GGUF loader (`AutoModelForCausalLM.from_pretrained(models/,
gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf, dtype=float32)`), which dequantizes Q4_1 / Q8_0 to
float32 and undoes llama.cpp's Q/K row permutation; eager attention, CPU, float32.

Reference tokenizer: transformers' GGUF tokenizer conversion is checked against a tokenizer built
here with the `tokenizers` package straight from the GGUF metadata (tokenizer.ggml.tokens /
merges / token_type) with SmolLM2's real pipeline: pre-tokenizer
Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)],
ByteLevel decoder, control tokens (token_type 3) as special added tokens. If the two disagree on
any fixture string, the ids in the fixture come from the locally built one; the JSON key
"tokenizer_source" says which produced them, and "tokenizer_check" lists every disagreement.

Sections: sentences (ids, per-token log-probs, their sum), greedy (8 new tokens after
"The capital of France is"), chat (template, rendered string, its ids), special tokens,
tokenization (tricky strings, ids, decode), up_proj (MLP up_proj output at the last token of the
first three sentences for layers 0, 15, 29; rounded to 7 significant digits).

Regenerate (from the repository root, after scripts/fetch-models.sh):
  HF_HUB_OFFLINE=1 python3 scripts/make_smollm2_fixture.py
Requires: torch==2.15.0 transformers==5.23.0 gguf==0.19.0 (tokenizers comes with transformers)
"""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from smollm2_tokenizer import reference_tokenizer

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "tests" / "fixtures" / "smollm2-golden.json"

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "In 2023, 17 people ate 42 apples.",
    "Café déjà vu — naïve résumé.",
    "Rust makes systems programming safer and more productive.",
]

GREEDY_PROMPT = "The capital of France is"
GREEDY_NEW = 8

CHAT = [
    {"role": "system", "content": "You are concise."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Name a colour."},
]

TRICKY = [
    "   three leading spaces",
    "line one\nline two\n\n  indented",
    "12345",
    "fn main() { }",
    "I \u2764\ufe0f Rust \U0001f980 and \U0001f600!",
    "<|im_start|>user",
    "Total:  99\n\n100 items",
    "tab\there, x=3.14; y = -0.5e10",
]

UP_PROJ_LAYERS = [0, 15, 29]


def g7(x: float) -> float:
    return float(f"{x:.7g}")


class Tok:
    """Encode/decode through whichever tokenizer was chosen."""

    def __init__(self, hf, ref, use_ref: bool):
        self.hf, self.ref, self.use_ref = hf, ref, use_ref

    def encode(self, text: str) -> list[int]:
        if self.use_ref:
            return self.ref.encode(text, add_special_tokens=False).ids
        return self.hf(text, add_special_tokens=False).input_ids

    def decode(self, ids: list[int]) -> str:
        if self.use_ref:
            return self.ref.decode(ids, skip_special_tokens=False)
        return self.hf.decode(ids, skip_special_tokens=False)


def compare_tokenizers(hf, ref, texts):
    diffs = []
    for t in texts:
        a = hf(t, add_special_tokens=False).input_ids
        b = ref.encode(t, add_special_tokens=False).ids
        da = hf.decode(a, skip_special_tokens=False)
        db = ref.decode(b, skip_special_tokens=False)
        if a != b or da != db:
            diffs.append({"text": t, "transformers_ids": a, "reference_ids": b,
                          "transformers_decode": da, "reference_decode": db})
    return diffs


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    gguf_path = MODEL_DIR / GGUF_NAME
    assert gguf_path.exists(), f"{gguf_path} missing: run scripts/fetch-models.sh"

    hf_tok = AutoTokenizer.from_pretrained(str(MODEL_DIR), gguf_file=GGUF_NAME)
    ref_tok = reference_tokenizer(gguf_path)

    chat_rendered = hf_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    check_texts = SENTENCES + TRICKY + [GREEDY_PROMPT, " Paris", chat_rendered,
                                        "a  5", "x\n\n7", "v 1.2.3 (build 456)", "  42", "\t\t9"]
    diffs = compare_tokenizers(hf_tok, ref_tok, check_texts)
    digits_hf = hf_tok("12345", add_special_tokens=False).input_ids
    digits_ref = ref_tok.encode("12345", add_special_tokens=False).ids
    use_ref = bool(diffs) or len(digits_hf) != 5
    tok = Tok(hf_tok, ref_tok, use_ref)
    source = ("tokenizers-from-gguf-metadata (Digits(individual)+ByteLevel)" if use_ref
              else "transformers-gguf (verified identical to a tokenizers build from GGUF metadata "
                   "with Digits(individual)+ByteLevel on all check strings)")
    print("tokenizer disagreements:", len(diffs))
    for d in diffs:
        print("  ", json.dumps(d, ensure_ascii=False))
    print("12345 ->", digits_hf, "(transformers)", digits_ref, "(reference)")

    model = AutoModelForCausalLM.from_pretrained(
        str(MODEL_DIR), gguf_file=GGUF_NAME, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    cfg = model.config
    assert cfg.num_hidden_layers == 30 and cfg.hidden_size == 576 and cfg.intermediate_size == 1536
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr() or torch.equal(
        model.lm_head.weight, model.model.embed_tokens.weight
    ), "expected tied embeddings"

    # ---- sentences: per-token log-probs (+ up_proj capture for the first 3) ----
    captured = {}

    def make_hook(layer):
        def hook(_m, _i, out):
            captured[layer] = out.detach()[0, -1].clone()
        return hook

    sentences = []
    up_values = [[] for _ in UP_PROJ_LAYERS]
    for si, text in enumerate(SENTENCES):
        ids = tok.encode(text)
        handles = []
        if si < 3:
            handles = [model.model.layers[l].mlp.up_proj.register_forward_hook(make_hook(l))
                       for l in UP_PROJ_LAYERS]
        with torch.no_grad():
            x = torch.tensor([ids], dtype=torch.long)
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits.float()[0]
        for h in handles:
            h.remove()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        tl = logp.gather(-1, x[0, 1:].unsqueeze(-1)).squeeze(-1)
        sentences.append({
            "text": text,
            "input_ids": ids,
            "token_logps": tl.tolist(),
            "logp_sum": float(tl.sum().item()),
        })
        if si < 3:
            for li, l in enumerate(UP_PROJ_LAYERS):
                v = captured[l]
                assert v.shape == (1536,)
                up_values[li].append([g7(a) for a in v.tolist()])
        print(f"sentence {si}: {len(ids)} tokens, logp_sum={sentences[-1]['logp_sum']:.6f}")

    # ---- greedy ----
    prompt_ids = tok.encode(GREEDY_PROMPT)
    x = torch.tensor([prompt_ids], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=GREEDY_NEW,
            do_sample=False, num_beams=1, repetition_penalty=1.0,
            pad_token_id=hf_tok.pad_token_id,
        )
    new_ids = out[0, len(prompt_ids):].tolist()
    # Cross-check with a plain no-cache argmax loop.
    seq = list(prompt_ids)
    with torch.no_grad():
        for _ in range(len(new_ids)):
            t = torch.tensor([seq], dtype=torch.long)
            seq.append(int(model(input_ids=t, attention_mask=torch.ones_like(t)).logits[0, -1].argmax()))
    assert seq[len(prompt_ids):] == new_ids, (seq[len(prompt_ids):], new_ids)
    greedy = {
        "prompt": GREEDY_PROMPT,
        "prompt_ids": prompt_ids,
        "max_new_tokens": GREEDY_NEW,
        "new_ids": new_ids,
        "new_text": tok.decode(new_ids),
    }
    print("greedy:", repr(greedy["new_text"]), new_ids)

    # ---- chat ----
    chat = {
        "template": hf_tok.chat_template,
        "messages": CHAT,
        "add_generation_prompt": True,
        "rendered": chat_rendered,
        "rendered_ids": tok.encode(chat_rendered),
    }

    # ---- special ----
    special = {
        "bos_token": hf_tok.bos_token, "bos_token_id": hf_tok.bos_token_id,
        "eos_token": hf_tok.eos_token, "eos_token_id": hf_tok.eos_token_id,
        "pad_token": hf_tok.pad_token, "pad_token_id": hf_tok.pad_token_id,
        "unk_token": hf_tok.unk_token, "unk_token_id": hf_tok.unk_token_id,
        "vocab_size": ref_tok.get_vocab_size(with_added_tokens=True),
    }

    # ---- tokenization ----
    tokenization = []
    for t in TRICKY:
        ids = tok.encode(t)
        tokenization.append({"text": t, "ids": ids, "decoded": tok.decode(ids)})

    golden = {
        "model_file": f"models/{GGUF_NAME}",
        "reference": "transformers 5.23.0 GGUF loader, float32 dequantized, eager attention, CPU",
        "tokenizer_source": source,
        "tokenizer_check": {"strings_checked": len(check_texts), "disagreements": diffs,
                            "digits_12345_transformers": digits_hf, "digits_12345_reference": digits_ref},
        "sentences": sentences,
        "greedy": greedy,
        "chat": chat,
        "special": special,
        "tokenization": tokenization,
        "up_proj": {
            "layers": UP_PROJ_LAYERS,
            "sentence_indices": [0, 1, 2],
            "position": "last token of each sentence",
            "note": "values[layer_index][sentence_index] = 1536 floats, 7 significant digits",
            "values": up_values,
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(golden, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
