"""SmolLM2's tokenizer rebuilt from GGUF metadata with the `tokenizers` package.

Shared by scripts/make_smollm2_fixture.py and scripts/make_data_fixture.py.

Pipeline (SmolLM2's real one): no normalizer; pre-tokenizer
Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)];
byte-level BPE from tokenizer.ggml.tokens / merges; ByteLevel decoder; control tokens
(token_type 3) as special added tokens. No post-processor, so no BOS is ever added.
"""

from pathlib import Path

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers


def reference_tokenizer(gguf_path: Path) -> Tokenizer:
    """SmolLM2's tokenizer rebuilt from the GGUF metadata with the `tokenizers` package."""
    r = GGUFReader(str(gguf_path))
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    ttype = r.fields["tokenizer.ggml.token_type"].contents()
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate tokens in GGUF vocabulary"
    merge_pairs = [tuple(m.split(" ")) for m in merges]
    assert all(len(p) == 2 for p in merge_pairs)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merge_pairs, fuse_unk=False, byte_fallback=False))
    tk.normalizer = None
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, ttype) if ty == 3]
    tk.add_special_tokens(special)
    for t in special:
        assert tk.token_to_id(t.content) == vocab[t.content]
    assert tk.get_vocab_size(with_added_tokens=True) == len(tokens)
    return tk
