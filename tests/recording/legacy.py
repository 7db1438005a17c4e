"""Recordings in the julius-recording/1 format (HMAC-sealed), as versions before Ed25519 signatures wrote them."""

from julius_magics.recording import integrity

LEGACY = integrity.LEGACY_FORMAT


def write_legacy_sample(store, name, secret=None):
    """Write a small complete julius-recording/1 recording sealed with ``secret`` (default: your key file's)."""
    secret = secret if secret is not None else integrity.load_key().legacy_secret
    key_id = integrity.legacy_key_id(secret)
    created = "2026-11-29T12:00:00Z"
    prev = integrity.chain_start(name, created, format=LEGACY)
    journal, size = [], 0
    for seq, (kind, data) in enumerate([("cluster", {"n_workers": 1}), ("cell", {"source": "1 + 1"})], 1):
        body = {"format": LEGACY, "seq": seq, "kind": kind, "time": created, "data": data, "parts": {},
                "blobs": {}, "prev": prev, "key_id": key_id}
        raw = integrity.legacy_seal(body, secret)
        store.files.write(store.files.path(name, "journal", f"{seq:06d}.json"), raw)
        prev = integrity.document_digest(raw)
        journal.append(integrity.sha256_hex(raw))
        size += len(raw)
    manifest = {"format": LEGACY, "name": name, "created": created, "closed": created, "status": "complete",
                "meta": {"note": "old", "data_mode": "embed", "workers": 1}, "key_id": key_id, "steps": 2,
                "journal": journal, "chain_head": prev, "parts": {}, "blobs": {}, "size": size}
    store.files.write(store.files.path(name, "manifest.json"), integrity.legacy_seal(manifest, secret))
