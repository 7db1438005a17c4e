"""The sidebar's TypeScript interfaces (labextension/src/api.ts) mirror the Python models field for
field: each is compared with JSON that the Python side emits for real objects."""

import asyncio
import json
import re
from pathlib import Path

import pytest

from julius_magics import recording
from julius_magics.recording.summary import details as describe, diff
from julius_magics.recording.replaying import replay
from julius_magics.recording.store import Store
from julius_magics.recording.replay_job import Report
from julius_magics.server.manager import RecordingsManager, ReplayProcess

API_TS = Path(__file__).resolve().parents[2] / "labextension" / "src" / "api.ts"


def interfaces():
    """``{interface name: {field: optional?}}`` of the top-level fields of each interface in api.ts."""
    found = {}
    for name, body in re.findall(r"export interface (\w+) \{\n(.*?)\n\}", API_TS.read_text(), re.S):
        fields = re.findall(r"^  (\w+)(\??):", body, re.M)
        found[name] = {field: bool(optional) for field, optional in fields}
    return found


def assert_mirrors(interface, emitted):
    """Every key Python emits is declared, and every required field is emitted."""
    fields = interfaces()[interface]
    assert isinstance(emitted, dict), (interface, emitted)
    assert set(emitted) <= set(fields), f"{interface} lacks {sorted(set(emitted) - set(fields))}"
    required = {f for f, optional in fields.items() if not optional}
    assert required <= set(emitted), f"{interface} declares {sorted(required - set(emitted))}, Python has none"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interfaces")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JULIUS_KEY_FILE", str(tmp / "key"))
        yield Store(str(tmp / "store"))


@pytest.fixture(scope="module")
def recorded(store, session):
    """Two real recordings of a result that differs every run (the clock)."""
    session.add_rules("iface", "import time\ndef clock(run):\n    return ApplyFn(time.time_ns)()\n")
    from julius_magics import ref

    for name in ("first", "second"):
        recorder = recording.start(session, name, store=store, note="interfaces")
        session.compute(ref.iface.clock(name, label="clock"))   # another node each run, one label
        recorder.add_cell("compute(ref.iface.clock())")
        recording.stop()
    return "first", "second"


def test_recording_models(store, recorded):
    a, b = recorded
    assert_mirrors("IRecordingInfo", store.info(a).as_dict())
    assert set(store.info(a).results) == {"clock"}   # the labelled target's value, for the list's column
    assert store.info(a).results["clock"].startswith("int ")
    details = describe(a, store)
    assert_mirrors("IRecordingDetails", details)
    assert_mirrors("ISigner", details["signer"])
    assert_mirrors("IStepSummary", details["steps"][0])
    assert details["environment"] is not None
    assert_mirrors("IEnvironmentSummary", details["environment"])
    assert_mirrors("IRecordedResult", details["results"][0])
    reply = asyncio.run(RecordingsManager(store.url).get(a))
    assert_mirrors("IRecordingReply", reply)
    # the list answer is JSON of these same dicts
    listed = json.loads(json.dumps(asyncio.run(RecordingsManager(store.url).list()), default=str))
    assert_mirrors("IRecordingInfo", listed[0])


def _data_recording(store, name, path):
    writer = store.create(name, {"note": "", "workers": 1})
    writer.add_step("data", {"files": [{"path": path, "size": 3, "sha256": "a" * 64, "embedded": False}]})
    writer.close()


def test_data_models(store):
    _data_recording(store, "data-here", "/x.csv")
    _data_recording(store, "data-moved", "/y.csv")
    assert_mirrors("IDataFile", describe("data-here", store)["data"][0])
    assert_mirrors("IDataDiff", diff("data-here", "data-moved", store)["data"][0])


def test_diff_models(store, recorded):
    d = diff(*recorded, store)
    assert_mirrors("IDiff", d)
    assert list(d["results"]) == ["clock"]   # paired by label across the two node ids
    assert_mirrors("IResultDiff", d["results"]["clock"])


def test_replay_models(store, recorded):
    report, _ = _replay(recorded[0], store)
    assert not report.verified and report.mismatches
    as_dict = json.loads(json.dumps(report.as_dict(), default=str))
    assert_mirrors("IReplayReport", as_dict)
    assert_mirrors("IMismatch", as_dict["mismatches"][0])
    job = ReplayProcess(id="0" * 32, name=recorded[0])
    job.apply(Report(report=as_dict))
    assert_mirrors("IReplayJob", job.as_dict())


def _replay(name, store):
    """``replay`` returns a report (and, once line "structure" lands, the replay session too)."""
    from julius_magics.cluster.session import get_session

    kernel_session = get_session()
    result = replay(name, store=store, n_workers=1)
    report = result[0] if isinstance(result, tuple) else result
    replay_session = get_session()
    if replay_session is not kernel_session:
        replay_session.stop()
        from julius_magics.cluster.session import set_session

        set_session(kernel_session)
    return report, replay_session


def test_every_interface_marked_as_a_mirror_is_checked():
    text = API_TS.read_text()
    marked = set(re.findall(r"Mirrors Python[^\n]*\*/\nexport interface (\w+)", text))
    checked = {"IRecordingInfo", "IStepSummary", "IEnvironmentSummary", "IDataFile", "IRecordedResult",
               "IRecordingDetails", "ISigner", "IMismatch", "IReplayReport", "IReplayJob", "IDataDiff", "IResultDiff", "IDiff"}
    assert marked == checked
