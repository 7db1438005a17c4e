"""``julius``: recordings from the command line (a thin skin over ``julius_magics.recording``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from .errors import JuliusError
from .terminal import one_line

__all__ = ["main", "EXIT_VERIFIED", "EXIT_NOT_VERIFIED", "EXIT_ERROR", "EXIT_INCOMPLETE", "EXIT_REFUSED"]

# ``julius replay``'s exit statuses (see ``recording/verdict.py``)
EXIT_VERIFIED, EXIT_NOT_VERIFIED, EXIT_ERROR, EXIT_INCOMPLETE, EXIT_REFUSED = 0, 1, 2, 3, 4


def _store(args):
    from .recording.store import Store

    return Store.coerce(args.store)


def cmd_list(args):
    from .recording import recordings_table

    store = _store(args)
    if args.json:
        print(json.dumps([info.as_dict() for info in store.list(legacy_hmac=args.legacy_hmac)]))
        return 0
    table = recordings_table(store, legacy_hmac=args.legacy_hmac)   # bad ones: a warning each
    table["note"] = table["note"].map(one_line, na_action="ignore")   # a row a recording, whatever its note holds
    missing = "://" not in store.url and not os.path.isdir(store.url)
    print(table.to_string(index=False) if len(table) else
          f"no recordings in {store.url}" + (" (no such folder yet)" if missing else ""))
    return 0


def cmd_show(args):
    from .recording.summary import details, format_details

    shown = details(args.name, _store(args), legacy_hmac=args.legacy_hmac)
    print(json.dumps(shown, indent=1, default=str) if args.json else format_details(shown))
    return 0


def cmd_replay(args):
    if args.isolated or args.bisect_env:   # in rebuilt environments: recording.rebuild
        return _replay_rebuilt(args)
    from .recording.replaying import replay
    from .recording.replay_job import run

    from .recording.verdict import exit_status

    options = dict(store=_store(args), n_workers=args.workers, address=args.address,
                   strict_env=args.strict_env, trust_key=args.trust_key, legacy_hmac=args.legacy_hmac)
    if args.json:   # the JSON lines of ``python -m julius_magics.recording.replay_job``
        return run(args.name, lambda event: print(json.dumps(event.as_dict(), default=str), flush=True),
                   **options)
    with _progress_bar(args.name) as bar:
        report = replay(args.name, progress=bar, **options)
    print(report.summary())
    return exit_status(report)


@contextlib.contextmanager
def _progress_bar(name):
    """A replay's progress bar on a terminal; none where nobody watches (a pipe, a log, ``JULIUS_NO_PROGRESS``).

    The bar's carriage-return updates would otherwise fill a captured stderr, where an
    error must stay the one line that says what went wrong.
    """
    if os.environ.get("JULIUS_NO_PROGRESS") or not sys.stderr.isatty():
        yield None
        return
    from .recording.report import ProgressBar

    with ProgressBar(name) as bar:
        yield bar


def _replay_rebuilt(args):
    """``--isolated`` (replay in the recording's rebuilt environment) and ``--bisect-env``."""
    from .recording import rebuild
    from .recording.report import Progress

    if args.address:
        raise JuliusError("--isolated and --bisect-env start their own cluster on the rebuilt interpreter: "
                          "leave out --address")
    if args.legacy_hmac:   # the rebuilt environment's replay reads julius-recording/2 only
        raise ValueError("--isolated and --bisect-env replay julius-recording/2 recordings: leave out --legacy-hmac "
                         "(export and import the recording under a new name to sign it anew)")
    options = dict(store=_store(args), n_workers=args.workers, trust_key=args.trust_key,
                   python_install=args.python_install)

    def emit(event):
        print(json.dumps(event, default=str), flush=True)

    if args.bisect_env:
        log = ((lambda text: emit({"event": "progress", "done": 0, "total": 0, "message": text})) if args.json
               else (lambda text: print(text, file=sys.stderr, flush=True)))
        result = rebuild.bisect_environment(args.name, log=log, **options)
        if args.json:
            emit({"event": "bisect", "bisect": result.as_dict()})
        else:
            print(result.summary())
        return 0 if result.culprits else 1
    if args.json:   # the replay job's JSON lines, the report with the environments built
        return min(rebuild.run_isolated_job(args.name, emit, **options), 1)
    with _progress_bar(args.name) as bar:
        progress = None if bar is None else (lambda done, total, message: bar(Progress(done, total, message)))
        result = rebuild.replay_isolated(args.name, progress=progress,
                                         log=lambda text: print(text, file=sys.stderr, flush=True), **options)
    print(result.summary())
    return 0 if result.verified else 1


def cmd_diff(args):
    from .recording.summary import diff, format_diff

    d = diff(args.a, args.b, _store(args), legacy_hmac=args.legacy_hmac)
    print(json.dumps(d, indent=1, default=str) if args.json else format_diff(d))
    return 0 if d["same"] else 1   # as diff(1): 0 same, 1 different, 2 trouble


def cmd_export(args):
    _store(args).export(args.name, args.file, legacy_hmac=args.legacy_hmac)
    print(f"exported {args.name} to {args.file}")
    return 0


def cmd_import(args):
    name = _store(args).import_(args.file, trust_key=args.trust_key, as_name=args.as_name, force=args.force,
                                legacy_hmac=args.legacy_hmac)
    print(f"imported {name} into {_store(args).url}")
    return 0


def cmd_env(args):
    from .recording.summary import environment_pins

    if args.format != "requirements":   # uv-lock, conda: recording.rebuild
        from .recording.rebuild import recorded_pins

        sys.stdout.write(recorded_pins(args.name, _store(args), args.format))
        return 0
    sys.stdout.write(environment_pins(args.name, _store(args), legacy_hmac=args.legacy_hmac))
    return 0


def cmd_key(args):
    from .recording.integrity import key_path, load_key

    import getpass
    import socket

    key = load_key()
    print(key.public_line(comment=f"{getpass.getuser()}@{socket.gethostname()}"))
    if not args.public:   # the line above alone is a FILE.pub for `julius trust add`
        print(f"fingerprint {key.fingerprint}  (private key {key.path or key_path()})")
    return 0


def cmd_trust_add(args):
    from .recording.keys import add_trusted_key

    key = add_trusted_key(args.file, name=args.name)
    print(f"trusted {key.fingerprint} {key.name} ({key.source})")
    return 0


def cmd_trust_list(args):
    from .recording.integrity import load_key
    from .recording.keys import load_trusted_keys

    keys = load_trusted_keys()
    if args.json:
        print(json.dumps([k.as_dict() for k in keys]))
        return 0
    print(f"{load_key().fingerprint}  you")
    for k in keys:
        print(f"{k.fingerprint}  {k.name or '-'}  ({k.source})")
    return 0


def worker_count(text):
    """argparse type of a worker count: a positive integer (``-n 0`` is a usage error, not "as recorded")."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid worker count {text!r}: give a positive integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"invalid worker count {n}: give a positive integer")
    return n


def trust_key(text):
    """argparse type of ``--trust-key``: a key fingerprint (32 hex digits)."""
    from .recording.keys import check_fingerprint

    try:
        return check_fingerprint(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).replace("--trust-key ", "")) from None


def cmd_demo(args):
    from .demo import run_demo

    return run_demo(workers=args.workers, replay_workers=args.replay_workers, store=args.store,
                    data_dir=args.data_dir, train_mb=args.train_mb, test_mb=args.test_mb)


def build_parser():
    parser = argparse.ArgumentParser(prog="julius", description="Reproducible Dask experiments: recordings.")
    parser.add_argument("--store", default=None, help="store URL (default: $JULIUS_STORE or ~/.julius/recordings)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, fn, help_text, **options):
        p = sub.add_parser(name, help=help_text, **options)
        p.set_defaults(fn=fn)
        p.add_argument("--store", default=argparse.SUPPRESS,
                       help="store URL (default: $JULIUS_STORE or ~/.julius/recordings)")
        return p

    def legacy(p):
        p.add_argument("--legacy-hmac", action="store_true",
                       help="read julius-recording/1 (HMAC-signed) recordings made with your key file")

    def trusting(p):
        p.add_argument("--trust-key", type=trust_key, default=None, metavar="FINGERPRINT",
                       help="accept the key of this fingerprint for this recording only "
                            "(your key and `julius trust add` keys are always accepted)")

    json_help = "print JSON instead of text"
    p = add("list", cmd_list, "list the recordings")
    p.add_argument("--json", action="store_true", help=json_help)
    legacy(p)
    p = add("show", cmd_show, "steps, environment, data and results of a recording, and who signed it")
    p.add_argument("name", help="the recording's name")
    p.add_argument("--json", action="store_true", help=json_help)
    legacy(p)
    from .recording.verdict import EXIT_HELP

    p = add("replay", cmd_replay, "replay a recording in a fresh cluster; exit 0 only when verified",
            description="Replay a recording in a fresh cluster and verify every recorded result.", epilog=EXIT_HELP)
    p.add_argument("name", help="the recording's name")
    p.add_argument("-n", "--workers", type=worker_count, default=None, help="number of workers (default: as recorded)")
    p.add_argument("--address", default=None, help="replay on this existing Dask scheduler instead of a fresh cluster")
    p.add_argument("--strict-env", action="store_true", help="refuse to replay when the environment differs")
    trusting(p)
    legacy(p)
    p.add_argument("--json", action="store_true", help="progress and report as JSON lines")
    p.add_argument("--isolated", action="store_true",
                   help="rebuild the recorded environment with uv (cached in ~/.julius/envs) and replay in it")
    p.add_argument("--python-install", action="store_true",
                   help="with --isolated: let uv install the recorded Python version when it is missing")
    p.add_argument("--bisect-env", action="store_true",
                   help="name the package change that alters each result differing from the recording")
    p = add("diff", cmd_diff, "what differs between two recordings; exit 0 when none, 1 when they differ, "
                              "2 on error (as diff(1))")
    p.add_argument("a", help="the first recording (shown as recorded)")
    p.add_argument("b", help="the recording to compare with it")
    p.add_argument("--json", action="store_true", help=json_help)
    legacy(p)
    p = add("export", cmd_export, "a recording and its data as one .jrec file")
    p.add_argument("name", help="the recording's name")
    p.add_argument("file", help="the .jrec file to write")
    legacy(p)
    p = add("import", cmd_import, "import a .jrec file")
    p.add_argument("file", help="the .jrec file to read")
    trusting(p)
    legacy(p)
    p.add_argument("--as", dest="as_name", default=None, metavar="NEW",
                   help="import under this name (the copy is signed with your key)")
    p.add_argument("--force", action="store_true", help="replace a recording of the same name in the store")
    p = add("env", cmd_env, "the recorded environment as requirements.txt pins")
    p.add_argument("name", help="the recording's name")
    p.add_argument("--format", choices=("requirements", "uv-lock", "conda"), default="requirements",
                   help="pins for pip (exact, with hashes where known), a PEP 751 lock that uv installs "
                        "(uv pip sync pylock.toml; needs the recorded index), or a conda environment.yml")
    legacy(p)
    p = add("key", cmd_key, "your public key and its fingerprint (the key is created on first use)")
    p.add_argument("--public", action="store_true", help="only the public key line, e.g. `julius key --public > me.pub`")
    p = add("trust", None, "the public keys whose recordings you trust")
    trust = p.add_subparsers(dest="trust_command", required=True, help="add a public key, or list the trusted keys")
    t = trust.add_parser("add", help="trust the public key in FILE.pub (as `julius key --public` writes it)")
    t.set_defaults(fn=cmd_trust_add)
    t.add_argument("file")
    t.add_argument("--name", default=None, help="whose key it is (default: the comment of the key line)")
    t = trust.add_parser("list", help="your key and the keys you trust")
    t.set_defaults(fn=cmd_trust_list)
    t.add_argument("--json", action="store_true")
    p = add("demo", cmd_demo, "record the tutorial pipeline, replay it in a fresh cluster, verify")
    p.add_argument("-n", "--workers", type=worker_count, default=4, help="workers of the recorded run (default: 4)")
    p.add_argument("--replay-workers", type=worker_count, default=2, help="workers of the replay (default: 2)")
    p.add_argument("--data-dir", default=None, help="folder of the generated data files (default: ~/.julius/demo-data)")
    p.add_argument("--train-mb", type=float, default=30, help="size of the training file in MB (default: 30)")
    p.add_argument("--test-mb", type=float, default=10, help="size of the test file in MB (default: 10)")
    return parser


@contextlib.contextmanager
def one_line_warnings(prefix):
    """Our warnings (a skipped recording, an ignored sidecar) as one line after ``prefix``, not Python's
    two; those of other code (Dask's) as Python shows them, never under our name."""
    import warnings

    with warnings.catch_warnings():
        others, package = warnings.showwarning, os.path.dirname(os.path.abspath(__file__)) + os.sep

        def show(message, category, filename, *rest, **kwargs):
            if os.path.abspath(filename).startswith(package):
                print(f"{prefix}: {one_line(message)}", file=sys.stderr)
            else:
                others(message, category, filename, *rest, **kwargs)

        warnings.showwarning = show
        warnings.simplefilter("always", UserWarning)
        yield


def main(argv=None):
    args = build_parser().parse_args(argv)
    with one_line_warnings(f"julius {args.command}"):
        try:
            return args.fn(args)
        except (JuliusError, OSError, ValueError) as e:   # the message is the whole story (a store unreadable: OSError)
            from .recording.verdict import error_status

            print(f"julius {args.command}: {one_line(e)}", file=sys.stderr)
            return error_status(e)
        except KeyboardInterrupt:
            return 130
        except Exception as e:   # a bug of ours: one line, its own exit status (the traceback on request)
            if os.environ.get("JULIUS_DEBUG"):
                raise
            from .recording.verdict import EXIT_INTERNAL

            print(f"julius {args.command}: internal error: {type(e).__name__}: {one_line(e)} (a bug of julius_magics: "
                  "JULIUS_DEBUG=1 shows its traceback)", file=sys.stderr)
            return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
