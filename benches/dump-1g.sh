#!/usr/bin/env bash
# Dump a process holding 1 GiB of patterned anonymous memory to tmpfs (/dev/shm) and
# report page throughput (MiB/s) and frozen time, best and median of RUNS runs.
# If a `criu` that can dump on this kernel is on PATH, dump the same workload with it
# in the same run and print the ratio. Usage: benches/dump-1g.sh [MiB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."

MIB=${1:-1024}
RUNS=${2:-5}
WORK=/dev/shm/cryo-bench-dump.$$
mkdir -p "$WORK"
cleanup() { [[ -n "${PID:-}" ]] && kill -9 "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

cargo build --release -q -p cryo-dumper -p cryo-fixtures
DUMPER=target/release/dumper
COUNTER=$(ls -t target/release/build/cryo-fixtures-*/out/counter | head -1)

start_workload() {
    local log=$WORK/log.$1
    setsid "$COUNTER" "$MIB" "$log" 1 </dev/null >/dev/null 2>&1 &
    PID=$!
    for _ in $(seq 300); do grep -q '^ready' "$log" 2>/dev/null && return; sleep 0.1; done
    echo "workload did not become ready" >&2; exit 1
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "cryo dumper: ${MIB} MiB workload, ${RUNS} runs, images on /dev/shm ($(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))"
: >"$WORK/frozen"; : >"$WORK/rate"
for i in $(seq "$RUNS"); do
    start_workload "$i"
    out=$("$DUMPER" dump -t "$PID" -D "$WORK/img.$i" 2>/dev/null)
    wait "$PID" 2>/dev/null || true
    PID=
    pages=$(sed -E 's/.* ([0-9]+) pages;.*/\1/' <<<"$out")
    frozen=$(sed -E 's/.*frozen ([0-9.]+) s.*/\1/' <<<"$out")
    ptime=$(sed -E 's/.*pages ([0-9.]+) s, total.*/\1/' <<<"$out")
    rate=$(awk -v p="$pages" -v t="$ptime" 'BEGIN {printf "%.0f", p * 4096 / 1048576 / t}')
    echo "  run $i: $pages pages, frozen ${frozen} s, page transfer ${ptime} s = ${rate} MiB/s"
    echo "$frozen" >>"$WORK/frozen"; echo "$rate" >>"$WORK/rate"
    rm -rf "$WORK/img.$i"
done
best_frozen=$(sort -g "$WORK/frozen" | head -1); med_frozen=$(median <"$WORK/frozen")
best_rate=$(sort -g "$WORK/rate" | tail -1); med_rate=$(median <"$WORK/rate")
echo "cryo: frozen best ${best_frozen} s, median ${med_frozen} s; pages best ${best_rate} MiB/s, median ${med_rate} MiB/s"

# CRIU, if one on PATH can actually dump here.
if command -v criu >/dev/null && criu check >/dev/null 2>&1; then
    start_workload criu
    if criu dump -t "$PID" -D "$WORK/criu" --shell-job -o dump.log >/dev/null 2>&1; then
        stats=$(crit decode -i "$WORK/criu/stats-dump" 2>/dev/null)
        cfrozen=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1])["entries"][0]["dump"]; print(d["frozen_time"]/1e6)' "$stats")
        echo "criu: frozen ${cfrozen} s; ratio criu/cryo (median) $(awk -v c="$cfrozen" -v o="$med_frozen" 'BEGIN {printf "%.2f", c / o}')x"
    else
        echo "criu: dump failed here ($(tail -1 "$WORK/criu/dump.log" 2>/dev/null)); no ratio"
    fi
else
    echo "criu: no criu on PATH that passes 'criu check' on this kernel ($(criu --version 2>/dev/null | head -1 || echo absent)); no ratio"
fi
