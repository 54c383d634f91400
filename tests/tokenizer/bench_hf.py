#!/usr/bin/env python3
"""bench_hf.py - HF `tokenizers` encoding throughput on a text file (cold pass, then 3 warm
passes), to compare with test_tokenizer_bench on the same file. One encode call on one thread,
as ours. usage: bench_hf.py TOKENIZER_JSON CORPUS_FILE"""
import sys
import time

from tokenizers import Tokenizer

tok = Tokenizer.from_file(sys.argv[1])
text = open(sys.argv[2], "rb").read().decode("utf-8", "replace")
n = len(text.encode())
for p in range(4):
    t0 = time.perf_counter()
    ids = tok.encode(text).ids
    dt = time.perf_counter() - t0
    print("%s pass: %d bytes -> %d ids in %.3f s = %.2f MB/s" %
          ("warm" if p else "cold", n, len(ids), dt, n / dt / 1e6))
