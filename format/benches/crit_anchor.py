#!/usr/bin/python3
"""Anchor for examples/decode_bench.rs: the same images decoded by CRIU's python library.

Runs pycriu (the library behind `crit`, Debian's 3.17 here) in-process over every non-pages
image of the fixture sets, so interpreter start-up is not counted, and prints microseconds per
pass in the same shape as decode_bench. Usage: format/benches/crit_anchor.py [PASSES]
"""
import io
import os
import sys
import time

import pycriu.images

SETS = ["counter", "threads4", "pipe-tree", "python3", "series-t0", "series-t1"]
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../fixtures/criu-images")


def main():
    passes = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    blobs, skipped = [], []
    for s in SETS:
        d = os.path.join(ROOT, s)
        for name in sorted(os.listdir(d)):
            if name.startswith("pages-"):
                continue
            data = open(os.path.join(d, name), "rb").read()
            try:
                pycriu.images.load(io.BytesIO(data), pretty=False)
            except Exception as e:  # images this crit version cannot read
                skipped.append(f"{s}/{name}: {e}")
                continue
            blobs.append(data)
    total = sum(len(b) for b in blobs)
    print(f"{len(blobs)} images, {total} bytes; {passes} passes; skipped {len(skipped)}")
    for s in skipped:
        print("  skipped", s)

    start = time.perf_counter()
    for _ in range(passes):
        for b in blobs:
            pycriu.images.load(io.BytesIO(b), pretty=False)
    secs = time.perf_counter() - start
    print(f"pycriu load (decode to dicts)  {secs * 1e6 / passes:10.2f} µs/pass  {total * passes / secs / 1e6:8.1f} MB/s")


if __name__ == "__main__":
    main()
