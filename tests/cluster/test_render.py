"""``%graph``'s picture, checked by the SVG's structure (no image comparison): a cluster per key job
around the nodes it runs, one SVG node per graph node and one edge per dependency, a distinct fill
per worker with a legend table, and the collapse to every key job above the node limit."""

import xml.etree.ElementTree as ET

import pytest

from julius_magics.cluster.render import render_svg

SVG = "{http://www.w3.org/2000/svg}"

RULES = '''
def num(i):
    return ApplyFn(int, i)()

def slow_add(i, j):
    return ApplyFn(pause_add)(num(i), num(j))

def total(n):
    return ApplyFn(lambda *xs: sum(xs))(*[slow_add(2 * i, 2 * i + 1) for i in range(n)])
'''
REMOTE = "import time\ndef pause_add(a, b):\n    time.sleep(0.3)\n    return a + b\n"
N = 6   # 6 slow_add key jobs, each over 2 num nodes, under one total: 6 * 3 + 1 = 19 nodes


def _groups(root, cls):
    return [g for g in root.iter(f"{SVG}g") if g.get("class") == cls]


def _title(g):
    return g.find(f"{SVG}title").text


def _fill(g):
    shape = next(g.iter(f"{SVG}polygon"), None)   # under an <a> when the node has a tooltip
    return shape.get("fill") if shape is not None else None


@pytest.fixture(scope="module")
def computed(session):
    from julius_magics import ref

    session.remote_eval(REMOTE)
    session.add_rules("render", RULES)
    target = ref.render.total(N, label="the total")
    assert session.compute(target, key_rules={"slow_add"}) == sum(range(2 * N))
    return target


def test_whole_graph_with_a_cluster_per_key_job_and_a_fill_per_worker(session, computed):
    plan = session.jobdeps(computed, key_rules={"slow_add"})   # after compute: nothing left to run
    root = ET.fromstring(render_svg(session, computed))
    clusters = _groups(root, "cluster")
    nodes = [g for g in _groups(root, "node") if _title(g) != "legend"]
    edges = _groups(root, "edge")
    assert len(nodes) == 3 * N + 1
    assert len(edges) == 3 * N     # 2 per slow_add, 1 from each slow_add to the total
    job_ids = set(session.last_plan.jobs)
    assert len(job_ids) >= N + 1 and len(clusters) == len(job_ids)   # the 6 slow_adds, the total, and splits
    assert {_title(c) for c in clusters} == {f"cluster_job{j}" for j in job_ids}
    caption = "".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert f"{3 * N + 1} nodes in {len(job_ids)} key jobs" in caption
    assert len(plan.nodes) == 0   # after the compute jobdeps has nothing left to run

    # one distinct fill per worker that ran a key job, and a legend row with that fill per worker
    workers = sorted(set(session.worker_of[j] for j in job_ids))
    assert len(workers) == 2, workers   # slow key jobs spread over both workers
    fills = {_fill(g) for g in nodes}
    assert len(fills) == len(workers) and "#ffffff" not in fills
    [legend] = [g for g in _groups(root, "node") if _title(g) == "legend"]
    legend_fills = {p.get("fill") for p in legend.iter(f"{SVG}polygon")} - {"none", "white", "#ffffff"}
    assert legend_fills == fills
    legend_text = [t.text for t in legend.iter(f"{SVG}text")]
    assert legend_text[0] == "worker" and sorted(legend_text[1:]) == workers


def test_above_the_limit_every_key_job_is_one_box(session, computed):
    root = ET.fromstring(render_svg(session, computed, max_nodes=10))
    nodes = [g for g in _groups(root, "node") if _title(g) != "legend"]
    plan = session.last_plan
    cross = {(plan.owner[d.id], plan.owner[nid]) for nid in plan.order for d in plan.nodes[nid].deps
             if plan.owner[d.id] != plan.owner[nid]}
    assert len(nodes) == len(plan.jobs) and not _groups(root, "cluster")   # every key job, not a top few
    assert len(_groups(root, "edge")) == len(cross)
    caption = "".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert f"{3 * N + 1} nodes in {len(plan.jobs)} key jobs" in caption and "one box per key job" in caption
    assert any("3 nodes" in (t.text or "") for t in root.iter(f"{SVG}text"))


def test_a_graph_not_computed_yet_is_drawn_unfilled(session):
    from julius_magics import ref

    fresh = ref.render.total(3, label="not run")
    root = ET.fromstring(render_svg(session, fresh))
    nodes = [g for g in _groups(root, "node") if _title(g) != "legend"]
    assert len(nodes) == 3 * 3 + 1
    assert {_fill(g) for g in nodes if "not run" in "".join(t.text or "" for t in g.iter(f"{SVG}text"))} \
        == {"#ffffff"}


def test_nodes_reused_from_an_earlier_compute_are_counted_and_dashed(session, computed):
    from julius_magics import ref

    bigger = ref.render.total(N + 1)   # the 6 slow_adds of `computed`, and one more
    session.compute(bigger, key_rules={"slow_add"})
    ran = len(session.last_plan.nodes)
    assert ran == 1 + 3    # jobdeps and the dispatch: the total, the new slow_add and its two nums
    root = ET.fromstring(render_svg(session, bigger))
    nodes = [g for g in _groups(root, "node") if _title(g) != "legend"]
    total = 3 * (N + 1) + 1
    assert len(nodes) == total
    caption = "".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert f"{total} nodes in " in caption
    assert f"the last compute ran {ran} and reused {total - ran} computed earlier" in caption
    dashed = [g for g in nodes if next(g.iter(f"{SVG}polygon")).get("stroke-dasharray")]
    assert len(dashed) == total - ran
