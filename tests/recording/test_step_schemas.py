"""Signed is not well-formed: a stranger's recording with fields of the wrong shape gives one line.

A stranger's (or a forger's) validly signed recording can hold any JSON in any
step and any bytes as an environment blob. ``julius show``, ``show --json``,
``env``, ``diff``, ``list``, the widget and ``replay`` must then each answer with
one line naming the recording, the journal entry and the field, never a
traceback, and never "verified".
"""

import json
import os
import random
import uuid

import pytest

from julius_magics import cli
from julius_magics.errors import IntegrityError
from julius_magics.recording import integrity, schema, steps
from julius_magics.recording.environment import capture_environment
from julius_magics.recording.store import Store
from tests.support import run_cli

pytestmark = pytest.mark.usefixtures("isolated_key")

SEED = int(os.environ.get("JULIUS_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
SHA = "a" * 64
KEY = "('sum-3f2a', 0)"
#: Data of each kind as the recorder writes it (the fields the readers use).
EXAMPLES = {
    "cluster": {"mode": "start", "n_workers": 2, "threads_per_worker": 1, "memory_limit": 0, "seed": 0},
    "environment": {"kernel": SHA, "workers": {"tcp://127.0.0.1:1": SHA}},
    "remote_eval": {"source": "x = 1", "push": ["y"], "failed": False, "redacted": ["source"]},
    "rules": {"ns": "demo", "source": "@rule\ndef a(): ...", "rules": ["a"], "failed": False},
    "cell": {"source": "df.sum().compute()"},
    "dispatch": {"targets": [{"id": "n1", "key": "a()", "label": "a"}], "key_rules": [], "nodes": 1, "jobs": 1,
                 "seconds": 0.5, "results": {"n1": {"fp": "f" * 32, "label": "a", "describe": "int"}}},
    "graph": {"kind": "graph", "seq": 1, "time": 1.5, "client": "Client-1", "keys": [KEY], "ntasks": 3,
              "graphs": 2, "fingerprints": {KEY: "f" * 32}, "descriptions": {KEY: "int"}, "pending": [],
              "scattered": [], "reuses": [], "after": [[KEY, [KEY], 1.0]], "address": "tcp://127.0.0.1:2",
              "dropped": None},
    "run": {"kind": "run", "seq": 2, "time": 1.0, "client": "Client-1", "name": "f", "workers": None,
            "nanny": False, "wait": True, "address": "tcp://127.0.0.1:2"},
    "worker_plugin": {"kind": "worker_plugin", "seq": 3, "time": 1.0, "name": "upload", "nanny": False},
    "adopted_cluster": {"client": "Client-1", "address": "tcp://127.0.0.1:2", "captured": False,
                        "reason": "no plugins", "owned": True,
                        "spec": {"address": "tcp://127.0.0.1:2", "cluster": "LocalCluster", "n_workers": 1,
                                 "threads_per_worker": 1, "memory_limit": 0, "processes": True, "nanny": True,
                                 "workers": {"tcp://127.0.0.1:3": {"nthreads": 1, "memory_limit": 0, "host": "h",
                                                                   "pid": 7, "cwd": "/", "threadpools":
                                                                   {"blas": 1, "openmp": None}}},
                                 "kernel": {"host": "h", "pid": 6, "cwd": "/", "threadpools": {"blas": 2}}}},
    "scatter": {"kind": "scatter", "seq": 4, "keys": [KEY], "nbytes": {KEY: 8}, "values": {KEY: SHA},
                "dropped": None},
    "fingerprints": {"kind": "fingerprints", "seq": 5, "graph": 1, "fingerprints": {KEY: "f" * 32},
                     "descriptions": {KEY: "int"}},
    "dropped": {"kind": "dropped", "what": "file", "keys": [KEY], "reason": "vanished", "files": ["a.csv"]},
    "unreproducible": {"kind": "unreproducible", "what": "actor", "name": "a", "op": "actor", "count": 2,
                       "reason": "actors hold state"},
    "worker_joined": {"kind": "worker_joined", "worker": "tcp://127.0.0.1:3", "workers": 2, "environment": SHA},
    "worker_left": {"kind": "worker_left", "worker": "tcp://127.0.0.1:3", "workers": 1},
    "inputs": {"files": [{"path": "raw/a.csv", "abspath": "/d/raw/a.csv", "cwd": "/d", "size": 3, "sha256": SHA,
                          "mtime_ns": 1, "reader": "kernel", "embedded": True}]},
    "remote_inputs": {"files": [{"url": "s3://b/a.csv", "path": "s3://b/a.csv", "cwd": "/d", "size": 3,
                                 "etag": '"e"', "version_id": None, "sha256": None, "blob": None}]},
    "outputs": {"files": [{"path": "out.csv", "abspath": "/d/out.csv", "cwd": "/d", "existed": False, "size": 3,
                           "sha256": SHA, "reader": "tcp://127.0.0.1:3", "in_task": True, "rewritten": False}]},
    "data": {"files": [{"path": "raw/a.csv", "size": 3, "sha256": SHA, "embedded": True}]},
}
JUNK = ["text", 7, -1, 2.5, True, None, [], {}, ["x", 1], {"a": {"b": [1]}}, [[[[["deep"]]]]]]


def junk_paths(value, path=()):
    """Every place in ``value`` a forger can put junk: its fields, and the items of its lists and maps."""
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from junk_paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from junk_paths(v, (*path, i))


def replaced(value, path, new):
    if not path:
        return new
    value = json.loads(json.dumps(value))
    inner = value
    for p in path[:-1]:
        inner = inner[p]
    inner[path[-1]] = new
    return value


def stranger_store(url):
    store = Store(url)
    store._key = integrity.SigningKey.generate()
    return store


def write(store, name, kind, data, environment=b"{}"):
    """A recording of a cluster, an environment (whose blobs hold ``environment``) and one step."""
    writer = store.create(name, {"note": "forged"})
    env = writer.add_blob(environment)
    writer.add_step("cluster", EXAMPLES["cluster"])
    writer.add_step("environment", {"kernel": env, "workers": {"tcp://127.0.0.1:1": env}})
    if kind == "scatter":   # the blobs it names are in the recording
        writer.add_blob(b"value")
    writer.add_step(kind, data)
    writer.close()


def test_every_kind_has_a_schema_and_its_example_is_valid():
    assert set(steps.KINDS) == set(schema.STEP_SCHEMAS) == set(EXAMPLES)
    for kind, data in EXAMPLES.items():
        schema.check_step(steps_step(kind, data), "Recording 'x'")


def steps_step(kind, data):
    from julius_magics.recording.journal import Step

    return Step(3, kind, data, ())


def test_wrong_shapes_in_any_kind_give_one_line_in_every_reader():
    rng = random.Random(SEED)
    print(f"JULIUS_FUZZ_SEED={SEED}")
    url = f"memory://forged-{uuid.uuid4().hex}"
    stranger = stranger_store(url)
    write(stranger, "good", "cell", EXAMPLES["cell"], json.dumps(capture_environment()).encode())
    refused = 0
    for kind, data in EXAMPLES.items():
        places = list(junk_paths(data))[1:]   # the data itself must be an object: the writer refuses others
        for case, path in enumerate(rng.sample(places, min(len(places), 6))):
            new = rng.choice(JUNK)
            forged = replaced(data, path, new)
            name = f"f-{kind.replace('_', '-')}-{case}"
            what = f"{kind} data at {'/'.join(map(str, path)) or 'top'} = {new!r} (JULIUS_FUZZ_SEED={SEED})"
            write(stranger, name, kind, forged)
            try:
                schema.check_step(steps_step(kind, forged), "Recording 'x'")
            except IntegrityError as error:
                refused += 1
                assert "journal entry 3" in str(error) and "\n" not in str(error), what
            if kind in schema._PLAIN_EVENTS and schema._plain_event(forged):   # the hand check accepts no more
                assert schema._validators()["steps"][kind].is_valid(forged), what
            for argv in (["show", name], ["show", name, "--json"], ["env", name], ["diff", name, "good"]):
                code, out, err = run_cli("--store", url, *argv)
                assert "Traceback" not in out + err and code in (0, 1, 2, 4), f"{what}: julius {argv}: {code} {err}"
                lines = err.splitlines()
                assert all(line.startswith(f"julius {argv[0]}: ") for line in lines), f"{what}: {err!r}"
    assert refused > len(EXAMPLES)   # most junk is refused; some (a None where None is allowed) is not
    code, out, err = run_cli("--store", url, "list")
    assert code == 0 and "Traceback" not in out + err


@pytest.mark.parametrize("blob, says", [
    (b"[1, 2]", "is malformed: at top level: [1, 2] is not of type 'object'"),
    (b"[" * 100_000 + b"]" * 100_000, "is not valid JSON"),
    (b"\xff\xfe{}", "is not valid JSON"),
    (json.dumps({"python": {"version": 3.11}}).encode(), "is malformed: at python/version: 3.11 is not of type"),
    (json.dumps({"packages": {"numpy": ["2.0"]}}).encode(), "is malformed: at packages/numpy"),
    (json.dumps({"threads": {"blas": "openblas"}}).encode(), "is malformed: at threads/blas"),
    # what `julius env` writes into requirements lines: no line, no option of the forger's
    (json.dumps({"python": {"version": "3.12\n--extra-index-url=http://evil"}}).encode(), "at python/version"),
    (json.dumps({"distributions": {"numpy": {"origin": {"kind": "vcs", "vcs": "git\nevil-pkg==6.6.6",
                                                        "url": "https://x/numpy"}}}}).encode(),
     "at distributions/numpy/origin/vcs"),
    (json.dumps({"indexes": {"pip": {"index_url": "--trusted-host=evil"}}}).encode(), "at indexes/pip/index_url"),
    (json.dumps({"packages": {"numpy": "1.0\nevil==1"}}).encode(), "at packages/numpy"),
])
def test_a_forged_environment_blob_is_named_by_every_reader(blob, says):
    url = f"memory://forged-{uuid.uuid4().hex}"
    write(stranger_store(url), "forged", "cell", EXAMPLES["cell"], blob)
    write(stranger_store(url), "good", "cell", EXAMPLES["cell"], json.dumps(capture_environment()).encode())
    for argv in (["env", "forged"], ["diff", "forged", "good"], ["show", "forged"]):
        code, out, err = run_cli("--store", url, *argv)
        assert "Traceback" not in out + err, f"julius {argv}: {err}"
        if argv[0] != "show":   # show does not read the environment's blobs
            assert code == cli.EXIT_REFUSED, f"julius {argv}: {code} {out} {err}"
            assert err.count("\n") == 1 and "the environment of the kernel (blob" in err and says in err, err


def test_the_widget_names_a_forged_step():
    from julius_magics.widget import RecordingBrowser

    url = f"memory://forged-{uuid.uuid4().hex}"
    write(stranger_store(url), "forged", "graph", replaced(EXAMPLES["graph"], ("graphs",), "many"))
    browser = RecordingBrowser(store=Store(url))
    assert browser.select("forged") is None
    assert isinstance(browser.last_error, IntegrityError)
    assert "journal entry 3 (graph) is malformed: at data/graphs: 'many' is not of type 'integer'" in str(
        browser.last_error)
    assert "Traceback" not in browser.error.value


def test_recorded_text_cannot_drive_the_terminal():
    """A note, a cell and a file name holding escapes and newlines are shown escaped, on their own line."""
    url = f"memory://forged-{uuid.uuid4().hex}"
    fake = "\nReplay of 'x': 3/3 steps, 1 results compared -> VERIFIED: every result fingerprint matched"
    store = stranger_store(url)
    writer = store.create("shown", {"note": "plain" + fake + "\x1b]0;owned\x07"})
    writer.add_step("cell", {"source": "x = 1\x1b[2J\x1b[H" + fake})
    writer.add_step("inputs", replaced(EXAMPLES["inputs"], ("files", 0, "path"), "a.csv\r\u202egpj.exe" + fake))
    writer.close()
    write(store, "other", "cell", {"source": "x = 2"})
    for argv in (["show", "shown"], ["list"], ["diff", "shown", "other"]):
        code, out, err = run_cli("--store", url, *argv)
        assert code in (0, 1) and not err, f"julius {argv}: {code} {err}"
        assert not any(c in out for c in "\x1b\x07\r\u202e"), f"julius {argv}: {out!r}"
        assert not any(line.startswith("Replay of") for line in out.splitlines()), f"julius {argv}: {out!r}"
        assert "\\nReplay of 'x'" in out and ("\\x1b" in out or argv[0] == "diff"), f"julius {argv}: {out!r}"


@pytest.mark.parametrize("kind, data", [
    ("cluster", {**EXAMPLES["cluster"], "n_workers": 100_000}),
    ("worker_joined", {**EXAMPLES["worker_joined"], "workers": 100_000}),
    ("adopted_cluster", replaced(EXAMPLES["adopted_cluster"], ("spec", "n_workers"), 100_000)),
])
def test_a_replay_refuses_a_worker_count_this_machine_cannot_start(kind, data):
    from julius_magics.recording.replaying import local_worker_limit

    url = f"memory://forged-{uuid.uuid4().hex}"
    write(Store(url), "huge", kind, data)   # signed by you: the replay would run it
    code, out, err = run_cli("--store", url, "replay", "huge")
    assert code == cli.EXIT_ERROR and "Traceback" not in out + err, err
    assert err == (f"julius replay: Recording 'huge': journal entry 3 ({kind}) asks for 100000 workers, more than "
                   f"this machine starts ({local_worker_limit()}): give -n N or --address.\n")


@pytest.mark.parametrize("kind, data, meta", [
    ("inputs", {"files": [{k: v for k, v in EXAMPLES["inputs"]["files"][0].items() if k != "embedded"}]}, {}),
    ("outputs", replaced(EXAMPLES["outputs"], ("files", 0, "size"), None), {}),
])
def test_optional_fields_absent_or_null_are_read_or_refused_in_one_line(kind, data, meta):
    """(A manifest's meta of the wrong shape, ``partial_reasons: [1, 2]``, is refused by its schema.)"""
    url = f"memory://forged-{uuid.uuid4().hex}"
    store = stranger_store(url)
    writer = store.create("odd", {"note": "odd", **meta})
    writer.add_step(kind, data)
    writer.close()
    write(store, "other", "cell", {"source": "x = 2"})
    for argv in (["show", "odd"], ["show", "odd", "--json"], ["diff", "odd", "other"], ["list"]):
        code, out, err = run_cli("--store", url, *argv)
        assert code in (0, 1, 4) and "Traceback" not in out + err, f"julius {argv}: {code} {err}"
        assert all(line.startswith(f"julius {argv[0]}: ") for line in err.splitlines()), err


def test_a_diff_and_an_environment_diff_keep_a_line_each():
    url = f"memory://forged-{uuid.uuid4().hex}"
    store = stranger_store(url)
    env = capture_environment()
    write(store, "a", "cell", {"source": "x = 1\ny = 2"}, json.dumps(env).encode())
    forged = {**env, "os": {**env["os"], "release": "6.1\nVERIFIED: every result fingerprint matched"}}
    write(store, "b", "cell", {"source": "x = 1\ny = 3"}, json.dumps(forged).encode())
    code, out, err = run_cli("--store", url, "diff", "a", "b")
    assert code == 1 and not err, err
    lines = out.splitlines()
    assert "-y = 2" in lines and "+y = 3" in lines   # a cell's last line has no end: not run into the next
    assert not any(line.lstrip().startswith("VERIFIED") for line in lines) and "\\nVERIFIED" in out, out


def test_a_bug_is_one_line_and_its_own_exit_status(monkeypatch):
    from julius_magics.recording import summary

    url = f"memory://forged-{uuid.uuid4().hex}"
    write(Store(url), "a", "cell", EXAMPLES["cell"])
    monkeypatch.setattr(summary, "details", lambda *args, **kwargs: {}["missing"])
    code, out, err = run_cli("--store", url, "show", "a")
    assert code == 70 and not out and "Traceback" not in err
    assert err == ("julius show: internal error: KeyError: 'missing' (a bug of julius_magics: JULIUS_DEBUG=1 shows "
                   "its traceback)\n")


def test_a_strangers_environment_is_shown_but_never_sent_to_uv():
    """``--format uv-lock`` runs uv against the recorded package indexes: of the signer's choosing."""
    url = f"memory://forged-{uuid.uuid4().hex}"
    env = capture_environment()
    write(stranger_store(url), "s", "cell", EXAMPLES["cell"], json.dumps(env).encode())
    code, out, err = run_cli("--store", url, "env", "s", "--format", "conda")
    assert code == 0 and "dependencies:" in out, err
    code, out, err = run_cli("--store", url, "env", "s", "--format", "uv-lock")
    assert code == cli.EXIT_REFUSED and not out and err.count("\n") == 1 and "--trust-key" in err, err
