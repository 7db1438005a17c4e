"""A real JupyterLab with this checkout's extension, for the browser tests and ``make screenshots``."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILT = REPO / "julius_magics" / "labextension"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url, token=None):
    """``(status, body)`` of a GET, with the token when given."""
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@contextlib.contextmanager
def running_lab(tmp, root, token, settings=None):
    """Run JupyterLab (token auth, a free loopback port) with this checkout's built extension.

    Parameters
    ----------
    tmp : Path
        Folder for Jupyter's config, settings, runtime files and the log.
    root : Path
        The server's root folder and working directory.
    token : str
    settings : dict, optional
        Settings of the ``julius-magics:plugin`` (poll intervals).

    Yields
    ------
    str
        The base URL, e.g. ``http://127.0.0.1:8888``.
    """
    assert (BUILT / "package.json").exists(), (
        f"the labextension is not built in {BUILT}: run `jlpm install && jlpm build:prod` in labextension/")
    # This checkout's built extension comes first on JUPYTER_PATH, ahead of any installed copy.
    jupyter_path = tmp / "jupyter"
    (jupyter_path / "labextensions").mkdir(parents=True)
    (jupyter_path / "labextensions" / "julius-magics").symlink_to(BUILT)
    config = tmp / "config"
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "default_setting_overrides.json").write_text(json.dumps({
        "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
        "julius-magics:plugin": settings or {"pollInterval": 0, "replayPollInterval": 0.3},
    }))
    (config / "jupyter_server_config.json").write_text(json.dumps({
        "ServerApp": {"jpserver_extensions": {"julius_magics.server": True}, "allow_root": True}}))
    port = free_port()
    lab_env = {**os.environ, "JUPYTER_PATH": str(jupyter_path), "JUPYTER_CONFIG_DIR": str(config),
               "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
               "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
               "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
    log = open(tmp / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"],
        env=lab_env, stdout=log, stderr=subprocess.STDOUT, cwd=root)  # replays resolve relative paths there
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if get(f"{base}/api/status", token=token)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp / "lab.log").read_text()
            assert time.monotonic() < deadline, "JupyterLab did not start in 60 s"
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
