"""The IPython magics: a thin skin over ``Session`` (and, for recordings, the recording API).

Each magic parses its options and hands the work to one method; user mistakes
raise ``UsageError``, julius errors print their message without a Python traceback.
"""

from __future__ import annotations

import functools
import shlex

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser

from . import recording
from .recording import format_size
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

REMOTE_EVAL = _parser("%%remote_eval", "Run the cell on every worker, in the remote namespace.")
REMOTE_EVAL.add_argument("--push", default="", help="kernel variables to send first: NAME[,NAME...]")
REMOTE_EVAL.add_argument("--local", action="store_true", help="also run the cell in the kernel")

ADDRULES = _parser("%%addrules", "Define the cell's top-level functions as rules of a namespace.")
ADDRULES.add_argument("ns", help="the namespace, e.g. ml")

COMPUTE = _parser("%compute", "Compute a node reference (or a list of them) held by a variable.")
COMPUTE.add_argument("var", help="name of a variable holding a NodeRef or a list of NodeRefs")
COMPUTE.add_argument("--key-rules", default="", help="rules whose nodes become key jobs: NAME[,NAME...]")

GRAPH = _parser("%graph", "Render the graph of a node reference as SVG.")
GRAPH.add_argument("var", help="name of a variable holding a NodeRef or a list of NodeRefs")
GRAPH.add_argument("--out", default=None, help="also write the SVG to this file")
GRAPH.add_argument("--max-nodes", type=int, default=200, help="collapse the graph beyond this many nodes")


RECORD = _parser("%record", "Record the session: %record start NAME [...], then %record stop.")
RECORD.add_argument("action", choices=["start", "stop"])
RECORD.add_argument("name", nargs="?")
RECORD_CELL = _parser("%%record", "Record one cell.")
RECORD_CELL.add_argument("name")
for _p in (RECORD, RECORD_CELL):
    _p.add_argument("--store", default=None, help="store URL (default: $JULIUS_STORE or ~/.julius/recordings)")
    _p.add_argument("--data", choices=["embed", "hash"], default="embed",
                    help="embed input files (default) or keep only their hashes")
    _p.add_argument("--note", default=None, help="a note kept with the recording")

RECORDINGS = _parser("%recordings", "List the recordings of a store.")
RECORDINGS.add_argument("--store", default=None)

REPLAY = _parser("%replay", "Replay a recording in a fresh cluster and verify it.")
REPLAY.add_argument("name")
REPLAY.add_argument("-n", "--workers", type=int, default=None, help="workers (default: as recorded)")
REPLAY.add_argument("--store", default=None)
REPLAY.add_argument("--address", default=None, help="replay on this existing cluster")
REPLAY.add_argument("--strict-env", action="store_true", help="refuse when the environment differs")
REPLAY.add_argument("--trust", action="store_true", help="accept a recording signed with another key")


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

    @cell_magic
    def remote_eval(self, line, cell):
        """%%remote_eval [--push NAME[,NAME...]] [--local]: run the cell on every worker."""
        args = _parse(REMOTE_EVAL, line)
        user_ns = self.shell.user_ns
        missing = [n for n in _names(args.push) if n not in user_ns]
        if missing:
            raise UsageError(f"--push: no variable named {', '.join(missing)} in the kernel")
        push = {n: user_ns[n] for n in _names(args.push)}
        outputs = self.session.remote_eval(cell, push=push, local_namespace=user_ns if args.local else None)
        for worker, text in sorted(outputs.items()):
            if text:
                print(f"[{worker}]\n{text.rstrip()}")

    @cell_magic
    @_usage_errors
    def addrules(self, line, cell):
        """%%addrules NS: the cell's top-level functions become rules of namespace NS."""
        args = _parse(ADDRULES, line)
        self.session.add_rules(args.ns, cell)

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
        """%record start NAME [--store URL] [--data embed|hash] [--note TEXT] | %record stop
        | %%record NAME [...]: record one cell."""
        if cell is not None:
            args = _parse(RECORD_CELL, line)
            recorder = recording.start(self.session, args.name, store=args.store, data=args.data, note=args.note)
            try:
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
                self.shell.events.unregister("post_run_cell", self._record_cell)
                self._hooked = False
            info = recording.stop()
            print(_stopped_text(info, recorder.store))
            return None
        if not args.name:
            raise UsageError("%record start needs a name, e.g. %record start fraud-v1")
        recording.start(self.session, args.name, store=args.store, data=args.data, note=args.note)
        self.shell.events.register("post_run_cell", self._record_cell)
        self._hooked = True
        print(f"Recording {args.name!r}: every cell until `%record stop` is journaled.")

    _hooked = False

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
        """%replay NAME [-n WORKERS] [--store URL] [--address ADDR] [--strict-env] [--trust]"""
        args = _parse(REPLAY, line)
        with recording.ProgressBar(args.name) as bar:
            report = recording.replay(args.name, store=args.store, n_workers=args.workers, address=args.address,
                                      strict_env=args.strict_env, trust=args.trust, progress=bar, keep=True)
        # the kernel's session is now the replay's: getdata gives replayed values
        previous, replayed = get_session(), report.session
        replayed.progress = True
        set_session(replayed)
        if previous is not replayed:
            previous.stop()
        return report


def _stopped_text(info, store):
    return f"Recording {info.name!r} {info.status}: {info.steps} steps, {format_size(info.size)}, stored in {store.url}"


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
        ipython.events.unregister("post_run_cell", magics._record_cell)
        magics._hooked = False
    for kind, names in magics.magics.items():
        for name in names:
            ipython.magics_manager.magics[kind].pop(name, None)
