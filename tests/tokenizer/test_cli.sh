#!/usr/bin/env bash
# test_cli.sh - the dsv4 tokenize / detokenize / render commands end to end.
#   test_cli.sh DSV4_BINARY TOKENIZER_JSON CHAT_FIXTURE_DIR
set -u
dsv4=$1 tok=$2 chat=$3
pass=0 fail=0
check() { # check NAME CONDITION...
    local name=$1; shift
    if "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL $name" >&2; fi
}
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/model" && cp "$tok" "$dir/model/tokenizer.json"

ids=$(printf 'Hello <think>x</think>' | "$dsv4" tokenize --tokenizer "$tok")
check "tokenize ids" test "$ids" = "[19923, 223, 128821, 90, 128822]"
ids_m=$(printf 'Hello <think>x</think>' | "$dsv4" tokenize -m "$dir/model")
check "tokenize -m" test "$ids_m" = "$ids"
split=$(printf '<｜begin▁of▁sentence｜>' | "$dsv4" tokenize --tokenizer "$tok" --split-special)
check "split-special" test "$split" != "[0]"
check "bos" test "$(printf '<｜begin▁of▁sentence｜>' | "$dsv4" tokenize --tokenizer "$tok")" = "[0]"
text=$(echo "$ids" | "$dsv4" detokenize --tokenizer "$tok")
check "detokenize" test "$text" = "Hello <think>x</think>"
check "skip-special" test "$(echo '[0, 19923, 1]' | "$dsv4" detokenize --tokenizer "$tok" --skip-special)" = "Hello"
printf 'a\xffb' | "$dsv4" tokenize --tokenizer "$tok" >/dev/null 2>"$dir/err"
check "invalid utf8 rejected" test $? -eq 1
check "invalid utf8 message" grep -q "not valid UTF-8" "$dir/err"
echo '[1, "x"]' | "$dsv4" detokenize --tokenizer "$tok" >/dev/null 2>&1
check "bad id list rejected" test $? -eq 1
echo '[129280]' | "$dsv4" detokenize --tokenizer "$tok" >/dev/null 2>&1
check "unknown id rejected" test $? -eq 1
"$dsv4" tokenize </dev/null >/dev/null 2>&1
check "usage error" test $? -eq 2
out=$("$dsv4" render --chat "$chat/01_chat_single.json")
check "render" test "$out" = "<｜begin▁of▁sentence｜><｜User｜>Hello!<｜Assistant｜></think>"
rids=$("$dsv4" render --chat "$chat/01_chat_single.json" --tokenizer "$tok")
check "render ids start with BOS" test "${rids:0:3}" = "[0,"
echo '{"messages": 3}' > "$dir/bad.json"
"$dsv4" render --chat "$dir/bad.json" >/dev/null 2>&1
check "render bad request" test $? -eq 1
echo "$pass passed, $fail failed"
test "$fail" -eq 0
