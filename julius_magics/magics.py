"""The IPython magics: a thin skin over ``Session`` (and, for recordings, the recording API).

Each magic parses its options and hands the work to one method; user mistakes
raise ``UsageError``, julius errors print their message without a Python traceback.
"""

from __future__ import annotations

import functools
import inspect
import shlex
import textwrap

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser

from . import recording
from .recording import format_size
from .recording.redaction import scrub_text
from .cli import trust_key, worker_count
from .cluster.session import get_session, prepare_workers, set_session
from .rules.node import NodeRef

__all__ = ["JuliusMagics", "load_ipython_extension", "unload_ipython_extension"]


def _usage_errors(magic):
    """A bad value in a magic's options (a recording name, a worker count) is a usage error."""

    @functools.wraps(magic)
    def wrapper(*args, **kwargs):
        try:
            return magic(*args, **kwargs)
        except ValueError as e:
            raise UsageError(str(e)) from None

    return wrapper


def _parser(prog, description):
    return MagicArgumentParser(prog=prog, description=description, add_help=False)


def _parse(parser, line):
    try:
        return parser.parse_args(shlex.split(line))
    except ValueError as e:  # unbalanced quotes
        raise UsageError(f"{parser.prog}: {e}") from None


def _names(text):
    return [n.strip() for n in (text or "").split(",") if n.strip()]


CLUSTER = _parser("%cluster", "Start, connect to, inspect or stop the Dask cluster.")
CLUSTER.add_argument("action", choices=["start", "connect", "status", "stop"])
CLUSTER.add_argument("address", nargs="?", help="scheduler address for `connect`")
CLUSTER.add_argument("-n", "--workers", type=int, default=4, help="number of workers (start)")
CLUSTER.add_argument("--threads", type=int, default=1, help="threads per worker (start)")
CLUSTER.add_argument("--memory-limit", default="auto", help="memory limit per worker, e.g. '2GB' (start)")

REMOTE_EVAL = _parser("%%remote_eval", "Run the cell (or, as a line magic, the code held by VAR) on every worker, "
                                       "in the remote namespace.")
REMOTE_EVAL.add_argument("var", nargs="?", help="line form: a kernel variable holding the code (a string, or a "
                                               "function, class or module with readable source)")
REMOTE_EVAL.add_argument("--push", default="", help="kernel variables to send first: NAME[,NAME...]")
REMOTE_EVAL.add_argument("--local", action="store_true", help="also run the cell in the kernel")

ADDRULES = _parser("%%addrules", "Define the cell's (or VAR's) top-level functions as rules of a namespace.")
ADDRULES.add_argument("ns", help="the namespace, e.g. ml")
ADDRULES.add_argument("var", nargs="?", help="line form: a kernel variable holding the rules' code (a string, or "
                                            "a function, class or module with readable source)")

COMPUTE = _parser("%compute", "Compute a node reference (or a list of them) held by a variable.")
COMPUTE.add_argument("var", help="name of a variable holding a NodeRef or a list of NodeRefs")
COMPUTE.add_argument("--key-rules", default="", help="rules whose nodes become key jobs: NAME[,NAME...]")

GRAPH = _parser("%graph", "Render the graph of a node reference as SVG.")
GRAPH.add_argument("var", help="name of a variable holding a NodeRef or a list of NodeRefs")
GRAPH.add_argument("--out", default=None, help="also write the SVG to this file")
GRAPH.add_argument("--max-nodes", type=int, default=300,
                   help="draw every node up to this many (default 300); above, one box per key job")


RECORD = _parser("%record", "Record the session: %record start NAME [...], then %record stop.")
RECORD.add_argument("action", choices=["start", "stop"])
RECORD.add_argument("name", nargs="?")
RECORD_CELL = _parser("%%record", "Record one cell.")
RECORD_CELL.add_argument("name")
for _p in (RECORD, RECORD_CELL):
    _p.add_argument("--store", default=None, help="store URL (default: $JULIUS_STORE or ~/.julius/recordings)")
    _p.add_argument("--data", choices=["embed", "hash", "embed-remote"], default="embed",
                    help="embed input files (default), keep only their hashes, or embed remote inputs too")
    _p.add_argument("--with-local-packages", action="store_true",
                    help="embed wheels of the editable/local installs (for `julius replay --isolated`)")
    _p.add_argument("--note", default=None, help="a note kept with the recording")

RECORDINGS = _parser("%recordings", "List the recordings of a store.")
RECORDINGS.add_argument("--store", default=None)

REPLAY = _parser("%replay", "Replay a recording in a fresh cluster and verify it.")
REPLAY.add_argument("name")
REPLAY.add_argument("-n", "--workers", type=worker_count, default=None, help="workers (default: as recorded)")
REPLAY.add_argument("--store", default=None)
REPLAY.add_argument("--address", default=None, help="replay on this existing cluster")
REPLAY.add_argument("--strict-env", action="store_true", help="refuse when the environment differs")
REPLAY.add_argument("--trust-key", type=trust_key, default=None, metavar="FINGERPRINT",
                    help="accept this key for this replay (yours and your trusted keys always are)")
REPLAY.add_argument("--legacy-hmac", action="store_true", help="replay a julius-recording/1 recording of yours")
REPLAY.add_argument("--isolated", action="store_true",
                    help="rebuild the recorded environment with uv and replay in it (another process)")
REPLAY.add_argument("--python-install", action="store_true",
                    help="with --isolated: let uv install the recorded Python version when it is missing")


@magics_class
class JuliusMagics(Magics):
    """``%cluster``, ``%%remote_eval``, ``%%addrules``, ``%compute``, ``%graph`` and the recording magics."""

    @property
    def session(self):
        return get_session()

    # --- cluster ------------------------------------------------------------------
    @line_magic
    @_usage_errors
    def cluster(self, line):
        """%cluster start [-n N] [--threads T] [--memory-limit M] | connect ADDRESS | status | stop"""
        args = _parse(CLUSTER, line)
        session = self.session
        if args.action == "start":
            session.start(n_workers=args.workers, threads_per_worker=args.threads, memory_limit=args.memory_limit)
            print(format_status(session.status()))
        elif args.action == "connect":
            if not args.address:
                raise UsageError("%cluster connect needs an address, e.g. %cluster connect tcp://10.0.0.5:8786")
            session.connect(args.address)
            print(format_status(session.status()))
        elif args.action == "status":
            print(format_status(session.status()))
        else:
            owned = session.cluster is not None
            if not session.stop():
                print("No active cluster.")
            else:
                print("Cluster stopped." if owned else "Disconnected (the cluster was not started here: left running).")

    @line_cell_magic
    def remote_eval(self, line, cell=None):
        """%%remote_eval [--push NAME[,NAME...]] [--local]: run the cell on every worker.
        | %remote_eval VAR [--push ...] [--local]: run the code held by kernel variable VAR."""
        args = _parse(REMOTE_EVAL, line)
        source, where = self._code(cell, args.var, "%remote_eval")
        user_ns = self.shell.user_ns
        missing = [n for n in _names(args.push) if n not in user_ns]
        if missing:
            raise UsageError(f"--push: no variable named {', '.join(missing)} in the kernel")
        push = {n: user_ns[n] for n in _names(args.push)}
        _check_syntax(source, where)
        outputs = self.session.remote_eval(source, push=push, local_namespace=user_ns if args.local else None)
        for worker, text in sorted(outputs.items()):
            if text:
                print(f"[{worker}]\n{text.rstrip()}")

    @line_cell_magic
    @_usage_errors
    def addrules(self, line, cell=None):
        """%%addrules NS: the cell's top-level functions become rules of namespace NS.
        | %addrules NS VAR: the same for the code held by kernel variable VAR."""
        args = _parse(ADDRULES, line)
        source, where = self._code(cell, args.var, f"%addrules {args.ns}")
        _check_syntax(source, where)
        self.session.add_rules(args.ns, source)

    def _code(self, cell, var, magic):
        """The source a remote_eval or addrules runs, and how to name its lines in an error.

        A cell is its own source; the line form reads kernel variable ``var``: a string
        of code, or a function, class or module whose source ``inspect`` can read (so the
        same code can go to every cluster a notebook starts without copying cells).
        """
        if cell is not None:
            if var:
                raise UsageError(f"%{magic}: give the code as the cell or as a variable, not both ({var!r})")
            return cell, f"%{magic} cell"
        if not var:
            raise UsageError(f"{magic} needs a variable holding code (or use the cell form %{magic})")
        try:
            value = self.shell.user_ns[var]
        except KeyError:
            raise UsageError(f"{magic}: no variable named {var!r} in the kernel") from None
        if isinstance(value, str):
            return value, f"{magic} {var}"
        if inspect.ismodule(value) or inspect.isclass(value) or inspect.isfunction(value) or inspect.ismethod(value):
            try:
                return textwrap.dedent(inspect.getsource(value)), f"{magic} {var}"
            except (OSError, TypeError) as e:
                raise UsageError(f"{magic}: cannot read the source of {var!r}: {e}") from None
        raise UsageError(f"{magic}: {var!r} must hold code (a string, or a function, class or module), "
                         f"not {type(value).__name__}")

    # --- graphs --------------------------------------------------------------------------
    def _refs(self, var):
        try:
            value = self.shell.user_ns[var]
        except KeyError:
            raise UsageError(f"no variable named {var!r}") from None
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items or not all(type(v) is NodeRef for v in items):
            raise UsageError(f"{var!r} must hold a node reference or a list of them, not {type(value).__name__}")
        return value

    @line_magic
    def compute(self, line):
        """%compute VAR [--key-rules NAME[,...]]: compute the node(s) in VAR and return the value(s)."""
        args = _parse(COMPUTE, line)
        return self.session.compute(self._refs(args.var), key_rules=_names(args.key_rules) or None)

    @line_magic
    def graph(self, line):
        """%graph VAR [--out FILE.svg] [--max-nodes N]: the expanded graph as SVG."""
        from IPython.display import SVG, display

        from .cluster.render import render_svg

        args = _parse(GRAPH, line)
        svg = render_svg(self.session, self._refs(args.var), max_nodes=args.max_nodes)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(svg)
            print(f"wrote {args.out}")
        display(SVG(svg))

    # --- recordings ------------------------------------------------------------------------
    @line_cell_magic
    @_usage_errors
    def record(self, line, cell=None):
        """%record start NAME [--store URL] [--data embed|hash|embed-remote] [--with-local-packages] [--note TEXT]
        | %record stop | %%record NAME [...]: record one cell."""
        if cell is not None:
            args = _parse(RECORD_CELL, line)
            recorder = recording.start(self.session, args.name, store=args.store, data=args.data, note=args.note,
                                       with_local_packages=args.with_local_packages)
            try:
                recorder.cell_starts(cell)
                result = self.shell.run_cell(cell)
                recorder.add_cell(cell)
            finally:
                info = recording.stop()
            print(_stopped_text(info, recorder.store))
            return None if result.success else result.raise_error()
        args = _parse(RECORD, line)
        if args.action == "stop":
            if args.name:
                raise UsageError("%record stop takes no name")
            recorder = recording.active_recorder()
            if self._hooked:
                self.shell.events.unregister("pre_run_cell", self._cell_starts)
                self.shell.events.unregister("post_run_cell", self._record_cell)
                self._hooked = False
            info = recording.stop()
            print(_stopped_text(info, recorder.store))
            return None
        if not args.name:
            raise UsageError("%record start needs a name, e.g. %record start fraud-v1")
        recording.start(self.session, args.name, store=args.store, data=args.data, note=args.note,
                        with_local_packages=args.with_local_packages)
        self.shell.events.register("pre_run_cell", self._cell_starts)
        self.shell.events.register("post_run_cell", self._record_cell)
        self._hooked = True
        print(f"Recording {args.name!r}: every cell until `%record stop` is journaled.")

    _hooked = False

    def _cell_starts(self, info):
        recorder = recording.active_recorder()
        if recorder is not None and info.raw_cell:
            recorder.cell_starts(info.raw_cell)

    def _record_cell(self, result):
        recorder = recording.active_recorder()
        source = result.info.raw_cell if result.info else ""
        if recorder is not None and not source.lstrip().startswith(("%record", "%%record")):
            recorder.add_cell(source)

    @line_magic
    def recordings(self, line):
        """%recordings [--store URL]: the store's recordings as a table."""
        args = _parse(RECORDINGS, line)
        return recording.recordings_table(args.store)

    @line_magic
    @_usage_errors
    def replay(self, line):
        """%replay NAME [-n WORKERS] [--store URL] [--address ADDR] [--strict-env] [--trust-key FP] [--legacy-hmac] [--isolated]"""
        args = _parse(REPLAY, line)
        if args.isolated:   # in a subprocess of the rebuilt environment: the kernel's session stays as it is
            return _replay_isolated(args)
        with recording.ProgressBar(args.name) as bar:
            report = recording.replay(args.name, store=args.store, n_workers=args.workers, address=args.address,
                                      strict_env=args.strict_env, trust_key=args.trust_key,
                                      legacy_hmac=args.legacy_hmac, progress=bar, keep=True)
        # the kernel's session is now the replay's: getdata gives replayed values
        previous, replayed = get_session(), report.session
        replayed.progress = True
        set_session(replayed)
        if previous is not replayed:
            previous.stop()
        return report


def _check_syntax(source, where):
    """Raise a ``UsageError`` of one line naming where a syntax error is, with the line and a caret.

    Lines of a cell are counted as the notebook shows them: the ``%%magic`` line is line 1.
    """
    try:
        compile(source, where, "exec")
    except SyntaxError as e:
        lineno = (e.lineno or 1) + (1 if where.endswith(" cell") else 0)
        text = (e.text or "").rstrip("\n")
        code = text.lstrip()
        column = max((e.offset or 1) - 1 - (len(text) - len(code)), 0)
        pointer = f"\n    {code}\n    {' ' * min(column, len(code))}^" if code else ""
        raise UsageError(f"{type(e).__name__} in {where}, line {lineno}: {e.msg}{pointer}") from None


def _replay_isolated(args):
    """``%replay NAME --isolated``: the report of a replay in the recording's rebuilt environment."""
    from .recording.rebuild import replay_isolated
    from .recording.replaying import Progress

    if args.address:
        raise UsageError("--isolated starts its own cluster on the rebuilt interpreter: leave out --address")
    if args.legacy_hmac:   # the rebuilt environment's replay reads julius-recording/2 only
        raise UsageError("--isolated replays julius-recording/2 recordings: leave out --legacy-hmac")
    with recording.ProgressBar(args.name) as bar:
        return replay_isolated(args.name, store=args.store, n_workers=args.workers, trust_key=args.trust_key,
                               python_install=args.python_install, build_progress=False,
                               progress=lambda done, total, message: bar(Progress(done, total, message)),
                               log=print)


def _stopped_text(info, store):
    where = scrub_text(store.url)   # a store URL's user and password are not printed
    return f"Recording {info.name!r} {info.status}: {info.steps} steps, {format_size(info.size)}, stored in {where}"


def format_status(status):
    """A text table of the cluster's workers."""
    rows = [("worker", "status", "threads", "memory", "limit")]
    for w in status["workers"]:
        rows.append((w["address"], str(w["status"]), str(w["nthreads"]), format_size(w["memory"]), format_size(w["memory_limit"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    kind = "started here" if status["owned"] else "connected"
    head = f"Dask cluster {status['scheduler']} ({kind}), {len(status['workers'])} workers, dashboard {status['dashboard']}"
    return "\n".join([head] + lines)


_loaded = {}


def load_ipython_extension(ipython):
    """``%load_ext julius_magics``: register the magics (idempotent)."""
    if ipython in _loaded:
        return
    magics = JuliusMagics(ipython)
    ipython.register_magics(magics)
    _loaded[ipython] = magics
    prepare_workers()   # so that the first `%cluster start` is quick


def unload_ipython_extension(ipython):
    """``%unload_ext julius_magics``: remove the magics; the session (and its cluster) stays."""
    magics = _loaded.pop(ipython, None)
    if magics is None:
        return
    if magics._hooked:
        ipython.events.unregister("pre_run_cell", magics._cell_starts)
        ipython.events.unregister("post_run_cell", magics._record_cell)
        magics._hooked = False
    for kind, names in magics.magics.items():
        for name in names:
            ipython.magics_manager.magics[kind].pop(name, None)
