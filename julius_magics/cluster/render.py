"""``%graph``: the expanded graph as SVG (pydot + Graphviz's ``dot``).

Up to ``max_nodes`` nodes (300 by default) the whole graph is drawn: each key job
is a Graphviz cluster (a ``cluster_*`` subgraph) around the nodes it runs, each
node filled with the colour of the worker that ran its key job. Above the limit
the picture collapses to the key jobs, every one of them, with the edges between
them. Sources and targets are parallelograms, edges go from dependency to
dependent, failed nodes are red, and a small table is the legend of the workers'
colours.

The caption counts the whole graph. When the session's last compute of these
targets reused nodes computed by an earlier one (``jobdeps`` and the dispatch
leave those out), the caption says how many it ran and how many it reused, and
the reused nodes are drawn with a dashed border, so every count agrees.
"""

from __future__ import annotations

import html

from ..rules.graph import expand, plan_jobs
from ..rules.node import NodeRef

DEFAULT_MAX_NODES = 300

# ColorBrewer Set3: light fills, black text stays readable on each of them
PALETTE = ["#8dd3c7", "#ffffb3", "#bebada", "#80b1d3", "#fdb462", "#b3de69", "#fccde5", "#d9d9d9",
           "#bc80bd", "#ccebc5", "#ffed6f", "#fb8072"]
NOT_RUN, FAILED = "#ffffff", "#ff9999"
FONT = {"fontname": "Helvetica", "fontsize": "10"}


def _plan(session, nodes, order, targets):
    """The cut into key jobs: what the session last ran for these nodes, else a fresh plan.

    Returns ``(owner, jobs)``: node id -> key job id, and the key job ids in order.
    """
    plan = plan_jobs(nodes, order, targets, n_workers=max(1, session.n_workers()))
    owner = dict(plan.owner)
    last = session.last_plan
    if last is not None:
        owner.update({nid: job for nid, job in last.owner.items() if nid in nodes and job in nodes})
    jobs = list(dict.fromkeys(owner[nid] for nid in order))
    return owner, jobs


def _legend(colour):
    """An HTML-like Graphviz label: a two-column table, a colour swatch and the worker's address."""
    rows = "".join(f'<TR><TD BGCOLOR="{fill}" WIDTH="16" HEIGHT="12"></TD><TD ALIGN="LEFT">{html.escape(worker)}</TD></TR>'
                   for worker, fill in colour.items())
    return (f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="3">'
            f'<TR><TD COLSPAN="2"><B>worker</B></TD></TR>{rows}</TABLE>>')


def render_dot(session, refs, max_nodes=DEFAULT_MAX_NODES):
    """A ``pydot.Dot`` of the graph of ``refs``, coloured by the workers that ``session`` used.

    Parameters
    ----------
    session : Session
        Gives the rules, the last plan, the worker of each key job and the failed nodes.
    refs : NodeRef or list of NodeRef
    max_nodes : int
        Draw every node up to this many; above it, draw the key jobs only.
    """
    import pydot

    targets = [refs] if type(refs) is NodeRef else list(refs)
    nodes, order = expand(targets, session.rules.rule)
    owner, jobs = _plan(session, nodes, order, targets)
    worker_of = {job: session.worker_of.get(job) for job in jobs}
    workers = sorted({w for w in worker_of.values() if w})
    colour = {w: PALETTE[i % len(PALETTE)] for i, w in enumerate(workers)}
    target_ids = {t.id for t in targets}
    failed = set(session.failed) & set(nodes)
    collapsed = len(nodes) > max_nodes

    caption = f"{len(nodes)} nodes in {len(jobs)} key jobs"
    reused = _reused(session.last_plan, nodes, target_ids)
    if reused:
        caption += (f"; the last compute ran {len(nodes) - len(reused)} and reused {len(reused)} "
                    f"computed earlier (dashed)")
    if collapsed:
        caption += f" (over {max_nodes} nodes: one box per key job)"
    dot = pydot.Dot(graph_type="digraph", rankdir="LR", label=caption, labelloc="t", **FONT)
    dot.set_node_defaults(style="filled", **FONT)

    def node_attrs(nid, label, shape_of):
        worker = worker_of.get(owner[nid])
        is_failed = nid in failed if not collapsed else any(owner[f] == nid for f in failed)
        attrs = {"label": ("\u2717 " if is_failed else "") + label,
                 "shape": "parallelogram" if shape_of else "box",
                 "fillcolor": FAILED if is_failed else colour.get(worker, NOT_RUN),
                 "tooltip": f"{nodes[nid].ref!r}" + (f" on {worker}" if worker else "")}
        if is_failed:
            attrs.update(color="red", penwidth="2")
        elif nid in reused:
            attrs.update(style="filled,dashed", tooltip=attrs["tooltip"] + ", computed by an earlier compute")
        return attrs

    if collapsed:
        members = {job: 0 for job in jobs}
        for nid in order:
            members[owner[nid]] += 1
        edges = dict.fromkeys((owner[d], owner[nid]) for nid in order for d in _dep_ids(nodes, nid)
                              if owner[d] != owner[nid])
        fed = {job for _, job in edges}   # a key job no other key job feeds reads only sources
        for job in jobs:
            label = f"{nodes[job].ref.display()}\n{members[job]} node{'s' * (members[job] != 1)}"
            dot.add_node(pydot.Node(f"n{job}", **node_attrs(job, label, job not in fed or job in target_ids)))
    else:
        clusters = {}
        for job in jobs:
            cluster = pydot.Cluster(f"job{job}", label=nodes[job].ref.display(), style="rounded,dashed",
                                    color="#666666", fontname="Helvetica", fontsize="9")
            clusters[job] = cluster
            dot.add_subgraph(cluster)
        for nid in order:
            shape = not nodes[nid].deps or nid in target_ids
            clusters[owner[nid]].add_node(pydot.Node(f"n{nid}", **node_attrs(nid, nodes[nid].ref.display(), shape)))
        edges = dict.fromkeys((d, nid) for nid in order for d in _dep_ids(nodes, nid))
    for dep, nid in edges:
        dot.add_edge(pydot.Edge(f"n{dep}", f"n{nid}"))
    if colour:
        dot.add_node(pydot.Node("legend", shape="plaintext", style="", label=_legend(colour), **FONT))
    return dot


def _reused(last, nodes, target_ids):
    """Nodes of the graph that the last compute of these targets did not run: computed earlier.

    ``set()`` when the last compute was of other targets (it says nothing about this graph).
    """
    if last is None or not target_ids <= set(last.nodes) | {t.id for t in last.targets}:
        return set()
    if not target_ids & set(last.nodes):
        return set()   # the targets themselves were known: nothing of this graph ran last time
    return {nid for nid in nodes if nid not in last.nodes}


def _dep_ids(nodes, nid):
    """Ids of the dependencies of ``nid`` that are in the graph, each once."""
    return list(dict.fromkeys(d.id for d in nodes[nid].deps if d.id in nodes))


def render_svg(session, refs, max_nodes=DEFAULT_MAX_NODES):
    """The SVG text of ``render_dot``; needs Graphviz's ``dot`` executable."""
    dot = render_dot(session, refs, max_nodes)
    try:
        return dot.create_svg().decode("utf-8")
    except FileNotFoundError:
        raise RuntimeError("%graph needs Graphviz's `dot` (Debian/Ubuntu: apt-get install graphviz)") from None
