"""Trust end to end: two users with their own keys, honest verdicts and exit codes, one test per finding of issue 9.

Users are real processes with their own home folders (``HOME``), so each has
its own ``~/.julius/key`` and ``~/.julius/trusted_keys``; they share one store.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import julius_magics
from julius_magics import cli
from julius_magics.errors import IntegrityError
from julius_magics.recording import integrity
from julius_magics.recording.store import Store
from tests.recording.store_contract import write_sample

pytestmark = pytest.mark.usefixtures("isolated_key")  # never the user's ~/.julius
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(julius_magics.__file__)))   # scripts import this julius

RECORD = textwrap.dedent("""
    import sys
    from julius_magics import recording, ref
    from julius_magics.cluster.session import Session, set_session
    def main():   # workers start from a fresh interpreter that imports this file: only run as a script
        session = set_session(Session())
        recording.start(session, sys.argv[2], store=sys.argv[1])
        session.start(n_workers=1)
        session.remote_eval("def square(x):\\n    return x * x")
        session.add_rules("t", "def sq(i):\\n    return ApplyFn(square, i)()")
        session.compute(ref.t.sq(7, label="seven squared"))
        {tail}
    if __name__ == "__main__":
        main()
""")

# re-sign a recording with this user's key: a third party who can write the store
RESIGN = textwrap.dedent("""
    import sys
    from julius_magics.recording.store import Store
    store = Store(sys.argv[1])
    rec = store.open(sys.argv[2], any_signer=True)
    steps = [(s.kind, s.data, {n: rec.part(s, n) for n in s.part_names}) for s in rec.steps]
    blobs = [rec.blob(sha) for sha in rec.blobs]
    meta = rec.meta
    store.delete(sys.argv[2])
    writer = store.create(sys.argv[2], meta)
    for data in blobs:
        writer.add_blob(data)
    for kind, data, parts in steps:
        writer.add_step(kind, data, parts)
    writer.close()
""")


class User:
    """Someone with their own home folder, running ``julius`` and Python in their own processes."""

    def __init__(self, home, store):
        self.home = home
        self.store = store
        home.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("JULIUS_")}
        self.env.update(HOME=str(home), JULIUS_STORE=str(store), JULIUS_NO_PROGRESS="1",
                        PYTHONPATH=os.pathsep.join([CHECKOUT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))

    def julius(self, *args, timeout=300):
        return subprocess.run([sys.executable, "-m", "julius_magics.cli", *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)

    def python(self, source, *args, timeout=300):
        script = self.home / "script.py"
        script.write_text(source)
        return subprocess.run([sys.executable, str(script), str(self.store), *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)

    def record(self, name, tail="recording.stop(); session.stop()"):
        proc = self.python(RECORD.replace("{tail}", tail), name)
        return proc

    def public_key_file(self):
        path = self.home / "key.pub"
        proc = self.julius("key", "--public")
        assert proc.returncode == 0, proc.stderr
        path.write_text(proc.stdout)
        return path

    def fingerprint(self):
        if not hasattr(self, "_fingerprint"):   # one `julius key` (which creates the key) per user
            self._fingerprint = self.julius("key").stdout.split("fingerprint ")[1].split()[0]
        return self._fingerprint


def assert_one_line_error(proc, command, code):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith(f"julius {command}: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_two_users_trust_and_a_third_party_resigning_is_refused(tmp_path):
    """Finding 2: signatures anyone can check; trust by key, never "any key"."""
    store = tmp_path / "shared-store"
    alice, bob, mallory = (User(tmp_path / who, store) for who in ("alice", "bob", "mallory"))
    assert alice.record("shared").returncode == 0
    # Bob cannot replay Alice's recording before he trusts her key
    refused = bob.julius("replay", "shared", "-n", "1")
    line = assert_one_line_error(refused, "replay", cli.EXIT_REFUSED)
    assert f"another key ({alice.fingerprint()}; yours is {bob.fingerprint()})" in line
    assert "julius trust add" in line and "VERIFIED" not in refused.stdout
    # --trust-key: for this recording only, by fingerprint
    once = bob.julius("replay", "shared", "-n", "1", "--trust-key", alice.fingerprint())
    assert once.returncode == cli.EXIT_VERIFIED and "VERIFIED: every result fingerprint matched" in once.stdout
    wrong = bob.julius("replay", "shared", "-n", "1", "--trust-key", mallory.fingerprint())
    assert_one_line_error(wrong, "replay", cli.EXIT_REFUSED)
    # trusting Alice's public key: her recordings verify for Bob from now on
    added = bob.julius("trust", "add", str(alice.public_key_file()), "--name", "Alice")
    assert added.returncode == 0 and f"trusted {alice.fingerprint()} Alice" in added.stdout
    assert f"{alice.fingerprint()}  Alice" in bob.julius("trust", "list").stdout
    replayed = bob.julius("replay", "shared", "-n", "1")
    assert replayed.returncode == cli.EXIT_VERIFIED, replayed.stdout + replayed.stderr
    assert "VERIFIED: every result fingerprint matched" in replayed.stdout
    listed = {r["name"]: r for r in json.loads(bob.julius("list", "--json").stdout)}
    assert listed["shared"]["status"] == "verified" and listed["shared"]["key_id"] == alice.fingerprint()
    assert listed["shared"]["trusted"] is True and listed["shared"]["signed_by_me"] is False
    # Mallory, who can write the store, signs the same recording again with her own key
    resigned = mallory.python(RESIGN, "shared")
    assert resigned.returncode == 0, resigned.stderr
    forged = bob.julius("replay", "shared", "-n", "1")
    line = assert_one_line_error(forged, "replay", cli.EXIT_REFUSED)
    assert mallory.fingerprint() in line and "VERIFIED" not in forged.stdout
    shown = bob.julius("show", "shared")
    assert shown.returncode == 0 and f"signed by {mallory.fingerprint()} (not trusted)" in shown.stdout
    listed = {r["name"]: r for r in json.loads(bob.julius("list", "--json").stdout)}
    assert listed["shared"]["status"] == "complete" and listed["shared"]["trusted"] is False


KILLED = "print('steps', recording.active_recorder().steps, flush=True); import os, signal; os.kill(os.getpid(), signal.SIGKILL)"


def test_an_incomplete_recording_is_never_verified(tmp_path):
    """Finding 1: a SIGKILLed kernel's recording reproduces "up to step K", exit 3, not verified."""
    alice = User(tmp_path / "alice", tmp_path / "store")
    proc = alice.record("killed", tail=KILLED)
    assert proc.returncode == -signal.SIGKILL
    steps = int(proc.stdout.split("steps")[1])
    replayed = alice.julius("replay", "killed", "-n", "1")
    assert replayed.returncode == cli.EXIT_INCOMPLETE, replayed.stdout + replayed.stderr
    assert f"reproduced up to step {steps} of an incomplete recording" in replayed.stdout
    assert "VERIFIED:" not in replayed.stdout and "NOT VERIFIED" in replayed.stdout
    as_json = alice.julius("replay", "killed", "-n", "1", "--json")
    report = json.loads(as_json.stdout.splitlines()[-1])["report"]
    assert as_json.returncode == cli.EXIT_INCOMPLETE and report["verified"] is False and report["complete"] is False
    assert "verified" not in {r["status"] for r in json.loads(alice.julius("list", "--json").stdout)}


def test_rollback_of_a_closed_recording_is_refused(isolated_key):
    """Finding 3: an earlier, incomplete manifest of a closed recording fails; without the marker it is incomplete."""
    store = Store(isolated_key.parent / "store")
    sample = write_sample(store, close=False)
    early = store.files.read(store.files.path("sample", "manifest.json"))
    sample["writer"].close()
    store.files.write(store.files.path("sample", "manifest.json"), early)
    last = store.files.read(store.files.path("sample", "journal", "000004.json"))
    store.files.rm(store.files.path("sample", "journal", "000004.json"))
    with pytest.raises(IntegrityError, match="^Recording 'sample' was closed with 4 steps, but its manifest is an "
                                             "earlier, incomplete one"):
        store.open("sample")
    assert cli.main(["--store", store.url, "show", "sample"]) == cli.EXIT_REFUSED
    assert cli.main(["--store", store.url, "replay", "sample"]) == cli.EXIT_REFUSED
    # deleting the marker too: the incomplete manifest still signs the 4 steps it had
    store.files.rm(store.files.path("sample", "closed.json"))
    with pytest.raises(IntegrityError, match="journal entry 4 is missing \\(the manifest has 4\\)"):
        store.open("sample")
    # with every step back, it is an incomplete recording: it can never replay as verified
    store.files.write(store.files.path("sample", "journal", "000004.json"), last)
    assert store.open("sample").info.status == "incomplete"


def test_verification_sidecars_are_signed_and_a_bad_one_never_blocks(isolated_key, capsys):
    """Finding 4: verified.json counts only when signed by a trusted key; garbage is ignored with a warning."""
    store = Store(isolated_key.parent / "store")
    write_sample(store)
    store.mark_verified("sample", {"verified": True})
    assert store.info("sample").status == "verified" and store.open("sample").verification["summary"] == {"verified": True}
    stranger = integrity.SigningKey.generate()
    path = store.files.path("sample", "verified.json")
    good = json.loads(store.files.read(path))
    body = {k: v for k, v in good.items() if k not in integrity.SEAL_FIELDS}
    for bad in (b"garbage", integrity.seal({**body, "key_id": stranger.fingerprint}, stranger),
                integrity.seal({**body, "manifest_sha256": "0" * 64, "key_id": good["key_id"]}, integrity.load_key())):
        store.files.write(path, bad)
        with pytest.warns(UserWarning, match="Recording 'sample': verified.json .*ignored"):
            assert store.info("sample").status == "complete"
        with pytest.warns(UserWarning, match="ignored"):
            rec = store.open("sample")   # never blocks a replay
        assert rec.verification is None and rec.info.status == "complete"
        assert cli.main(["--store", store.url, "list"]) == 0
        out, err = capsys.readouterr()
        assert "verified" not in out and "complete" in out


def test_forged_manifests_are_one_line_errors_and_list_skips_them(isolated_key, capsys):
    """Finding 5: a validly signed manifest of the wrong shape never crashes a reader."""
    store = Store(isolated_key.parent / "store")
    write_sample(store, "good")
    write_sample(store, "bad")
    key = integrity.load_key()
    path = store.files.path("bad", "manifest.json")
    body = {k: v for k, v in json.loads(store.files.read(path)).items() if k not in integrity.SEAL_FIELDS}
    for created in (None, 5):
        store.files.write(path, integrity.seal({**body, "created": created}, key))
        with pytest.warns(UserWarning, match="^skipped recording 'bad': Recording 'bad': manifest.json is malformed: at created"):
            assert [info.name for info in store.list()] == ["good"]
        assert cli.main(["--store", store.url, "list"]) == 0
        out, err = capsys.readouterr()
        assert "good" in out and "bad" not in out
        assert err.count("\n") == 1 and "julius list: skipped recording 'bad'" in err
        for argv in (["show", "bad"], ["diff", "good", "bad"], ["env", "bad"], ["replay", "bad"]):
            assert cli.main(["--store", store.url, *argv]) in (cli.EXIT_ERROR, cli.EXIT_REFUSED)
            out, err = capsys.readouterr()
            assert err == f"julius {argv[0]}: Recording 'bad': manifest.json is malformed: at created: " \
                          f"{created} is not of type 'string'.\n"


def test_legacy_hmac_recordings_need_legacy_hmac(isolated_key):
    """The julius-recording/1 format: read only with legacy_hmac, only with your own key file."""
    from tests.recording.legacy import write_legacy_sample

    store = Store(isolated_key.parent / "store")
    write_legacy_sample(store, "old")
    with pytest.raises(Exception, match="old HMAC signature.*--legacy-hmac"):
        store.open("old")
    rec = store.open("old", legacy_hmac=True)
    assert [s.kind for s in rec.steps] == ["cluster", "cell"] and rec.info.signed_by_me
    assert cli.main(["--store", store.url, "show", "old"]) == cli.EXIT_REFUSED
    assert cli.main(["--store", store.url, "show", "old", "--legacy-hmac"]) == 0


def test_worker_counts_must_be_positive(capsys):
    """Finding 8: -n 0 and negative counts are usage errors, not "as recorded"."""
    for bad in ("0", "-2", "two"):
        with pytest.raises(SystemExit) as exited:
            cli.main(["replay", "x", "-n", bad])
        assert exited.value.code == 2
        assert f"argument -n/--workers: invalid worker count {bad if bad != 'two' else repr(bad)}" in capsys.readouterr().err


def test_replay_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["replay", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("0 verified", "1 not verified", "2 error", "3 incomplete", "4 refused"):
        assert text in out


def test_replay_magic_refuses_a_zero_worker_count(ip):
    from IPython.core.error import UsageError

    for bad in ("0", "-1"):
        with pytest.raises(UsageError, match=f"invalid worker count {bad}: give a positive integer"):
            ip.run_line_magic("replay", f"x -n {bad}")


UNSEEDED = textwrap.dedent("""
    import builtins, random, dask
    def draw(i):
        # unseeded on the workers: differs on replay; and, like code indexing by a random draw,
        # a second run in the same worker raises (the replay's re-check must survive it)
        count = getattr(builtins, "_julius_draws", 0)
        builtins._julius_draws = count + 1
        if count >= 1:
            return [1, 2, 3][random.randint(10, 20)]
        return random.randint(0, 10**12) + i
    drawn = dask.delayed(draw)(0).compute()
    steady = dask.delayed(sum)([1, 2, 3]).compute()
""")


def test_a_graph_whose_recheck_raises_still_reports_every_difference(ip, isolated_key):
    """Finding 7: genuine randomness differs on replay; the non-determinism re-check raising never kills the replay."""
    from tests.support import run
    from julius_magics import recording

    store = Store(isolated_key.parent / "store")
    run(ip, "%cluster start -n 1")
    try:
        run(ip, f"%record start unseeded --store {store.url}")
        run(ip, UNSEEDED)
        run(ip, "%record stop")
    finally:
        run(ip, "%cluster stop")
    report = recording.replay("unseeded", store=store, n_workers=1)
    assert report.complete and report.results >= 2 and not report.verified
    [mismatch] = report.mismatches
    assert mismatch["label"].startswith("dask key draw-") and mismatch["cause"].startswith("non-deterministic operation")
    assert "NOT VERIFIED" in report.summary() and "differs: dask key draw-" in report.summary()


def test_a_legacy_recording_moves_to_the_new_format_by_export_and_import(isolated_key, tmp_path):
    from tests.recording.legacy import write_legacy_sample

    store = Store(isolated_key.parent / "store")
    write_legacy_sample(store, "old")
    assert cli.main(["--store", store.url, "export", "old", str(tmp_path / "old.jrec")]) == cli.EXIT_REFUSED
    assert cli.main(["--store", store.url, "export", "old", str(tmp_path / "old.jrec"), "--legacy-hmac"]) == 0
    assert cli.main(["--store", store.url, "import", str(tmp_path / "old.jrec"), "--as", "new", "--legacy-hmac"]) == 0
    new = store.open("new")
    assert new.manifest["format"] == integrity.FORMAT and [s.data for s in new.steps] == \
        [s.data for s in store.open("old", legacy_hmac=True).steps]


@pytest.mark.parametrize("kind, data, field", [
    ("inputs", {"files": [{"path": "a.csv", "abspath": "/a.csv", "cwd": "/", "size": 3, "sha256": "not a hash"}]},
     "sha256"),
    ("inputs", {"files": [{"path": "a.csv", "abspath": "/a.csv", "cwd": "/", "size": 3, "sha256": "0" * 64,
                           "mtime_ns": "x"}]},
     "mtime_ns"),
    ("outputs", {"files": [{"path": 7, "abspath": "/b.csv"}]}, "path"),
    ("worker_joined", {"worker": "tcp://h:1", "workers": 2**70}, "workers"),   # a replay scales to it
    ("worker_left", {"worker": "tcp://h:1", "workers": -1}, "workers"),
])
def test_a_step_of_files_or_worker_counts_of_the_wrong_shape_is_refused_naming_it(kind, data, field):
    from julius_magics.recording.journal import Step
    from julius_magics.recording.schema import check_step

    with pytest.raises(IntegrityError, match=rf"journal entry 4 \({kind}\).*{field}"):
        check_step(Step(4, kind, data, ()), "Recording 'forged'")
