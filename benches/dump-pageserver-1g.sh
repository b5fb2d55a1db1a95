#!/usr/bin/env bash
# Dump a process holding 1 GiB of patterned anonymous memory through cryo's dumper into a
# local cryo page server (dedup + zstd on, store on /dev/shm), and, in the same runs, through
# `criu dump --page-server` into `criu page-server` (trixie's CRIU 4.1, installed privately by
# scripts/criu-setup.sh; skipped if unusable). Each run starts a fresh workload and a fresh
# server per tool; which tool goes first alternates; one warm-up round is not counted.
# Free memory is warmed before every dump (benches/lib.sh: warm_memory). Prints the page rate (pages / time spent sending them), the frozen time and the store
# size per run, the medians, and the ratios. Usage: benches/dump-pageserver-1g.sh [MiB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh

MIB=${1:-1024}
RUNS=${2:-5}
WORK=/dev/shm/cryo-bench-dps.$$
mkdir -p "$WORK"
PID=""
SERVER=""
cleanup() {
    [[ -n "$PID" ]] && kill -9 "$PID" 2>/dev/null
    [[ -n "$SERVER" ]] && kill "$SERVER" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release -q -p cryo-dumper -p cryo-pageserver -p cryo-fixtures
bin=target/release
COUNTER=$(ls -t target/release/build/cryo-fixtures-*/out/counter | head -1)
criu_on_path

# Waits until something listens on 127.0.0.1:$1 (without connecting: a CRIU page server
# serves one connection only).
wait_listening() {
    for _ in $(seq 100); do
        ss -ltnH "sport = :$1" | grep -q . && return
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

via_cryo() {
    local port=$((20000 + RANDOM % 20000)) out pages frozen ptime rate stored
    "$bin/pageserver" serve --listen "127.0.0.1:$port" --store "$WORK/store.$1" >/dev/null 2>&1 &
    SERVER=$!
    wait_listening "$port"
    start_counter "$WORK/log.cryo.$1"
    warm_memory
    out=$("$bin/dumper" dump -t "$PID" -D "$WORK/img.$1" --page-server "127.0.0.1:$port" 2>/dev/null)
    wait_gone "$PID"
    PID=""
    pages=$(sed -E 's/.* ([0-9]+) pages;.*/\1/' <<<"$out")
    frozen=$(sed -E 's/.*frozen ([0-9.]+) s.*/\1/' <<<"$out")
    ptime=$(sed -E 's/.*pages ([0-9.]+) s, total.*/\1/' <<<"$out")
    rate=$(awk -v p="$pages" -v t="$ptime" 'BEGIN {printf "%.0f", p * 4096 / 1048576 / t}')
    stored=$("$bin/pageserver" stats --store "$WORK/store.$1" | awk '/stored bytes/ {print $3, $4; exit}')
    [[ $1 == w* ]] || echo "$frozen $rate" >>"$WORK/cryo"
    echo "  run $1: cryo $pages pages, frozen ${frozen} s, pages into the server ${rate} MiB/s, stored ${stored}"
    kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true
    SERVER=""
    rm -rf "$WORK/img.$1" "$WORK/store.$1"
}

via_criu() {
    local port=$((20000 + RANDOM % 20000)) frozen mem pages rate stored
    mkdir -p "$WORK/ps.$1" "$WORK/criu.$1"
    criu page-server --address 127.0.0.1 --port "$port" -D "$WORK/ps.$1" -o ps.log >/dev/null 2>&1 &
    SERVER=$!
    wait_listening "$port"
    start_counter "$WORK/log.criu.$1"
    warm_memory
    if ! criu dump -t "$PID" -D "$WORK/criu.$1" --page-server --address 127.0.0.1 --port "$port" \
        -o dump.log >/dev/null 2>&1; then
        echo "  run $1: criu dump failed: $(tail -1 "$WORK/criu.$1/dump.log")"
        kill -9 "$PID" 2>/dev/null || true
    else
        read -r frozen mem pages < <(criu_dump_stats "$WORK/criu.$1")
        rate=$(awk -v p="$pages" -v t="$mem" 'BEGIN {printf "%.0f", p * 4096 / 1048576 / t}')
        stored=$(du -sh "$WORK/ps.$1" | cut -f1)
        [[ $1 == w* ]] || echo "$frozen $rate" >>"$WORK/criu"
        echo "  run $1: criu $pages pages, frozen ${frozen} s, pages into the server ${rate} MiB/s, stored ${stored}"
    fi
    wait_gone "$PID"
    PID=""
    wait "$SERVER" 2>/dev/null || true
    SERVER=""
    rm -rf "$WORK/ps.$1" "$WORK/criu.$1"
}

echo "dump of a ${MIB} MiB counter into a page server on loopback, ${RUNS} runs ($(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)); CRIU: $CRIU_VERSION$([[ $CRIU_OK == 1 ]] || echo ' (not usable: no comparison)')"
for i in w $(seq "$RUNS"); do
    if [[ $CRIU_OK == 1 && $i != w && $((i % 2)) == 0 ]]; then
        via_criu "$i"; via_cryo "$i"
    else
        via_cryo "$i"; [[ $CRIU_OK == 1 ]] && via_criu "$i"
    fi
done

col() { awk -v c="$1" '{print $c}' "$2"; }
f=$(col 1 "$WORK/cryo" | median); r=$(col 2 "$WORK/cryo" | median)
echo "cryo median: frozen $f s, pages $r MiB/s"
if [[ -s $WORK/criu ]]; then
    cf=$(col 1 "$WORK/criu" | median); cr=$(col 2 "$WORK/criu" | median)
    echo "criu median: frozen $cf s, pages $cr MiB/s"
    echo "ratio (median; > 1 means cryo is faster): page rate $(ratio "$r" "$cr")x, frozen $(ratio "$cf" "$f")x"
fi
