"""Per-open cost of the input-file hooks (``julius_magics.cluster.inputs``).

Usage::

    python benchmarks/bench_open_hook.py [--opens 20000] [--repeat 5]

An audit hook cannot be removed, so each case runs in its own fresh process:
no hook at all, the hook installed with recording off (every process that loaded
julius after a recording), and recording on (noting the read; its snapshot, one
pass in a background thread, is measured by ``bench_plain_recording.py``).  Each opens and closes one existing
file N times (``open(path, "rb")``) and a local fsspec file; prints the best of
``--repeat`` in µs per open and the differences.  Target: at most 20 µs more per
open when not recording.
"""

import argparse
import os
import subprocess
import sys
import tempfile

CASE = r"""
import os, sys, time
case, path, n, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import fsspec
fs = fsspec.filesystem("file")
if case != "none":
    from julius_magics.cluster import inputs
    inputs.install_hooks()
    if case == "recording":
        inputs.start_reads()
def best(fn):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    return min(times) * 1e6
def builtin_open():
    open(path, "rb").close()
def fsspec_open():
    fs.open(path, "rb").close()
print(best(builtin_open), best(fsspec_open))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--opens", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-open-", dir=os.getcwd()) as folder:
        path = os.path.join(folder, "data.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(4096))
        figures = {}
        for case in ("none", "off", "recording"):
            out = subprocess.run([sys.executable, "-c", CASE, case, path, str(args.opens), str(args.repeat)],
                                 check=True, capture_output=True, text=True).stdout.split()
            figures[case] = tuple(map(float, out))
    print(f"{'case':<28}{'open() µs':>12}{'fsspec open µs':>16}")
    for case, label in (("none", "no hook"), ("off", "hook, not recording"), ("recording", "hook, recording")):
        print(f"{label:<28}{figures[case][0]:>12.2f}{figures[case][1]:>16.2f}")
    for case in ("off", "recording"):
        print(f"cost per open, {case:<10}: open() {figures[case][0] - figures['none'][0]:+.2f} µs, "
              f"fsspec {figures[case][1] - figures['none'][1]:+.2f} µs (target when off: <= 20 µs)")


if __name__ == "__main__":
    main()
