#!/usr/bin/env bash
# imgtool diff over two 1 GiB image sets, with 1 and 2 rayon threads.
#
#   benches/diff-1g.sh [MIB] [ROUNDS]
#
# Builds imgtool and the diff_synth example (release), then synthesises two image sets from
# the real CRIU set fixtures/criu-images/counter, each with an extra MIB-sized (default 1024)
# anonymous mapping of patterned pages written through cryo-format's writers; in the second
# set one page in 64 differs. It times `imgtool diff --json A B` ROUNDS times (default 3)
# with RAYON_NUM_THREADS=1 and =2 (and =2 with --verify), pages in the page cache (one
# untimed warm-up run), and prints the best time, two rates: the size of one set compared per
# second (the figure a user cares about: "how fast is a 1 GiB diff") and the bytes hashed per
# second (both sets), and the CPU time of that run (user, sys), which shows when other work
# on the machine, not imgtool, set the wall-clock time. BENCH_NICE=-20 (as root) runs the
# timed diffs at that nice level, to measure imgtool rather than the scheduler on a machine
# busy with other work.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mib=${1:-1024}
rounds=${2:-3}
nice_level=${BENCH_NICE:-0}
work=$(mktemp -d "${TMPDIR:-/tmp}/diff-1g.XXXXXX")
trap 'rm -rf "$work"' EXIT

cargo build --release -q -p cryo-tools --manifest-path "$root/Cargo.toml" --bin imgtool --example diff_synth
imgtool=$root/target/release/imgtool
synth=$root/target/release/examples/diff_synth

"$synth" "$root/fixtures/criu-images/counter" "$work/a" "$work/b" "$mib" 64
"$imgtool" validate "$work/a" > /dev/null
"$imgtool" validate "$work/b" > /dev/null
set_bytes=$(stat -c %s "$work"/a/pages-*.img | awk '{s += $1} END {print s}')
both_bytes=$(stat -c %s "$work"/a/pages-*.img "$work"/b/pages-*.img | awk '{s += $1} END {print s}')

"$imgtool" diff --json "$work/a" "$work/b" > "$work/report.json"
python3 - "$work/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["pages"]
print(f"pages: {r['identical']} identical, {r['changed']} changed, {r['only_a']} only in A, {r['only_b']} only in B")
PY

now() { date +%s%N; }
echo "set: $((set_bytes >> 20)) MiB of pages per set, $rounds rounds, best time"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg), nice $nice_level"
for mode in "1" "2" "2 --verify"; do
    threads=${mode%% *}
    extra=; [ "$mode" != "$threads" ] && extra=${mode#* }
    best=; best_cpu=
    for _ in $(seq "$rounds"); do
        t0=$(now)
        cpu=$( { RAYON_NUM_THREADS=$threads /usr/bin/time -f "%U %S" nice -n "$nice_level" \
            "$imgtool" diff --json $extra "$work/a" "$work/b" > /dev/null; } 2>&1 | tail -1)
        t=$(( $(now) - t0 ))
        if [ -z "$best" ] || [ "$t" -lt "$best" ]; then best=$t; best_cpu=$cpu; fi
    done
    awk -v t="$best" -v set="$set_bytes" -v both="$both_bytes" -v n="$threads" \
        -v extra="$extra" -v cpu="$best_cpu" 'BEGIN {
        s = t / 1e9; gib = 1024 * 1024 * 1024; split(cpu, c, " ")
        printf "RAYON_NUM_THREADS=%d %-8s %.3f s  %.2f GiB/s of set compared  %.2f GiB/s hashed  (cpu: %.2f s user, %.2f s sys)\n",
            n, extra, s, set / gib / s, both / gib / s, c[1], c[2]
    }'
done
