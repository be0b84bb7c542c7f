#!/usr/bin/env python3
"""PyTorch baseline for the Rust `bench` binary, on the CPU or (--device cuda) a GPU.

Makes: nothing on disk; prints ONE JSON line per case to stdout:
  {"impl":"pytorch","preset":"tiny"|"smollm2-135m","batch":B,"seq":T,
   "mode":"forward"|"forward_backward","tokens_per_s":x,"ms_per_iter":y,"threads":n}
and for --mode decpo_step two more fields:
  {..., "mode":"decpo_step","lora":true|false,"prompt":P, ..., "peak_rss_mib":m}

Work per iteration (matches the Rust side: logits + completion log-prob):
  forward:          under torch.no_grad(): logits = model(ids, attention_mask).logits, then
                    log_softmax over the vocabulary, gather of the next tokens, summed.
  forward_backward: same with grad enabled, loss = -(sum of next-token logps) / (B*T),
                    loss.backward(), then model.zero_grad(set_to_none=True).
  decpo_step:       one full DecPO training step (SPEC.md sections 2, 3, 5), --batch B = PAIRS:
    inputs      2B rows of T random token ids (seed 0): rows 0..B-1 chosen, B..2B-1 rejected;
                the prompt is the first P tokens (--prompt, default T/2) and is shared within a
                pair (the prompt tokens of chosen row i are copied into rejected row B+i); full
                attention mask (no padding). Completion mask: positions P..T-1, i.e. the log-probs of the
                tokens at those positions, predicted from the previous position.
    policy      the model, with grad, in train mode (LoRA dropout active).
    reference   without --lora: a frozen deep copy of the initial model (eval mode), run under
                torch.no_grad(); with --lora: the same model with the LoRA adapters switched
                off, under torch.no_grad().
    LoRA        (--lora) r=8, alpha=16 (scale alpha/r = 2), dropout 0.05 on the input of the
                adapter branch, on q_proj, v_proj and mlp.up_proj of every layer:
                y = W x + (alpha/r) * B(A(dropout(x))); A [r, in] kaiming-uniform(a=sqrt(5))
                random, B [out, r] zeros. Base weights frozen (requires_grad False), only A/B
                are trained. Without --lora every parameter is trained.
    logps       per row: logits = model(ids, mask).logits, log_softmax over the vocabulary of
                logits[:, :-1], gather of ids[:, 1:], summed where the completion mask of the
                target position is 1. pc/pr = policy chosen/rejected, rc/rr = reference.
    loss_dpo    sigmoid DPO, beta=0.1: mean over pairs of -logsigmoid(beta*((pc-rc)-(pr-rr))).
    L_dec       mode "paper": z = output of mlp.up_proj (with its LoRA delta, if any) of layer
                n_layers//3 of the POLICY forward (forward hook), taken per row at its last
                non-padding token (mask.sum(1)-1 = T-1 here); rows L2-normalised -> Z [2B, d_ff];
                L_dec = ||Z Z^T - I||_F^2.
    total       loss_dpo + 1e-4 * L_dec; backward; clip_grad_norm_(trainable, 1.0) (global L2
                norm); AdamW(lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0) step
                (optimizer built once per case, before warmup); zero_grad(set_to_none=True).
    peak_rss_mib   resource.getrusage(RUSAGE_SELF).ru_maxrss / 1024, read after the case. It is
                the PROCESS peak (it includes earlier configs/modes of the same run), so run one
                config and one mode per process for a clean number.
tokens_per_s = rows*T / seconds per iteration (mean over --iters timed iterations after
--warmup), rows = B for forward/forward_backward and 2B for decpo_step.

Configs: "tiny" is LlamaConfig::tiny() of model/src/config.rs; "smollm2-135m", "llama-3.2-1b"
and "llama-2-7b" are those models' shapes (the presets of model/src/config.rs), random init
(seed 0), random ids (seed 0), full attention mask (no padding). On the CPU: eager attention.
On CUDA: transformers' default "sdpa" attention, what a PyTorch user gets.

--dtype bf16 (with the Rust side's mixed precision, decpo_model::precision): activations bf16;
logits cast to f32 before the log-softmax; the regularizer's rows and Gram matrix in f32. With
--lora: base weights bf16, LoRA A/B in f32 (PEFT's default autocast_adapter_dtype), the branch
computed in f32 and cast back. Full fine-tuning: f32 weights (master weights) under
torch.autocast(bfloat16), which casts them to bf16 for each matmul. GPU lines add "peak_alloc_mib"/"peak_reserved_mib" (torch.cuda.max_memory_*).

Modes: --mode forward | forward_backward | decpo_step | all (all three, in that order); without
--mode: forward and forward_backward. --lora only affects decpo_step; it runs last per config
and LoRA is put into the model in place (the model is rebuilt for the next config).

Run (from the repository root):
  python3 scripts/bench_torch.py --preset all --batch 4 --seq 128 --iters 5 --warmup 2 --threads 2
  python3 scripts/bench_torch.py --preset tiny --batch 2 --seq 64 --mode decpo_step --lora
Requires: torch==2.15.0 transformers==5.23.0
"""

import argparse
import copy
import json
import math
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

ALL_MODES = ("forward", "forward_backward", "decpo_step")

# DecPO step hyper-parameters (SPEC.md sections 2, 3, 5).
BETA = 0.1
DEC_LAMBDA = 1e-4
CLIP_NORM = 1.0
LR = 1e-5
LORA_R, LORA_ALPHA, LORA_DROPOUT = 8, 16, 0.05


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    elif name == "llama-3.2-1b":
        cfg = LlamaConfig(
            vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
            num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
            rope_theta=500000.0, max_position_embeddings=131072, tie_word_embeddings=True,
            rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            bos_token_id=128000, eos_token_id=128001,
        )
    elif name == "llama-2-7b":
        cfg = LlamaConfig(
            vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, head_dim=128, rms_norm_eps=1e-5,
            rope_theta=10000.0, max_position_embeddings=4096, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2,
        )
    else:
        raise ValueError(name)
    return cfg


CONFIGS = ("tiny", "smollm2-135m", "llama-3.2-1b", "llama-2-7b")


def next_token_logp_sum(model, ids, mask):
    logits = model(input_ids=ids, attention_mask=mask).logits
    logp = torch.log_softmax(logits[:, :-1, :], dim=-1)
    return logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1).sum()


def timed(step, iters, warmup, device):
    """Mean seconds per call of `step` over `iters` calls, after `warmup` untimed ones; the
    device is synchronised before the clock starts and before it stops."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return (time.perf_counter() - t0) / iters


def memory_fields(device):
    if device.type != "cuda":
        return {}
    return {"peak_alloc_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "peak_reserved_mib": round(torch.cuda.max_memory_reserved(device) / 2**20, 1)}


def bench_case(model, cfg_name, vocab, batch, seq, mode, iters, warmup, threads):
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
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

    sec = timed(step, iters, warmup, device)
    return {
        "impl": "pytorch", "preset": cfg_name, "batch": batch, "seq": seq, "mode": mode,
        "tokens_per_s": round(batch * seq / sec, 3), "ms_per_iter": round(sec * 1e3, 3),
        "threads": threads, **memory_fields(device),
    }


# ---------------------------------------------------------------------------------------------
# decpo_step


class LoraLinear(nn.Module):
    """y = base(x) + (alpha/r) * B(A(dropout(x))), base frozen; `enabled=False` gives base(x)."""

    def __init__(self, base: nn.Linear, r: int, alpha: int, dropout: float):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        device = base.weight.device   # adapters in f32 whatever the base's dtype
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as peft / nn.Linear
        self.dropout = nn.Dropout(dropout)
        self.scaling = alpha / r
        self.enabled = True

    def forward(self, x):
        y = self.base(x)
        if self.enabled:
            low = F.linear(F.linear(self.dropout(x).float(), self.lora_A), self.lora_B)
            y = y + (low * self.scaling).to(y.dtype)
        return y


def add_lora(model) -> list:
    """Freeze the model and wrap q_proj, v_proj and mlp.up_proj of every layer with LoRA.
    Returns the LoraLinear modules."""
    model.requires_grad_(False)
    wrapped = []
    for layer in model.model.layers:
        for parent, name in ((layer.self_attn, "q_proj"), (layer.self_attn, "v_proj"),
                             (layer.mlp, "up_proj")):
            m = LoraLinear(getattr(parent, name), LORA_R, LORA_ALPHA, LORA_DROPOUT)
            setattr(parent, name, m)
            wrapped.append(m)
    return wrapped


def completion_logps(model, ids, mask, comp_mask):
    """Per-row sum of log p(ids[:, t] | ids[:, :t]) over the target positions t with
    comp_mask[:, t] == 1. Shape [rows]."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    logp = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)
    tok = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [rows, T-1]
    return (tok * comp_mask[:, 1:].to(tok.dtype)).sum(dim=-1)


def decorrelation_loss(z, mask):
    """Mode "paper": rows at the last non-padding token (right padding), L2-normalised,
    ||Z Z^T - I||_F^2."""
    last = mask.sum(dim=1) - 1                              # [rows]
    rows = z[torch.arange(z.shape[0]), last].float()        # [rows, d_ff]
    zn = F.normalize(rows, p=2.0, dim=-1)
    gram = zn @ zn.T
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return ((gram - eye) ** 2).sum()


def bench_decpo_step(model, cfg, cfg_name, pairs, seq, lora, iters, warmup, threads, prompt=None):
    """Time one DecPO training step (see the module docstring). Modifies `model`: trains it and,
    with `lora`, wraps its projections with LoRA adapters."""
    rows = 2 * pairs
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (rows, seq), generator=g).to(device)
    prompt_len = seq // 2 if prompt is None else prompt
    ids[pairs:, :prompt_len] = ids[:pairs, :prompt_len]    # shared prompt within a pair
    mask = torch.ones_like(ids)
    comp_mask = torch.zeros_like(ids)
    comp_mask[:, prompt_len:] = 1

    if lora:
        adapters = add_lora(model)
        ref_model = None
        adapter_params = {id(p) for m in adapters for p in (m.lora_A, m.lora_B)}
    else:
        # Frozen copy of the initial weights; taken before any step.
        ref_model = copy.deepcopy(model)
        ref_model.requires_grad_(False)
        ref_model.train(False)
        model.requires_grad_(True)
        adapters, adapter_params = [], set()
    model.train(True)  # policy in train mode (LoRA dropout; Llama itself has no dropout here)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    dec_layer = cfg.num_hidden_layers // 3
    up_proj = model.model.layers[dec_layer].mlp.up_proj     # LoraLinear with --lora
    captured = {}

    def hook(_module, _inputs, output):
        captured["z"] = output

    def reference_logps():
        with torch.no_grad():
            if ref_model is not None:
                return completion_logps(ref_model, ids, mask, comp_mask)
            for m in adapters:
                m.enabled = False
            try:
                return completion_logps(model, ids, mask, comp_mask)
            finally:
                for m in adapters:
                    m.enabled = True

    first = [True]

    def step():
        ref = reference_logps()
        handle = up_proj.register_forward_hook(hook)        # policy forward only
        try:
            pol = completion_logps(model, ids, mask, comp_mask)
        finally:
            handle.remove()
        z = captured.pop("z")
        pc, pr = pol[:pairs], pol[pairs:]
        rc, rr = ref[:pairs], ref[pairs:]
        loss_dpo = -F.logsigmoid(BETA * ((pc - rc) - (pr - rr))).mean()
        loss_dec = decorrelation_loss(z, mask)
        loss = loss_dpo + DEC_LAMBDA * loss_dec
        loss.backward()
        if first[0]:
            check_grads(model, lora, adapter_params)
            first[0] = False
        torch.nn.utils.clip_grad_norm_(trainable, CLIP_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = float(loss.detach())
        assert math.isfinite(value), f"non-finite DecPO loss {value}"
        captured["loss"] = (value, float(loss_dpo.detach()), float(loss_dec.detach()))
        return value

    sec = timed(step, iters, warmup, device)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    loss, loss_dpo, loss_dec = captured["loss"]
    print(f"decpo_step {cfg_name} lora={lora}: last loss {loss:.6f} "
          f"(dpo {loss_dpo:.6f}, dec {loss_dec:.6f}), trainable params "
          f"{sum(p.numel() for p in trainable)}", file=sys.stderr)
    del ref_model, opt
    return {
        "impl": "pytorch", "preset": cfg_name, "batch": pairs, "seq": seq, "mode": "decpo_step",
        "lora": lora, "prompt": prompt_len, "tokens_per_s": round(rows * seq / sec, 3),
        "ms_per_iter": round(sec * 1e3, 3), "threads": threads,
        "peak_rss_mib": round(peak_rss_mib, 1), **memory_fields(device),
    }


def check_grads(model, lora, adapter_params):
    """After backward: with LoRA exactly the adapter parameters have gradients; without it,
    every parameter has one."""
    for name, p in model.named_parameters():
        has = p.grad is not None
        if lora:
            want = id(p) in adapter_params
            assert has == want, f"{name}: grad {'present' if has else 'missing'} (LoRA)"
            assert want == p.requires_grad, f"{name}: requires_grad {p.requires_grad}"
        else:
            assert has, f"{name}: no gradient"


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="all", choices=list(CONFIGS) + ["all"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--dtype", default="f32", choices=list(DTYPES))
    ap.add_argument("--batch", type=int, default=4,
                    help="sequences (forward modes) or preference pairs (decpo_step)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=None,
                    help="decpo_step: prompt tokens shared within a pair (default seq // 2; "
                         "0: no prompt, every token is completion)")
    sel = ap.add_mutually_exclusive_group()
    sel.add_argument("--mode", choices=list(ALL_MODES) + ["all"],
                     help="one mode or all three (default: forward and forward_backward)")
    sel.add_argument("--modes", help="legacy: comma-separated subset of " + ",".join(ALL_MODES))
    ap.add_argument("--lora", action="store_true",
                    help="decpo_step trains LoRA adapters (r=8, alpha=16) instead of all weights")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False   # f32 means f32 on both sides
    names = ["tiny", "smollm2-135m"] if a.preset == "all" else [a.preset]
    if a.mode == "all":
        modes = list(ALL_MODES)
    elif a.mode:
        modes = [a.mode]
    elif a.modes:
        modes = [m for m in a.modes.split(",") if m]
    else:
        modes = ["forward", "forward_backward"]
    for m in modes:
        if m not in ALL_MODES:
            ap.error(f"unknown mode {m}")
    # decpo_step changes the model (training, LoRA), so it runs last.
    modes.sort(key=lambda m: m == "decpo_step")
    if "decpo_step" in modes and a.seq < 2:
        ap.error("decpo_step needs --seq >= 2")
    if a.prompt is not None and not 0 <= a.prompt < a.seq:
        ap.error("--prompt must be between 0 and --seq - 1")
    for name in names:
        cfg = make_config(name)
        cfg._attn_implementation = "sdpa" if device.type == "cuda" else "eager"
        torch.manual_seed(0)
        # bf16 full fine-tuning: f32 master weights under autocast (see the docstring).
        autocast = a.dtype == "bf16" and not a.lora and "decpo_step" in modes
        with torch.device(device):
            model = LlamaForCausalLM(cfg).to(torch.float32 if autocast else DTYPES[a.dtype])
        model.train(False)  # no dropout; grads still flow in forward_backward
        if a.seq > cfg.max_position_embeddings:
            print(f"warning: seq {a.seq} > max_position_embeddings {cfg.max_position_embeddings} "
                  f"for {name}", file=sys.stderr)
        for mode in modes:
            if mode == "decpo_step":
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    r = bench_decpo_step(model, cfg, name, a.batch, a.seq, a.lora, a.iters,
                                         a.warmup, a.threads, a.prompt)
            else:
                r = bench_case(model, name, cfg.vocab_size, a.batch, a.seq, mode, a.iters,
                               a.warmup, a.threads)
            r["dtype"] = a.dtype
            print(json.dumps(r, separators=(",", ":")), flush=True)
        del model


if __name__ == "__main__":
    main()
