"""A recording that spans a kernel crash still lists every step before it, and never replays "verified".

A real ipykernel (jupyter_client) records a few cells that compute on a cluster;
then the kernel is killed with SIGKILL, as the OOM killer would.
"""

import json
import os
import signal
import sys

import pytest

from julius_magics.recording import steps
from julius_magics.recording.store import Store
from julius_magics.recording.verdict import EXIT_INCOMPLETE
from tests.support import graphs_sent, julius

CELLS = [
    "%load_ext julius_magics",
    "%record start crashed",
    "%cluster start -n 1",
    "import dask\nsmall = dask.delayed(sum)([1, 2, 3]).compute()",
    "doubled = dask.delayed(lambda v: v * 2)(small).compute()",
    "import dask.array as da\nlast = float(da.arange(10, chunks=5).sum().compute())\nprint(small, doubled, last)",
]


@pytest.fixture
def kernel(tmp_path):
    """A real IPython kernel of this interpreter, its store ``tmp_path/store``: ``(manager, client)``."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    spec = tmp_path / "kernels" / "julius-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "julius test", "language": "python"}))
    manager = KernelManager(kernel_name="julius-test",
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))
    manager.start_kernel(cwd=str(tmp_path), env={**os.environ, "JULIUS_STORE": str(tmp_path / "store")})
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
        yield manager, client
    finally:
        client.stop_channels()
        pid = manager.provisioner.process.pid
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            group = None
        if manager.is_alive():
            manager.shutdown_kernel(now=True)
        if group is not None and group != os.getpgid(0):   # the crashed kernel's orphaned worker processes
            os.killpg(group, signal.SIGKILL)


def _execute(client, code):
    printed = []
    reply = client.execute_interactive(code, timeout=180, output_hook=lambda msg: printed.append(
        msg["content"].get("text", "")) if msg["msg_type"] == "stream" else None)
    assert reply["content"]["status"] == "ok", (code, reply["content"])
    return "".join(printed)


def test_a_recording_spanning_a_kernel_crash_lists_every_step_before_it(kernel, tmp_path):
    manager, client = kernel
    printed = [_execute(client, cell) for cell in CELLS]
    assert printed[-1].strip() == "6 12 45.0"
    pid = manager.provisioner.process.pid
    group = os.getpgid(pid)
    os.kill(pid, signal.SIGKILL)
    manager.provisioner.process.wait(timeout=30)
    if group != os.getpgid(0):
        os.killpg(group, signal.SIGKILL)   # its cluster's worker processes die with it

    store = tmp_path / "store"
    listing = json.loads(julius(store, "list", "--json").stdout)
    assert [(r["name"], r["status"]) for r in listing] == [("crashed", "incomplete")]

    rec = Store(store).open("crashed")
    kinds = [s.kind for s in rec.steps]
    assert graphs_sent(rec) == 3 and "cluster" in kinds and "environment" in kinds
    cells = [s.data["source"] for s in rec.steps if s.kind == "cell"]
    assert cells == CELLS[2:]   # every cell after %record start, the last one too
    results = sorted(r["describe"] for s in rec.steps for r in steps.results(s).values())
    assert results == ["int 12", "int 6", "int64 45"]

    shown = julius(store, "show", "crashed")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"crashed: incomplete, {len(kinds)} steps, ")
    listed = lines[lines.index("steps:") + 1:][:len(kinds)]
    assert [line.split()[:2] for line in listed] == [[str(seq), kind] for seq, kind in enumerate(kinds, 1)]
    assert "results: 3" in lines

    replayed = julius(store, "replay", "crashed", "-n", "1", cwd=tmp_path)
    assert replayed.returncode == EXIT_INCOMPLETE, replayed.stdout + replayed.stderr
    head = replayed.stdout.splitlines()[0]
    assert head.startswith(f"Replay of 'crashed': {len(kinds)}/{len(kinds)} steps, 3 results compared -> NOT VERIFIED")
    assert (f"reproduced up to step {len(kinds)} of an incomplete recording (every result matched)"
            in replayed.stdout)
    assert "VERIFIED:" not in replayed.stdout
