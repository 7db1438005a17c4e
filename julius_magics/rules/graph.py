"""Graph expansion and the cut into key jobs.

The state is plain data:

- ``nodes``: ``{id: Node}``, every node below the targets, each with its node
  reference, its ``Application`` (atom + inputs) and its dependencies;
- ``order``: node ids, dependencies before dependents (a topological order);
- ``owner``: ``{id: key job id}``, the key job whose task evaluates the node.

Expansion is iterative (a million-deep chain does not touch the recursion limit)
and memoised by node id.  Example, a three-node graph:

>>> from julius_magics.rules.registry import RuleBook
>>> book = RuleBook()
>>> _ = book.define("t", '''
... def a(): return ApplyFn(int)()
... def b(): return ApplyFn(abs)(a())
... def c(): return ApplyFn(max)(a(), b())
... ''')
>>> nodes, order = expand([book.ref.t.c()], book.rule)
>>> [nodes[i].ref.name for i in order]
['a', 'b', 'c']
"""

from __future__ import annotations

from collections import Counter, deque

from .. import collector
from ..errors import CycleError, RuleError, UnknownRuleError
from .atoms import Application, Atom, _Identity
from .node import NodeRef

__all__ = ["Node", "expand", "path_text", "plan_jobs", "JobPlan"]


class Node:
    """One expanded node: its reference, what computes it, and what it needs."""

    __slots__ = ("ref", "app", "deps")

    def __init__(self, ref, app, deps):
        self.ref = ref
        self.app = app
        self.deps = deps

    def __repr__(self):
        return f"Node({self.ref!r}, {self.app!r})"


def path_text(stack_refs):
    """``"ml:score:1a2b <- ml:classify:9f3c"``: how the expansion got to a node (innermost first)."""
    return " <- ".join(repr(r) for r in reversed(stack_refs))


def _apply_rule(ref, rule_of, path):
    """Run ``ref``'s rule body and return its Application (``path``: the refs that led here, for messages)."""
    fn = rule_of(ref)
    try:
        result = fn(*ref.args)
    except RuleError:
        raise
    except Exception as e:
        raise RuleError(
            f"rule {ref.key} raised {type(e).__name__}: {e}\n  while expanding {path_text(path)}"
        ) from e
    if type(result) is Application:
        return result
    if type(result) is NodeRef:          # an alias
        return Application(_Identity(), (result,))
    if isinstance(result, Atom):         # an atom without inputs
        return Application(result, ())
    raise RuleError(
        f"rule {ref.key} returned {type(result).__name__} {result!r:.60}; a rule must return an atom "
        f"applied to its dependencies, e.g. ApplyFn(fn)(dep), or a node reference\n"
        f"  while expanding {path_text(path)}"
    )


def expand(targets, rule_of, stop=()):
    """Expand the graph below ``targets``.

    Parameters
    ----------
    targets : list of NodeRef
    rule_of : callable
        ``rule_of(ref) -> function``, raising ``UnknownRuleError`` for unknown rules.
    stop : container of node ids
        Nodes whose values are already known: not expanded, left out of ``nodes``.

    Returns
    -------
    nodes : dict of id -> Node
    order : list of ids, dependencies first
    """
    nodes, order, on_path = {}, [], set()
    with collector.paused():   # millions of long-lived nodes: each full collection would walk them all
        _expand(targets, rule_of, stop, nodes, order, on_path)
    return nodes, order


def _expand(targets, rule_of, stop, nodes, order, on_path):
    for target in targets:
        if target.id in nodes or target.id in stop:
            continue
        # depth-first, without recursion: `path` is the current path of refs, `pending[i]`
        # the iterator over the dependencies of path[i] still to visit (None: not expanded yet)
        path, pending = [target], [None]
        while path:
            ref = path[-1]
            deps = pending[-1]
            if deps is None:
                try:
                    app = _apply_rule(ref, rule_of, path)
                except UnknownRuleError as e:
                    raise UnknownRuleError(f"{e}\n  needed by {path_text(path)}") from None
                node = nodes[ref.id] = Node(ref, app, app.deps())
                on_path.add(ref.id)
                deps = pending[-1] = iter(node.deps)
            for dep in deps:
                did = dep.id
                if did in nodes:
                    if did in on_path:
                        cycle = path[[r.id for r in path].index(did):] + [dep]
                        raise CycleError("Cycle detected: " + " -> ".join(repr(r) for r in cycle))
                    continue
                if did in stop:
                    continue
                path.append(dep)
                pending.append(None)
                break
            else:
                path.pop()
                pending.pop()
                on_path.discard(ref.id)
                order.append(ref.id)


class JobPlan:
    """The cut of a graph into key jobs (Dask tasks that each evaluate a sub-graph).

    Attributes
    ----------
    nodes, order : as returned by ``expand``
    targets : list of NodeRef
    jobs : list of ids of key jobs, dependencies first
    owner : dict of node id -> id of the key job that evaluates it
    job_deps : dict of key job id -> ids of the key jobs (or known nodes) it needs
    """

    def __init__(self, nodes, order, targets, jobs, owner, job_deps):
        self.nodes, self.order, self.targets = nodes, order, targets
        self.jobs, self.owner, self.job_deps = jobs, owner, job_deps

    def __repr__(self):
        return f"<JobPlan {len(self.nodes)} nodes, {len(self.jobs)} key jobs>"


def _assign_owners(nodes, order, keys, limit=None):
    """Give every node a key job; a node needed by two key jobs becomes a key job itself.

    Visiting dependents before dependencies (reverse topological order) settles each
    node's owner before its own dependencies are reached.  Mutates ``keys``.  With
    ``limit``, gives up (returns None) once more than ``limit`` nodes were promoted.
    """
    owner = {}
    budget = len(keys) + limit if limit is not None else None
    for nid in reversed(order):
        if nid in keys:
            owner[nid] = nid
        mine = owner[nid]
        for dep in nodes[nid].deps:
            did = dep.id
            if did not in nodes or did in keys:
                continue
            prev = owner.get(did)
            if prev is None:
                owner[did] = mine
            elif prev != mine:
                keys.add(did)
                owner[did] = did
                if budget is not None and len(keys) > budget:
                    return None
    return owner


def _split_candidates(nodes, owner, job):
    """Dependencies of the first node (breadth-first below ``job``) that has two or more inside the job."""
    queue = deque([job])
    seen = {job}
    while queue:
        nid = queue.popleft()
        inside = [d.id for d in nodes[nid].deps if d.id in nodes and owner.get(d.id) == job]
        inside = list(dict.fromkeys(inside))
        if len(inside) >= 2:
            return inside
        for d in inside:
            if d not in seen:
                seen.add(d)
                queue.append(d)
    return []


def plan_jobs(nodes, order, targets, key_rules=(), n_workers=1):
    """Cut the graph into key jobs.

    Key jobs are the targets, the nodes of ``key_rules`` (rule names or ``ns.name``),
    every node that two key jobs need (so it is computed once), and, while there are
    fewer key jobs than ``4 * n_workers``, the branches of the biggest job.  A split is
    kept only when it promotes few other nodes (at most two per branch: those the branches
    share); in a chain, where every node is shared, promotions would cascade down to
    single-node jobs, so a chain is never split.

    >>> from julius_magics.rules.registry import RuleBook
    >>> book = RuleBook()
    >>> _ = book.define("t", "def leaf(i): return ApplyFn(abs, i)()\\n"
    ...                      "def top(): return ApplyFn(max)(leaf(1), leaf(2))")
    >>> t = book.ref.t.top()
    >>> plan = plan_jobs(*expand([t], book.rule), [t], n_workers=2)
    >>> sorted(plan.nodes[j].ref.name for j in plan.jobs)
    ['leaf', 'leaf', 'top']
    """
    key_rules = set(key_rules or ())
    keys = {t.id for t in targets if t.id in nodes}
    if key_rules:
        keys |= {nid for nid, n in nodes.items() if n.ref.name in key_rules or n.ref.key in key_rules}
    owner = _assign_owners(nodes, order, keys)
    unsplittable = set()
    while len(keys) < 4 * n_workers:
        sizes = Counter(owner.values())
        candidates = [j for j in sorted(sizes, key=sizes.get, reverse=True) if j not in unsplittable and sizes[j] > 1]
        if not candidates:
            break
        job = candidates[0]
        branches = _split_candidates(nodes, owner, job)
        trial = keys | set(branches)
        trial_owner = _assign_owners(nodes, order, trial, limit=2 * len(branches)) if branches else None
        if trial_owner is not None:
            keys, owner = trial, trial_owner
        else:
            unsplittable.add(job)
    jobs = [nid for nid in order if nid in keys]
    job_deps = {j: set() for j in jobs}
    for nid, node in nodes.items():
        mine = owner[nid]
        for dep in node.deps:
            theirs = owner.get(dep.id, dep.id)   # a known (stop) node stands for itself
            if theirs != mine:
                job_deps[mine].add(theirs)
    return JobPlan(nodes, order, list(targets), jobs, owner, {j: sorted(d) for j, d in job_deps.items()})
