"""Hugging Face ``tokenizer.json`` from a SentencePiece model: same pieces, same ids.

Built from the SentencePiece processor's own API (pieces, scores, piece types) and the options the
model was trained with, without the protobuf definitions (whose generated code may not match the
installed protobuf runtime). transformers 5 has no slow tokenizers: this file is what
``AutoTokenizer`` loads.

SentencePiece BPE merges the adjacent pair whose merged piece scores highest; a Hugging Face BPE
model applies merges by rank. Ranking every split of every piece by the piece's id (BPE pieces are
numbered in merge order) and then by the ids of the two halves gives the same segmentation.
"""

from __future__ import annotations

import json

from gristmill import io

#: ChatML. An assistant's content and its <|im_end|> (what SFT trains on) sit inside
#: {% generation %} markers, so `return_assistant_tokens_mask` (TRL's assistant-only loss) marks them.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _merges(sp, vocab: dict[str, int], normal: set[str]) -> list[tuple[str, str]]:
    ranked = []
    for piece in normal:
        pid = vocab[piece]
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in normal and right in normal:
                ranked.append((pid, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def build_tokenizer(model_proto: bytes, meta: dict):
    import sentencepiece as spm
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE, Unigram

    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    opts = meta["trainer_options"]
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    vocab = {p: i for i, p in enumerate(pieces)}
    user_defined = set(opts["user_defined_symbols"])
    normal = {
        p for i, p in enumerate(pieces)
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i) or p in user_defined)
    }
    unk = opts["unk_piece"]
    if opts["model_type"] == "bpe":
        model = BPE(vocab=vocab, merges=_merges(sp, vocab, normal), unk_token=unk, fuse_unk=True,
                    byte_fallback=opts["byte_fallback"])
    else:
        model = Unigram([(p, sp.get_score(i)) for i, p in enumerate(pieces)], unk_id=sp.unk_id(),
                        byte_fallback=opts["byte_fallback"])
    tok = Tokenizer(model)
    if opts["add_dummy_prefix"]:
        # SentencePiece prepends its dummy "▁" to the whole input, even before a leading special
        # token, which a Hugging Face tokenizer (added tokens split the input first) cannot do
        raise ValueError("tokenizer.json export needs a model trained with add_dummy_prefix=False")
    if opts["normalization_rule_name"] in ("nfkc", "nmt_nfkc"):
        tok.normalizer = normalizers.NFKC()  # nmt_nfkc's extra control-character rules are not reproduced
    pre = [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)]
    if opts["split_digits"]:
        # SentencePiece splits ASCII digits only; pre_tokenizers.Digits would also split every
        # Unicode decimal digit (Myanmar, Devanagari ...), which SentencePiece merges like letters
        pre.append(pre_tokenizers.Split(Regex("[0-9]"), behavior="isolated"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = [opts[f"{k}_piece"] for k in ("unk", "bos", "eos", "pad")]
    ordered = specials + sorted(user_defined, key=vocab.get)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ordered])
    return tok


def export_hf(model_proto: bytes, output: str, meta: dict, model_max_length: int = 1_000_000) -> None:
    tok = build_tokenizer(model_proto, meta)
    opts = meta["trainer_options"]
    io.write_bytes_atomic(io.join(output, "tokenizer.json"), tok.to_str(pretty=False).encode())
    special = {
        "bos_token": opts["bos_piece"],
        "eos_token": opts["eos_piece"],
        "unk_token": opts["unk_piece"],
        "pad_token": opts["pad_piece"],
        "additional_special_tokens": list(opts["user_defined_symbols"]),
    }
    if "<mask>" in opts["user_defined_symbols"]:  # tokenizers trained before <mask> was reserved have none
        special["mask_token"] = "<mask>"
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHATML_TEMPLATE,
    }
    io.write_bytes_atomic(io.join(output, "tokenizer_config.json"), json.dumps(config, indent=2).encode())
    io.write_bytes_atomic(io.join(output, "special_tokens_map.json"), json.dumps(special, indent=2).encode())
