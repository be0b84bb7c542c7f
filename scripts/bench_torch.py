#!/usr/bin/env python3
"""PyTorch CPU baseline for the Rust `bench` binary.

Makes: nothing on disk; prints ONE JSON line per case to stdout:
  {"impl":"pytorch","config":"tiny"|"smollm2-135m","batch":B,"seq":T,
   "mode":"forward"|"forward_backward","tokens_per_s":x,"ms_per_iter":y,"threads":n}

Work per iteration (matches the Rust side: logits + completion log-prob):
  forward:          under torch.no_grad(): logits = model(ids, attention_mask).logits, then
                    log_softmax over the vocabulary, gather of the next tokens, summed.
  forward_backward: same with grad enabled, loss = -(sum of next-token logps) / (B*T),
                    loss.backward(), then model.zero_grad(set_to_none=True).
tokens_per_s = B*T / seconds per iteration (mean over --iters timed iterations after --warmup).

Configs: "tiny" is LlamaConfig::tiny() of model/src/config.rs; "smollm2-135m"
is SmolLM2-135M's shape, random init (seed 0). Both float32, eager attention, random ids (seed 0),
full attention mask (no padding).

Run (from the repository root):
  python3 scripts/bench_torch.py --config all --batch 4 --seq 128 --iters 5 --warmup 2 --threads 2
Requires: torch==2.15.0 transformers==5.23.0
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def make_config(name: str) -> LlamaConfig:
    if name == "tiny":
        # The same shape as LlamaConfig::tiny() in model/src/config.rs.
        cfg = LlamaConfig(
            vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
            rope_theta=10000.0, max_position_embeddings=512, tie_word_embeddings=False,
            attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )
    elif name == "smollm2-135m":
        cfg = LlamaConfig(
            vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0, rms_norm_eps=1e-5,
            tie_word_embeddings=True, max_position_embeddings=8192,
            bos_token_id=1, eos_token_id=2, pad_token_id=2,
        )
    else:
        raise ValueError(name)
    cfg._attn_implementation = "eager"
    return cfg


def next_token_logp_sum(model, ids, mask):
    logits = model(input_ids=ids, attention_mask=mask).logits
    logp = torch.log_softmax(logits[:, :-1, :], dim=-1)
    return logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1).sum()


def bench_case(model, cfg_name, vocab, batch, seq, mode, iters, warmup, threads):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones_like(ids)

    def step():
        if mode == "forward":
            with torch.no_grad():
                s = next_token_logp_sum(model, ids, mask)
            return float(s)
        s = next_token_logp_sum(model, ids, mask)
        loss = -s / (batch * seq)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    sec = sum(times) / len(times)
    return {
        "impl": "pytorch", "config": cfg_name, "batch": batch, "seq": seq, "mode": mode,
        "tokens_per_s": round(batch * seq / sec, 3), "ms_per_iter": round(sec * 1e3, 3),
        "threads": threads,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="all", choices=["tiny", "smollm2-135m", "all"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="forward,forward_backward",
                    help="comma-separated subset of forward,forward_backward")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    names = ["tiny", "smollm2-135m"] if a.config == "all" else [a.config]
    modes = [m for m in a.modes.split(",") if m]
    for m in modes:
        if m not in ("forward", "forward_backward"):
            ap.error(f"unknown mode {m}")
    for name in names:
        cfg = make_config(name)
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(torch.float32)
        model.train(False)  # no dropout; grads still flow in forward_backward
        if a.seq > cfg.max_position_embeddings:
            print(f"warning: seq {a.seq} > max_position_embeddings {cfg.max_position_embeddings} "
                  f"for {name}", file=sys.stderr)
        for mode in modes:
            r = bench_case(model, name, cfg.vocab_size, a.batch, a.seq, mode, a.iters, a.warmup, a.threads)
            print(json.dumps(r, separators=(",", ":")), flush=True)
        del model


if __name__ == "__main__":
    main()
