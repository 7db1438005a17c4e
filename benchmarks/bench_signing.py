"""Cost of Ed25519 signatures and schema checks (julius-recording/2) against the HMAC seals of julius-recording/1.

Prints, side by side in one run: sealing and unsealing one journal-entry-sized document
(Ed25519 vs HMAC, schema check included for version 2), writing a recording of N steps (a
step at a time, and in one ``batch``) and opening it, and listing a store of M recordings.

    python benchmarks/bench_signing.py [--steps 1000] [--recordings 1000] [--repeat 3]
"""

import argparse
import os
import tempfile
import time

from julius_magics.recording import integrity, schema
from julius_magics.recording.store import Store


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--recordings", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    home = tempfile.mkdtemp()
    os.environ["JULIUS_KEY_FILE"] = os.path.join(home, "key")
    os.environ["HOME"] = home
    key = integrity.load_key()
    n = 2000
    entry = {"format": integrity.FORMAT, "seq": 1, "kind": "cell", "time": "2026-12-01T00:00:00Z",
             "data": {"source": "x = 1\n" * 20}, "parts": {}, "blobs": {}, "prev": "0" * 64,
             "key_id": key.fingerprint}
    legacy = dict(entry, format=integrity.LEGACY_FORMAT, key_id=integrity.legacy_key_id(key.legacy_secret))
    raw_new = integrity.seal(entry, key)
    raw_old = integrity.legacy_seal(legacy, key.legacy_secret)
    seal_new = best(lambda: [integrity.seal(entry, key) for _ in range(n)], args.repeat) / n
    seal_old = best(lambda: [integrity.legacy_seal(legacy, key.legacy_secret) for _ in range(n)], args.repeat) / n
    open_new = best(lambda: [schema.check(integrity.unseal(raw_new, "e", key)[0], "entry", "e")
                             for _ in range(n)], args.repeat) / n
    open_old = best(lambda: [integrity.unseal(raw_old, "e", key, legacy_hmac=True) for _ in range(n)],
                    args.repeat) / n
    print(f"seal one entry:   Ed25519 {seal_new * 1e6:.0f} µs, HMAC {seal_old * 1e6:.0f} µs "
          f"(x{seal_new / seal_old:.1f})")
    print(f"unseal one entry: Ed25519 + schema {open_new * 1e6:.0f} µs, HMAC {open_old * 1e6:.0f} µs "
          f"(x{open_new / open_old:.1f})")

    store = Store(os.path.join(home, "store"))
    t0 = time.perf_counter()
    writer = store.create("long", {"note": "bench"})
    for i in range(args.steps):
        writer.add_step("cell", {"source": f"x = {i}"})
    writer.close()
    write = time.perf_counter() - t0
    opened = best(lambda: store.open("long"), args.repeat)
    t0 = time.perf_counter()
    writer = store.create("long-batch", {"note": "bench"})
    with writer.batch():   # one flush to disk for every step, as a drain of the capture does
        for i in range(args.steps):
            writer.add_step("cell", {"source": f"x = {i}"})
    writer.close()
    batched = time.perf_counter() - t0
    print(f"recording of {args.steps} steps: write {write:.2f} s ({write / args.steps * 1e3:.2f} ms/step), "
          f"in one batch {batched:.2f} s ({batched / args.steps * 1e3:.2f} ms/step); "
          f"open (verify everything) {opened:.2f} s ({opened / args.steps * 1e3:.2f} ms/step); load {os.getloadavg()[0]:.1f}")

    for i in range(args.recordings):
        store.create(f"run-{i:04d}", {"note": "x", "workers": 1}).close()
    listed = best(lambda: store.list(), args.repeat)
    print(f"list {args.recordings + 1} recordings: {listed:.2f} s ({listed / (args.recordings + 1) * 1e3:.2f} ms each)")


if __name__ == "__main__":
    main()
