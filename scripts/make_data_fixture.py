#!/usr/bin/env python3
"""Independent Python reference for the preference-data loader; writes the fixture the Rust tests
compare against.

Makes:
  tests/fixtures/data-golden.json

Reads the real data in ../shared/data (relative to the repository root) and the SmolLM2 tokenizer
from models/SmolLM2-135M-Instruct.Q4_1.gguf (built with scripts/smollm2_tokenizer.py; no BOS,
EOS = pad = 2). For each (task, file, mode) it extracts (prompt, chosen, rejected) pairs,
validates them, tokenizes, appends EOS and truncates (max_prompt_length 128 keeps the prompt's
end, max_length 256 keeps the completions' start), then records counts, length percentiles, three
example pairs, the 90/10 file-order split sizes and a padded batch of the first three hh-rlhf pairs.

Conventions of the output:
  - "invalid" / "dropped" hold only reasons that occurred (count > 0), keys sorted.
  - "place": 1-based line number for JSONL, 1-based CSV record index after the header (csv module
    records, so a quoted newline does not shift it), 0-based array index for JSON.
  - "prompt_truncated" / "completion_truncated" count kept pairs only.
  - percentiles p50/p90/p99 are floats (numpy linear interpolation); "max" is an int.
  - sycophancy-caa full-text: the option line is searched in ALL lines of the question (the 140
    persona items of generate_dataset.json and 16 of test_dataset_ab.json have no "Choices:").

Regenerate (from the repository root):
  python3 scripts/make_data_fixture.py
Requires: tokenizers (0.23.3 used), gguf==0.19.0, numpy. Prints throughput of the hh-rlhf
tokenization procedure (pairs/s).
"""

import csv
import gzip
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from smollm2_tokenizer import reference_tokenizer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
GGUF = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "tests" / "fixtures" / "data-golden.json"

MAX_PROMPT_LENGTH = 128
MAX_LENGTH = 256
EOS_ID = 2
PAD_ID = 2
ASSISTANT = "\n\nAssistant:"

CAA_FILES = ["sycophancy-caa/generate_dataset.json", "sycophancy-caa/test_dataset_ab.json"]
ANTHROPIC_FILES = [
    "sycophancy-anthropic/political_typology_quiz_liberal-bio_conservative.jsonl",
    "sycophancy-anthropic/political_typology_quiz_liberal-bio_liberal.jsonl",
]


class Invalid(Exception):
    """A row that yields no pair; the message is the reason key."""


# ---------- readers: yield (place, row) ----------

def read_jsonl(rel):
    path = DATA / rel
    opener = gzip.open if rel.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield lineno, json.loads(line)


def read_csv(rel):
    with open(DATA / rel, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        for index, record in enumerate(reader, start=1):
            yield index, dict(zip(header, record, strict=True))


def read_json_array(rel):
    with open(DATA / rel, encoding="utf-8") as f:
        rows = json.load(f)
    yield from enumerate(rows)


# ---------- pair extraction: row -> (prompt, chosen, rejected) ----------

def common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]


def hh_rlhf(row, _rel):
    chosen, rejected = row["chosen"], row["rejected"]
    lcp = common_prefix(chosen, rejected)
    cut = lcp.rfind(ASSISTANT)
    if cut < 0:
        raise Invalid("no_dialogue_prefix")
    prompt = lcp[: cut + len(ASSISTANT)]
    return prompt, chosen[len(prompt):], rejected[len(prompt):]


def reframing(row, _rel):
    return row["situation"], row["reframe"], row["thought"]


def caa_letter(row, _rel):
    prompt = row["question"] + "\n\nAnswer:"
    return prompt, " " + row["answer_not_matching_behavior"], " " + row["answer_matching_behavior"]


def caa_option_text(question: str, letter: str) -> str:
    for line in question.split("\n"):
        stripped = line.strip()
        if stripped.startswith(letter):
            return stripped
    raise Invalid("option_not_found")


def caa_full_text(row, _rel):
    prompt = row["question"] + "\n\nAnswer:"
    chosen = caa_option_text(row["question"], row["answer_not_matching_behavior"])
    rejected = caa_option_text(row["question"], row["answer_matching_behavior"])
    return prompt, " " + chosen, " " + rejected


def anthropic(row, rel):
    if rel.endswith("_conservative.jsonl"):
        return row["prompt"], row["corrects"][0], row["incorrects"][0]
    if rel.endswith("_liberal.jsonl"):
        return row["prompt"], row["incorrects"][0], row["corrects"][0]
    raise ValueError(f"{rel}: neither _conservative nor _liberal")


def validate(chosen: str, rejected: str):
    if chosen.strip() == "" or rejected.strip() == "":
        raise Invalid("empty_completion")
    if chosen == rejected:
        raise Invalid("chosen_equals_rejected")


# ---------- tokenization ----------

def tokenize_pair(tok, prompt, chosen, rejected):
    """Returns (item or None if dropped, flags dict)."""
    enc = lambda s: tok.encode(s, add_special_tokens=True).ids  # noqa: E731
    prompt_ids = enc(prompt)
    chosen_full = enc(prompt + chosen)
    rejected_full = enc(prompt + rejected)
    n = len(prompt_ids)
    flags = {"not_prefix": chosen_full[:n] != prompt_ids or rejected_full[:n] != prompt_ids,
             "prompt_truncated": False, "completion_truncated": False, "dropped": None}
    chosen_ids, rejected_ids = chosen_full[n:], rejected_full[n:]
    for ids in (chosen_ids, rejected_ids):
        if not ids or ids[-1] != EOS_ID:
            ids.append(EOS_ID)
    if len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)) > MAX_LENGTH:
        if len(prompt_ids) > MAX_PROMPT_LENGTH:
            prompt_ids = prompt_ids[-MAX_PROMPT_LENGTH:]
            flags["prompt_truncated"] = True
        if len(prompt_ids) >= MAX_LENGTH:
            flags["dropped"] = "prompt_fills_max_length"
            return None, flags
        budget = MAX_LENGTH - len(prompt_ids)
        if len(chosen_ids) > budget or len(rejected_ids) > budget:
            flags["completion_truncated"] = True
            chosen_ids, rejected_ids = chosen_ids[:budget], rejected_ids[:budget]
    return {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}, flags


def process(tok, task, mode, rel, reader, extract):
    rows = 0
    invalid, dropped = Counter(), Counter()
    pairs = not_prefix = prompt_trunc = completion_trunc = 0
    kept = []
    for place, row in reader(rel):
        rows += 1
        try:
            prompt, chosen, rejected = extract(row, rel)
            validate(chosen, rejected)
        except Invalid as e:
            invalid[str(e)] += 1
            continue
        pairs += 1
        item, flags = tokenize_pair(tok, prompt, chosen, rejected)
        not_prefix += flags["not_prefix"]
        if item is None:
            dropped[flags["dropped"]] += 1
            continue
        prompt_trunc += flags["prompt_truncated"]
        completion_trunc += flags["completion_truncated"]
        kept.append({"place": place, "prompt": prompt, "chosen": chosen, "rejected": rejected, **item})
    lengths = np.array([len(k["prompt_ids"]) + len(k["chosen_ids"]) for k in kept], dtype=np.float64)
    pct = {f"p{q}": float(np.percentile(lengths, q)) for q in (50, 90, 99)}
    pct["max"] = int(lengths.max())
    example_idx = [0, 1, len(kept) // 2]
    entry = {
        "task": task, "mode": mode, "file": rel,
        "rows": rows, "invalid": dict(sorted(invalid.items())), "pairs": pairs,
        "kept": len(kept), "dropped": dict(sorted(dropped.items())),
        "prompt_not_token_prefix": not_prefix, "prompt_truncated": prompt_trunc,
        "completion_truncated": completion_trunc, "length_percentiles": pct,
        "examples": [kept[i] for i in example_idx],
    }
    return entry, kept


def split(n):
    train = int(n * 0.9)
    assert train == n * 9 // 10
    return {"n": n, "train": train, "eval": n - train}


def padded_batch(kept):
    """Rows [chosen_0..2, rejected_0..2] = prompt_ids + completion_ids, right-padded with PAD_ID."""
    rows = []
    for side in ("chosen_ids", "rejected_ids"):
        for k in kept[:3]:
            rows.append((k["prompt_ids"], k[side]))
    t = max(len(p) + len(c) for p, c in rows)
    batch = {"input_ids": [], "attention_mask": [], "completion_mask": []}
    for p, c in rows:
        pad = t - len(p) - len(c)
        batch["input_ids"].append(p + c + [PAD_ID] * pad)
        batch["attention_mask"].append([1] * (len(p) + len(c)) + [0] * pad)
        batch["completion_mask"].append([0] * len(p) + [1] * len(c) + [0] * pad)
    return batch


def main() -> None:
    assert GGUF.exists(), f"{GGUF} missing: run scripts/fetch-models.sh"
    assert DATA.is_dir(), f"{DATA} missing"
    tok = reference_tokenizer(GGUF)
    assert tok.token_to_id("<|im_end|>") == EOS_ID
    assert tok.encode("Hi", add_special_tokens=True).ids == tok.encode("Hi", add_special_tokens=False).ids

    jobs = [("hh-rlhf", None, "hh-rlhf/harmless-base-test.jsonl.gz", read_jsonl, hh_rlhf),
            ("cognitive-reframing", None, "cognitive-reframing/reframing_dataset.csv", read_csv, reframing)]
    jobs += [("sycophancy-caa", "letter", f, read_json_array, caa_letter) for f in CAA_FILES]
    jobs += [("sycophancy-caa", "full-text", f, read_json_array, caa_full_text) for f in CAA_FILES]
    jobs += [("sycophancy-anthropic", None, f, read_jsonl, anthropic) for f in ANTHROPIC_FILES]

    files, kept_by_task = [], {}
    for task, mode, rel, reader, extract in jobs:
        t0 = time.perf_counter()
        entry, kept = process(tok, task, mode, rel, reader, extract)
        dt = time.perf_counter() - t0
        files.append(entry)
        kept_by_task.setdefault(task, kept)
        print(f"{task:21s} {str(mode):9s} {rel}: rows={entry['rows']} invalid={entry['invalid']} "
              f"pairs={entry['pairs']} kept={entry['kept']} dropped={entry['dropped']} "
              f"not_prefix={entry['prompt_not_token_prefix']} prompt_trunc={entry['prompt_truncated']} "
              f"completion_trunc={entry['completion_truncated']} pct={entry['length_percentiles']} "
              f"({entry['pairs'] / dt:.0f} pairs/s incl. reading)")

    golden = {
        "tokenizer": "smollm2 gguf metadata",
        "max_prompt_length": MAX_PROMPT_LENGTH,
        "max_length": MAX_LENGTH,
        "files": files,
        "split": {t: split(len(kept_by_task[t])) for t in ("hh-rlhf", "cognitive-reframing")},
        "batch": padded_batch(kept_by_task["hh-rlhf"]),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(golden, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")

    # Throughput of the tokenization procedure alone over the hh-rlhf pairs (best of 3).
    triples = []
    for _place, row in read_jsonl("hh-rlhf/harmless-base-test.jsonl.gz"):
        try:
            p, c, r = hh_rlhf(row, "")
            validate(c, r)
        except Invalid:
            continue
        triples.append((p, c, r))
    best = min(_timed(lambda: [tokenize_pair(tok, *x) for x in triples]) for _ in range(3))
    print(f"hh-rlhf tokenization: {len(triples)} pairs in {best:.3f} s = {len(triples) / best:.0f} pairs/s")


def _timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
