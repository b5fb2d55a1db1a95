#!/usr/bin/env bash
# Install Debian trixie's CRIU (4.1.x) privately under target/criu-4.1/, as the same-run anchor
# for the benches: Debian 12's criu 3.17 cannot dump on this kernel, and trixie's build needs
# glibc >= 2.38, so it runs through trixie's own dynamic loader and libraries, extracted next
# to it. Nothing outside target/criu-4.1/ is touched (no system library, no apt configuration).
#
#   PATH=$(scripts/criu-setup.sh):$PATH    # prints the bin dir holding the `criu` wrapper
#
# The signed InRelease is checked with the system's Debian archive keyring (gpgv), then the
# SHA256 of Packages.xz from it, then the SHA256 of every .deb from Packages. criu's Depends
# (and Pre-Depends) are resolved recursively from that index. Idempotent: a working install is
# reused as is; a concurrent run waits on a lock. Progress goes to stderr, the path to stdout.
# `crit` is not installed from trixie (python): the system's /usr/bin/crit reads the images.
# CRIU_SETUP_MIRROR overrides the Debian mirror (default http://deb.debian.org/debian).
# On kernel 6.18 here `criu check` says "Looks good."; `check --all` misses only soft-dirty
# tracking (no pre-dump / --track-mem) and autofs, and every run logs a harmless "Can't setup
# RLIMIT_NOFILE" because this sandbox's root lacks CAP_SYS_RESOURCE.
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=trixie
ARCH=amd64
MIRROR=${CRIU_SETUP_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
BASE=$PWD/target/criu-4.1
ROOT=$BASE/root
BIN=$BASE/bin
DEBS=$BASE/debs

say() { echo "criu-setup: $*" >&2; }
die() { say "error: $*"; exit 1; }
WRAPPER_REV=wrapper-1 # bump when the wrapper below changes, so older installs are redone
LIBDIR=usr/lib/x86_64-linux-gnu
# Every library criu needs resolves inside root DIR: the loader still falls back to the
# system's /lib/x86_64-linux-gnu for one missing there, which would mix bookworm in silently.
self_contained() {
    local lib=$1/$LIBDIR out
    out=$("$lib/ld-linux-x86-64.so.2" --inhibit-cache --library-path "$lib" \
        --list "$1/usr/sbin/criu" 2>&1) || return 1
    ! grep -vF -e "=> $1/" -e linux-vdso.so <<<"$out" | grep -q .
}
working() {
    local v
    [[ -x $BIN/criu ]] && grep -q "($WRAPPER_REV)" "$BIN/criu" && self_contained "$ROOT" &&
        v=$("$BIN/criu" --version 2>/dev/null) && [[ $v == "Version: 4."* ]]
}

if working; then
    say "already installed: $("$BIN/criu" --version | head -1) in $BIN"
    echo "$BIN"
    exit 0
fi

mkdir -p "$BASE" "$DEBS"
exec 9>"$BASE/.lock"
flock 9
if working; then # another run finished while we waited
    echo "$BIN"
    exit 0
fi

for tool in curl gpgv xz dpkg-deb sha256sum awk flock; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done
[[ -r $KEYRING ]] || die "$KEYRING is missing (package debian-archive-keyring)"

fetch() { curl -fsS --retry 3 --connect-timeout 20 -o "$2" "$MIRROR/$1"; }

# 1. The suite's signed Release, checked against the system's archive keyring.
DIST=$BASE/dists
rm -rf "$DIST"
mkdir -p "$DIST"
say "fetching $SUITE InRelease from $MIRROR"
fetch "dists/$SUITE/InRelease" "$DIST/InRelease"
gpgv --keyring "$KEYRING" --output "$DIST/Release" "$DIST/InRelease" 2>"$DIST/gpgv.log" ||
    { cat "$DIST/gpgv.log" >&2; die "bad signature on $SUITE InRelease"; }

# 2. Packages.xz, checked against the SHA256 the Release lists for it.
index=main/binary-$ARCH/Packages.xz
want=$(awk -v f="$index" '/^[^ ]/ { sec = $1 } sec == "SHA256:" && $3 == f { print $1 }' "$DIST/Release")
[[ -n $want ]] || die "$index is not listed in the $SUITE Release"
say "fetching $index"
fetch "dists/$SUITE/$index" "$DIST/Packages.xz"
got=$(sha256sum "$DIST/Packages.xz" | cut -d' ' -f1)
[[ $got == "$want" ]] || die "$index: SHA256 $got, Release says $want"
xz -dc "$DIST/Packages.xz" >"$DIST/Packages"

# 3. criu and everything it Depends/Pre-Depends on, recursively (first alternative; virtual
#    names through Provides). One line per package: name version filename sha256.
awk '
BEGIN { RS = ""; FS = "\n" }
{
    delete f
    for (i = 1; i <= NF; i++) {
        if ($i ~ /^[ \t]/) continue
        c = index($i, ":"); k = substr($i, 1, c - 1); v = substr($i, c + 1)
        sub(/^[ \t]+/, "", v); f[k] = v
    }
    name = f["Package"]
    if (name == "" || (name in file)) next
    file[name] = f["Filename"]; sha[name] = f["SHA256"]; ver[name] = f["Version"]
    deps[name] = f["Pre-Depends"] "," f["Depends"]
    n = split(f["Provides"], pv, ",")
    for (i = 1; i <= n; i++) {
        p = pv[i]; sub(/^[ \t]+/, "", p); sub(/[ \t(].*/, "", p)
        if (p != "" && !(p in provider)) provider[p] = name
    }
}
END {
    q[1] = "criu"; head = 1; tail = 1
    while (head <= tail) {
        n = q[head++]
        if (!(n in file)) {
            if (!(n in provider)) { print "criu-setup: no package provides " n > "/dev/stderr"; bad = 1; continue }
            n = provider[n]
        }
        if (n in seen) continue
        seen[n] = 1
        print n, ver[n], file[n], sha[n]
        m = split(deps[n], d, ",")
        for (i = 1; i <= m; i++) {
            a = d[i]; sub(/\|.*/, "", a); sub(/^[ \t]+/, "", a); sub(/[ \t(:].*/, "", a)
            if (a != "") q[++tail] = a
        }
    }
    exit bad
}' "$DIST/Packages" >"$DIST/closure" || die "could not resolve criu's dependencies from the $SUITE index"
read -r _ criu_version _ <"$DIST/closure"
say "criu $criu_version from $SUITE needs $(($(wc -l <"$DIST/closure") - 1)) packages: $(cut -d' ' -f1 "$DIST/closure" | tail -n +2 | tr '\n' ' ')"

# 4. Download (or reuse from target/criu-4.1/debs) and verify every .deb, then extract them
#    all into a fresh root that replaces the old one only once complete.
NEW=$BASE/root.new
rm -rf "$NEW" "$BIN.new"
mkdir -p "$NEW"
while read -r name version filename sha; do
    deb=$DEBS/${filename##*/}
    if [[ ! -f $deb ]] || [[ $(sha256sum "$deb" | cut -d' ' -f1) != "$sha" ]]; then
        say "downloading $name $version"
        fetch "$filename" "$deb.part"
        got=$(sha256sum "$deb.part" | cut -d' ' -f1)
        [[ $got == "$sha" ]] || { rm -f "$deb.part"; die "$filename: SHA256 $got, index says $sha"; }
        mv "$deb.part" "$deb"
    fi
    dpkg-deb -x "$deb" "$NEW"
done <"$DIST/closure"

[[ -x $NEW/usr/sbin/criu && -x $NEW/$LIBDIR/ld-linux-x86-64.so.2 ]] ||
    die "the extracted root lacks usr/sbin/criu or $LIBDIR/ld-linux-x86-64.so.2"
self_contained "$NEW" || die "criu needs libraries outside the private root:
$("$NEW/$LIBDIR/ld-linux-x86-64.so.2" --inhibit-cache --library-path "$NEW/$LIBDIR" \
    --list "$NEW/usr/sbin/criu" 2>&1 | grep -vF "=> $NEW/")"
# CRIU loads plugins (*.so) from /usr/lib/criu by default, which belongs to the system's criu:
# give this one an empty private plugin dir instead.
mkdir -p "$NEW/usr/lib/criu"

# 5. The wrapper: trixie's criu through trixie's loader, with trixie's libraries for criu
#    only (--library-path, not LD_LIBRARY_PATH, so what criu runs, e.g. ip or iptables, gets
#    the system's own; --inhibit-cache so the system's ld.so.cache never slips a bookworm
#    library in). It finds the root relative to itself. `criu swrk FD` (libcriu, pycriu)
#    must keep swrk as argv[1], so it gets no -L and uses CRIU's default plugin dir.
#    CRIU never re-executes /proc/self/exe (here the loader): dump, restore (-d or not),
#    page-server and swrk all work this way, so the binary is not patched (no patchelf).
mkdir -p "$BIN.new"
cat >"$BIN.new/criu" <<EOF
#!/bin/sh
# Debian $SUITE's criu $criu_version, installed privately by scripts/criu-setup.sh ($WRAPPER_REV).
ROOT=\$(cd "\$(dirname "\$(readlink -f "\$0")")/../root" && pwd) || exit 1
LIB=\$ROOT/$LIBDIR
[ "\${1:-}" = swrk ] || set -- -L "\$ROOT/usr/lib/criu" "\$@"
exec "\$LIB/ld-linux-x86-64.so.2" --inhibit-cache --library-path "\$LIB" --argv0 "\$0" \\
    "\$ROOT/usr/sbin/criu" "\$@"
EOF
chmod 755 "$BIN.new/criu"

rm -rf "$ROOT" "$BIN"
mv "$NEW" "$ROOT"
mv "$BIN.new" "$BIN"
working || die "$BIN/criu --version does not run: $("$BIN/criu" --version 2>&1 | head -3)"
say "installed $("$BIN/criu" --version | head -1) in $BIN"
if [[ $(id -u) == 0 ]]; then
    say "criu check: $("$BIN/criu" check 2>&1 | tr '\n' ' ')"
fi
echo "$BIN"
