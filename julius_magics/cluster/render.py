"""``%graph``: the expanded graph as SVG (pydot + Graphviz's ``dot``).

Sources and targets are parallelograms, edges go from dependency to dependent,
the fill colour says which worker computed the node, failed nodes are red.
Graphs over ``max_nodes`` collapse to their key jobs, then to the nodes nearest
the targets.
"""

from __future__ import annotations

from collections import deque

from ..rules.graph import expand, plan_jobs
from ..rules.node import NodeRef

PALETTE = ["#8dd3c7", "#ffffb3", "#bebada", "#80b1d3", "#fdb462", "#b3de69", "#fccde5", "#d9d9d9",
           "#bc80bd", "#ccebc5"]


def _visible(nodes, plan, targets, max_nodes):
    """The node ids to draw, and a note of what was left out."""
    if len(nodes) <= max_nodes:
        return list(nodes), ""
    if len(plan.jobs) <= max_nodes:
        return list(plan.jobs), f"{len(nodes)} nodes collapsed to {len(plan.jobs)} key jobs"
    keep, queue = [], deque(t.id for t in targets)
    seen = set(queue)
    while queue and len(keep) < max_nodes:
        nid = queue.popleft()
        keep.append(nid)
        for dep in nodes[nid].deps:
            if dep.id in nodes and dep.id not in seen:
                seen.add(dep.id)
                queue.append(dep.id)
    return keep, f"showing {len(keep)} of {len(nodes)} nodes nearest the targets"


def _shown_deps(nodes, plan, visible, nid):
    """Visible nodes that ``nid`` needs, looking through hidden nodes (bounded walk)."""
    found, stack, seen = [], [d.id for d in nodes[nid].deps], set()
    while stack and len(seen) < 10_000:
        d = stack.pop()
        if d in seen or d not in nodes:
            continue
        seen.add(d)
        if d in visible:
            found.append(d)
        else:
            stack.extend(x.id for x in nodes[d].deps)
    return found


def render_dot(session, refs, max_nodes=200):
    """A ``pydot.Dot`` of the graph of ``refs``, coloured by what ``session`` computed."""
    import pydot

    targets = [refs] if type(refs) is NodeRef else list(refs)
    nodes, order = expand(targets, session.rules.rule)
    plan = plan_jobs(nodes, order, targets, n_workers=max(1, session.n_workers()))
    last = session.last_plan
    owner = dict(plan.owner)
    if last is not None:
        owner.update(last.owner)
    visible, note = _visible(nodes, plan, targets, max_nodes)
    visible_set = set(visible)
    workers = sorted(set(session.worker_of.values()))
    colour = {w: PALETTE[i % len(PALETTE)] for i, w in enumerate(workers)}
    target_ids = {t.id for t in targets}

    dot = pydot.Dot(graph_type="digraph", rankdir="LR", fontname="Helvetica", fontsize="10")
    if note:
        dot.set_label(note)
    for nid in visible:
        node = nodes[nid]
        worker = session.worker_of.get(nid) or session.worker_of.get(owner.get(nid))
        failed = nid in session.failed
        is_source = not node.deps
        attrs = {
            "label": ("\u2717 " if failed else "") + node.ref.display(),
            "shape": "parallelogram" if (is_source or nid in target_ids) else "box",
            "style": "filled", "fontname": "Helvetica", "fontsize": "10",
            "fillcolor": "#ff9999" if failed else colour.get(worker, "#ffffff"),
            "tooltip": f"{node.ref!r} id {nid}" + (f" on {worker}" if worker else ""),
        }
        if failed:
            attrs.update(color="red", penwidth="2")
        dot.add_node(pydot.Node(f"n{nid}", **attrs))
    for nid in visible:
        for dep in dict.fromkeys(_shown_deps(nodes, plan, visible_set, nid)):
            dot.add_edge(pydot.Edge(f"n{dep}", f"n{nid}"))
    for i, worker in enumerate(workers):  # a legend: which colour is which worker
        dot.add_node(pydot.Node(f"worker{i}", label=worker, shape="note", style="filled",
                                fillcolor=colour[worker], fontsize="8"))
    return dot


def render_svg(session, refs, max_nodes=200):
    """The SVG text of ``render_dot``; needs Graphviz's ``dot`` executable."""
    dot = render_dot(session, refs, max_nodes)
    try:
        return dot.create_svg().decode("utf-8")
    except FileNotFoundError:
        raise RuntimeError("%graph needs Graphviz's `dot` (Debian/Ubuntu: apt-get install graphviz)") from None
