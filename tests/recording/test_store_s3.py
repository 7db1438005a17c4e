"""The recording store on a real S3-protocol server (moto's standalone server, on loopback)."""

import os
import subprocess
import sys
import uuid

import boto3
import pytest
from julius_magics.recording.store import Store
from tests.recording.store_contract import (
    StoreContract,
    free_port,
    run_writer_processes,
    wait_for_port,
    write_sample,
)

pytestmark = pytest.mark.usefixtures("isolated_key")  # never the user's ~/.julius


BUCKET = "julius-recordings"


@pytest.fixture(scope="module")
def s3_options():
    """Start ``python -m moto.server`` on 127.0.0.1, create a bucket; yield s3fs storage options."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
        }
        boto3.client(
            "s3", aws_access_key_id="testing", aws_secret_access_key="testing", **options["client_kwargs"]
        ).create_bucket(Bucket=BUCKET)
        yield options
    finally:
        server.terminate()
        server.wait(timeout=10)


class TestS3Store(StoreContract):
    @pytest.fixture
    def store(self, s3_options):
        return Store(f"s3://{BUCKET}/{uuid.uuid4().hex}", **s3_options)


def test_processes_writing_one_s3_store_at_once(s3_options):
    url = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    outcomes = run_writer_processes(url, s3_options, ["alpha", "same", "same"], steps=5)
    assert outcomes[0] == "won" and sorted(outcomes[1:]) == ["lost", "won"]
    store = Store(url, **s3_options)
    assert sorted((i.name, i.status, i.steps) for i in store.list()) == [
        ("alpha", "complete", 5),
        ("same", "complete", 5),
    ]
    assert store.open("same").part(5, "p") == bytes([4]) * 100


def test_s3_store_takes_endpoint_from_environment(s3_options, monkeypatch):
    """s3fs reads the usual AWS variables, so a bare URL works too."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_options["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_options["secret"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_options["client_kwargs"]["endpoint_url"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    url = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    write_sample(Store(url, **s3_options), "shared")
    assert [i.name for i in Store(url, skip_instance_cache=True).list()] == ["shared"]


def test_a_store_without_credentials_is_one_line_naming_it(s3_options, monkeypatch):
    from julius_magics import cli
    from julius_magics.errors import StoreUnreachableError

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")   # no instance metadata to look for credentials in
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    url = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    store = Store(url, client_kwargs=s3_options["client_kwargs"])
    message = f"Store {url} cannot be reached: NoCredentialsError: Unable to locate credentials"
    with pytest.raises(StoreUnreachableError, match=f"^{message}$"):
        store.create("run")
    with pytest.raises(StoreUnreachableError, match=f"^{message}$"):
        store.list()
    # the command line in a process of its own: fsspec's config of other tests (endpoints, keys) stays out
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_CONFIG_FILE="/nonexistent", AWS_ENDPOINT_URL=s3_options["client_kwargs"]["endpoint_url"])
    done = subprocess.run([sys.executable, "-m", "julius_magics.cli", "--store", url, "list"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (cli.EXIT_ERROR, "", f"julius list: {message}\n")
