"""Benchmark: rebuilding the tutorial's recorded environment, replaying verified in it, and bisecting.

The tutorial pipeline is recorded (``julius demo``) in this Python's environment
(about 180 pins). Then, in one run, side by side:

- **cold**: uv's cache empty (a fresh ``UV_CACHE_DIR``), no environment built:
  rebuild + isolated replay;
- **uv cache warm**: uv's usual cache, no environment built: rebuild + isolated replay;
- **warm**: the environment already built (cached by its pin set): reuse + isolated replay;
- **plain**: the same replay in today's environment (a subprocess too), for the ratio;
- **pip**: ``python -m venv`` then ``pip install --no-deps -r`` of the same index pins
  (pip's own cache as it is; julius-magics, an editable install, left out), install only.

Then a bisection of 16 changed packages: a ``%%remote_eval`` result that depends on
one of them (tabulate's list of table formats), the other 15 changed without effect.
Its rebuilds are reported with their times (target: at most 6).

With ``--warm-rounds N``, only the warm case, N rounds side by side, each round alternating
(from the command line, as a user runs them, each a fresh process): the plain replay
``julius replay NAME --json``; ``julius replay NAME --isolated --json``; and the isolated
replay from this process, its job as before (``-m replay_job``), with jsonschema's slow
optional imports kept out, and with the preloaded worker fork server as well (the default).
Each line gives the replay's own timings (its cluster start, its computes) and, by
difference, the job's process start and imports.

Usage::

    python benchmarks/bench_rebuild.py [--skip-cold] [--skip-pip] [--skip-bisect] [--warm-rounds N]

Targets (issue 10): cold <= 90 s, uv cache warm <= 25 s, warm <= 10 s, each until verified.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from julius_magics.recording.environment import capture_environment
from julius_magics.recording.pins import requirements
from julius_magics.recording.rebuild import build_environment, pin_set, replay_isolated

#: 16 small pure-Python packages, (recorded version, today's version); tabulate's change alters the result.
CHANGED = {
    "tabulate": ("0.8.10", "0.9.0"), "humanize": ("4.16.0", "4.17.0"), "six": ("1.16.0", "1.17.0"),
    "termcolor": ("2.4.0", "2.5.0"), "colorama": ("0.4.5", "0.4.6"), "toml": ("0.10.1", "0.10.2"),
    "appdirs": ("1.4.3", "1.4.4"), "inflection": ("0.5.0", "0.5.1"), "text-unidecode": ("1.2", "1.3"),
    "cachetools": ("5.4.0", "5.5.0"), "ordered-set": ("4.0.2", "4.1.0"), "tomlkit": ("0.13.0", "0.13.2"),
    "docutils": ("0.20.1", "0.21.2"), "markdown": ("3.6", "3.7"), "filelock": ("3.15.4", "3.16.1"),
    "distlib": ("0.3.8", "0.3.9"),
}

RECORD = """
import julius_magics as jm
from julius_magics import recording
from julius_magics.cluster.session import get_session
session = get_session()
recording.start(session, "bisect16", store={store!r})
session.start(n_workers=1)
session.remote_eval("import tabulate\\ndef count_formats():\\n    return len(tabulate.tabulate_formats)")
session.add_rules("b", "def formats():\\n    return ApplyFn(count_formats)()")
print("RESULT", session.compute(jm.ref.b.formats(label="b:formats")))
recording.stop()
session.stop()
"""

BISECT = """
import json
from julius_magics.recording.rebuild import bisect_environment
r = bisect_environment("bisect16", {store!r}, n_workers=1, root={root!r})
print(json.dumps(r.as_dict()))
"""


def run(args, **kwargs):
    out = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if out.returncode != 0:
        raise SystemExit(f"{args[:3]} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return out


def isolated(name, store, root, cache=None):
    """Rebuild (or reuse) and replay verified; seconds of each part."""
    old = os.environ.get("UV_CACHE_DIR")
    if cache:
        os.environ["UV_CACHE_DIR"] = cache
    try:
        t0 = time.perf_counter()
        result = replay_isolated(name, store, build_progress=False, root=root)
        total = time.perf_counter() - t0
    finally:
        if cache:
            if old is None:
                os.environ.pop("UV_CACHE_DIR", None)
            else:
                os.environ["UV_CACHE_DIR"] = old
    assert result.verified and result.env_same, result.summary()
    build = sum(e.seconds for e in result.environments)
    return {"total": total, "build": build, "replay": total - build, "reused": result.environments[0].reused}


def cli_replay(store, name, work, *extra):
    """``julius replay NAME --json [extra]`` as a user runs it: wall seconds and the replay's timings."""
    t0 = time.perf_counter()
    out = run([sys.executable, "-m", "julius_magics.cli", "--store", store, "replay", name, "--json", *extra], cwd=work)
    wall = time.perf_counter() - t0
    report = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")][-1]["report"]
    assert report["verified"] and report["env_diff"]["same"], report["env_diff"]
    return wall, report["timings"]


def job_replay(name, store, root, work, variant):
    """The isolated replay from this process, its job started as ``variant`` says."""
    from julius_magics.recording import isolated as iso

    command = iso.job_command
    if variant == "old job (-m replay_job)":
        iso.job_command = lambda python, worker_python, argv, preload: [python, "-m",
                                                                       "julius_magics.recording.replay_job", *argv]
    try:
        t0 = time.perf_counter()
        result = iso.replay_isolated(name, store, build_progress=False, root=root, cwd=work,
                                     preload_workers=variant.endswith("+ preloaded fork server (default)"))
        wall = time.perf_counter() - t0
    finally:
        iso.job_command = command
    assert result.verified and result.env_same, result.summary()
    return wall, result.report["timings"]


def warm_rounds(name, store, root, work, rounds):
    """The warm isolated replay and the plain one, alternated ``rounds`` times."""
    isolated(name, store, root)   # built once (uv's cache warm)
    os.environ["JULIUS_ENVS"] = root
    cases = {"plain: julius replay --json": lambda: cli_replay(store, name, work),
             "isolated: julius replay --isolated --json": lambda: cli_replay(store, name, work, "--isolated"),
             **{v: (lambda v=v: job_replay(name, store, root, work, v))
                for v in ("old job (-m replay_job)", "job, slow imports kept out",
                          "job, slow imports kept out + preloaded fork server (default)")}}
    seen = {case: [] for case in cases}
    for i in range(rounds):
        for case, fn in cases.items():
            wall, t = fn()
            seen[case].append(wall)
            print(f"round {i + 1} {case:<52} {wall:5.1f} s: replay {t['replay']:4.1f} s = open {t.get('open', 0):3.1f} "
                  f"+ cluster start {t['cluster']:3.1f} + environment {t.get('environment', 0):3.1f} + computes "
                  f"{t['compute']:3.1f} (recorded {t['recorded_compute'] or 0.0:3.1f}) + close {t.get('close', 0):3.1f} "
                  f"+ the rest; outside it (processes' start, imports, env check, exit) {wall - t['replay']:3.1f} s",
                  flush=True)
    for case, walls in seen.items():
        walls.sort()
        print(f"median {case:<52} {walls[len(walls) // 2]:5.1f} s  (min {walls[0]:.1f}, max {walls[-1]:.1f})")


def pip_install(env, work):
    venv = os.path.join(work, "pip-venv")
    lines = [line for line in requirements(env).splitlines() if line and not line.startswith("#")]
    req = os.path.join(work, "requirements.txt")
    with open(req, "w") as f:
        f.write("\n".join(lines) + "\n")
    run(["python3", "-m", "venv", venv])   # with pip: not timed (uv venv has no pip to install either)
    t0 = time.perf_counter()
    run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", "--no-deps", "-r", req])
    return time.perf_counter() - t0, len([x for x in lines if not x.startswith("--")])


def bisect16(work, root):
    today = capture_environment()
    pins = {which: pin_set(today) for which in ("old", "new")}
    for name, (old, new) in CHANGED.items():
        pins["old"].packages[name], pins["new"].packages[name] = old, new
    old_env = build_environment(pins["old"], progress=False, root=root)
    new_env = build_environment(pins["new"], progress=False, root=root)
    store = os.path.join(work, "bisect-store")
    out = run([old_env.python, "-c", RECORD.format(store=store)], cwd=work)
    assert "RESULT 24" in out.stdout, out.stdout
    t0 = time.perf_counter()
    result = json.loads(run([new_env.python, "-c", BISECT.format(store=store, root=root)], cwd=work)
                        .stdout.strip().splitlines()[-1])
    return result, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--skip-pip", action="store_true")
    parser.add_argument("--skip-bisect", action="store_true")
    parser.add_argument("--warm-rounds", type=int, default=0, metavar="N",
                        help="only the warm case: N rounds of plain and isolated replays side by side")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-rebuild-")
    try:
        store = os.path.join(work, "store")
        run([sys.executable, "-m", "julius_magics.cli", "--store", store, "demo", "-n", "2", "--replay-workers", "2",
             "--data-dir", os.path.join(work, "data"), "--train-mb", "4", "--test-mb", "2"], cwd=work)
        name = next(e for e in os.listdir(store) if e.startswith("fraud-demo-"))
        env = capture_environment()
        print(f"tutorial recording {name}: {len(env['packages'])} pins, python {env['python']['version']}")
        if args.warm_rounds:
            return warm_rounds(name, store, os.path.join(work, "envs"), work, args.warm_rounds)
        figures = {}
        if not args.skip_cold:
            cache = os.path.join(work, "uv-cache-cold")
            figures["cold (empty uv cache)"] = isolated(name, store, os.path.join(work, "envs-cold"), cache)
        root = os.path.join(work, "envs")
        figures["uv cache warm, no env"] = isolated(name, store, root)
        figures["warm (env cached)"] = isolated(name, store, root)
        t0 = time.perf_counter()
        run([sys.executable, "-m", "julius_magics.cli", "--store", store, "replay", name, "--json"], cwd=work)
        plain = time.perf_counter() - t0
        print(f"{'plain replay (today, same env)':<26} total {plain:6.1f} s  (a subprocess, as the isolated replay)")
        for label, f in figures.items():
            print(f"{label:<26} total {f['total']:6.1f} s  = rebuild {f['build']:5.1f} s "
                  f"{'(reused)' if f['reused'] else '        '} + isolated replay {f['replay']:5.1f} s; "
                  f"total / plain replay = {f['total'] / plain:.2f}")
        if not args.skip_pip:
            seconds, count = pip_install(env, work)
            uv_build = figures["uv cache warm, no env"]["build"]
            print(f"pip install --no-deps -r ({count} pins, pip's cache as is): {seconds:.1f} s; "
                  f"uv rebuild (uv cache warm) {uv_build:.1f} s: pip / uv = {seconds / uv_build:.1f}")
        if not args.skip_bisect:
            result, seconds = bisect16(work, os.path.join(work, "envs"))
            print(f"bisect of {len(result['changed'])} changed packages: {result['message']}")
            print(f"  {len(result['rebuilds'])} rebuilds (bound ⌈log2 16⌉+1 = 5), {seconds:.1f} s in all "
                  f"(today's replay included)")
            for r in result["rebuilds"]:
                print(f"  rebuild {r['n']}: {len(r['take']):2d} from today, "
                      f"{'reused' if r['reused'] else 'built '} {r['seconds']:5.1f} s, "
                      f"replay {r['replay_seconds']:5.1f} s -> {'differs' if r['differs'] else 'matches'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
