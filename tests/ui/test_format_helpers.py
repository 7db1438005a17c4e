"""The sidebar's formatting helpers (labextension/src/format.ts) give what the Python side gives:
sizes in decimal units as ``recording.format_size``, values as ``julius diff`` shows them."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from julius_magics.recording import format_size
from julius_magics.recording.summary import _value

BUILT = Path(__file__).resolve().parents[2] / "labextension" / "lib" / "format.js"
SIZES = [0, 1, 999, 1000, 1049, 25_100, 999_949, 41_173_982, 39_300_000_000, 7 * 10**13]
VALUES = ["float 0.88729", "int 7", "list of 3", "DataFrame 52,000×2", "float", None]


def run_helpers(calls):
    """Evaluate JavaScript ``calls`` (a JSON-returning expression) against the compiled helpers."""
    node = shutil.which("node")
    assert node, "Node.js is needed to build the labextension (make test installs it)"
    assert BUILT.exists(), f"{BUILT} is missing: build the extension (jlpm build:lib in labextension/)"
    source = BUILT.read_text() + f"\nconsole.log(JSON.stringify({calls}));\n"
    done = subprocess.run([node, "--input-type=module"], input=source, capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(done.stdout)


def test_sizes_as_the_python_side_formats_them():
    shown = run_helpers(f"{json.dumps(SIZES)}.map(formatSize)")
    assert shown == [format_size(n) for n in SIZES]
    assert shown[7] == "41.2 MB"   # the recording: one size everywhere


@pytest.mark.parametrize("value", VALUES)
def test_values_as_julius_diff_shows_them(value):
    assert run_helpers(f"formatValue({json.dumps(value)})") == _value(value)
