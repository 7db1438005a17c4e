"""Rule namespaces: where ``%%addrules NS`` cells put their functions.

Each namespace executes its cells in one globals dict, so rules of a namespace
see each other across cells.  In that dict every rule name is bound to a
``RuleCaller``: calling a rule returns a node reference and never runs the
body; the body runs when the graph is expanded.

>>> book = RuleBook()
>>> _ = book.define("demo", "def double(x):\\n    return ApplyFn(lambda v: 2 * v)(x)")
>>> r = book.ref.demo.double(ref.demo.src())
>>> r.key, book.rule(r).__name__
('demo.double', 'double')
"""

from __future__ import annotations

import ast
import builtins
import difflib

from ..errors import UnknownRuleError
from . import atoms
from .builtins import BUILTIN_RULES
from .node import NodeRef, Not, RemoteName, remote

__all__ = ["RuleBook", "RuleCaller", "ref", "RULES", "top_level_names"]


class RuleCaller:
    """What a rule's name is bound to in rule cells: calling it makes a ``NodeRef``."""

    __slots__ = ("ns", "name")

    def __init__(self, ns, name):
        self.ns = ns
        self.name = name

    def __call__(self, *args, label=None):
        return NodeRef(self.ns, self.name, args, label)

    def __repr__(self):
        return f"ref.{self.ns}.{self.name}"


class _NamespaceAccessor:
    __slots__ = ("_ns",)

    def __init__(self, ns):
        self._ns = ns

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return RuleCaller(self._ns, name)


class _RefAccessor:
    """``ref.ns.rule(*args, label=...)`` -> NodeRef; the rule need not exist yet."""

    def __getattr__(self, ns):
        if ns.startswith("__"):
            raise AttributeError(ns)
        return _NamespaceAccessor(ns)

    def __repr__(self):
        return "ref"


ref = _RefAccessor()

#: What a rule cell sees without importing it.
PRELUDE = {
    "ApplyFn": atoms.ApplyFn, "Train": atoms.Train, "Predict": atoms.Predict, "Score": atoms.Score,
    "Alias": atoms.Alias, "Atom": atoms.Atom, "Not": Not, "ref": ref, "remote": remote,
}


def top_level_names(source):
    """Names a cell binds at top level, and which of them are functions it defines.

    >>> bound, functions = top_level_names("import os\\nx = 1\\ndef f(): pass")
    >>> sorted(bound), functions
    (['f', 'os', 'x'], ['f'])
    """
    tree = ast.parse(source)
    bound, functions = set(), []
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.append(stmt.name)
            bound.add(stmt.name)
        elif isinstance(stmt, ast.ClassDef):
            bound.add(stmt.name)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in stmt.names)
        else:
            for node in ast.walk(stmt):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    bound.add(node.id)
    return bound, functions


class RuleBook:
    """All namespaces of rules in this process, and the names ``%%remote_eval`` defined."""

    def __init__(self):
        self.rules = {}          # ns -> {name: function}
        self.sources = {}        # ns -> [cell source, ...] in definition order
        self.globals = {}        # ns -> the globals dict its cells run in
        self.cell_names = {}     # ns -> names the cells bound themselves
        self.remote_names = set()
        self.ref = ref
        for ns, rules in BUILTIN_RULES.items():
            self.rules[ns] = dict(rules)

    def define(self, ns, source, filename=None):
        """Run a rule cell in namespace ``ns``; its top-level functions become (or replace) rules.

        Returns the names of the rules it defined.
        """
        if not ns.isidentifier():
            raise ValueError(f"namespace {ns!r} is not a Python identifier")
        bound, functions = top_level_names(source)
        code = compile(source, filename or f"<addrules {ns}>", "exec")
        g = dict(self.globals.get(ns) or self._new_globals(ns))
        exec(code, g)   # into a copy: a cell that raises half-way changes nothing
        rules = dict(self.rules.get(ns, {}))
        for name in functions:
            fn = g[name]
            if isinstance(fn, RuleCaller):  # the cell rebound the name to a rule: nothing to define
                continue
            rules[name] = fn
            g[name] = RuleCaller(ns, name)
        self.globals[ns], self.rules[ns] = g, rules
        self.cell_names[ns] = self.cell_names.get(ns, set()) | bound
        self.sources.setdefault(ns, []).append(source)
        return functions

    def _new_globals(self, ns):
        g = {"__builtins__": builtins, "__name__": f"julius_rules_{ns}"}
        g.update(PRELUDE)
        g.update({name: RemoteName(name) for name in self.remote_names})
        return g

    def note_remote_names(self, names):
        """Make names defined by ``%%remote_eval`` visible in every rule namespace."""
        self.remote_names |= set(names)
        for ns, g in self.globals.items():
            for name in names:
                if name not in self.cell_names[ns]:
                    g[name] = RemoteName(name)

    def rule(self, node):
        """The function of ``node``'s rule, or UnknownRuleError with a hint."""
        try:
            return self.rules[node.ns][node.name]
        except KeyError:
            pass
        if node.ns not in self.rules:
            hint = difflib.get_close_matches(node.ns, self.rules, n=1)
            what = f"unknown namespace {node.ns!r} in {node.key}"
        else:
            hint = [f"{node.ns}.{h}" for h in difflib.get_close_matches(node.name, self.rules[node.ns], n=1)]
            what = f"unknown rule {node.key}"
        raise UnknownRuleError(what + (f" (did you mean {hint[0]}?)" if hint else ""))

    def names(self):
        """``{ns: [rule names]}``."""
        return {ns: sorted(rules) for ns, rules in self.rules.items()}


#: The process-wide rule book (the kernel's, or a worker's).
RULES = RuleBook()
