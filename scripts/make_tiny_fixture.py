#!/usr/bin/env python3
"""Build the tiny random Llama reference fixture used by the Rust tests.

Makes:
  tests/fixtures/tiny-llama/            HF `save_pretrained` output (config.json,
                                        generation_config.json, model.safetensors, float32)
  tests/fixtures/tiny-llama-golden.json golden activations / logits / log-probs / gradients

The model is a random `LlamaForCausalLM` (seed 0) with GQA (6 query heads, 2 kv heads),
an explicit head_dim (10 != 48/6), untied embeddings and llama3 RoPE scaling, run in
float32 with eager attention on CPU.

Log-prob convention: the log-prob of token t uses the logits at position t-1, so position 0
is never a completion token. logps_sum[b] = sum over t with completion_mask[b,t] == 1 of
log_softmax(logits[b, t-1])[input_ids[b, t]]; logps_mean[b] = logps_sum[b] / #completion tokens.

grad_check: L = sum_b logps_sum[b] (same forward, grad enabled); gradients of L w.r.t.
model.model.layers[0].mlp.up_proj.weight ([83][48], HF [out, in] layout) and
model.model.embed_tokens.weight ([131][48]).

Regenerate (from the repository root):
  HF_HUB_OFFLINE=1 python3 scripts/make_tiny_fixture.py
Requires: torch==2.15.0 transformers==5.23.0 safetensors numpy
"""

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
MODEL_DIR = FIX / "tiny-llama"
GOLDEN = FIX / "tiny-llama-golden.json"

ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def tiny_config() -> LlamaConfig:
    cfg = LlamaConfig(
        vocab_size=131,
        hidden_size=48,
        intermediate_size=83,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=10,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling=dict(ROPE_SCALING),
        max_position_embeddings=64,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        attn_implementation="eager",
    )
    cfg._attn_implementation = "eager"
    return cfg


def check_rope(cfg: LlamaConfig) -> None:
    """Make sure the llama3 RoPE scaling actually reached the model (transformers v5 moved
    rope settings into `rope_parameters`)."""
    rp = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
    assert rp is not None, "rope parameters missing from config"
    assert rp.get("rope_type") == "llama3", rp
    assert float(rp.get("factor")) == 8.0, rp
    assert float(rp.get("rope_theta", cfg_theta(cfg))) == 10000.0, rp


def cfg_theta(cfg: LlamaConfig) -> float:
    rp = getattr(cfg, "rope_parameters", None) or {}
    return rp.get("rope_theta", getattr(cfg, "rope_theta", None))


def reinit(model: LlamaForCausalLM) -> None:
    """Larger-than-default init so logits and norms are non-trivial."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def make_batch():
    B, T = 3, 13
    lengths = [13, 9, 5]
    completion_start = [4, 3, 2]
    g = torch.Generator().manual_seed(42)
    ids = torch.zeros(B, T, dtype=torch.long)
    attn = torch.zeros(B, T, dtype=torch.long)
    comp = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        n = lengths[b]
        ids[b, :n] = torch.randint(3, 131, (n,), generator=g)
        attn[b, :n] = 1
        comp[b, completion_start[b]:n] = 1
    assert comp[:, 0].sum() == 0
    return ids, attn, comp


def seq_logps(logits, ids, comp):
    """Return (logps_sum [B], logps_mean [B]) with the t-1 -> t convention."""
    logp = torch.log_softmax(logits[:, :-1, :], dim=-1)  # predicts positions 1..T-1
    tgt = ids[:, 1:]
    tok = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    m = comp[:, 1:].to(tok.dtype)
    s = (tok * m).sum(-1)
    return s, s / m.sum(-1)


def main() -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    model = LlamaForCausalLM(cfg).to(torch.float32)
    reinit(model)
    model.eval()
    check_rope(model.config)
    assert model.model.layers[0].self_attn.head_dim == 10

    if MODEL_DIR.exists():
        shutil.rmtree(MODEL_DIR)
    MODEL_DIR.mkdir(parents=True)
    model.save_pretrained(MODEL_DIR, safe_serialization=True)
    (MODEL_DIR / "model.safetensors").chmod(0o644)
    # transformers v5 writes RoPE settings only as `rope_parameters` (with rope_theta inside).
    # Also write the classic pre-v5 keys (`rope_theta`, `rope_scaling`) that most hub configs use,
    # so a loader reading either layout finds the same values.
    cfg_path = MODEL_DIR / "config.json"
    cfg_json = json.loads(cfg_path.read_text())
    cfg_json["rope_theta"] = 10000.0
    cfg_json["rope_scaling"] = dict(ROPE_SCALING)
    cfg_path.write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")
    with torch.no_grad():
        probe = torch.arange(3, 16).unsqueeze(0)
        probe_logits = model(input_ids=probe).logits

    # Reload from disk to make sure the fixture on disk is exactly what we evaluate.
    model = LlamaForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    check_rope(model.config)
    with torch.no_grad():
        assert torch.equal(model(input_ids=probe).logits, probe_logits), "reloaded model differs"

    ids, attn, comp = make_batch()

    captured = {}

    def hook_up(_m, _inp, out):
        captured["up_proj"] = out.detach().clone()

    def hook_norm(_m, _inp, out):
        captured["hidden"] = out.detach().clone()

    h1 = model.model.layers[1].mlp.up_proj.register_forward_hook(hook_up)
    h2 = model.model.norm.register_forward_hook(hook_norm)

    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits.float()
        lsum, lmean = seq_logps(logits, ids, comp)
    h1.remove()
    h2.remove()

    # Gradient check: same forward, grad enabled.
    model.zero_grad(set_to_none=True)
    logits_g = model(input_ids=ids, attention_mask=attn).logits
    lsum_g, _ = seq_logps(logits_g, ids, comp)
    loss = lsum_g.sum()
    loss.backward()
    assert torch.allclose(logits_g.detach(), logits, atol=1e-5)
    g_up = model.model.layers[0].mlp.up_proj.weight.grad
    g_emb = model.model.embed_tokens.weight.grad
    assert g_up.shape == (83, 48) and g_emb.shape == (131, 48)

    golden = {
        "config_dir": "tiny-llama",
        "input_ids": ids.tolist(),
        "attention_mask": attn.tolist(),
        "completion_mask": comp.tolist(),
        "logits": logits.tolist(),
        "hidden": captured["hidden"].float().tolist(),
        "up_proj_layer": 1,
        "up_proj": captured["up_proj"].float().tolist(),
        "logps_sum": lsum.tolist(),
        "logps_mean": lmean.tolist(),
        "grad_check": {
            "loss": "sum(logps_sum)",
            "loss_value": float(loss.item()),
            "grad_up_proj_layer0": g_up.float().tolist(),
            "grad_embed_tokens": g_emb.float().tolist(),
        },
    }
    GOLDEN.write_text(json.dumps(golden) + "\n")
    print(f"wrote {MODEL_DIR} and {GOLDEN}")
    print("logps_sum", golden["logps_sum"])
    print("logps_mean", golden["logps_mean"])
    print("logits std", float(logits.std()), "loss", golden["grad_check"]["loss_value"])


if __name__ == "__main__":
    main()
