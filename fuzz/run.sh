#!/bin/sh
# run.sh BUILD_DIR SECONDS TARGET... — runs each fuzz driver for SECONDS, one
# after the other (one in-process fuzzer, one core), on a scratch copy of its
# seed corpus, with its dictionary. Prints libFuzzer's final line (cov:, ft:,
# corp:, exec/s) per driver. Fails if any driver crashed, leaked, timed out or
# broke an oracle; the log and the crash input are kept and named.
set -u
build=$1 secs=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
rc=0
for t in "$@"; do
    dir=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-$t.XXXXXX")
    cp "$root/fuzz/corpus/$t/"* "$dir/" 2>/dev/null
    dict=
    [ -f "$root/fuzz/dict/$t.dict" ] && dict="-dict=$root/fuzz/dict/$t.dict"
    echo "== fuzz_$t: $secs s"
    # stdin on /dev/null: the config driver may name /dev/stdin in error_page
    (cd "$dir" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
        "$root/$build/fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 $dict . </dev/null) >"$dir.log" 2>&1
    r=$?
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units|stat::average_exec_per_sec' "$dir.log"
    if [ $r -ne 0 ]; then
        tail -60 "$dir.log"
        echo "fuzz_$t FAILED: log $dir.log, inputs in $dir (crash-*, leak-*, timeout-*)"
        rc=1
        continue
    fi
    rm -rf "$dir" "$dir.log"
done
exit $rc
