#!/usr/bin/env python3
"""One DecPO training step, decpo (burn, CUDA) next to PyTorch eager on the same card: one table.

For each case (config, LoRA or full fine-tuning) it runs `bench --mode decpo_step` (the Rust side,
built with --features cuda) and `scripts/bench_torch.py --mode decpo_step --device cuda`, each in
a process of its own, one after the other, with the same pairs, sequence length, dtype and step
(bin/bench.rs and scripts/bench_torch.py define it). While each runs, `nvidia-smi` is polled every
50 ms for that process's GPU memory: the "peak MiB" columns are that maximum for both sides (it
includes the CUDA context, some 500 MiB). PyTorch's own `max_memory_allocated` is kept in the JSON.

Model FLOPs of one step (the same formula for both sides, from the config):
  F (forward, per token) = 2 * (matmul weights incl. the unembedding) + 4 * layers * seq * heads * head_dim
  step = tokens * (F reference forward + F policy forward + backward)
  backward = 2F when every weight trains, F with LoRA (activation gradients only; the adapters'
  own FLOPs are negligible and not counted).
MFU = step FLOPs / step time / a peak: the card's datasheet dense bf16 (or f32) peak, from its
name, or --peak-tflops; and, in bf16, the peak a large bf16 matrix product reached on these cards
(8192^3 through PyTorch: 798 TFLOP/s on an H100 SXM, 788 on an H200, recorded by the device
tool's notes), which is what a step could reach at best.

PyTorch runs first in each case, so that burn's autotune (a new matmul shape costs 25-30 s)
cannot leave PyTorch without time; with --until, a side gets at most what is left, and cases
that cannot start any more are left out (said so in the table).

Usage, on the GPU machine, from the repository root (scripts/gpu/run.sh calls it):
  python3 scripts/gpu/bench.py --bench gpu-bin/bench --out $OUT/bench
Prints the markdown table to stdout and to --out/table.md; raw JSON lines and logs go to --out.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

# name, pairs, seq, lora; most important first (issue 7's goal is the 1B-shaped full step)
CASES = [
    ("llama-3.2-1b", 4, 512, False),
    ("smollm2-135m", 8, 512, False),
    ("llama-3.2-1b", 4, 512, True),
    ("llama-2-7b", 2, 512, True),
]

# (vocab, hidden, ff, layers, heads, kv_heads, head_dim, tied); model/src/config.rs presets.
SHAPES = {
    "tiny": (256, 64, 176, 4, 4, 2, 16, False),
    "smollm2-135m": (49152, 576, 1536, 30, 9, 3, 64, True),
    "llama-3.2-1b": (128256, 2048, 8192, 16, 32, 8, 64, True),
    "llama-2-7b": (32000, 4096, 11008, 32, 32, 32, 128, False),
}

# Dense peak TFLOP/s by card name: (bf16 tensor cores, f32 without tensor cores) from the
# datasheets, and the bf16 matrix product measured on such a card here (None: not measured).
PEAKS = [("H100 PCIe", 756.0, 51.2, None), ("H100", 989.4, 66.9, 798.0),
         ("H200", 989.4, 66.9, 788.0), ("A100", 312.0, 19.5, None)]


def step_flops(config, pairs, seq, lora):
    vocab, hidden, ff, layers, heads, kv, hd, _tied = SHAPES[config]
    per_layer = hidden * heads * hd * 2 + hidden * kv * hd * 2 + 3 * hidden * ff
    matmul_weights = layers * per_layer + vocab * hidden
    forward = 2 * matmul_weights + 4 * layers * seq * heads * hd
    tokens = 2 * pairs * seq
    backward = forward if lora else 2 * forward
    return tokens * (forward + forward + backward)


def card():
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[0]


def peaks_of(name, dtype, override):
    """(datasheet peak, measured peak) in TFLOP/s; either may be None."""
    if override:
        return override, None
    for key, bf16, f32, measured in PEAKS:
        if key in name:
            return (bf16, measured) if dtype == "bf16" else (f32, None)
    return None, None


class MemoryPoll:
    """Peak GPU memory (MiB) of one process, from nvidia-smi every 50 ms."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            out = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory",
                 "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
            for line in out.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 2 and parts[0] == str(self.pid) and parts[1].isdigit():
                    self.peak = max(self.peak, int(parts[1]))
            time.sleep(0.05)

    def done(self):
        self.stop.set()
        self.thread.join()
        return self.peak


def run_side(cmd, log, limit):
    """Runs one benchmark process for at most `limit` s; returns (its JSON line or None, peak
    MiB)."""
    with open(log, "w") as err:
        err.write(" ".join(cmd) + "\n")
        err.flush()
        # A session of its own, so that a timeout kills whatever it started too.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
        poll = MemoryPoll(proc.pid)
        try:
            out, _ = proc.communicate(timeout=max(limit, 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            print(f"warning: killed after {limit} s: {' '.join(cmd)}", file=sys.stderr)
        peak = poll.done()
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"warning: exit {proc.returncode}: {' '.join(cmd)} (log: {log})", file=sys.stderr)
        return None, peak
    return json.loads(lines[-1]), peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default="gpu-bin/bench", help="the Rust bench binary (cuda build)")
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--only", default=None, help="run only the cases of this config")
    ap.add_argument("--side-timeout", type=float, default=300, help="seconds per process")
    ap.add_argument("--until", type=float, default=None,
                    help="a Unix time by which every process has ended")
    ap.add_argument("--torch", default="scripts/bench_torch.py",
                    help="the PyTorch side (a stand-in in the dry run)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    table = open(f"{a.out}/table.md", "w")

    def say(line):
        print(line, flush=True)
        table.write(line + "\n")
        table.flush()

    def budget():
        left = a.side_timeout if a.until is None else min(a.side_timeout, a.until - time.time())
        return left

    name = card()
    peak, measured = peaks_of(name, a.dtype, a.peak_tflops)
    say(f"{name}, {a.dtype}, one DecPO step (policy fwd+bwd on chosen and rejected, "
        f"reference fwd, regularizer, clip, AdamW); MFU against the datasheet's {peak} "
        f"TFLOP/s / the measured {measured} TFLOP/s\n")
    say("| preset | train | pairs x seq | burn tok/s | PyTorch tok/s | ratio | burn ms | "
        "PyTorch ms | burn MFU | PyTorch MFU | burn peak MiB | PyTorch peak MiB |")
    say("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for config, pairs, seq, lora in CASES:
        if a.only and config != a.only:
            continue
        tag = f"{config}-{'lora' if lora else 'full'}"
        if budget() < 10:
            say(f"| {config} | {'LoRA' if lora else 'full'} | {pairs} x {seq} | not run: "
                "the deadline | | | | | | | | |")
            continue
        common = ["--preset", config, "--batch", str(pairs), "--seq", str(seq), "--mode",
                  "decpo_step", "--dtype", a.dtype, "--iters", str(a.iters), "--warmup",
                  str(a.warmup)] + (["--lora"] if lora else [])
        torch, torch_mem = run_side(
            [sys.executable, a.torch, "--device", "cuda"] + common,
            f"{a.out}/{tag}.torch.log", budget())
        burn, burn_mem = run_side([a.bench] + common, f"{a.out}/{tag}.burn.log", budget())
        flops = step_flops(config, pairs, seq, lora)
        row = {"preset": config, "lora": lora, "pairs": pairs, "seq": seq, "dtype": a.dtype,
               "card": name, "step_tflop": flops / 1e12, "burn": burn, "torch": torch,
               "burn_peak_mib": burn_mem, "torch_peak_mib": torch_mem,
               "peak_tflops": peak, "measured_peak_tflops": measured}
        for side, r in (("burn", burn), ("torch", torch)):
            for key, p in (("mfu", peak), ("mfu_measured", measured)):
                if r and p:
                    row[f"{side}_{key}"] = flops / (r["ms_per_iter"] / 1e3) / (p * 1e12)
        with open(f"{a.out}/results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        say(row_line(row))


def row_line(r):
    def num(side, key, fmt):
        return format(side[key], fmt) if side else "failed"

    def mfu(side):
        parts = [f"{100 * r[k]:.1f} %" if k in r else "n/a"
                 for k in (f"{side}_mfu", f"{side}_mfu_measured")]
        return " / ".join(parts)

    b, t = r["burn"], r["torch"]
    ratio = f"{b['tokens_per_s'] / t['tokens_per_s']:.2f}x" if b and t else "n/a"
    return (f"| {r['preset']} | {'LoRA' if r['lora'] else 'full'} | {r['pairs']} x {r['seq']} "
            f"| {num(b, 'tokens_per_s', '.0f')} | {num(t, 'tokens_per_s', '.0f')} | {ratio} "
            f"| {num(b, 'ms_per_iter', '.1f')} | {num(t, 'ms_per_iter', '.1f')} "
            f"| {mfu('burn')} | {mfu('torch')} "
            f"| {r['burn_peak_mib']} | {r['torch_peak_mib']} |")

if __name__ == "__main__":
    main()
