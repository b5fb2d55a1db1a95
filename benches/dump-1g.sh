#!/usr/bin/env bash
# Dump a process holding 1 GiB of patterned anonymous memory to tmpfs (/dev/shm), RUNS times,
# with cryo's dumper and, in the same runs, with CRIU (trixie's 4.1, installed privately by
# scripts/criu-setup.sh; skipped if it cannot be installed or fails `criu check`). Each run
# starts a fresh workload per tool (which goes first alternates; one warm-up round is not
# counted; free memory is warmed before every dump, benches/lib.sh: warm_memory). Prints per run and as medians: the whole
# dump's wall time, the frozen time, and the page rate (pages / time spent moving pages), and
# the ratios CRIU/cryo. Usage: benches/dump-1g.sh [MiB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh

MIB=${1:-1024}
RUNS=${2:-5}
WORK=/dev/shm/cryo-bench-dump.$$
mkdir -p "$WORK"
PID=
cleanup() { [[ -n "$PID" ]] && kill -9 "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

cargo build --release -q -p cryo-dumper -p cryo-fixtures
DUMPER=target/release/dumper
COUNTER=$(ls -t target/release/build/cryo-fixtures-*/out/counter | head -1)
criu_on_path

echo "dump of a ${MIB} MiB counter to /dev/shm, ${RUNS} runs ($(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)); CRIU: $CRIU_VERSION$([[ $CRIU_OK == 1 ]] || echo ' (not usable: no comparison)')"
dump_cryo() { # run-number: appends "wall frozen rate" to $WORK/cryo unless a warm-up
    start_counter "$WORK/log.cryo.$1"
    warm_memory
    local t0 t1 out pages frozen ptime wall rate
    t0=$(now_ns)
    out=$("$DUMPER" dump -t "$PID" -D "$WORK/cryo.$1" 2>/dev/null)
    t1=$(now_ns)
    wait_gone "$PID"
    PID=
    pages=$(sed -E 's/.* ([0-9]+) pages;.*/\1/' <<<"$out")
    frozen=$(sed -E 's/.*frozen ([0-9.]+) s.*/\1/' <<<"$out")
    ptime=$(sed -E 's/.*pages ([0-9.]+) s, total.*/\1/' <<<"$out")
    wall=$(secs_between "$t0" "$t1")
    rate=$(awk -v p="$pages" -v t="$ptime" 'BEGIN {printf "%.0f", p * 4096 / 1048576 / t}')
    [[ $1 == w* ]] || echo "$wall $frozen $rate" >>"$WORK/cryo"
    echo "  run $1: cryo $pages pages, wall ${wall} s, frozen ${frozen} s, pages ${rate} MiB/s"
    rm -rf "$WORK/cryo.$1"
}

dump_criu() { # run-number: appends "wall frozen rate" to $WORK/criu unless a warm-up
    start_counter "$WORK/log.criu.$1"
    mkdir -p "$WORK/criu.$1"
    warm_memory
    local t0 t1 cfrozen cmem cpages wall rate
    t0=$(now_ns)
    if ! criu dump -t "$PID" -D "$WORK/criu.$1" -o dump.log >/dev/null 2>&1; then
        echo "  run $1: criu dump failed: $(tail -1 "$WORK/criu.$1/dump.log")"
        kill -9 "$PID" 2>/dev/null || true
        wait_gone "$PID"
        PID=
        return
    fi
    t1=$(now_ns)
    wait_gone "$PID"
    PID=
    read -r cfrozen cmem cpages < <(criu_dump_stats "$WORK/criu.$1")
    wall=$(secs_between "$t0" "$t1")
    rate=$(awk -v p="$cpages" -v t="$cmem" 'BEGIN {printf "%.0f", p * 4096 / 1048576 / t}')
    [[ $1 == w* ]] || echo "$wall $cfrozen $rate" >>"$WORK/criu"
    echo "  run $1: criu $cpages pages, wall ${wall} s, frozen ${cfrozen} s, pages ${rate} MiB/s"
    rm -rf "$WORK/criu.$1"
}

# One warm-up round (not counted), then RUNS rounds; the tool that goes first alternates.
for i in w $(seq "$RUNS"); do
    if [[ $CRIU_OK == 1 && $i != w && $((i % 2)) == 0 ]]; then
        dump_criu "$i"; dump_cryo "$i"
    else
        dump_cryo "$i"; [[ $CRIU_OK == 1 ]] && dump_criu "$i"
    fi
done

col() { awk -v c="$1" '{print $c}' "$2"; }
w=$(col 1 "$WORK/cryo" | median); f=$(col 2 "$WORK/cryo" | median); r=$(col 3 "$WORK/cryo" | median)
echo "cryo median: wall $w s, frozen $f s, pages $r MiB/s; best frozen $(col 2 "$WORK/cryo" | best_low) s"
if [[ -s $WORK/criu ]]; then
    cw=$(col 1 "$WORK/criu" | median); cf=$(col 2 "$WORK/criu" | median); cr=$(col 3 "$WORK/criu" | median)
    echo "criu median: wall $cw s, frozen $cf s, pages $cr MiB/s; best frozen $(col 2 "$WORK/criu" | best_low) s"
    echo "ratio (median, CRIU/cryo; > 1 means cryo is faster): wall $(ratio "$cw" "$w")x, frozen $(ratio "$cf" "$f")x, page rate $(ratio "$r" "$cr")x"
fi
