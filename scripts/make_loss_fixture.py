#!/usr/bin/env python3
"""Independent PyTorch reference of the DPO / DecPO losses (SPEC.md sections 2 and 3).

Makes tests/fixtures/decpo-loss-golden.json from the tiny random Llama in
tests/fixtures/tiny-llama/ (3 layers, d_ff 83, vocab 131), run in float32 on CPU with eager
attention.

Regenerate (from the repository root):
  HF_HUB_OFFLINE=1 python3 scripts/make_loss_fixture.py
Requires: torch==2.15.0 transformers==5.23.0 numpy. The output is deterministic (one CPU
thread): running it twice gives byte-identical files.

Batch (4 rows x T=13, right padded, stored under "batch"): rows are
[chosen_0, chosen_1, rejected_0, rejected_1]. chosen_b = row b of tiny-llama-golden.json.
rejected_b = chosen_b with every completion token (completion_mask == 1) replaced by a
different id drawn from 3..130 (torch generator, seed 2024); rejected_1 is also 2 tokens
shorter than chosen_1 (the last two real tokens become pad: id 0, attention 0, completion 0).
Pair b is (chosen_b, rejected_b), B = 2 pairs.

Log-probs (policy): logp[b, t] = log_softmax(logits[b, t-1])[ids[b, t]], position 0 never counts;
  sum[b]  = sum over t with completion_mask[b, t] == 1 of logp[b, t]
  mean[b] = sum[b] / #completion tokens of row b
Reference log-probs are fixed numbers (no reference model): with the fixed offsets
o = REF_OFFSETS = [6.0, -0.6, -5.0, 0.5] per row, ref_sum[b] = policy_sum[b] - o_b and
ref_mean[b] = ref_sum[b] / #completion tokens of row b (all float32). So in "sum" mode pair 0
has r_w > r_l with beta*D ~ 1.1 (the hinge is inactive there: zero loss and gradient) and pair 1
has r_w < r_l; the same signs hold for the per-token means.

Per pair i (chosen row i, rejected row B+i), with "red" the configured reduction (sum|mean):
  r_w = logp_pi[red](chosen) - logp_ref[red](chosen),  r_l likewise,  D = r_w - r_l
  sigmoid: -(1-eps) * logsigmoid(beta*D) - eps * logsigmoid(-beta*D)
  ipo:     (Dm - 1/(2*beta))^2, Dm = D built from the MEAN log-ratios whatever "reduction" says
  hinge:   relu(1 - beta*D)
  simpo:   -logsigmoid(beta*(mean_pi(chosen) - mean_pi(rejected)) - gamma)   (no reference)
  sft:     -mean_pi(chosen)
loss_pref = mean over pairs.
Rewards: rewards_chosen[i] = beta*r_w, rewards_rejected[i] = beta*r_l with the loss's reduction
(sigmoid, hinge, sft: the configured reduction; ipo: mean log-ratios; simpo: beta*mean_pi(.)
with no reference). margins = chosen - rejected; accuracy = mean over pairs of
1[rewards_chosen > rewards_rejected] (ties count 0).

Regularizer, on z = output of model.model.layers[layer].mlp.up_proj, shape [4, T, 83], captured
by a forward hook WITHOUT detaching (the gradient flows through it):
  paper:    rows "all" (4 rows) | "chosen" (rows 0..B-1); position "last" = z[b, sum(attn[b]) - 1]
            | "mean" = mean of z[b, t] over t with completion_mask[b, t] == 1; normalize true:
            each row divided by its L2 norm. L_dec = sum of squares of all entries of
            (Z Z^T - I) (diagonal included; 0 there when normalised).
  released: Z = z[[0, 2, ...], T-1] (even rows of [chosen; rejected], last padded position, no
            masking), A = |Z|, L_dec = mean of all entries of (A A^T - I) (not squared).
  l1:       mean over rows of sum_f |z[b, f]|, rows "all", position "last".
  Keys a kind does not use are null in "settings".
loss = loss_pref + lambda * loss_reg; loss_reg (the value before lambda) is 0.0 with no
regularizer.

Gradients of "loss" (HF [out, in] layout) w.r.t. the parameters in GRAD_PARAMS are under
"grads". All floats are float32 values written with their shortest round-trip float32 decimal.
"""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
MODEL_DIR = FIX / "tiny-llama"
SOURCE = FIX / "tiny-llama-golden.json"
OUT = FIX / "decpo-loss-golden.json"

B = 2  # pairs
DEC_LAYER = 1
BETA = 0.1
GAMMA = 0.2
# Reference offsets o_b (summed log-ratio of row b at the fixture's policy): pair 0 has
# r_w > r_l and beta*D = 1.1 > 1 (hinge inactive), pair 1 has r_w < r_l (accuracy 0.5).
REF_OFFSETS = [6.0, -0.6, -5.0, 0.5]
GRAD_PARAMS = [
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.1.mlp.up_proj.weight",
    "model.layers.1.mlp.gate_proj.weight",
    "model.layers.2.mlp.up_proj.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.embed_tokens.weight",
]


# ----------------------------------------------------------------------------- batch

def make_batch():
    src = json.loads(SOURCE.read_text())
    ids_c = torch.tensor(src["input_ids"][:B], dtype=torch.long)
    attn_c = torch.tensor(src["attention_mask"][:B], dtype=torch.long)
    comp_c = torch.tensor(src["completion_mask"][:B], dtype=torch.long)
    ids_r, attn_r, comp_r = ids_c.clone(), attn_c.clone(), comp_c.clone()

    # rejected_1: two tokens shorter (right padded).
    n = int(attn_r[1].sum())
    ids_r[1, n - 2:n] = 0
    attn_r[1, n - 2:n] = 0
    comp_r[1, n - 2:n] = 0

    g = torch.Generator().manual_seed(2024)
    T = ids_c.shape[1]
    for b in range(B):
        for t in range(T):
            if comp_r[b, t] == 1:
                new = int(torch.randint(3, 131, (1,), generator=g))
                while new == int(ids_c[b, t]):
                    new = int(torch.randint(3, 131, (1,), generator=g))
                ids_r[b, t] = new

    ids = torch.cat([ids_c, ids_r])
    attn = torch.cat([attn_c, attn_r])
    comp = torch.cat([comp_c, comp_r])
    assert ids.shape == (2 * B, 13)
    assert comp[:, 0].sum() == 0
    assert bool(((comp == 1) <= (attn == 1)).all())
    assert bool((ids[attn == 0] == 0).all())
    return ids, attn, comp


# ----------------------------------------------------------------------------- log-probs

def seq_logps(logits, ids, comp):
    """(sum [N], mean [N]) of completion-token log-probs; token t is scored by logits[t-1]."""
    logp = torch.log_softmax(logits[:, :-1, :], dim=-1)
    tok = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [N, T-1]
    m = comp[:, 1:].to(tok.dtype)
    s = (tok * m).sum(-1)
    return s, s / m.sum(-1)


# ----------------------------------------------------------------------------- losses
# Each returns (per-pair loss [B], rewards_chosen [B], rewards_rejected [B]).
# pol / ref: {"sum": [2B], "mean": [2B]}; chosen rows are 0..B-1, rejected rows B..2B-1.

def log_ratios(pol, ref, red):
    r = pol[red] - ref[red]
    return r[:B], r[B:]


def loss_sigmoid(pol, ref, s):
    r_w, r_l = log_ratios(pol, ref, s["reduction"])
    d = s["beta"] * (r_w - r_l)
    eps = s["label_smoothing"]
    loss = -(1.0 - eps) * F.logsigmoid(d) - eps * F.logsigmoid(-d)
    return loss, s["beta"] * r_w, s["beta"] * r_l


def loss_ipo(pol, ref, s):
    r_w, r_l = log_ratios(pol, ref, "mean")  # always per-token means
    beta = s["beta"]
    loss = (r_w - r_l - 1.0 / (2.0 * beta)) ** 2
    return loss, beta * r_w, beta * r_l


def loss_hinge(pol, ref, s):
    r_w, r_l = log_ratios(pol, ref, s["reduction"])
    beta = s["beta"]
    loss = torch.relu(1.0 - beta * (r_w - r_l))
    return loss, beta * r_w, beta * r_l


def loss_simpo(pol, ref, s):
    m_w, m_l = pol["mean"][:B], pol["mean"][B:]  # reference-free, per-token means
    beta = s["beta"]
    loss = -F.logsigmoid(beta * (m_w - m_l) - s["simpo_gamma"])
    return loss, beta * m_w, beta * m_l


def loss_sft(pol, ref, s):
    loss = -pol["mean"][:B]  # mean token NLL of the chosen completion
    r_w, r_l = log_ratios(pol, ref, s["reduction"])
    beta = s["beta"]
    return loss, beta * r_w, beta * r_l


LOSSES = {
    "sigmoid": loss_sigmoid,
    "ipo": loss_ipo,
    "hinge": loss_hinge,
    "simpo": loss_simpo,
    "sft": loss_sft,
}


# ----------------------------------------------------------------------------- regularizers
# z: [2B, T, d_ff] up_proj output (graph kept). Each returns the value before lambda.

def feature_rows(z, attn, comp, rows, position):
    if rows == "all":
        idx = list(range(2 * B))
    elif rows == "chosen":
        idx = list(range(B))
    else:
        raise ValueError(rows)
    out = []
    for b in idx:
        if position == "last":
            t = int(attn[b].sum()) - 1
            out.append(z[b, t])
        elif position == "mean":
            m = comp[b].to(z.dtype).unsqueeze(-1)  # [T, 1]
            out.append((z[b] * m).sum(0) / m.sum())
        else:
            raise ValueError(position)
    return torch.stack(out)  # [R, d_ff]


def reg_paper(z, attn, comp, r):
    Z = feature_rows(z, attn, comp, r["rows"], r["position"])
    if r["normalize"]:
        Z = Z / Z.norm(dim=-1, keepdim=True)
    G = Z @ Z.T - torch.eye(Z.shape[0], dtype=Z.dtype)
    return (G ** 2).sum()


def reg_released(z, attn, comp, r):
    Z = z[0::2, -1, :]  # even rows of [chosen; rejected], position T-1, no masking
    A = Z.abs()
    return (A @ A.T - torch.eye(A.shape[0], dtype=A.dtype)).mean()


def reg_l1(z, attn, comp, r):
    Z = feature_rows(z, attn, comp, r["rows"], r["position"])
    return Z.abs().sum(-1).mean()


REGS = {"paper": reg_paper, "released": reg_released, "l1": reg_l1}


# ----------------------------------------------------------------------------- cases

def settings(loss, reduction="sum", eps=0.0, reg=None):
    return {
        "loss": loss,
        "reduction": reduction,
        "beta": BETA,
        "label_smoothing": eps,
        "simpo_gamma": GAMMA,
        "regularizer": reg,
    }


def paper(lam, rows, position, normalize):
    return {"kind": "paper", "lambda": lam, "layer": DEC_LAYER, "rows": rows,
            "position": position, "normalize": normalize}


CASES = [
    ("sigmoid_sum", settings("sigmoid", "sum")),
    ("sigmoid_sum_ls0.1", settings("sigmoid", "sum", eps=0.1)),
    ("sigmoid_mean", settings("sigmoid", "mean")),
    ("ipo", settings("ipo", "mean")),
    ("hinge_sum", settings("hinge", "sum")),
    ("simpo", settings("simpo", "mean")),
    ("sft_sum", settings("sft", "sum")),
    ("sigmoid_sum_paper_all_last_norm", settings("sigmoid", "sum", reg=paper(1e-4, "all", "last", True))),
    ("sigmoid_sum_paper_all_last_norm_lambda0.5",
     settings("sigmoid", "sum", reg=paper(0.5, "all", "last", True))),
    ("sigmoid_sum_paper_chosen_mean_raw", settings("sigmoid", "sum", reg=paper(1e-4, "chosen", "mean", False))),
    ("sigmoid_mean_released", settings("sigmoid", "mean", reg={
        "kind": "released", "lambda": 1e-3, "layer": DEC_LAYER, "rows": None, "position": None,
        "normalize": None})),
    ("sigmoid_sum_l1", settings("sigmoid", "sum", reg={
        "kind": "l1", "lambda": 1e-4, "layer": DEC_LAYER, "rows": "all", "position": "last",
        "normalize": None})),
]


# ----------------------------------------------------------------------------- running

def f32(x):
    """Nested lists of float32 values -> python floats printing as the shortest float32 decimal."""
    a = np.asarray(x.detach().cpu().numpy() if torch.is_tensor(x) else x, dtype=np.float32)

    def conv(v):
        return float(str(np.float32(v)))

    if a.ndim == 0:
        return conv(a)
    return np.vectorize(conv, otypes=[object])(a).tolist()


def forward(model, ids, attn, comp, layer):
    cap = {}

    def hook(_m, _inp, out):
        cap["z"] = out  # not detached: the regularizer's gradient must reach the policy

    h = model.model.layers[layer].mlp.up_proj.register_forward_hook(hook)
    try:
        logits = model(input_ids=ids, attention_mask=attn).logits
    finally:
        h.remove()
    s, m = seq_logps(logits, ids, comp)
    return {"sum": s, "mean": m}, cap["z"]


def run_case(model, batch, ref, s):
    ids, attn, comp = batch
    model.zero_grad(set_to_none=True)
    reg = s["regularizer"]
    layer = reg["layer"] if reg else DEC_LAYER
    pol, z = forward(model, ids, attn, comp, layer)
    assert z.shape == (2 * B, ids.shape[1], 83) and z.requires_grad

    per_pair, rw, rl = LOSSES[s["loss"]](pol, ref, s)
    loss_pref = per_pair.mean()
    if reg is None:
        loss_reg = torch.zeros((), dtype=torch.float32)
        total = loss_pref
    else:
        loss_reg = REGS[reg["kind"]](z, attn, comp, reg)
        total = loss_pref + reg["lambda"] * loss_reg
    total.backward()

    params = dict(model.named_parameters())
    grads = {n: params[n].grad.detach().clone() for n in GRAD_PARAMS}
    margins = rw - rl
    acc = (rw > rl).to(torch.float32).mean()
    out = {
        "loss": total.detach(),
        "loss_pref": loss_pref.detach(),
        "loss_reg": loss_reg.detach(),
        "rewards_chosen": rw.detach(),
        "rewards_rejected": rl.detach(),
        "margins": margins.detach(),
        "accuracy": acc,
    }
    return out, grads, z.detach()


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    assert model.config.num_hidden_layers == 3 and model.config.intermediate_size == 83

    batch = make_batch()
    ids, attn, comp = batch

    with torch.no_grad():
        pol, z0 = forward(model, ids, attn, comp, DEC_LAYER)
    n_tok = comp[:, 1:].sum(-1).to(torch.float32)
    offs = torch.tensor(REF_OFFSETS, dtype=torch.float32)
    ref_sum = (pol["sum"] - offs).to(torch.float32)
    ref_mean = (ref_sum / n_tok).to(torch.float32)
    ref = {"sum": ref_sum, "mean": ref_mean}

    cases, raw = [], {}
    for name, s in CASES:
        out, grads, z = run_case(model, batch, ref, s)
        assert torch.equal(z, z0), "forward not deterministic"
        raw[name] = (out, grads)
        case = {"name": name, "settings": s}
        case.update({k: f32(v) for k, v in out.items()})
        case["grads"] = {n: f32(grads[n]) for n in GRAD_PARAMS}
        cases.append(case)

    # ---- sanity checks
    # Paper regularizer (normalised): L_dec = sum_{i != j} cos^2(z_i, z_j).
    last = z0[torch.arange(2 * B), attn.sum(-1) - 1]
    cos = F.cosine_similarity(last.unsqueeze(1), last.unsqueeze(0), dim=-1)
    cos2 = (cos ** 2).sum() - (cos.diagonal() ** 2).sum()
    assert torch.allclose(raw[CASES[7][0]][0]["loss_reg"], cos2, rtol=1e-5), (cos2,)
    # Reg at layer 1 leaves layer 2 untouched and changes layers 0 and 1.
    g1, g9 = raw[CASES[0][0]][1], raw[CASES[8][0]][1]
    assert torch.equal(g1["model.layers.2.mlp.up_proj.weight"], g9["model.layers.2.mlp.up_proj.weight"])
    for n in ["model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"]:
        assert not torch.equal(g1[n], g9[n]), n
    # Same preference loss with and without the regularizer.
    assert torch.equal(raw[CASES[0][0]][0]["loss_pref"], raw[CASES[8][0]][0]["loss_pref"])

    golden = {
        "config_dir": "tiny-llama",
        "dec_layer": DEC_LAYER,
        "pairs": B,
        "row_order": "chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}",
        "batch": {
            "input_ids": ids.tolist(),
            "attention_mask": attn.tolist(),
            "completion_mask": comp.tolist(),
        },
        "reference_logps": {"sum": f32(ref_sum), "mean": f32(ref_mean)},
        "policy_logps": {"sum": f32(pol["sum"]), "mean": f32(pol["mean"])},
        "grad_params": GRAD_PARAMS,
        "cases": cases,
    }
    OUT.write_text(json.dumps(golden, separators=(",", ":")) + "\n")

    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    print("input_ids", ids.tolist())
    print("policy sum", golden["policy_logps"]["sum"], "mean", golden["policy_logps"]["mean"])
    print("ref    sum", golden["reference_logps"]["sum"], "mean", golden["reference_logps"]["mean"])
    for c in cases:
        print(f"{c['name']:45s} loss={c['loss']:.9g} pref={c['loss_pref']:.9g} reg={c['loss_reg']:.9g} "
              f"rw={c['rewards_chosen']} rl={c['rewards_rejected']} acc={c['accuracy']}")
    for n in GRAD_PARAMS:
        d = (g9[n] - g1[n]).abs().max().item()
        print(f"case9 - case1 max |dgrad| {n}: {d:.3e} (max |grad| case1 {g1[n].abs().max().item():.3e})")


if __name__ == "__main__":
    main()
