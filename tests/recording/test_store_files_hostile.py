"""A local store folder from anyone (a shared folder, an unpacked download): readers refuse what is not a
regular file reached without symbolic links, and JSON documents too large to be one, in one line and at
once; a delete never reaches outside the store.

Every reader of a hostile store runs in a child process with a 2 GiB heap and a timeout: a reader that
slurps /dev/zero or a sparse 6 GB file fails there fast, and one that blocks on a FIFO is killed, without
taking the machine (or the test session) with it.
"""

import asyncio
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
import threading

import pytest

from julius_magics.errors import IntegrityError, RecordingNotFoundError
from julius_magics.recording.store import Store
from tests.recording.store_contract import BLOB, SPEC, content, write_sample
from tests.support import run_cli

pytestmark = pytest.mark.usefixtures("isolated_key")

SPEC_PART = f"parts/{hashlib.sha256(SPEC).hexdigest()}"
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()
HEAP = 2 << 30        # RLIMIT_DATA of a child reader
SECONDS = 20          # what any one read of a hostile store may take, at most
# the most a child reading a 6 GiB document may hold: its imports (pandas, distributed) take 300 - 450 MB,
# a read of the document would take 6 GiB (it hits the 2 GiB heap limit first: MemoryError)
MOST_RSS_MB = 1024

# Runs the calls of argv[2] (JSON) against the store argv[1]; prints what each gave, and the child's peak RSS.
CHILD = textwrap.dedent(r'''
    import contextlib, io, json, resource, sys, time, traceback, warnings
    from julius_magics import cli
    from julius_magics.recording.store import Store

    url, calls = sys.argv[1], json.loads(sys.argv[2])
    results = []
    for call in calls:
        started, out, err, result = time.monotonic(), io.StringIO(), io.StringIO(), {"call": call}
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                if call[0] == "Store":   # ["Store", method, *args]: the Python API
                    store, problems = Store(url), []
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        if call[1] == "list":
                            result["names"] = [info.name for info in store.list(problems=problems)]
                            result["problems"] = problems
                        elif call[1] == "open":
                            store.open(*call[2:], any_signer=True)
                        else:
                            getattr(store, call[1])(*call[2:])
                else:   # the command line, in-process
                    result["code"] = cli.main(["--store", url, *call])
        except BaseException as error:
            result.update(error=type(error).__name__, message=str(error), traceback=traceback.format_exc())
        result.update(stdout=out.getvalue(), stderr=err.getvalue(), seconds=time.monotonic() - started)
        results.append(result)
    print(json.dumps({"results": results, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
''')


def run_child(store_url, calls, timeout=90):
    """Run ``calls`` (see ``CHILD``) in a child process with a bounded heap; ``(results, peak RSS in MB)``."""
    def bounded():
        resource.setrlimit(resource.RLIMIT_DATA, (HEAP, HEAP))

    env = dict(os.environ, JULIUS_NO_PROGRESS="1")
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(store_url), json.dumps(calls)], capture_output=True,
                              text=True, timeout=timeout, preexec_fn=bounded, env=env,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    except subprocess.TimeoutExpired:
        pytest.fail(f"a reader of the hostile store hung: {calls} did not finish in {timeout} s")
    assert done.returncode == 0, f"the reader crashed:\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for result in report["results"]:
        assert result["seconds"] < SECONDS, result
    return report["results"], report["maxrss_mb"]


def assert_refused(result, *named):
    """A store call raised IntegrityError in one line naming ``named``; a CLI call exited non-zero so,
    with no traceback."""
    if result["call"][0] == "Store":
        assert result.get("error") == "IntegrityError", result
        message = result["message"]
    else:
        assert "error" not in result, result["traceback"]
        assert result["code"] not in (0, None), result
        assert "Traceback" not in result["stderr"] + result["stdout"]
        lines = result["stderr"].strip().splitlines()
        assert len(lines) == 1, result["stderr"]
        message = lines[0]
        assert message.startswith(f"julius {result['call'][0]}: ")
    assert "\n" not in message
    for text in named:
        assert text in message, (text, message)
    return message


READERS = [["Store", "open", "sample"], ["show", "sample"], ["env", "sample"], ["diff", "sample", "sample"],
           ["replay", "sample"]]


@pytest.fixture
def sample(tmp_path):
    """A local store holding the closed recording ``sample``; its folder."""
    root = tmp_path / "store"
    write_sample(Store(root))
    return root


def test_part_symlinked_to_dev_zero_is_refused(sample):
    part = sample / "sample" / SPEC_PART
    part.unlink()
    os.symlink("/dev/zero", part)
    results, _ = run_child(sample, READERS + [["export", "sample", str(sample.parent / "out.jrec")]])
    for result in results:
        message = assert_refused(result, "Recording 'sample'", SPEC_PART)
        assert "symbolic link" in message
    assert not (sample.parent / "out.jrec").exists()


def test_blob_symlinked_to_dev_zero_is_refused(sample):
    blob = sample / "_blobs" / BLOB_SHA
    blob.unlink()
    os.symlink("/dev/zero", blob)
    results, _ = run_child(sample, READERS)
    for result in results:
        message = assert_refused(result, BLOB_SHA[:12])
        assert "symbolic link" in message
    assert Store(sample).files.size(str(blob)) is None   # a writer of that blob replaces the link


def test_a_huge_sparse_blob_is_refused_by_its_size_unread(sample):
    """A regular file of the wrong size is not hashed: a 1 TB sparse one would take hours."""
    with open(sample / "_blobs" / BLOB_SHA, "r+b") as f:
        f.truncate(1 << 40)
    results, _ = run_child(sample, READERS[:1] + [["export", "sample", str(sample.parent / "x.jrec")]])
    for result in results:
        assert_refused(result, f"blob {BLOB_SHA[:12]}… was changed (SHA-256 or size differs)")


def test_journal_entry_that_is_a_fifo_is_refused(sample):
    entry = sample / "sample" / "journal" / "000003.json"
    entry.unlink()
    os.mkfifo(entry)
    results, _ = run_child(sample, READERS + [["list"]])
    for result in results[:-1]:
        message = assert_refused(result, "Recording 'sample'", "journal/000003.json")
        assert "FIFO" in message
    listed = results[-1]   # a complete recording lists from its manifest alone
    assert listed["code"] == 0 and "sample" in listed["stdout"]
    with pytest.raises(IntegrityError, match=r"Recording 'sample': journal/000003\.json is a FIFO"):
        Store(sample).files.read(str(entry))   # opened without blocking, refused by what fstat says


def test_incomplete_recording_with_a_fifo_is_skipped_by_the_list(tmp_path):
    root = tmp_path / "store"
    store = Store(root)
    write_sample(store, "running", close=False)
    write_sample(store, "other")
    os.mkfifo(root / "running" / "journal" / "000009.json")
    results, _ = run_child(root, [["Store", "list"], ["list"]])
    assert results[0]["names"] == ["other"]
    [(name, message)] = results[0]["problems"]
    assert name == "running" and "journal/000009.json is a FIFO" in message
    assert results[1]["code"] == 0 and "other" in results[1]["stdout"]
    assert "skipped recording 'running'" in results[1]["stderr"] and "Traceback" not in results[1]["stderr"]


def test_symlink_loops_are_one_line_errors(sample):
    entry = sample / "sample" / "journal" / "000002.json"
    entry.unlink()
    os.symlink("000002.json", entry)                      # a file that points at itself
    os.symlink("loopy", sample / "loopy")                 # a recording folder that does
    os.symlink(".", sample / "sample" / "again")          # a folder loop inside a recording (not descended)
    results, _ = run_child(sample, READERS + [["show", "loopy"], ["Store", "info", "loopy"], ["Store", "list"]])
    for result in results[:len(READERS)]:
        assert "symbolic link" in assert_refused(result, "Recording 'sample'")
    assert "symbolic link" in assert_refused(results[-3], "Recording 'loopy'")
    assert "symbolic link" in assert_refused(results[-2], "Recording 'loopy'")
    listed = results[-1]
    assert listed["names"] == ["sample"]   # a complete recording lists from its manifest alone
    [(name, message)] = listed["problems"]
    assert name == "loopy" and "symbolic link" in message


def test_symlinked_journal_folder_is_refused(sample, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(sample / "sample" / "journal", elsewhere / "journal")
    os.symlink(elsewhere / "journal", sample / "sample" / "journal")
    results, _ = run_child(sample, READERS)
    for result in results:
        assert "symbolic link" in assert_refused(result, "Recording 'sample'", "journal")
    files = Store(sample).files
    with pytest.raises(IntegrityError, match="Recording 'sample': journal is a symbolic link"):
        files.tree(files.path("sample"))   # not descended
    with pytest.raises(IntegrityError, match="Recording 'sample': journal is a symbolic link"):
        files.read(files.path("sample", "journal", "000001.json"))


def test_symlinked_file_to_a_regular_file_is_refused(sample, tmp_path):
    """Even a link to good bytes (the recording's own entry, copied out): the store holds files, not links."""
    entry = sample / "sample" / "journal" / "000001.json"
    shutil.copy(entry, tmp_path / "copy.json")
    entry.unlink()
    os.symlink(tmp_path / "copy.json", entry)
    with pytest.raises(IntegrityError, match=r"Recording 'sample': journal/000001\.json is a symbolic link"):
        Store(sample).open("sample")


def test_huge_sparse_manifest_is_refused_and_the_list_goes_on(sample):
    store = Store(sample)
    write_sample(store, "big")
    with open(sample / "big" / "manifest.json", "r+b") as f:
        f.truncate(6 * 2**30)   # sparse: costs no disk
    results, rss = run_child(sample, [["Store", "info", "big"], ["Store", "open", "big"], ["Store", "list"],
                                      ["list"], ["list", "--json"], ["show", "big"], ["show", "sample"]])
    info, opened, listed, cli_list, cli_json, show_big, show_sample = results
    for result in (info, opened, show_big):
        message = assert_refused(result, "Recording 'big'", "manifest.json", "6442450944 bytes")
        assert "refusing to read it" in message
    assert listed["names"] == ["sample"]
    [(name, message)] = listed["problems"]
    assert name == "big" and "manifest.json" in message and "6442450944 bytes" in message
    assert cli_list["code"] == 0 and "sample" in cli_list["stdout"] and "big" not in cli_list["stdout"]
    assert "skipped recording 'big'" in cli_list["stderr"] and "manifest.json" in cli_list["stderr"]
    assert [info["name"] for info in json.loads(cli_json["stdout"])] == ["sample"]
    assert show_sample["code"] == 0, show_sample
    print(f"\npeak RSS of the child reading a 6 GiB manifest: {rss:.0f} MB")
    assert rss < MOST_RSS_MB


def test_huge_sparse_journal_entry_is_refused(sample):
    with open(sample / "sample" / "journal" / "000002.json", "r+b") as f:
        f.truncate(6 * 2**30)
    results, rss = run_child(sample, [["Store", "open", "sample"], ["show", "sample"]])
    for result in results:
        assert_refused(result, "Recording 'sample'", "journal/000002.json", "6442450944 bytes")
    assert rss < MOST_RSS_MB


def test_huge_sparse_sidecar_is_ignored_by_the_list(sample):
    Store(sample).mark_verified("sample", {"verified": True})
    assert Store(sample).info("sample").status == "verified"
    with open(sample / "sample" / "verified.json", "r+b") as f:
        f.truncate(6 * 2**30)
    results, rss = run_child(sample, [["Store", "list"], ["Store", "info", "sample"], ["list"]])
    listed, info, cli_list = results
    assert listed["names"] == ["sample"] and listed["problems"] == [] and "error" not in info
    assert cli_list["code"] == 0 and "sample" in cli_list["stdout"] and "verified" not in cli_list["stdout"]
    assert "verified.json is 6442450944 bytes" in cli_list["stderr"] and "verification is ignored" in cli_list["stderr"]
    assert rss < MOST_RSS_MB


def test_object_stores_cap_documents_too(monkeypatch):
    """memory:// (and S3) read a JSON document with one ranged read: never more than the cap and a byte."""
    from julius_magics.recording import files

    store = Store(f"memory://hostile-{os.getpid()}-{id(monkeypatch)}")
    write_sample(store)
    write_sample(store, "other")
    monkeypatch.setattr(files, "DOC_LIMIT", 500)   # the manifests are larger: both refused
    problems = []
    assert store.list(problems=problems) == []
    assert [name for name, _ in problems] == ["other", "sample"]
    assert "Recording 'other': manifest.json is larger than 500 bytes" in problems[0][1]
    with pytest.raises(IntegrityError, match=r"Recording 'sample': manifest\.json is larger than 500 bytes"):
        store.info("sample")
    store.files.rm(store.files.root)


def test_create_never_writes_through_a_symlinked_recording_folder(sample, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    os.symlink(victim, sample / "link")
    with pytest.raises(IntegrityError, match="Recording 'link': its folder is a symbolic link; refusing to write it"):
        Store(sample).create("link", {})
    assert list(victim.iterdir()) == []


def test_large_parts_and_blobs_are_not_capped(tmp_path):
    """The cap is for JSON documents: a part or a blob of any size reads back."""
    store = Store(tmp_path / "store")
    big = os.urandom(1 << 16) * (65 * 16 + 1)   # 65 MiB and a bit
    writer = store.create("large", {})
    sha = writer.add_blob(big)
    writer.add_step("cell", {"source": "x"}, {"p": big})
    writer.close()
    rec = store.open("large")
    assert rec.part(1, "p") == big and rec.blob(sha) == big


def test_delete_never_follows_a_symlinked_recording_folder(sample, tmp_path):
    victim = tmp_path / "victim"
    (victim / "journal").mkdir(parents=True)
    (victim / "manifest.json").write_bytes(b"{}")
    (victim / "journal" / "000001.json").write_bytes(b"{}")
    os.symlink(victim, sample / "link")
    store = Store(sample)
    with pytest.raises(IntegrityError, match=r"Recording 'link': its folder is a symbolic link.*refusing to delete"):
        store.delete("link")
    # the server's DELETE /julius/api/recordings/link: a 409 with that line, not a 500
    from julius_magics.server.manager import RecordingsManager
    from julius_magics.server.routes import _http_error

    with pytest.raises(IntegrityError) as caught:
        asyncio.run(RecordingsManager(str(sample)).delete("link"))
    http = _http_error(caught.value)
    assert http.status_code == 409 and "symbolic link" in http.log_message
    # `julius import --force` deletes a recording of that name first: refused too
    store.export("sample", tmp_path / "sample.jrec")
    code, out, err = run_cli("--store", str(sample), "import", str(tmp_path / "sample.jrec"), "--as", "link",
                             "--force")
    assert code != 0 and "Traceback" not in err and "symbolic link" in err and len(err.strip().splitlines()) == 1
    assert (victim / "manifest.json").read_bytes() == b"{}"
    assert (victim / "journal" / "000001.json").exists()
    assert os.path.islink(sample / "link")
    assert [info.name for info in store.list(problems=[])] == ["sample"]


def test_delete_refuses_a_symlinked_manifest(sample, tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_bytes(b"{}")
    (sample / "odd").mkdir()
    os.symlink(victim, sample / "odd" / "manifest.json")
    with pytest.raises(IntegrityError, match=r"Recording 'odd': manifest\.json is a symbolic link.*refusing to delete"):
        Store(sample).delete("odd")
    assert victim.exists() and os.path.islink(sample / "odd" / "manifest.json")


def test_delete_of_a_real_recording_still_works(sample):
    store = Store(sample)
    store.delete("sample")
    assert not (sample / "sample").exists() and store.list() == []
    with pytest.raises(RecordingNotFoundError):
        store.delete("sample")


def test_store_root_that_is_a_symlink_works(tmp_path):
    """Users link their store folder elsewhere (a bigger disk): only what is inside it is refused."""
    real = tmp_path / "disk" / "recordings"
    real.mkdir(parents=True)
    os.symlink(real, tmp_path / "store")
    store = Store(tmp_path / "store")
    blob_file = tmp_path / "input.csv"
    blob_file.write_bytes(b"x,y\n" * 3000)
    write_sample(store, blob_file=blob_file)
    write_sample(store, "other", close=False)
    steps, parts, blobs = content(store.open("sample"))
    assert len(steps) == 4 and parts[(2, "spec")] == SPEC and blobs[BLOB_SHA] == BLOB
    assert {i.name for i in store.list()} == {"sample", "other"}
    assert store.info("other").status == "incomplete" and store.info("sample").steps == 4
    code, out, err = run_cli("--store", str(tmp_path / "store"), "show", "sample")
    assert code == 0 and "sample run" in out, err
    store.delete("other")
    assert not (real / "other").exists() and (real / "sample" / "manifest.json").exists()


def test_readers_of_a_hostile_store_finish_in_a_thread(sample):
    """The same FIFO read in-process, bounded by a thread join (no child): the refusal is immediate."""
    entry = sample / "sample" / "journal" / "000001.json"
    entry.unlink()
    os.mkfifo(entry)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(_raised(Store(sample).open, "sample")), daemon=True)
    thread.start()
    thread.join(timeout=SECONDS)
    if thread.is_alive():   # unblock it: a writer opening the FIFO lets the reader's open return
        with open(entry, "wb"):
            pass
        pytest.fail("Store.open blocked on a FIFO")
    [error] = outcome
    assert isinstance(error, IntegrityError) and "journal/000001.json is a FIFO" in str(error)


def _raised(function, *args):
    try:
        function(*args)
    except Exception as error:
        return error
    return None


def test_a_tmp_folder_that_is_a_link_is_never_written_through(sample, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(sample / "_tmp", ignore_errors=True)
    os.symlink(outside, sample / "_tmp")
    with pytest.raises(IntegrityError, match=r"_tmp is a symbolic link; refusing to write it"):
        Store(sample).create("new")
    assert list(outside.iterdir()) == []


def test_a_recording_nested_a_thousand_folders_deep_is_one_line(sample):
    folder = sample / "sample"
    for _ in range(1000):   # deeper than Python's recursion
        folder = folder / "d"
        folder.mkdir()
    try:
        results, _ = run_child(sample, [["Store", "open", "sample"], ["show", "sample"]])
        for result in results:
            assert_refused(result, "Recording 'sample'", "is nested more than 8 folders deep")
    finally:   # from the deepest up: shutil.rmtree (pytest's clean-up too) would exhaust Python's stack
        for depth in range(1000, 0, -1):
            os.rmdir(sample / "sample" / "/".join(["d"] * depth))
