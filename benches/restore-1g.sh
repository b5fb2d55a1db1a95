#!/usr/bin/env bash
# Restore a process holding 1 GiB of patterned anonymous memory, images on tmpfs (so in page
# cache): cryo's restorer from cryo's dump, and, in the same runs, CRIU (trixie's 4.1,
# installed privately by scripts/criu-setup.sh; skipped if unusable) from CRIU's own dump of
# the same workload. Every restored process must log a tick with its pattern intact before
# the run counts. Which tool goes first alternates; one warm-up round is not counted. Also
# tells whether CRIU restores cryo's images. Free memory is warmed before every restore
# (benches/lib.sh: warm_memory) (the format is CRIU's).
# Usage: benches/restore-1g.sh [MiB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh

MIB=${1:-1024}
RUNS=${2:-5}
WORK=/dev/shm/cryo-bench-restore.$$
mkdir -p "$WORK"
PID=
cleanup() { [[ -n "$PID" ]] && kill -9 "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

cargo build --release -q -p cryo-dumper -p cryo-restorer -p cryo-fixtures
DUMPER=target/release/dumper
RESTORER=target/release/restorer
COUNTER=$(ls -t target/release/build/cryo-fixtures-*/out/counter | head -1)
criu_on_path

# A dump of a fresh counter into $WORK/img.$1 by tool $1; sets ROOT_$1 and LOG_$1.
dump_with() {
    start_counter "$WORK/log.$1"
    if [[ $1 == cryo ]]; then
        "$DUMPER" dump -t "$PID" -D "$WORK/img.$1" >/dev/null 2>&1
    else
        mkdir -p "$WORK/img.$1"
        criu dump -t "$PID" -D "$WORK/img.$1" -o dump.log >/dev/null 2>&1 ||
            { echo "criu dump failed: $(tail -1 "$WORK/img.$1/dump.log")" >&2; exit 1; }
    fi
    wait_gone "$PID"
    printf -v "ROOT_$1" %s "$PID"
    PID=
    cat "$WORK/img.$1"/pages-*.img >/dev/null
}

# Restores tool $1's images with tool $2 (detached), checks the tick, kills it.
# Prints the seconds the restore command took, or "failed: ..." .
restore_with() {
    local dump=$1 tool=$2 root log lines t0 t1 line
    root=ROOT_$dump; root=${!root}
    log=$WORK/log.$dump
    lines=$(wc -l <"$log")
    warm_memory
    t0=$(now_ns)
    if [[ $tool == cryo ]]; then
        "$RESTORER" restore -D "$WORK/img.$dump" -d 2>"$WORK/err" || { echo "failed: $(tail -1 "$WORK/err")"; return; }
    else
        criu restore -D "$WORK/img.$dump" -d -o restore.$$.log >/dev/null 2>&1 ||
            { echo "failed: $(grep Error "$WORK/img.$dump/restore.$$.log" | grep -v RLIMIT_NOFILE | head -3 | tr '\n' ' ')"; return; }
    fi
    t1=$(now_ns)
    PID=$root
    for _ in $(seq 500); do (( $(wc -l <"$log") > lines )) && break; sleep 0.01; done
    line=$(tail -n +"$((lines + 1))" "$log" | head -1)
    kill -9 "$root" 2>/dev/null || true
    PID=
    wait_gone "$root"
    [[ "$line" == *"pid=$root tick="*" bad=0"* ]] || { echo "failed: bad log line after restore: '$line'"; return; }
    secs_between "$t0" "$t1"
}

dump_with cryo
[[ $CRIU_OK == 1 ]] && dump_with criu
echo "restore of a ${MIB} MiB counter from /dev/shm, ${RUNS} runs ($(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)); CRIU: $CRIU_VERSION$([[ $CRIU_OK == 1 ]] || echo ' (not usable: no comparison)')"

with_unit() { [[ $1 == [0-9]* ]] && echo "$1 s" || echo "$1"; }
one() { # run tool
    local t
    t=$(restore_with "$2" "$2")
    echo "  run $1: $2 restores its own dump: $(with_unit "$t")"
    [[ $1 == w || $t == failed* ]] || echo "$t" >>"$WORK/$2"
}
for i in w $(seq "$RUNS"); do
    if [[ $CRIU_OK == 1 && $i != w && $((i % 2)) == 0 ]]; then
        one "$i" criu; one "$i" cryo
    else
        one "$i" cryo; [[ $CRIU_OK == 1 ]] && one "$i" criu
    fi
done

r=$(median <"$WORK/cryo")
echo "cryo median: restore $r s (best $(best_low <"$WORK/cryo") s)"
if [[ -s $WORK/criu ]]; then
    cr=$(median <"$WORK/criu")
    echo "criu median: restore $cr s (best $(best_low <"$WORK/criu") s)"
    echo "ratio (median, CRIU/cryo; > 1 means cryo is faster): $(ratio "$cr" "$r")x"
    t=$(restore_with cryo criu)
    echo "criu restoring cryo's images: $(with_unit "$t")"
    t=$(restore_with criu cryo)
    echo "cryo restoring criu's images: $(with_unit "$t")"
fi
