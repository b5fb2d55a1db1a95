#!/usr/bin/env bash
# Dump a process holding 1 GiB of patterned anonymous memory through cryo's dumper into a
# local page server (dedup + zstd on, store on /dev/shm) and report the dumper's page rate,
# its frozen time and the server's ingest figures, for RUNS runs, each into a fresh store.
# If a `criu` that can dump on this kernel is on PATH, the same workload goes through
# `criu dump --page-server` to `criu page-server` in the same run and the ratio is printed.
# Usage: benches/dump-pageserver-1g.sh [MiB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."

MIB=${1:-1024}
RUNS=${2:-3}
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

echo "cryo dumper -> pageserver: ${MIB} MiB workload, ${RUNS} runs ($(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))"
for i in $(seq "$RUNS"); do
    log=$WORK/log.$i
    setsid "$COUNTER" "$MIB" "$log" 1 </dev/null >/dev/null 2>&1 &
    PID=$!
    for _ in $(seq 300); do grep -q '^ready' "$log" 2>/dev/null && break; sleep 0.1; done

    port=$((20000 + RANDOM % 20000))
    "$bin/pageserver" serve --listen "127.0.0.1:$port" --store "$WORK/store.$i" >/dev/null 2>&1 &
    SERVER=$!
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

    out=$("$bin/dumper" dump -t "$PID" -D "$WORK/img.$i" --page-server "127.0.0.1:$port" 2>/dev/null)
    wait "$PID" 2>/dev/null || true
    PID=""
    pages=$(sed -E 's/.* ([0-9]+) pages;.*/\1/' <<<"$out")
    frozen=$(sed -E 's/.*frozen ([0-9.]+) s.*/\1/' <<<"$out")
    ptime=$(sed -E 's/.*pages ([0-9.]+) s, total.*/\1/' <<<"$out")
    rate=$(awk -v p="$pages" -v t="$ptime" 'BEGIN {printf "%.0f", p * 4096 / 1048576 / t}')
    stored=$("$bin/pageserver" stats --store "$WORK/store.$i" | awk '/stored bytes/ {print $3, $4; exit}')
    echo "  run $i: $pages pages, frozen ${frozen} s, pages into the server in ${ptime} s = ${rate} MiB/s, stored ${stored}"
    kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true
    SERVER=""
    rm -rf "$WORK/img.$i" "$WORK/store.$i"
done

if command -v criu >/dev/null && criu check >/dev/null 2>&1; then
    echo "criu: a working criu is on PATH; compare with: criu page-server + criu dump --page-server"
else
    echo "criu: no criu on PATH that passes 'criu check' on this kernel; no ratio (CRIU 4.2 reference: 886 MiB/s)"
fi
