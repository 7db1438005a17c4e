"""Secret redaction: secret-looking names, credentials in text, and their echoes; the recording writer's scrub
(steps, meta, parts), the secrets the kernel knows, and what it all costs."""

import hashlib
import json
import os

import cloudpickle
import pytest

from julius_magics.recording.redaction import REDACTED, scrub, scrub_text, secret_name


def test_scrub_patterns_directly():
    assert secret_name("AWS_SECRET_ACCESS_KEY") and secret_name("apiKey") and secret_name("db.Password")
    assert not secret_name("tokenize") and not secret_name("rename-keys") and not secret_name("PWD")
    assert scrub({"a": "redis://:pw@h:1/0", "b": ["x", {"Session": None}], "c": "tcp://10.0.0.1:8786"}) == {
        "a": "redis://<redacted>@h:1/0", "b": ["x", {"Session": None}], "c": "tcp://10.0.0.1:8786"}
    # a secret found in one place is cut wherever else it appears
    assert scrub({"token": "abcd1234", "log": "used abcd1234 here"}) == {
        "token": "<redacted>", "log": "used <redacted> here"}


# --- the recording's own scrub: steps, meta, parts (the writer's), and what the kernel knows to be secret ---
def _writer_names():
    """The names a recording's writer scrubs steps with: its own fields, maps keyed by data, digests."""
    from julius_magics.recording.journal import RecordingWriter

    return RecordingWriter.FIELD_NAMES, RecordingWriter.KEYED_BY_DATA, RecordingWriter.DIGESTS


def test_scrub_text_cuts_credentials_and_leaves_code_and_prose_alone():
    assert scrub_text("Authorization: Bearer abcdef123456789") == "Authorization: Bearer <redacted>"
    assert scrub_text("Basic dXNlcjpwYXNz") == "Basic <redacted>"
    assert scrub_text('password = "hunter2"; pwd=hunter2xyz') == 'password = "<redacted>"; pwd=<redacted>'
    assert scrub_text("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ab12&n=1") == (
        "https://b.s3.amazonaws.com/k?X-Amz-Credential=<redacted>&X-Amz-Signature=<redacted>&n=1")
    assert scrub_text("x.csv?token=<redacted>: read") == "x.csv?token=<redacted>: read"   # once is enough
    for text in ["x = a == b", "token = tokenize(frame)", "def f(password=None, auth=True):", "authors=3",
                 "# Basic statistics of the token counts.", "('read-csv-9f8e7d', 3)", "/home/user/data/x.csv",
                 "tcp://127.0.0.1:8786", "https://docs.example/page@v1", "<sha256:1a2b3c4d5e6f>"]:
        assert scrub_text(text) == text


def _graph_step(n):
    keys = [repr((f"read-csv-{hashlib.md5(str(i // 100).encode()).hexdigest()}", i)) for i in range(n)]
    return {"kind": "graph", "seq": 3, "client": "Client-1f2e", "keys": keys, "ntasks": 2 * n,
            "fingerprints": {k: hashlib.sha256(k.encode()).hexdigest() for k in keys},
            "descriptions": {k: "DataFrame 10 rows x 2 columns" for k in keys}, "address": "tcp://127.0.0.1:4000"}


def test_a_tree_that_needs_no_change_comes_back_as_it_is_and_dask_keys_and_own_fields_are_kept():
    from julius_magics.recording.redaction import Secrets

    names = _writer_names()
    secrets = Secrets()
    secrets.add("known-secret-value-42", "a test")
    step = _graph_step(10_000)
    assert secrets.scrub(step, *names) is step   # not copied
    dispatch = {"targets": [{"id": "ml:x/1a2b", "key": "('api-key-lookup-1a2b', 0)", "label": "AUC"}],
                "key_rules": ["classifiertrain"],
                "results": {"('session-tokens-9f', 1)": {"fp": "0" * 64, "describe": "int 3", "label": None}}}
    assert secrets.scrub(dispatch, *names) is dispatch
    # strings that only look like credentials (a distribution named asttokens) leave a tree as it is;
    # one that is one, beside them, is cut
    env = {"packages": {"asttokens": "2.4.1", "tokenize-rt": "5.2"}, "note": "a=b", "auth": "basic setup"}
    assert secrets.scrub(env, names=False) is env
    assert secrets.scrub({**env, "url": "https://me:pa55word99@h/x"}, names=False) == {
        **env, "url": "https://<redacted>@h/x"}
    # a secret in one field: that field copied and cut, the others the same objects
    step["descriptions"] = {**step["descriptions"], step["keys"][5]: "str 'uses known-secret-value-42 here'"}
    cleaned = secrets.scrub(step, *names)
    assert cleaned["descriptions"][step["keys"][5]] == "str 'uses <redacted> here'"
    assert cleaned["keys"] is step["keys"] and cleaned["fingerprints"] is step["fingerprints"]
    assert step["descriptions"][step["keys"][5]] == "str 'uses known-secret-value-42 here'"   # never changed
    # values under secret names, credentials in text, and what was cut hunted in later trees
    assert secrets.scrub({"options": {"key": "AKIA0000111122223333", "secret": "s" * 12, "anon": False},
                          "url": "https://me:pa55word99@h/x"}) == {
        "options": {"key": REDACTED, "secret": REDACTED, "anon": False}, "url": "https://<redacted>@h/x"}
    assert secrets.scrub(["AKIA0000111122223333 and me:pa55word99"]) == ["<redacted> and <redacted>"]


def test_secrets_and_credentials_in_urls_are_found_in_pickled_bytes():
    from julius_magics.recording.redaction import Secrets

    secrets = Secrets()
    secrets.update({"julius-canary-secret/0123": "fsspec storage_options 'secret'"})

    def clean(value):
        return secrets.found_in(cloudpickle.dumps(value))

    assert clean({"storage_options": {"secret": "julius-canary-secret/0123"}}) == "fsspec storage_options 'secret'"
    assert clean(("read", "https://h/x.csv?a=1&token=SECRETTOKEN123")) == "a URL's secret parameter 'token'"
    assert clean(["s3://user:pw@minio/b"]) == "a URL's user name and password"
    assert clean(["https://ghp0123456789abcdefghij@github.com/x.git"]) == "a URL's user name and password"

    def basic(df):
        """Basic usage: the token counts of ssh://git@github.com/x?format=csv, password=None."""
        return df

    assert clean([basic, "ssh://git@github.com/x", "https://h/x.csv?token=<redacted>", os.urandom(1 << 16)]) is None


def test_known_secrets_are_the_kernels_secret_variables_dask_config_values_and_fsspec_credentials(monkeypatch,
                                                                                                  tmp_path):
    import dask
    import fsspec

    from julius_magics.recording.redaction import known_secrets

    monkeypatch.setenv("JULIUS_TEST_API_TOKEN", "env-token-canary-1")
    monkeypatch.setenv("JULIUS_TEST_CREDENTIALS_FILE", str(tmp_path))   # a path that exists: not a secret
    fsspec.filesystem("memory", secret="fsspec-canary-secret-1")
    with dask.config.set({"myapp.db.password": "config-canary-pw-1", "distributed.nanny.environ": {"X": "nanny-v-12"}}):
        known = known_secrets()
    assert known["env-token-canary-1"] == "environment variable JULIUS_TEST_API_TOKEN"
    assert known["config-canary-pw-1"] == "Dask config 'password'"
    assert known["nanny-v-12"] == "Dask config distributed.nanny.environ 'X'"
    assert known["fsspec-canary-secret-1"] == "fsspec storage_options 'secret'"
    assert str(tmp_path) not in known


def test_the_writer_scrubs_steps_and_meta_says_what_it_changed_and_leaves_the_rest_as_it_came(tmp_path):
    from julius_magics.recording.store import Store

    store = Store(tmp_path / "store")
    writer = store.create("w", meta={"note": "Authorization: Bearer abcdef123456789"})   # claimed as it came
    writer.add_step("cell", {"source": "dsn = 'host=db password=hunter2xyz'\nx = a == b"})
    writer.add_step("cell", {"source": "echo: hunter2xyz"})   # cut before: hunted in later steps too
    plain = {"source": "x = a == b", "key_rules": ["train"], "targets": [{"key": "('x', 0)"}]}
    writer.add_step("plain", plain)   # a kind of its own: free JSON
    writer.update_meta(partial=True, partial_reasons=["remote input https://u:pa55word@h/x.csv could not be read"])
    assert writer.secret_in(cloudpickle.dumps({"dsn": "...hunter2xyz..."})) == "a credential cut out of a recorded text"
    writer.close()
    for root, _, names in os.walk(tmp_path / "store"):
        for name in names:
            data = open(os.path.join(root, name), "rb").read()
            assert b"abcdef123456789" not in data and b"hunter2xyz" not in data and b"pa55word" not in data, name
    rec = store.open("w")
    assert rec.meta["note"] == "Authorization: Bearer <redacted>"
    assert rec.meta["partial_reasons"] == ["remote input https://<redacted>@h/x.csv could not be read"]
    assert [s.data for s in rec.steps] == [
        {"source": "dsn = 'host=db password=<redacted>'\nx = a == b", "redacted": ["source"]},
        {"source": "echo: <redacted>", "redacted": ["source"]},
        plain]


def test_a_user_dask_config_value_is_recorded_by_name_and_short_sha256(monkeypatch):
    import dask

    from julius_magics.recording.environment import capture_environment

    webhook = "https://hooks.slack.com/services/T0/B0/XXXX"
    monkeypatch.setenv("DASK_MYAPP__MIRROR", "https://mirror.example/x")
    with dask.config.set({"myapp.webhook": webhook, "myapp.retries": 3, "myapp.api-token": "tok-canary-1234",
                          "distributed.worker.memory.target": 0.55, "distributed.nanny.environ": {"A": "b"}}):
        env = capture_environment()
    text = json.dumps(env)
    assert webhook not in text and "tok-canary-1234" not in text and "mirror.example" not in text
    digest = "<sha256:" + hashlib.sha256(webhook.encode()).hexdigest()[:12] + ">"
    assert env["dask_config"]["myapp"] == {"webhook": digest, "retries": 3, "api-token": REDACTED}
    assert env["dask_config"]["distributed"]["worker"]["memory"]["target"] == 0.55   # Dask's own: kept
    assert env["dask_config"]["distributed"]["nanny"]["environ"] == {"A": REDACTED}
    mirror = hashlib.sha256(b"https://mirror.example/x").hexdigest()[:12]
    assert env["env_vars"]["DASK_MYAPP__MIRROR"] == f"<sha256:{mirror}>"   # the config key it sets is the user's


@pytest.mark.parametrize("n", [10, 10_000])
def test_scrubbing_a_graph_step_costs_little_next_to_writing_it(tmp_path, n):
    """The writer scrubs every step: a graph step's scrub costs under a fifth of its write, in a batch as a
    drain writes them (measured: 3-7 %; 3.5 ms of 55 ms for 10k keys)."""
    import time

    from julius_magics.recording.store import Store

    writer = Store(tmp_path / "store").create("cost", meta={})
    step = _graph_step(n)

    def best(f):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        return min(times)

    with writer.batch():
        write = best(lambda: writer.add_step("graph", step))
        cost = best(lambda: writer.scrub(step))
    writer.close()
    assert cost < write / 5, (cost, write)


@pytest.mark.parametrize("text, kept", [
    ("max_tokens=512", True), ("design=a/x.csv", True), ("session_length=3", True), ("signal=3", True),
    ("authority=x", True), ("author=me", True), ("tokenizer=bert", True),
    ("token=abc123456", False), ("db_password=hunter2", False), ("X-Amz-Signature=abcdef", False),
    ("https://h/x?sv=1&sig=abcd", False), ("aws_secret_access_key=abc", False), ("sessionid=abc", False),
])
def test_a_parameter_is_secret_by_how_its_name_ends(text, kept):
    """``max_tokens=512`` in a notebook is a setting: cut, its remote_eval would not be replayed."""
    assert (scrub_text(text) == text) is kept, scrub_text(text)
