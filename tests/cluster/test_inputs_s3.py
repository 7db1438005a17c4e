"""Remote inputs on a real S3-protocol server (moto on loopback): recorded by ETag, changes named, served when embedded."""

import hashlib

import boto3
import dask.dataframe as dd
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from julius_magics.cluster import inputs, serve
from julius_magics.errors import DataChangedError
from tests.recording.store_contract import moto_server

BUCKET = "julius-inputs"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_server() as endpoint:
        client = boto3.client("s3", aws_access_key_id="testing", aws_secret_access_key="testing",
                              endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client, {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}


def _put(client, key, frame):
    body = frame.to_csv(index=False).encode()
    client.put_object(Bucket=BUCKET, Key=key, Body=body)
    return body


def test_s3_inputs_recorded_by_etag_changes_named_and_embedded_copies_served(s3, tmp_path):
    client, options = s3
    body = _put(client, "data/a.csv", pd.DataFrame({"x": [1, 2, 3]}))
    url = f"s3://{BUCKET}/data/a.csv"
    inputs.start_reads()
    try:
        assert pd.read_csv(url, storage_options=options).x.sum() == 6
        with LocalCluster(n_workers=1, processes=True, dashboard_address=":0") as cluster, Client(cluster) as dc:
            dc.register_plugin(inputs.InputsWorkerPlugin(recording=True))
            assert dd.read_csv(url, storage_options=options).x.sum().compute() == 6
            worker_reports = list(dc.run(inputs.drain_reads).values())
        report = inputs.drain_reads()
    finally:
        inputs.stop_reads()
    [entry] = report["remote"]
    assert entry["url"] == url and entry["size"] == len(body) and entry["etag"]
    assert [e["url"] for r in worker_reports for e in r["remote"]] == [url]   # the worker's read, seen there
    assert serve.remote_status(entry, **options) == "unchanged"
    _put(client, "data/a.csv", pd.DataFrame({"x": [10, 20, 30]}))
    assert serve.remote_status(entry, **options) == "changed"
    with pytest.raises(DataChangedError, match=r"s3://julius-inputs/data/a\.csv is changed.*embed-remote"):
        serve.serve_remote(None, [entry], storage_options=options)
    sha = hashlib.sha256(body).hexdigest()
    served = serve.serve_remote(None, [{**entry, "blob": sha}], {sha: body}.__getitem__, storage_options=options)
    assert served[0]["status"] == "changed: served from recording"
    assert pd.read_csv(url, storage_options=options).x.sum() == 6   # the recorded bytes
    serve.install_remote_redirect({})
