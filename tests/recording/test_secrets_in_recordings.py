"""No secret is written into a recording, wherever it hides: real sessions, every byte of the store read.

Secrets in a ``--note``, in cells, in a replayed ``%%remote_eval`` source, in the URL of a remote
input (``?token=``, on an HTTP server on loopback), in fsspec ``storage_options`` (an S3-protocol
server on loopback: the credentials travel inside the graph's run specs) and in the Dask config
under a key of the user's own. A recording without secrets is written as before, and replays verified.
"""

import hashlib
import http.server
import json
import os
import re
import threading
import urllib.parse

import dask
import numpy as np
import pandas as pd
import pytest

from julius_magics import recording
from julius_magics.recording.store import Store
from tests.recording.store_contract import moto_server
from tests.support import record_cells, run

pytestmark = pytest.mark.usefixtures("fresh_session")

BEARER, PASSWORD, URL_PASSWORD = "abcdef123456789", "hunter2xyz", "pa55word"
TOKEN = "SECRETTOKEN123"
ACCESS_KEY, SECRET_KEY = "AKIAJULIUSCANARY0001", "julius-canary-secret/0123456789abcdefXYZ"
WEBHOOK = "https://hooks.slack.com/services/T0/B0/XXXX"
SECRETS = [BEARER, PASSWORD, URL_PASSWORD, TOKEN, ACCESS_KEY, SECRET_KEY, WEBHOOK, "T0/B0/XXXX"]
NOTE = f"deploy run, Authorization: Bearer {BEARER} password={PASSWORD} https://user:{URL_PASSWORD}@host/x"
BUCKET = "julius-secrets"


def leaks(folder, secrets=SECRETS):
    """``{file: [secrets]}`` of every file under ``folder`` (journal, manifest, parts, blobs...) holding one."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                data = f.read()
            held = [s for s in secrets if s.encode() in data]
            if held:
                found[os.path.relpath(path, folder)] = held
    return found


class _TokenFiles(http.server.BaseHTTPRequestHandler):
    """Files served only with ``?token=TOKEN``; byte ranges as fsspec asks for them."""

    files = {}

    def do_HEAD(self):
        self._send(body=False)

    def do_GET(self):
        self._send(body=True)

    def _send(self, body):
        url = urllib.parse.urlsplit(self.path)
        data = self.files.get(url.path)
        if urllib.parse.parse_qs(url.query).get("token") != [TOKEN] or data is None:
            self.send_error(403 if data is not None else 404)
            return
        start, end = 0, len(data) - 1
        ranged = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if ranged:
            start = int(ranged[1])
            end = min(int(ranged[2]) if ranged[2] else end, end)
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start:end + 1])

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_files():
    """An HTTP server on loopback serving ``/data.csv`` to those who give the token: its base URL."""
    _TokenFiles.files = {"/data.csv": pd.DataFrame({"x": range(10)}).to_csv(index=False).encode()}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenFiles)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def s3():
    """An S3-protocol server (moto) on loopback with ``s3://BUCKET/data/a.csv``: its endpoint URL."""
    import boto3

    with moto_server() as endpoint:
        client = boto3.client("s3", aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                              endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="data/a.csv", Body=pd.DataFrame({"x": [1, 2, 3]}).to_csv(index=False))
        yield endpoint


CLUSTER = """
import dask.dataframe as dd
from distributed import Client, LocalCluster
cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
"""
CLOSE = "client.close()\ncluster.close()"


def _secret_cells(http_url, endpoint):
    return [
        CLUSTER,
        f"""
headers = {{"Authorization": "Bearer {BEARER}"}}
dsn = "host=db password={PASSWORD}"
mirror = "https://user:{URL_PASSWORD}@host/x"
""",
        f'remote_total = int(dd.read_csv("{http_url}/data.csv?token={TOKEN}", blocksize=None).x.sum().compute())',
        f"""
options = {{"key": "{ACCESS_KEY}", "secret": "{SECRET_KEY}", "client_kwargs": {{"endpoint_url": "{endpoint}"}}}}
s3_total = int(dd.read_csv("s3://{BUCKET}/data/a.csv", storage_options=options).x.sum().compute())
""",
        CLOSE,
    ]


def test_secrets_in_a_note_cells_remote_urls_storage_options_and_the_dask_config_never_reach_the_store(
        ip, tmp_path, monkeypatch, capfd, http_files, s3):
    store = tmp_path / "store"
    monkeypatch.chdir(tmp_path)
    with dask.config.set({"myapp.webhook": WEBHOOK}):   # the workers inherit it (their nanny's config)
        record_cells(ip, "secrets", store, _secret_cells(http_files, s3), options=f"--note '{NOTE}'")
    assert ip.user_ns["remote_total"] == 45 and ip.user_ns["s3_total"] == 6   # the notebook ran as written
    printed = capfd.readouterr()

    assert leaks(store) == {}
    assert not [s for s in SECRETS if s in printed.out + printed.err]

    rec = Store(store).open("secrets")
    assert rec.meta["note"] == ("deploy run, Authorization: Bearer <redacted> password=<redacted> "
                                "https://<redacted>@host/x")
    [cell] = [s for s in rec.steps if s.kind == "cell" and "headers" in s.data["source"]]
    assert cell.data["redacted"] == ["source"]
    assert 'headers = {"Authorization": "<redacted>"}' in cell.data["source"]
    assert 'dsn = "host=db password=<redacted>"' in cell.data["source"]
    # the storage_options' values are known secrets (fsspec's instance cache): cut out wherever they appear
    [s3_cell] = [s for s in rec.steps if s.kind == "cell" and "storage_options" in s.data["source"]]
    assert '"key": "<redacted>", "secret": "<redacted>"' in s3_cell.data["source"]

    remote = {f["url"] for s in rec.steps if s.kind == "remote_inputs" for f in s.data["files"]}
    assert remote == {f"{http_files}/data.csv?token=<redacted>", f"s3://{BUCKET}/data/a.csv"}

    # the run specs (a pickle) of both remote graphs hold a credential: not stored, and the recording says so
    graphs = [s for s in rec.steps if s.kind == "graph"]
    dropped = [s for s in graphs if "specs" not in s.part_names]
    assert len(dropped) == 2 and all("hold a credential" in s.data["dropped"] for s in dropped)
    assert rec.meta["partial"] is True and rec.info.status == "partial"
    reasons = "\n".join(rec.meta["partial_reasons"])
    # (known from the cell's source, scrubbed before it ran, or from fsspec's filesystems)
    assert re.search(r"graph \d+: its run specs hold a credential \((fsspec storage_options '(key|secret)'|"
                     r"a credential cut out of a recorded text)\); not stored", reasons), reasons
    assert re.search(r"graph \d+: its run specs hold a credential \((a URL's secret parameter 'token'|"
                     r"a credential cut out of a recorded text)\); not stored", reasons), reasons
    assert f"remote input {http_files}/data.csv?token=<redacted>: its URL holds a credential" in reasons
    assert all(s.data["fingerprints"] for s in dropped)   # the results are still recorded

    # the Dask config value under a key of the user's own: its name and a short SHA-256, in every environment
    digest = f"<sha256:{hashlib.sha256(WEBHOOK.encode()).hexdigest()[:12]}>"
    [env_step] = [s for s in rec.steps if s.kind == "environment"]
    environments = [json.loads(rec.blob(sha)) for sha in [env_step.data["kernel"], *env_step.data["workers"].values()]]
    assert len(environments) == 2
    assert all(env["dask_config"]["myapp"] == {"webhook": digest} for env in environments)

    # its replay runs to the end and says what it could not check or replay: never verified
    report = recording.replay("secrets", store=Store(store), n_workers=1)
    summary = report.summary()
    assert not report.verified and report.steps == report.total_steps, summary
    assert f"input {http_files}/data.csv?token=<redacted>: not checked: its URL held a credential" in summary
    assert summary.count("cannot be replayed: its run specs hold a credential") == 2, summary
    assert summary.count(f"input {http_files}/data.csv?token=<redacted>: not checked") == 1, summary


def test_a_replayed_source_holding_a_credential_is_stored_redacted_and_the_recording_is_partial(ip, tmp_path):
    store = tmp_path / "store"
    run(ip, "%cluster start -n 1")
    try:
        record_cells(ip, "remote-secret", store, [
            # its step cuts the password out: a secret known from then on
            f'creds = {{"user": "me", "password": "{PASSWORD}"}}',
            f'%%remote_eval --push creds\nMIRROR = "https://user:{URL_PASSWORD}@host/x"\n'
            f'HEADERS = {{"Authorization": "Bearer {BEARER}"}}',
            "%%remote_eval\ndef plain(x):\n    return x == 1",
        ])
    finally:
        run(ip, "%cluster stop")
    assert leaks(store) == {}
    rec = Store(store).open("remote-secret")
    evals = [s for s in rec.steps if s.kind == "remote_eval"]
    assert [s.data.get("redacted") for s in evals] == [["source"], None]
    assert evals[0].data["source"].strip() == ('MIRROR = "https://<redacted>@host/x"\n'
                                               'HEADERS = {"Authorization": "<redacted>"}')
    assert evals[1].data["source"].strip() == "def plain(x):\n    return x == 1"   # as it was: a replay runs it
    # the pushed values (a pickle) hold the password: not stored
    assert evals[0].part_names == () and evals[0].data["push"] == ["creds"]
    why = "its pushed values hold a credential (a credential cut out of a recorded text); not stored"
    assert evals[0].data["dropped"] == why
    assert rec.meta["partial"] is True
    assert rec.meta["partial_reasons"] == [
        f"remote_eval step {evals[0].seq}: {why}",
        f"remote_eval step {evals[0].seq}: its source held a credential, stored redacted: a replay cannot run it "
        "as recorded"]

    # a replay does not run the redacted source (nor without its pushed values); the rest runs: not verified
    report = recording.replay("remote-secret", store=Store(store), n_workers=1)
    assert report.steps == report.total_steps and not report.verified, report.summary()
    assert "its source held a credential, stored redacted" in report.summary()


PLAIN = """
import dask, dask.dataframe as dd, numpy as np
from dask.base import tokenize
from distributed import Client, LocalCluster
cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
"""
PLAIN_WORK = f'''
# Basic statistics of the token counts: nothing here is a secret but this mirror: https://user:{URL_PASSWORD}@host/x
frame = dd.read_csv("data/part-*.csv", blocksize=200)
same = frame.a == frame.b
x = a == b if (a := 1) and (b := 1) else None
token = tokenize(frame)
def check(password=None, auth=True, key="value"):
    return {{"key": key, "keys": [1, 2], "session": None}}
counts = same.sum().compute()
by_key = dict(frame.groupby("key").a.sum().compute())
squares = client.gather(client.map(lambda i: i * i, range(12)))
'''


def test_a_recording_whose_only_secret_is_in_a_cell_is_otherwise_written_as_before_and_replays_verified(
        ip, tmp_path, monkeypatch):
    """No false positive: Dask keys, paths, fingerprints, code such as ``x = a == b`` and ``token = tokenize(df)``."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    for i in range(3):
        pd.DataFrame({"a": np.arange(30) % 5, "b": np.arange(30) % 3, "key": [f"k{j % 4}" for j in range(30)]}
                     ).to_csv(project / "data" / f"part-{i}.csv", index=False)
    monkeypatch.chdir(project)
    store = Store(tmp_path / "store")
    cells = [PLAIN, PLAIN_WORK, CLOSE]
    record_cells(ip, "plain", store.url, cells, options="--note 'plain run: key=k0, a == b'")
    assert ip.user_ns["squares"][-1] == 121

    rec = store.open("plain")
    assert rec.info.status == "complete" and "partial" not in rec.meta
    assert rec.meta["note"] == "plain run: key=k0, a == b"
    assert leaks(tmp_path / "store") == {}
    redacted = [s for s in rec.steps if "redacted" in s.data]
    assert [(s.kind, s.data["redacted"]) for s in redacted] == [("cell", ["source"])]   # the comment's cell only
    assert [s.data["source"] for s in rec.steps if s.kind == "cell"] == [
        cells[0], cells[1].replace(f"user:{URL_PASSWORD}", "<redacted>"), cells[2]]
    graphs = [s for s in rec.steps if s.kind == "graph"]
    assert graphs and all("specs" in s.part_names and not s.data.get("dropped") for s in graphs)
    for step in graphs:   # Dask keys untouched: the results are under the keys the graphs sent
        assert set(step.data["fingerprints"]) <= set(step.data["keys"]) | set(step.data.get("pending") or [])
        assert all(re.fullmatch(r"[0-9a-f]{64}", fp) for fp in step.data["fingerprints"].values())
    inputs = {os.path.relpath(f["abspath"], project) for s in rec.steps if s.kind == "inputs" for f in s.data["files"]}
    assert inputs == {f"data/part-{i}.csv" for i in range(3)}

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    report = recording.replay("plain", store=store)
    assert report.verified, report.summary()


def test_a_literal_secret_a_cell_sends_in_a_pickle_is_never_stored(ip, tmp_path):
    """The cell's source is scrubbed before it runs: a keyword argument, a scattered dict or a client.run
    argument that it spells out is known before the pickles that carry it are written."""
    store = tmp_path / "store"
    kwarg, scattered, run_arg = "kwargsecretAA3003", "scattersecretBB2002", "runsecretPP1818"
    record_cells(ip, "literals", store, [CLUSTER, f"""
def f(x, password=None):
    return x + 1
total = client.submit(f, 1, password="{kwarg}").result()
[table] = client.scatter([{{"password": "{scattered}"}}])
ran = client.run(lambda password=None: 1, password="{run_arg}")
""", CLOSE])
    assert ip.user_ns["total"] == 2
    assert leaks(store, [kwarg, scattered, run_arg]) == {}
    rec = Store(store).open("literals")
    assert rec.meta["partial"] is True
    reasons = "\n".join(rec.meta["partial_reasons"])
    assert "its run specs hold a credential (a credential cut out of a recorded text); not stored" in reasons
    assert "scattered data" in reasons and "run" in reasons, reasons
