"""REST handlers under ``/julius/api/``: parse the request, call the manager.

=======  ==================================  ===========================================
verb     path                                what
=======  ==================================  ===========================================
GET      /julius/api/recordings              ``{"recordings": [RecordingInfo, ...]}``
GET      /julius/api/recordings/NAME         ``{"info": RecordingInfo, "details": {...}}``
DELETE   /julius/api/recordings/NAME         204
GET      /julius/api/diff?a=NAME&b=NAME      ``summary.diff`` of the two
POST     /julius/api/replays                 ``{"name", "workers"?, "trust_key"?, "isolated"?}`` -> 202 job
GET      /julius/api/replays/ID              the job: state, done/total, report
=======  ==================================  ===========================================

Every verb is ``@tornado.web.authenticated``. Errors come back as JSON
``{"message": ..., "reason": ...}`` from ``APIHandler``: 400 bad input
(invalid name, bad JSON, too many workers), 404 no such recording or job, 409 a
recording that fails its integrity check or is signed by a key the server's user
does not trust, 422 a recording this version cannot read (a newer format), 503
the store cannot be reached. A bad recording is never a 500.
"""

from __future__ import annotations

import json

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from julius_magics.errors import (IntegrityError, RecordingError, RecordingNotFoundError, StoreUnreachableError,
                                  UntrustedRecordingError)
from julius_magics.server.manager import JobNotFoundError

# Any single path segment; the store validates names itself (``[A-Za-z0-9._-]``),
# so a traversal attempt reaches it and is refused there with a clear 400.
_NAME = r"([^/]+)"


def _http_error(error: Exception) -> tornado.web.HTTPError:
    """Map an error of the recording layer to an HTTP status with its message."""
    message = str(error) or type(error).__name__
    if isinstance(error, (RecordingNotFoundError, JobNotFoundError)):
        status = 404
    elif isinstance(error, (IntegrityError, UntrustedRecordingError)):
        status = 409
    elif isinstance(error, (ValueError, TypeError)):
        status = 400
    elif isinstance(error, StoreUnreachableError):
        status = 503
    elif isinstance(error, RecordingError):   # e.g. a format this version does not read: the recording is bad
        status = 422
    elif isinstance(error, OSError):
        status, message = 503, f"recording store unreachable: {message}"
    else:  # a bug: still tell the sidebar what happened, not just "Unhandled error"
        status, message = 500, f"{type(error).__name__}: {message}"
    return tornado.web.HTTPError(status, message, reason=message.splitlines()[0][:200])


class _JuliusHandler(APIHandler):
    """Base: gives every handler the manager and the error mapping."""

    @property
    def manager(self):
        return self.settings["julius_manager"]

    async def call(self, coroutine):
        try:
            return await coroutine
        except Exception as error:
            http_error = _http_error(error)
            if http_error.status_code == 500:
                self.log.exception("julius_magics: %s %s failed", self.request.method, self.request.path)
            raise http_error from error


class RecordingsHandler(_JuliusHandler):
    @tornado.web.authenticated
    async def get(self):
        self.finish({"recordings": await self.call(self.manager.list())})


class RecordingHandler(_JuliusHandler):
    @tornado.web.authenticated
    async def get(self, name):
        self.finish(await self.call(self.manager.get(name)))

    @tornado.web.authenticated
    async def delete(self, name):
        await self.call(self.manager.delete(name))
        self.set_status(204)
        self.finish()


class DiffHandler(_JuliusHandler):
    @tornado.web.authenticated
    async def get(self):
        a, b = self.get_query_argument("a", ""), self.get_query_argument("b", "")
        if not a or not b:
            raise tornado.web.HTTPError(400, "diff needs two recordings: ?a=NAME&b=NAME",
                                        reason="diff needs ?a=NAME&b=NAME")
        self.finish(await self.call(self.manager.diff(a, b)))


class ReplaysHandler(_JuliusHandler):
    @tornado.web.authenticated
    async def post(self):
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError as error:
            raise tornado.web.HTTPError(400, f"request body is not JSON: {error}", reason="body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"]:
            raise tornado.web.HTTPError(400, 'POST /julius/api/replays needs {"name": "RECORDING"}',
                                        reason="missing recording name")
        if "trust" in body:
            raise tornado.web.HTTPError(400, '"trust" was replaced by "trust_key": the fingerprint of the one key '
                                        'to accept', reason="trust is now trust_key")
        if not isinstance(body.get("isolated", False), bool):
            raise tornado.web.HTTPError(400, f'"isolated" must be true or false, got {body["isolated"]!r:.40}',
                                        reason="bad isolated")
        options = {"workers": body.get("workers"), "trust_key": body.get("trust_key")}
        if body.get("isolated"):   # the manager replays in a rebuilt environment; only sent when asked
            options["isolated"] = True
        try:
            started = self.manager.start_replay(body["name"], **options)
        except TypeError as error:   # an option this server's manager does not have (yet)
            raise tornado.web.HTTPError(400, f"this server cannot replay so: {error}",
                                        reason="unsupported replay option") from error
        job = await self.call(started)
        self.set_status(202)
        self.set_header("Location", url_path_join(self.base_url, "julius/api/replays", job.id))
        self.finish(job.as_dict())


class ReplayHandler(_JuliusHandler):
    @tornado.web.authenticated
    async def get(self, job_id):
        try:
            job = self.manager.job(job_id)
        except JobNotFoundError as error:
            raise _http_error(error) from error
        self.finish(job.as_dict())


def setup_route_handlers(web_app, manager) -> None:
    """Register the ``/julius/api/`` handlers on the server's tornado app.

    Parameters
    ----------
    web_app : tornado.web.Application
        ``server_app.web_app``.
    manager : RecordingsManager
        What the handlers call; stored in ``web_app.settings["julius_manager"]``.
    """
    web_app.settings["julius_manager"] = manager
    api = url_path_join(web_app.settings["base_url"], "julius", "api")
    web_app.add_handlers(".*$", [
        (url_path_join(api, "recordings") + "/?", RecordingsHandler),
        (url_path_join(api, "recordings", _NAME) + "/?", RecordingHandler),
        (url_path_join(api, "diff") + "/?", DiffHandler),
        (url_path_join(api, "replays") + "/?", ReplaysHandler),
        (url_path_join(api, "replays", r"([0-9a-f]+)") + "/?", ReplayHandler),
    ])
