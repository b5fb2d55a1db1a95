#!/usr/bin/env bash
# Store size against raw pages for a real python3 interpreter (a dict of 20 000 hashes and a
# sleep loop), dumped twice through a local page server: the first checkpoint shows what zstd
# and zero-page elision give on a real heap, the second what dedup gives across checkpoints.
#
# Usage: benches/pageserver-python3.sh        (root; builds the release binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p cryo-dumper -p cryo-pageserver --bins
bin=$PWD/target/release
work=$(mktemp -d /tmp/cryo-bench-py.XXXXXX)
port=$((20000 + RANDOM % 20000))
pid=""
server=""
cleanup() {
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    [ -n "$server" ] && kill "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/loop.py" <<'PY'
import hashlib, sys, time
table = {i: hashlib.sha256(str(i).encode()).hexdigest() for i in range(20000)}
n = 0
while True:
    n += 1
    with open(sys.argv[1], "a") as f:
        f.write(f"tick={n}\n")
    time.sleep(0.1)
PY
( setsid python3 "$work/loop.py" "$work/log" </dev/null >/dev/null 2>&1 & echo $! >"$work/pid" )
pid=$(cat "$work/pid")
for _ in $(seq 100); do grep -q tick= "$work/log" 2>/dev/null && break; sleep 0.1; done

"$bin/pageserver" serve --listen "127.0.0.1:$port" --store "$work/store" 2>"$work/server.log" &
server=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

"$bin/dumper" dump -t "$pid" -D "$work/d1" --page-server "127.0.0.1:$port" --leave-running 2>/dev/null
sleep 1
"$bin/dumper" dump -t "$pid" -D "$work/d2" --page-server "127.0.0.1:$port" 2>/dev/null
pid=""
"$bin/pageserver" stats --store "$work/store"
