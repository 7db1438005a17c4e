"""Jupyter server extension: the ``/julius/api/`` REST API behind the "Recordings" sidebar.

Importing this module is cheap (no tornado, no jupyter_server, no traitlets): the
package's ``__init__`` re-exports the two discovery hooks below, so every process that
imports julius_magics imports this one (each Dask worker of a recorded cluster), and
jupyter_server imports the handlers and the config only when it loads the extension.

The store is ``c.JuliusRecordings.store`` from the server's config, else
``$JULIUS_STORE``, else ``~/.julius/recordings``.
"""

from __future__ import annotations


def _jupyter_server_extension_points() -> list[dict]:
    """Tell jupyter_server which module to load (``julius_magics.server``)."""
    return [{"module": "julius_magics.server"}]


def _jupyter_labextension_paths() -> list[dict]:
    """Where the prebuilt JupyterLab extension is, relative to the ``julius_magics`` package."""
    return [{"src": "labextension", "dest": "julius-magics"}]


def _load_jupyter_server_extension(server_app) -> None:
    """Create the manager from the server's config and register the handlers."""
    from julius_magics.server.manager import JuliusRecordings, RecordingsManager
    from julius_magics.server.routes import setup_route_handlers

    config = JuliusRecordings(parent=server_app)
    manager = RecordingsManager(config.store)
    server_app.web_app.settings["julius_manager"] = manager
    setup_route_handlers(server_app.web_app, manager)
    server_app.log.info("julius_magics: /julius/api/ registered (store: %s)",
                        config.store or "$JULIUS_STORE or ~/.julius/recordings")


async def _unload_jupyter_server_extension(server_app) -> None:
    """The server is stopping: kill running replays (and their clusters)."""
    manager = server_app.web_app.settings.get("julius_manager")
    if manager is not None:
        await manager.close()
