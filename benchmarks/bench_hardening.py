"""What the readers' and the writer's defences cost, side by side in one run.

- a graph step's schema check at open (the hand check, and the validator it stands for);
- opening a recording of N graph steps with the steps checked, and without;
- a local store's read of a journal entry (openat without links, fstat) against a plain ``open().read()``;
- the writer's scrub of a graph step of K keys, against writing that step;
- the writer's scrub of this process's environment, as each recorded environment is scrubbed.

    python benchmarks/bench_hardening.py [--steps 5000] [--keys 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid

os.environ.setdefault("JULIUS_KEY_FILE", os.path.join(tempfile.mkdtemp(), "key"))   # never the user's key

from julius_magics.recording import schema  # noqa: E402
from julius_magics.recording.journal import Step  # noqa: E402
from julius_magics.recording.store import Store  # noqa: E402


def best(function, rounds):
    """The best of ``rounds`` timings of ``function()``, in seconds."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def side_by_side(first, second, rounds):
    """The best timings of ``first()`` and ``second()``, run in turn (this machine's speed drifts)."""
    times = ([], [])
    for _ in range(rounds):
        for function, kept in zip((first, second), times):
            started = time.perf_counter()
            function()
            kept.append(time.perf_counter() - started)
    return min(times[0]), min(times[1])


def graph_data(keys):
    names = [f"('f-{uuid.uuid4().hex}', {i})" for i in range(keys)]
    return {"kind": "graph", "seq": 1, "time": 1.0, "client": "Client-1", "keys": names, "ntasks": keys,
            "fingerprints": {k: "f" * 32 for k in names}, "descriptions": {k: "int" for k in names},
            "address": "tcp://127.0.0.1:1"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    step = Step(1, "graph", graph_data(1), ())
    validator = schema._validators()["steps"]["graph"]
    n = 2000
    fast = best(lambda: [schema.check_step(step, "x") for _ in range(n)], args.rounds) / n
    full = best(lambda: [validator.validate(step.data) for _ in range(n)], args.rounds) / n
    print(f"schema check of a one-key graph step: hand check {fast * 1e6:.1f} us, validator {full * 1e6:.1f} us")

    store = Store(tempfile.mkdtemp())
    writer = store.create("r")
    with writer.batch():
        for _ in range(args.steps):
            writer.add_step("graph", graph_data(1))
    writer.close()
    real = schema.check_step

    def unchecked_open():
        schema.check_step = lambda s, where: s
        try:
            store.open("r")
        finally:
            schema.check_step = real

    checked, unchecked = side_by_side(lambda: store.open("r"), unchecked_open, args.rounds)
    print(f"open {args.steps} graph steps: checked {checked:.3f} s, unchecked {unchecked:.3f} s, "
          f"ratio {checked / unchecked:.3f}")

    files = store.files
    entries = [files.path("r", "journal", name) for name in sorted(os.listdir(files.path("r", "journal")))][:2000]

    def plain():
        for path in entries:
            with open(path, "rb") as f:
                f.read()

    hardened, opened = side_by_side(lambda: [files.read(path) for path in entries], plain, args.rounds)
    print(f"read {len(entries)} journal entries: without links {hardened * 1e3:.1f} ms, plain open {opened * 1e3:.1f} ms, "
          f"+{(hardened - opened) / len(entries) * 1e6:.1f} us a file")

    big = graph_data(args.keys)
    writer = store.create("big")
    scrub = best(lambda: writer.scrub(big), args.rounds)
    write = best(lambda: writer.add_step("graph", big), args.rounds)
    writer.close()
    print(f"graph step of {args.keys} keys: scrub {scrub * 1e3:.2f} ms, add_step (scrub included) {write * 1e3:.1f} ms, "
          f"scrub / add_step {scrub / write:.3f}")

    from julius_magics.recording.environment import capture_environment

    env = capture_environment()
    writer = store.create("env")
    scrub = best(lambda: writer.scrub(env, names=False), args.rounds)
    writer.close()
    print(f"this environment ({len(env['packages'])} packages): scrub {scrub * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
