#!/usr/bin/env python3
"""make_tiny_tokenizer.py - a deterministic byte-level BPE tokenizer.json for the tiny golden
models (vocab 512), so that text-level features (stop strings, streaming, chat) can be tested on
them. Generated at test time into the build's fixture dir, never committed.

Layout: 0 <｜begin▁of▁sentence｜>, 1 <｜end▁of▁sentence｜> (the models' bos/eos), 2..257 the 256
byte-level characters, then merges learned from CORPUS below up to id VOCAB-5, then <｜User｜>,
<｜Assistant｜>, <think>, </think> at the last four ids (flags as in the V4 tokenizer). The
pre-tokenizer and decoder are the DeepSeek-V4 ones.

  make_tiny_tokenizer.py OUT.json [--vocab 512] [--user-id ID]

--user-id moves <｜User｜> to ID (swapping with the token there), e.g. onto a token a model's
greedy continuation produces, to test the user-turn stop rule.
"""
import argparse
import json
import re
from collections import Counter

CORPUS = """The quick brown fox jumps over the lazy dog. A model reads the prompt, then it
writes one token at a time: the sampler picks each next token from the logits, and the stop
rules end the answer when the model says it is done, when a stop string appears, or when the
context is full. Hello world! How are you today? I am fine, thank you. What is the weather
like in Paris? It is sunny and warm. Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024.
def main(): return 0  # code, too. The end of the sentence is near; the user speaks again.
Once upon a time there was a small village by the river, where people grew apples, wheat and
beans. Every morning the baker opened his shop and sold fresh bread to the children walking to
school. Scientists measure temperature, pressure and velocity; engineers build bridges, engines
and computers. Mathematics describes matrices, vectors, probabilities and distributions.
"""


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def learn_merges(n_merges):
    b2u = bytes_to_unicode()
    words = Counter(re.findall(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+", CORPUS))
    seqs = {w: [b2u[b] for b in w.encode()] for w in words}
    merges = []
    while len(merges) < n_merges:
        pairs = Counter()
        for w, c in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        # most frequent, ties by the pair itself: deterministic
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merges.append((a, b))
        for w in words:
            s, out, i = seqs[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--user-id", type=int, default=None)
    a = ap.parse_args()
    b2u = bytes_to_unicode()
    vocab = {}
    for b in range(256):
        vocab[b2u[b]] = 2 + b
    merges = learn_merges(a.vocab - 4 - 258)
    for x, y in merges:
        if x + y not in vocab:
            vocab[x + y] = len(vocab) + 2
    nxt = len(vocab) + 2
    specials = [("<｜begin▁of▁sentence｜>", 0, True), ("<｜end▁of▁sentence｜>", 1, True)]
    for i, name in enumerate(["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"]):
        specials.append((name, nxt + i, False))
    if nxt + 4 != a.vocab:
        raise SystemExit(f"corpus gave {nxt + 4} ids, wanted {a.vocab}")
    if a.user_id is not None:
        uid = a.user_id
        if uid < 2 or uid >= a.vocab:
            raise SystemExit("--user-id must be in [2, vocab)")
        old = specials[2][1]
        for k, v in vocab.items():
            if v == uid:
                vocab[k] = old
        for i, (n, v, sp) in enumerate(specials):
            if v == uid:
                specials[i] = (n, old, sp)
        specials[2] = (specials[2][0], uid, False)
    added = [{"id": i, "content": n, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": not sp, "special": sp} for n, i, sp in sorted(specials, key=lambda t: t[1])]
    for n, i, _ in specials:
        vocab[n] = i
    split3 = ("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?"
              "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+")
    split = lambda r: {"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated",
                       "invert": False}
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": []},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split("\\p{N}{1,3}"), split("[一-龥\u3040-ゟ゠-ヿ]+"), split(split3),
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False,
                  "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1])),
                  "merges": [f"{x} {y}" for x, y in merges]},
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
