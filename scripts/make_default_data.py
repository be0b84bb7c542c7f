#!/usr/bin/env python3
"""Makes the embedded default job of `cargo run --release --bin train`: a small Llama's config, a
word-level tokenizer, and preference pairs with a simple, checkable preference.

Task ("sort the digits"): the prompt is 4-6 random digits followed by "="; the chosen completion
is the same digits sorted ascending; the rejected completion is the sorted digits with one
adjacent pair of distinct digits swapped (one local ordering mistake). A model that prefers
chosen on held-out pairs has learned something about order, not the pairs by heart.

Makes (in datasets/default/):
  pairs.jsonl            600 pairs, TRL explicit format {"prompt", "chosen", "rejected"};
                         the first 90 % train, the last 10 % evaluate (file order, SPEC section 5)
  tokenizer.json         WordLevel over "<pad> <s> </s> 0..9 = <unk>", whitespace pre-tokenizer
  tokenizer_config.json  special tokens
  config.json            Hugging Face LlamaConfig of the small model (weights are drawn from the
                         run's seed, not stored)

Run: python3 scripts/make_default_data.py        (needs `tokenizers`; seed fixed: output is stable)
"""

import json
import os
import random

from tokenizers import Tokenizer, models, pre_tokenizers, decoders

OUT = os.path.join(os.path.dirname(__file__), "..", "datasets", "default")
N_PAIRS = 600


def pair(rng: random.Random) -> dict:
    while True:
        digits = [rng.randrange(10) for _ in range(rng.randint(4, 6))]
        s = sorted(digits)
        swappable = [i for i in range(len(s) - 1) if s[i] != s[i + 1]]
        if swappable:
            break
    i = rng.choice(swappable)
    bad = s[:]
    bad[i], bad[i + 1] = bad[i + 1], bad[i]
    text = lambda ds: " ".join(str(d) for d in ds)
    return {"prompt": text(digits) + " =", "chosen": " " + text(s), "rejected": " " + text(bad)}


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    rng = random.Random(20261126)
    with open(os.path.join(OUT, "pairs.jsonl"), "w") as f:
        for _ in range(N_PAIRS):
            f.write(json.dumps(pair(rng)) + "\n")

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for d in range(10):
        vocab[str(d)] = len(vocab)
    vocab["="] = len(vocab)
    vocab["<unk>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(["<pad>", "<s>", "</s>", "<unk>"])
    tok.save(os.path.join(OUT, "tokenizer.json"))
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                   "unk_token": "<unk>", "add_bos_token": False, "model_max_length": 64}, f, indent=2)

    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 16, "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
    }
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


if __name__ == "__main__":
    main()
