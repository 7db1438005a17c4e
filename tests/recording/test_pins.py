"""Pins of a recorded environment: requirements and conda, honest about origins.

The uv-lock form is written by uv from the index: ``test_isolated_envs`` installs it with uv.
"""

import platform

import dask
import pytest

from julius_magics.recording.environment import capture_environment
from julius_magics.recording.pins import render_pins, requirements

ORIGINS_ENV = {
    "python": {"version": "3.11.7"},
    "packages": {"dask": "2026.8.0", "mylib": "0.3.0", "tool": "1.2", "wheelpkg": "2.0", "condapkg": "1.0"},
    "distributions": {
        "dask": {"installer": "pip", "origin": {"kind": "index"}},
        "mylib": {"installer": "pip", "origin": {"kind": "editable", "url": "file:///home/me/mylib"}},
        "tool": {"installer": "pip", "origin": {"kind": "vcs", "vcs": "git", "url": "https://github.com/o/tool",
                                                "commit": "0123abcd"}},
        "wheelpkg": {"installer": "uv", "origin": {"kind": "url", "url": "https://files.example/wheelpkg-2.0.whl",
                                                   "hashes": {"sha256": "ab" * 32}}},
        "condapkg": {"installer": "conda", "origin": {"kind": "index"}},
    },
    "indexes": {"pip": {"index_url": "https://pypi.org/simple", "extra_index_urls": ["https://extra.example/simple"],
                        "find_links": []}, "uv": {"index_url": "https://pypi.org/simple"}},
}


def test_pin_formats_are_honest_about_origins():
    text = render_pins(ORIGINS_ENV, "requirements").splitlines()
    assert "dask==2026.8.0" in text
    assert "tool @ git+https://github.com/o/tool@0123abcd" in text
    assert f"wheelpkg @ https://files.example/wheelpkg-2.0.whl --hash=sha256:{'ab' * 32}" in text
    assert any(line.startswith("# mylib==0.3.0  (editable install from file:///home/me/mylib") for line in text)
    assert "--extra-index-url https://extra.example/simple" in text
    conda = render_pins(ORIGINS_ENV, "conda").splitlines()
    assert "  - python=3.11.7" in conda and "  - condapkg=1.0" in conda and "    - dask==2026.8.0" in conda
    assert conda.index("  - condapkg=1.0") < conda.index("  - pip:")
    with pytest.raises(ValueError, match="unknown pin format 'yaml'"):
        render_pins(ORIGINS_ENV, "yaml")


def test_requirements():
    env = capture_environment()
    lines = requirements(env).splitlines()
    assert lines[0] == f"# python {platform.python_version()}"
    assert f"dask=={dask.__version__}" in lines
    assert "distributed==2026.8.0" in lines
    pins = [line for line in lines[1:] if not line.startswith("--")]
    names = [line.lstrip("# ").split("==")[0] for line in pins]
    assert names == sorted(env["packages"]) and len(pins) == len(env["packages"])
