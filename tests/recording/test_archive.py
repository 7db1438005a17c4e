"""``.jrec`` archives: import under a new name (``as_name``) and over an existing one (``force``)."""

import re
import zipfile

import pytest

from julius_magics.errors import IntegrityError, RecordingError, RecordingExistsError
from julius_magics.recording.store import Store
from tests.recording.store_contract import content, write_sample

pytestmark = pytest.mark.usefixtures("isolated_key")  # never the user's ~/.julius


@pytest.fixture
def exported(tmp_path):
    source = Store(tmp_path / "source")
    write_sample(source, "alpha")
    source.export("alpha", tmp_path / "alpha.jrec")
    return source, tmp_path / "alpha.jrec"


def test_import_as_a_new_name_keeps_steps_parts_and_blobs(exported, tmp_path):
    source, path = exported
    store = Store(tmp_path / "target")
    assert store.import_(path) == "alpha"
    assert store.import_(path, as_name="beta") == "beta"
    a, b = store.open("alpha"), store.open("beta")
    assert content(b) == content(a) == content(source.open("alpha"))
    assert b.meta == a.meta and b.info.status == a.info.status == "complete" and b.manifest["name"] == "beta"
    assert b.info.steps == a.info.steps and b.info.size == a.info.size


def test_import_refuses_an_existing_name_unless_forced(exported, tmp_path):
    source, path = exported
    store = Store(tmp_path / "target")
    store.import_(path)
    with pytest.raises(RecordingExistsError, match="'alpha' already exists.*--as.*--force"):
        store.import_(path)
    writer = store.create("gamma")
    writer.add_step("cell", {"source": "other"})
    writer.close()
    with pytest.raises(RecordingExistsError):
        store.import_(path, as_name="gamma")
    assert store.import_(path, as_name="gamma", force=True) == "gamma"
    assert content(store.open("gamma")) == content(source.open("alpha"))


def test_a_damaged_archive_is_refused_before_force_deletes_anything(exported, tmp_path):
    _, path = exported
    store = Store(tmp_path / "target")
    store.import_(path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        store.import_(path, force=True)
    assert store.open("alpha").steps   # still there, intact


@pytest.mark.parametrize("member", ["blobs/notasha", "blobs/../../escape", "blobs/" + "0" * 64])
def test_an_archive_with_a_blob_the_recording_does_not_list_is_refused(exported, tmp_path, member):
    _, path = exported
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(member, b"stray")
    store = Store(tmp_path / "target")
    with pytest.raises(IntegrityError, match=f"unexpected file '{re.escape(member)}'"):
        store.import_(path)
    assert store.list() == [] and not (tmp_path / "escape").exists()


def test_export_into_a_missing_folder_names_the_archive(exported, tmp_path):
    source, _ = exported
    target = tmp_path / "missing" / "alpha.jrec"
    with pytest.raises(RecordingError, match=f"^Cannot write the archive {re.escape(str(target))}: No such file"):
        source.export("alpha", target)
    assert not (tmp_path / "missing").exists()


def test_an_archive_declaring_a_huge_document_is_refused_before_it_is_inflated(tmp_path):
    bomb = tmp_path / "bomb.jrec"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:   # 200 MB of spaces: 0.2 MB zipped
        archive.writestr("julius-export.json", b" " * (200 << 20))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(IntegrityError, match="julius-export.json declares 209715200 bytes, more than the 67108864"):
        Store(tmp_path / "target").import_(bomb)
