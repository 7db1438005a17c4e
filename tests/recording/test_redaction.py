"""Secret redaction: secret-looking names, credentials in text, and their echoes."""

from julius_magics.recording.redaction import scrub, secret_name


def test_scrub_patterns_directly():
    assert secret_name("AWS_SECRET_ACCESS_KEY") and secret_name("apiKey") and secret_name("db.Password")
    assert not secret_name("tokenize") and not secret_name("rename-keys") and not secret_name("PWD")
    assert scrub({"a": "redis://:pw@h:1/0", "b": ["x", {"Session": None}], "c": "tcp://10.0.0.1:8786"}) == {
        "a": "redis://<redacted>@h:1/0", "b": ["x", {"Session": None}], "c": "tcp://10.0.0.1:8786"}
    # a secret found in one place is cut wherever else it appears
    assert scrub({"token": "abcd1234", "log": "used abcd1234 here"}) == {
        "token": "<redacted>", "log": "used <redacted> here"}
