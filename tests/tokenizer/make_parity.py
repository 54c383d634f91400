#!/usr/bin/env python3
"""make_parity.py - expected ids for the tokenizer parity test, from HF `tokenizers`.

Writes a binary fixture that tests/test_tokenizer_parity.c reads: for each case its text and the
ids HF `tokenizers` gives for it (and, for the hand-written cases, HF's decode with
skip_special_tokens=True). The expected values come only from HF, never from our encoder.

Cases: a hand-written list of hard inputs, the expected strings of the chat fixtures
(tests/fixtures/chat/*.json), and >= 2 MB of real text from files on the machine (licenses,
man pages in several languages, C headers), each file one input.

Invalid UTF-8 cannot reach HF (its Python API takes str). Our documented rule is that each
invalid byte becomes its own byte-level token and separates the valid runs around it, which are
encoded as if alone; the expected ids for such inputs are built from HF's ids of the valid runs
by that rule.

usage: make_parity.py TOKENIZER_JSON OUT.bin [--corpus-out FILE] [--min-bytes N]
"""
import argparse
import glob
import gzip
import json
import os
import struct
import sys

from tokenizers import Tokenizer

SPLIT_SPECIAL = 1
HERE = os.path.dirname(os.path.abspath(__file__))
CHAT_DIR = os.path.join(HERE, "..", "fixtures", "chat")


def hard_cases(tok):
    """Hand-written inputs that exercise each rule of the pre-tokenizer and the added tokens."""
    c = []
    digits = "".join(str(i % 10) for i in range(1, 41))
    for n in range(1, 41):
        c.append(("digits%d" % n, digits[:n]))
        c.append(("num-in-text%d" % n, "x" + digits[:n] + "y " + digits[:n] + ".5"))
    c += [
        ("empty", ""),
        ("space", " "),
        ("spaces", "     "),
        ("hello", "Hello, world!"),
        ("contractions", "I'm sure you'll see they've gone, it's John's, we'd DON'T"),
        ("trailing-spaces", "end with spaces   "),
        ("leading-spaces", "   start"),
        ("tabs-crlf", "a\tb\t\tc\r\nd\r\n\r\ne\n\n\n  \n\t\n f\r"),
        ("ws-runs", "x  \t \n  y\u00a0\u00a0z\u3000w\u2003v\u200bu\u2028t\u0085s"),
        ("newline-runs", "\n" * 7 + "word" + "\r\n" * 5 + " " * 9 + "\n"),
        ("cjk", "我们的目标是开发一个高效的推理引擎。中文、標點符號：「你好」！"),
        ("cjk-ext", "\u9fa5\u9fa6\u9fff\u3400\U00020000\u4e00一丁"),
        ("kana", "ひらがなカタカナ、ﾊﾝｶｸｶﾀｶﾅ。東京タワーへ行きました"),
        ("korean", "안녕하세요, 세계! 한국어 텍스트입니다."),
        ("mixed-script", "GPT-4はAIです。Привет мир! Γειά σου Κόσμε. שלום עולם مرحبا بالعالم"),
        ("rtl", "\u202bمرحبا\u202c \u05e9\u05dc\u05d5\u05dd 123 \u0661\u0662\u0663\u0664"),
        ("emoji", "I ❤️ 🦀 and 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵 ✌🏿 😀😃😄"),
        ("combining", "e\u0301 a\u0308\u0304 Z\u0351\u0352\u0357\u0302 \u0915\u094d\u0937 n\u0303o"),
        ("math", "∑_{i=1}^{n} x_i² ≤ ∞ → ∀x∈ℝ: √(x²)=|x| ½ ⅞ Ⅻ"),
        ("digits-unicode", "٣٤٥ ४५६ ௧௨௩ 12³ ①②③ 𝟙𝟚𝟛"),
        ("punct", "!!! ??? ... --- ___ *** ((())) [[]] {{}} <<>> '\"` ~~~ @#$%^&"),
        ("code", "def f(x):\n    return x**2  # square\n\nint main(void) { return 0; }\n"),
        ("url", "https://example.com/path?q=1&r=two#frag user@example.org"),
        ("json", '{"key": [1, 2.5e-3, true, null], "s": "\\u00e9\\n"}'),
        ("control", "a\x00b\x01c\x07d\x1b[31me\x7f"),
        ("long-word", "a" * 3000),
        ("long-space", " " * 5000 + "x"),
        ("long-digits", "7" * 5001),
        ("repeat", "the " * 500),
        ("think", "<think>reasoning</think>answer"),
        ("think-nested", "<think><think></think></think> < think> </ think>"),
        ("dsml", "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
                 "<｜DSML｜parameter name=\"k\" string=\"true\">v</｜DSML｜parameter>\n"
                 "</｜DSML｜invoke>\n</｜DSML｜tool_calls>"),
        ("chat-like", "<｜begin▁of▁sentence｜>sys<｜User｜>hi<｜Assistant｜></think>yo<｜end▁of▁sentence｜>"),
        ("special-glued", "x<｜User｜><｜User｜>y<｜Assistant｜>z<|EOT|><dsml:</dsml:"),
        ("special-partial", "<｜User <｜User｜ ｜User｜> <｜end▁of▁sentence <｜begin▁of▁sentence｜"),
        ("fullwidth", "｜｜DSML｜｜ ＡＢＣ１２３"),
        ("non-special-added", "<｜table｜><｜tr｜><｜td｜>x<｜/td｜><｜/tr｜><｜/table>｜<｜image2｜>"),
    ]
    # Every added token inside text, alone and glued to letters/spaces.
    added = sorted(tok.get_added_tokens_decoder().items())
    c.append(("all-added", " ".join(t.content for _, t in added)))
    c.append(("all-added-glued", "a".join(t.content for _, t in added[::7])))
    for i, t in added[:: max(1, len(added) // 60)]:
        c.append(("added-%d" % i, "pre " + t.content + "post\n" + t.content))
    return c


def invalid_cases():
    """(name, bytes) inputs with invalid UTF-8."""
    return [
        ("inv-ff", b"abc\xffdef"),
        ("inv-lone-cont", b"\x80\x81 x \xbf"),
        ("inv-truncated", b"caf\xc3 and \xe2\x82 and \xf0\x9f\x98"),
        ("inv-overlong", b"\xc0\xaf \xe0\x80\xaf \xf0\x80\x80\xaf"),
        ("inv-surrogate", b"\xed\xa0\x80\xed\xbf\xbf"),
        ("inv-too-big", b"\xf4\x90\x80\x80 \xf5\x80"),
        ("inv-special", "<｜User｜>".encode()[:5] + b"\xff" + "｜User｜>".encode()),
        ("inv-digits", b"12\xff345\xfe6789"),
        ("inv-all-high", bytes(range(0x80, 0x100))),
        ("inv-in-spaces", b"   \xff   \n\xfe\n"),
    ]


def byte_token_ids(tok):
    """id of the one-byte token for each byte (GPT-2 byte-level alphabet)."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cps, n = {}, 0
    for b in range(256):
        if b in printable:
            cps[b] = b
        else:
            cps[b] = 256 + n
            n += 1
    return [tok.token_to_id(chr(cps[b])) for b in range(256)]


def expected_ids(tok, data, byte_ids):
    """HF ids for bytes `data` under our invalid-UTF-8 rule (plain HF encode when valid)."""
    text = data.decode("utf-8", "surrogateescape")
    ids, run = [], []
    for ch in text:
        if 0xDC80 <= ord(ch) <= 0xDCFF:
            if run:
                ids += tok.encode("".join(run)).ids
                run = []
            ids.append(byte_ids[ord(ch) - 0xDC00])
        else:
            run.append(ch)
    if run:
        ids += tok.encode("".join(run)).ids
    return ids


def corpus_files(min_bytes):
    """Real text from the machine, in a fixed order, until min_bytes are collected."""
    groups = [
        sorted(glob.glob("/usr/share/common-licenses/*")),
        *[sorted(glob.glob("/usr/share/man/%s/man1/*.gz" % lang))[:40]
          for lang in ("zh_CN", "zh_TW", "ja", "ko", "ru", "uk", "de", "fr", "pl")],
        sorted(glob.glob("/usr/share/man/man1/*.gz"))[:300],
        sorted(glob.glob("/usr/include/*.h")),
    ]
    per_group = min_bytes // len(groups) + 1
    out, total = [], 0
    for files in groups:
        got = 0
        for path in files:
            if got >= per_group or not os.path.isfile(path):
                continue
            try:
                data = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
            except OSError:
                continue
            if not data:
                continue
            out.append((path, data))
            got += len(data)
            total += len(data)
    if total < min_bytes:  # top up from more English man pages
        for path in sorted(glob.glob("/usr/share/man/man1/*.gz"))[300:]:
            if total >= min_bytes:
                break
            data = gzip.open(path).read()
            out.append((path, data))
            total += len(data)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer")
    ap.add_argument("out")
    ap.add_argument("--corpus-out", help="also write the real-text corpus, concatenated")
    ap.add_argument("--min-bytes", type=int, default=2_200_000)
    args = ap.parse_args()

    tok = Tokenizer.from_file(args.tokenizer)
    byte_ids = byte_token_ids(tok)
    cases = []  # (name, flags, bytes, ids, skip_decoded or None)

    for name, text in hard_cases(tok):
        data = text.encode()
        ids = tok.encode(text).ids
        skip = tok.decode(ids, skip_special_tokens=True).encode()
        cases.append((name, 0, data, ids, skip))
        tok.encode_special_tokens = True
        cases.append((name + "/split-special", SPLIT_SPECIAL, data, tok.encode(text).ids, None))
        tok.encode_special_tokens = False
    for name, data in invalid_cases():
        cases.append((name, 0, data, expected_ids(tok, data, byte_ids), None))
    for path in sorted(glob.glob(os.path.join(CHAT_DIR, "*.json"))):
        with open(path, encoding="utf-8") as f:
            text = json.load(f)["expected"]
        cases.append(("chat:" + os.path.basename(path), 0, text.encode(), tok.encode(text).ids,
                      None))
    corpus = corpus_files(args.min_bytes)
    corpus_bytes = 0
    for path, data in corpus:
        cases.append((path, 0, data, expected_ids(tok, data, byte_ids), None))
        corpus_bytes += len(data)

    with open(args.out + ".tmp", "wb") as f:
        f.write(b"DSV4TOKP")
        f.write(struct.pack("<I", len(cases)))
        for name, flags, data, ids, skip in cases:
            nb = name.encode()
            f.write(struct.pack("<I", len(nb)) + nb)
            f.write(struct.pack("<II", flags, len(data)) + data)
            f.write(struct.pack("<I", len(ids)) + struct.pack("<%di" % len(ids), *ids))
            if skip is None:
                f.write(struct.pack("<i", -1))
            else:
                f.write(struct.pack("<i", len(skip)) + skip)
    os.replace(args.out + ".tmp", args.out)
    if args.corpus_out:
        with open(args.corpus_out, "wb") as f:
            for _, data in corpus:
                f.write(data)
    print("make_parity: %d cases, real-text corpus %d files, %d bytes" %
          (len(cases), len(corpus), corpus_bytes))


if __name__ == "__main__":
    sys.exit(main())
