"""Node references: immutable, content-addressed names of graph nodes.

A ``NodeRef`` names the node that rule ``ns.name`` makes from ``args``.  Its
``id`` is a hash of a canonical encoding of (namespace, name, arguments), so the
same node has the same id in every process, session and machine; a label is a
display name and does not change the id.

>>> a = NodeRef("ml", "features", ("train.csv", "isFraud"))
>>> a.id == NodeRef("ml", "features", ("train.csv", "isFraud"), label="x").id
True
>>> NodeRef("ml", "score", (a,)).deps()[0] is a
True
"""

from __future__ import annotations

import hashlib
import importlib
import math
import struct

__all__ = ["NodeRef", "refs_in", "bind_remote_globals", "REMOTE_STATE", "Not", "RemoteName", "argument_text", "stable_hash", "remote", "REMOTE_NAMESPACE"]

ID_LENGTH = 20  # hex digits of the node id (80 bits): collisions are not a practical concern

#: The "remote namespace" of this process: what ``%%remote_eval`` defined here.
#: On a worker it holds the remote code; ``RemoteName`` resolves in it.
REMOTE_NAMESPACE: dict = {}
#: Bumped whenever the remote namespace changes, so rule globals are bound again (``bind_remote_globals``).
REMOTE_STATE = {"generation": 0}
_BOUND = "__julius_bound__"      # in a globals dict: the generation it was bound at
_PLACEHOLDERS = "__julius_remote__"  # in a globals dict: {name: RemoteName} it held before binding


class Not:
    """Columns to leave out: ``Not("isFraud", "id")``; ``.names`` is the tuple."""

    __slots__ = ("names",)

    def __init__(self, *names):
        self.names = tuple(names)

    def __repr__(self):
        return f"Not{self.names!r}"

    def __eq__(self, other):
        return isinstance(other, Not) and other.names == self.names

    def __hash__(self):
        return hash(("Not", self.names))


class RemoteName:
    """A name defined by ``%%remote_eval``, resolved in the remote namespace where it is used.

    Its identity is its (dotted) name, so node ids that use it are stable; calling it
    (or passing it to an atom) looks up the current definition.

    >>> remote.pd.concat
    remote.pd.concat
    """

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def resolve(self):
        head, *attrs = self.name.split(".")
        try:
            value = REMOTE_NAMESPACE[head]
        except KeyError:
            raise NameError(
                f"remote.{self.name} is not defined in this process's remote namespace "
                f"(define it with %%remote_eval; in the kernel, use %%remote_eval --local)"
            ) from None
        for attr in attrs:
            value = getattr(value, attr)
        return value

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __getattr__(self, attr):
        # `pd.concat` in a rule, where `pd` came from %%remote_eval: looked up only when used,
        # so the rule body also runs in the kernel, which may not have `pd`
        if attr.startswith("__"):
            raise AttributeError(attr)
        return RemoteName(f"{self.name}.{attr}")

    def __repr__(self):
        return f"remote.{self.name}"

    def __eq__(self, other):
        return isinstance(other, RemoteName) and other.name == self.name

    def __hash__(self):
        return hash(("remote", self.name))

    def __reduce__(self):
        return (RemoteName, (self.name,))


def bind_remote_globals(fn):
    """Where code runs, replace the ``RemoteName`` placeholders in ``fn``'s globals by their values.

    Rule cells see remote names as placeholders (the kernel may not have them); a lambda
    shipped to a worker that uses ``base + offset`` needs the values themselves.  Binding
    is redone when the remote namespace changes; names it does not define stay placeholders.
    """
    g = getattr(fn, "__globals__", None)
    if g is None or g.get(_BOUND) == REMOTE_STATE["generation"]:
        return
    placeholders = g.setdefault(_PLACEHOLDERS, {})
    placeholders.update((k, v) for k, v in g.items() if type(v) is RemoteName)   # also names noted since
    for key, placeholder in placeholders.items():
        head = placeholder.name.split(".")[0]
        g[key] = placeholder.resolve() if head in REMOTE_NAMESPACE else placeholder
    g[_BOUND] = REMOTE_STATE["generation"]


class _RemoteAccessor:
    """``remote.NAME`` -> ``RemoteName("NAME")``."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return RemoteName(name)

    def __repr__(self):
        return "remote"


remote = _RemoteAccessor()


def _encode(value, path, out):
    """Append the canonical encoding of ``value`` to the list ``out``.

    ``path`` names the argument in error messages; it is a callable so the hot
    path never formats it.
    """
    t = type(value)
    if t is str:
        out.append("s%d:%s" % (len(value), value))
    elif t is NodeRef:
        out.append("r" + value.id)
    elif value is None:
        out.append("N")
    elif t is bool:
        out.append("T" if value else "F")
    elif t is int:
        out.append("i%d;" % value)
    elif t is float:
        # bit-exact: 0.1 and 0.1000000000000001 are different nodes; -0.0 != 0.0
        out.append("f" + struct.pack(">d", value).hex() if not math.isnan(value) else "fnan")
    elif t is bytes:
        out.append("b%d:%s" % (len(value), value.hex()))
    elif t is tuple or t is list:
        out.append(("t%d(" if t is tuple else "l%d(") % len(value))
        for i, item in enumerate(value):
            _encode(item, lambda i=i: f"{_p(path)}[{i}]", out)
        out.append(")")
    elif t is dict:
        items = []
        for k, v in value.items():
            kk = []
            _encode(k, lambda k=k: f"{_p(path)} key {k!r}", kk)
            items.append(("".join(kk), v, k))
        items.sort(key=lambda item: item[0])
        out.append("d%d(" % len(items))
        for kk, v, k in items:
            out.append(kk)
            _encode(v, lambda k=k: f"{_p(path)}[{k!r}]", out)
        out.append(")")
    elif t is set or t is frozenset:
        parts = []
        for item in value:
            p = []
            _encode(item, lambda: f"{_p(path)} item", p)
            parts.append("".join(p))
        out.append("S%d(%s)" % (len(parts), "".join(sorted(parts))))
    elif t is Not:
        out.append("n")
        _encode(value.names, path, out)
    elif t is RemoteName:
        out.append("R" + value.name + ";")
    elif isinstance(value, (int, float, str)):  # enums, str subclasses, numpy.float64
        _encode(t.__mro__[[c in (int, float, str) for c in t.__mro__].index(True)](value), path, out)
    elif type(getattr(value, "item", None)).__name__ == "builtin_function_or_method" and \
            getattr(value, "shape", None) == ():   # numpy.int64, numpy.bool_: encoded as the Python number
        _encode(value.item(), path, out)
    elif callable(value):
        out.append("c" + _importable_name(value, path) + ";")
    else:
        raise TypeError(
            f"argument {_p(path)} = {value!r:.80} ({t.__name__}) has no stable identity: node arguments must be "
            f"None, bools, numbers, strings, bytes, tuples/lists/dicts/sets of them, node references, Not(...), "
            f"importable functions or classes, or remote.NAME"
        )


def _importable_name(obj, path):
    """``module:qualname`` of an importable function or class, else TypeError naming ``path``."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if module and qualname and "<" not in qualname and module != "__main__":
        try:
            target = _MODULE_CACHE.get(module) or importlib.import_module(module)
        except ImportError:   # e.g. defined in a rule cell: not importable anywhere
            target = None
        else:
            _MODULE_CACHE[module] = target
        for part in qualname.split("."):
            target = getattr(target, part, None)
        if target is obj:
            return f"{module}:{qualname}"
    raise TypeError(
        f"argument {_p(path)} = {obj!r:.80} has no stable identity: a lambda, a local or a kernel-only function "
        f"cannot name a node. Define it with %%remote_eval and pass remote.{getattr(obj, '__name__', 'NAME')}, "
        f"or use an importable function"
    )


_MODULE_CACHE: dict = {}


def _p(path):
    """The text of an argument path: a string, a callable making it, or (index, ns, name)."""
    if callable(path):
        return path()
    if isinstance(path, tuple):
        index, ns, name = path
        return f"{index + 1} of {ns}.{name}"
    return path


def argument_text(value, path="value"):
    """Canonical text of a node argument: equal values give equal text in every process.

    >>> argument_text((1, "a", None))
    't3(i1;s1:aN)'
    """
    out = []
    _encode(value, path, out)
    return "".join(out)


def stable_hash(value):
    """A process-independent integer hash of a value (``hash()`` is salted per process).

    >>> stable_hash("card-42") == stable_hash("card-42")
    True
    """
    return int.from_bytes(hashlib.blake2b(argument_text(value).encode(), digest_size=8).digest(), "big")


def refs_in(values):
    """Node references in a tuple of values, also inside lists, tuples and dicts, in order.

    >>> a = NodeRef("ds", "csvsrc", ("a.csv",))
    >>> refs_in((1, [a, {"k": a}])) == [a, a]
    True
    """
    found = []
    stack = [values]
    while stack:
        value = stack.pop()
        t = type(value)
        if t is NodeRef:
            found.append(value)
        elif t is tuple or t is list:
            stack.extend(reversed(value))
        elif t is dict:
            stack.extend(reversed(list(value.values())))
    return found


class NodeRef:
    """Reference to the node that rule ``ns.name`` builds from ``args``.

    Immutable: variants are made with ``prepend`` and ``with_label``.  Equality and
    hashing use ``id`` only.
    """

    __slots__ = ("ns", "name", "args", "label", "id")

    def __init__(self, ns, name, args=(), label=None, _id=None):
        self.ns = ns
        self.name = name
        self.args = tuple(args)
        self.label = label
        if _id is None:
            parts = [ns, ".", name, "("]
            for i, arg in enumerate(self.args):
                t = type(arg)
                if t is NodeRef:            # the common cases, inline: this runs once per node
                    parts.append("r" + arg.id)
                elif t is int:
                    parts.append("i%d;" % arg)
                elif t is str:
                    parts.append("s%d:%s" % (len(arg), arg))
                else:
                    _encode(arg, (i, ns, name), parts)
            _id = hashlib.blake2b("".join(parts).encode(), digest_size=ID_LENGTH // 2).hexdigest()
        self.id = _id

    @property
    def key(self):
        """``ns.name``, the rule this node comes from."""
        return f"{self.ns}.{self.name}"

    def deps(self):
        """Node references among the arguments, at any depth (in argument order)."""
        return refs_in(self.args)

    def prepend(self, value):
        """The same reference with ``value`` inserted as first argument (partial application)."""
        return NodeRef(self.ns, self.name, (value,) + self.args, self.label)

    def with_label(self, label):
        """The same node under a display label."""
        return NodeRef(self.ns, self.name, self.args, label, _id=self.id)

    def display(self):
        """Label if any, else ``ns.name``."""
        return self.label or self.key

    def __eq__(self, other):
        return type(other) is NodeRef and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __reduce__(self):
        return (NodeRef, (self.ns, self.name, self.args, self.label, self.id))

    def __repr__(self):
        # ml:downsample/dd:read_csv_blocks/...:1a2b  -- the rule, the first dependency's rule, the id
        dep = next((a for a in self.args if type(a) is NodeRef), None)
        head = f"{self.ns}:{self.name}"
        if dep is not None:
            head += f"/{dep.ns}:{dep.name}" + ("/..." if dep.deps() else "")
        label = f" {self.label!r}" if self.label else ""
        return f"<{head}:{self.id[:4]}{label}>"
