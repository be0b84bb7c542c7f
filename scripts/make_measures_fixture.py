#!/usr/bin/env python3
"""Build the SmolLM2-135M-Instruct reference fixture for the MLP measures and the pair log-probs.

Makes:
  tests/fixtures/smollm2-measures-golden.json

Reference model: transformers' GGUF loader (`AutoModelForCausalLM.from_pretrained(models/,
gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf, dtype=float32)`), which dequantizes Q4_1 / Q8_0 to
float32 and undoes llama.cpp's Q/K row permutation; eager attention, CPU, float32, 2 threads
(loaded exactly as scripts/make_smollm2_fixture.py does).

Reference tokenizer: the one built from the GGUF metadata by scripts/smollm2_tokenizer.py (the
same one whose ids scripts/make_smollm2_fixture.py puts in its fixture); encode with
add_special_tokens=False, so no BOS is added. transformers' GGUF tokenizer is compared on every
string used here and the disagreements are listed under "tokenizer_check" (informational only).

Data: ../shared/data/cognitive-reframing/reframing_dataset.csv (python csv module), the first 6
data rows for the prompts (their "situation") and the first 4 for the pairs.

Sections:
  prompts     text (situation) and ids.
  layers      for every decoder layer l, with z_i = mlp.up_proj output at the last token of prompt
              i (each prompt run alone, batch 1, no padding), computed in float64 from the float32
              activations:
                fd = 1 - mean over ordered pairs i != j of cos(z_i, z_j)
                av = mean over i of the population variance (divide by d_ff) of z_i
  top_tokens  for layers 0, 15, 29: neuron f* = argmax_f mean_i z_if; v = down_proj.weight[:, f*];
              logits = lm_head(model.norm(v)); the top-10 ids / logits / decoded tokens and the
              mean activation at f*.
  pairs       prompt = situation, chosen = reframe, rejected = thought, joined with NO separator;
              TRL's convention: prompt_ids = encode(prompt), completion_ids =
              encode(prompt + c)[len(prompt_ids):] with EOS (2, <|im_end|>) appended if missing;
              logps = sum over completion tokens of log_softmax(logits[t-1])[id_t] (float32
              log-softmax, float64 sum) and the per-token mean; "prompt_is_prefix" records whether
              encode(prompt + c) starts with prompt_ids.
  meta        library versions, model file and its sha256, d_ff, number of layers.
Floats are rounded to 7 significant digits.

Regenerate (from the repository root, after scripts/fetch-models.sh):
  HF_HUB_OFFLINE=1 python3 scripts/make_measures_fixture.py
Requires: torch==2.15.0 transformers==5.23.0 gguf==0.19.0 (tokenizers comes with transformers)
"""

import csv
import hashlib
import json
import os
import sys
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from smollm2_tokenizer import reference_tokenizer
from make_smollm2_fixture import compare_tokenizers, g7

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = ROOT.parent / "shared" / "data" / "cognitive-reframing" / "reframing_dataset.csv"
OUT = ROOT / "tests" / "fixtures" / "smollm2-measures-golden.json"

N_PROMPTS = 6
N_PAIRS = 4
TOP_LAYERS = [0, 15, 29]
TOP_K = 10
EOS_ID = 2


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_rows(n: int) -> list[dict]:
    with open(DATA, newline="", encoding="utf-8") as f:
        rows = []
        for row in csv.DictReader(f):
            rows.append(row)
            if len(rows) == n:
                break
    assert len(rows) == n
    return rows


def fd_pairwise(z: torch.Tensor) -> float:
    """1 - mean over ordered pairs i != j of cos(z_i, z_j); z is [N, d] float64."""
    n = z.shape[0]
    total, count = 0.0, 0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            c = torch.dot(z[i], z[j]) / (torch.linalg.vector_norm(z[i]) * torch.linalg.vector_norm(z[j]))
            total += float(c)
            count += 1
    return 1.0 - total / count


def fd_gram(z: torch.Tensor) -> float:
    """Same quantity via the Gram matrix of the L2-normalized rows."""
    n = z.shape[0]
    u = z / torch.linalg.vector_norm(z, dim=1, keepdim=True)
    g = u @ u.T
    return 1.0 - (float(g.sum()) - n) / (n * (n - 1))


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    gguf_path = MODEL_DIR / GGUF_NAME
    assert gguf_path.exists(), f"{gguf_path} missing: run scripts/fetch-models.sh"

    ref_tok = reference_tokenizer(gguf_path)

    def encode(text: str) -> list[int]:
        return ref_tok.encode(text, add_special_tokens=False).ids

    def decode(ids: list[int]) -> str:
        return ref_tok.decode(ids, skip_special_tokens=False)

    rows = read_rows(max(N_PROMPTS, N_PAIRS))
    prompt_texts = [r["situation"] for r in rows[:N_PROMPTS]]
    pair_rows = [(r["situation"], r["reframe"], r["thought"]) for r in rows[:N_PAIRS]]

    # Informational check against transformers' GGUF tokenizer on every string used here.
    hf_tok = AutoTokenizer.from_pretrained(str(MODEL_DIR), gguf_file=GGUF_NAME)
    check_texts = list(dict.fromkeys(
        prompt_texts + [p for p, _, _ in pair_rows] + [p + c for p, ch, rj in pair_rows for c in (ch, rj)]
    ))
    diffs = compare_tokenizers(hf_tok, ref_tok, check_texts)
    print("tokenizer disagreements (transformers vs reference):", len(diffs))
    for d in diffs:
        print("  ", json.dumps(d, ensure_ascii=False))

    model = AutoModelForCausalLM.from_pretrained(
        str(MODEL_DIR), gguf_file=GGUF_NAME, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    cfg = model.config
    n_layers, d_ff = cfg.num_hidden_layers, cfg.intermediate_size
    assert n_layers == 30 and cfg.hidden_size == 576 and d_ff == 1536
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr() or torch.equal(
        model.lm_head.weight, model.model.embed_tokens.weight
    ), "expected tied embeddings"

    # ---- up_proj at the last token of each prompt, every layer ----
    captured: dict[int, torch.Tensor] = {}

    def make_hook(layer):
        def hook(_m, _i, out):
            assert out.shape[0] == 1 and out.shape[2] == d_ff, out.shape
            captured[layer] = out.detach()[0, -1].clone()
        return hook

    handles = [model.model.layers[l].mlp.up_proj.register_forward_hook(make_hook(l)) for l in range(n_layers)]
    prompts = []
    z = torch.empty(n_layers, N_PROMPTS, d_ff, dtype=torch.float32)
    for i, text in enumerate(prompt_texts):
        ids = encode(text)
        captured.clear()
        with torch.no_grad():
            x = torch.tensor([ids], dtype=torch.long)
            model(input_ids=x, attention_mask=torch.ones_like(x))
        assert len(captured) == n_layers
        for l in range(n_layers):
            z[l, i] = captured[l]
        prompts.append({"text": text, "ids": ids})
        print(f"prompt {i}: {len(ids)} tokens: {text!r}")
    for h in handles:
        h.remove()

    z64 = z.double()
    layers = []
    for l in range(n_layers):
        fd = fd_pairwise(z64[l])
        fd2 = fd_gram(z64[l])
        assert abs(fd - fd2) < 1e-12, (l, fd, fd2)
        av = float(z64[l].var(dim=1, unbiased=False).mean())
        assert 0.0 <= fd <= 2.0 and av > 0.0, (l, fd, av)
        layers.append({"layer": l, "fd": g7(fd), "av": g7(av)})
        print(f"layer {l:2d}: fd={fd:.7g} av={av:.7g}")

    # ---- top tokens of the most active neuron's down_proj column ----
    top_tokens = []
    with torch.no_grad():
        for l in TOP_LAYERS:
            mean_act = z64[l].mean(dim=0)
            f = int(mean_act.argmax())
            w = model.model.layers[l].mlp.down_proj.weight
            assert w.shape == (cfg.hidden_size, d_ff)
            v = w[:, f].clone()
            normed = model.model.norm(v)
            logits = model.lm_head(normed)
            vals, idx = torch.topk(logits, TOP_K)
            ids = idx.tolist()
            toks = [decode([t]) for t in ids]
            top_tokens.append({
                "layer": l, "neuron": f, "mean_activation": g7(float(mean_act[f])),
                "ids": ids, "logits": [g7(float(a)) for a in vals], "tokens": toks,
            })
            print(f"layer {l}: neuron {f} mean_act={float(mean_act[f]):.7g} top: {toks}")

    # ---- pair log-probs (TRL token convention) ----
    def completion_ids(prompt_ids, prompt, completion):
        full = encode(prompt + completion)
        is_prefix = full[: len(prompt_ids)] == prompt_ids
        ids = full[len(prompt_ids):]
        if not ids or ids[-1] != EOS_ID:
            ids = ids + [EOS_ID]
        return ids, is_prefix

    def logp(prompt_ids, comp_ids):
        seq = prompt_ids + comp_ids
        with torch.no_grad():
            x = torch.tensor([seq], dtype=torch.long)
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits.float()[0]
        lsm = torch.log_softmax(logits[:-1], dim=-1)
        tl = lsm.gather(-1, x[0, 1:].unsqueeze(-1)).squeeze(-1)[len(prompt_ids) - 1:]
        assert tl.shape[0] == len(comp_ids)
        s = float(tl.double().sum())
        return s, s / len(comp_ids)

    pairs = []
    for k, (prompt, chosen, rejected) in enumerate(pair_rows):
        p_ids = encode(prompt)
        c_ids, c_pref = completion_ids(p_ids, prompt, chosen)
        r_ids, r_pref = completion_ids(p_ids, prompt, rejected)
        lc, mc = logp(p_ids, c_ids)
        lr, mr = logp(p_ids, r_ids)
        pairs.append({
            "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "prompt_ids": p_ids, "chosen_ids": c_ids, "rejected_ids": r_ids,
            "prompt_is_prefix": {"chosen": c_pref, "rejected": r_pref},
            "logps_chosen": g7(lc), "logps_rejected": g7(lr),
            "mean_logps_chosen": g7(mc), "mean_logps_rejected": g7(mr),
        })
        print(f"pair {k}: prompt {len(p_ids)} chosen {len(c_ids)} rejected {len(r_ids)} tokens; "
              f"prefix {c_pref}/{r_pref}; logps chosen {lc:.7g} (mean {mc:.7g}) "
              f"rejected {lr:.7g} (mean {mr:.7g})")

    golden = {
        "meta": {
            "torch": torch.__version__,
            "transformers": version("transformers"),
            "gguf": version("gguf"),
            "tokenizers": version("tokenizers"),
            "model_file": f"models/{GGUF_NAME}",
            "model_sha256": sha256(gguf_path),
            "reference": "transformers GGUF loader, float32 dequantized, eager attention, CPU, 2 threads",
            "tokenizer_source": "tokenizers-from-gguf-metadata (scripts/smollm2_tokenizer.py), "
                                "add_special_tokens=False (no BOS)",
            "data_file": "../shared/data/cognitive-reframing/reframing_dataset.csv",
            "d_ff": d_ff,
            "num_layers": n_layers,
            "eos_id": EOS_ID,
        },
        "tokenizer_check": {"strings_checked": len(check_texts), "disagreements": diffs},
        "prompts": prompts,
        "layers": layers,
        "top_tokens": top_tokens,
        "pairs": pairs,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(golden, ensure_ascii=False) + "\n", encoding="utf-8")
    size = OUT.stat().st_size
    assert size < 60_000, size
    print(f"wrote {OUT} ({size} bytes)")


if __name__ == "__main__":
    main()
