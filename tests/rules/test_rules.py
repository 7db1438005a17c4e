"""The rule language, pure Python: ids, argument identity, expansion, the cut into key jobs."""

import json
import subprocess
import sys
import textwrap

import pytest

from julius_magics.errors import CycleError, RuleError, UnknownRuleError
from julius_magics.rules import Not, NodeRef, RuleBook, evaluate, expand, plan_jobs, remote, stable_hash
from julius_magics.rules.builtins import DDataFrame


@pytest.fixture
def book():
    return RuleBook()


def test_ids_are_content_hashes_independent_of_label():
    a = NodeRef("ml", "features", ("train.csv", "isFraud", 0.05, None, True, (1, 2), {"b": 1, "a": 2}))
    b = NodeRef("ml", "features", ("train.csv", "isFraud", 0.05, None, True, (1, 2), {"a": 2, "b": 1}), label="x")
    assert a.id == b.id and a == b and hash(a) == hash(b)
    assert a.id != NodeRef("ml", "features", ("train.csv", "isFraud", 0.050000001, None, True, (1, 2), {})).id
    assert NodeRef("a", "b", (1,)).id != NodeRef("a", "b", (True,)).id != NodeRef("a", "b", ("1",)).id
    assert NodeRef("a", "b", ((1, 2),)).id != NodeRef("a", "b", ([1, 2],)).id


ID_SCRIPT = textwrap.dedent("""
    import json, os
    from julius_magics import ref, remote, Not, DDataFrame
    r = ref.ml.score(ref.ds.csvsrc("data/x.csv", True, label="x"), "isFraud", Not("id"), remote.first,
                     os.path.join, {"k": [1, 2.5, None]}, {3, 1}, b"\\x00")
    print(json.dumps([r.id, ref.mr.shuffler(remote.first, 4).prepend(r).id]))
""")


def test_ids_are_stable_across_processes():
    outputs = [subprocess.run([sys.executable, "-c", ID_SCRIPT], capture_output=True, text=True, check=True,
                              env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin"}).stdout for seed in ("1", "2")]
    assert outputs[0] == outputs[1]
    ids = json.loads(outputs[0])
    assert len(ids[0]) == 20 and ids[0] != ids[1]


def test_stable_hash_is_process_independent():
    script = "from julius_magics import stable_hash; print(stable_hash(('card', 42)))"
    values = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": s, "PATH": "/usr/bin"}).stdout.strip() for s in ("1", "2")}
    assert values == {str(stable_hash(("card", 42)))}


def test_arguments_without_stable_identity_are_refused_by_name():
    with pytest.raises(TypeError, match=r"argument 2 of ml.score.*lambda"):
        NodeRef("ml", "score", (1, lambda x: x))
    with pytest.raises(TypeError, match=r"argument 1 of ml.f\[1\].*no stable identity"):
        NodeRef("ml", "f", ([1, open(__file__)],))
    assert NodeRef("ml", "f", (remote.first, Not("a", "b"), len, dict)).id


def test_repr_prepend_and_labels():
    src = NodeRef("dd", "read_csv_blocks", ("t.csv", 0, 100))
    down = NodeRef("ml", "downsample", (src, "isFraud", 0.05))
    assert repr(down).startswith("<ml:downsample/dd:read_csv_blocks:")
    partial = NodeRef("mr", "shuffler", (remote.first, 4))
    assert partial.prepend(src).args == (src, remote.first, 4)
    assert partial.prepend(src).id == NodeRef("mr", "shuffler", (src, remote.first, 4)).id
    assert down.with_label("d").display() == "d" and down.display() == "ml.downsample"


def test_rule_cells_functions_become_rules_calls_become_refs(book):
    names = book.define("ml", textwrap.dedent("""
        import math
        SCALE = 2
        def double(x):
            return ApplyFn(lambda v: SCALE * v)(x)
        def quad(x):
            return ApplyFn(lambda v: v)(double(double(x)))
    """))
    assert names == ["double", "quad"] and sorted(book.rules["ml"]) == ["double", "quad"]
    one = book.ref.ml.const()
    book.define("ml", "def const():\n    return ApplyFn(int, 3)()")
    assert evaluate(book.ref.ml.quad(one), book.rule) == 12
    # re-running a cell redefines its rules
    book.define("ml", "def double(x):\n    return ApplyFn(lambda v: 10 * v)(x)")
    assert evaluate(book.ref.ml.quad(one), book.rule) == 300


def test_unknown_rules_name_the_rule_and_the_path(book):
    book.define("ml", "def top():\n    return ApplyFn(max)(ref.ml.featurs(1), 2)\ndef features(x):\n    return x")
    with pytest.raises(UnknownRuleError) as info:
        expand([book.ref.ml.top(label="the top")], book.rule)
    text = str(info.value)
    assert "unknown rule ml.featurs (did you mean ml.features?)" in text and "ml:top" in text and "the top" in text
    with pytest.raises(UnknownRuleError, match="unknown namespace 'mll'.*did you mean ml"):
        expand([book.ref.mll.top()], book.rule)


def test_cycles_are_reported_with_their_path(book):
    book.define("c", "def a(i):\n    return ApplyFn(abs)(b(i))\ndef b(i):\n    return ApplyFn(abs)(a(i))")
    with pytest.raises(CycleError, match=r"Cycle detected: <c:a.*-> <c:b.*-> <c:a"):
        expand([book.ref.c.a(1)], book.rule)


def test_bad_rule_results_and_rule_exceptions_are_clear(book):
    book.define("b", "def num():\n    return 3\ndef boom():\n    return 1 / 0")
    with pytest.raises(RuleError, match="rule b.num returned int 3"):
        expand([book.ref.b.num()], book.rule)
    with pytest.raises(RuleError, match="rule b.boom raised ZeroDivisionError"):
        expand([book.ref.b.boom()], book.rule)


def test_expansion_is_iterative_and_memoised(book):
    book.define("chain", "def y(n):\n    if n < 2:\n        return ApplyFn(float, n)()\n"
                         "    return ApplyFn(lambda a, b: 0.7 * a + 0.3 * b)(y(n - 1), y(n - 2))")
    nodes, order = expand([book.ref.chain.y(200_000)], book.rule)
    assert len(nodes) == 200_001 and order[-1] == book.ref.chain.y(200_000).id
    assert evaluate(book.ref.chain.y(50_000), book.rule) == pytest.approx(1 / 1.3)


def test_plan_promotes_shared_nodes_and_splits_independent_branches(book):
    book.define("p", textwrap.dedent("""
        def src(i): return ApplyFn(int, i)()
        def shared(): return ApplyFn(sum)(src(0))
        def branch(i): return ApplyFn(lambda a, b: a + b)(shared(), src(i))
        def train(i): return ApplyFn(abs)(branch(i))
        def top(n): return ApplyFn(lambda *v: sum(v))(*[train(i) for i in range(1, n + 1)])
    """))
    top = book.ref.p.top(3)
    nodes, order = expand([top], book.rule)
    plan = plan_jobs(nodes, order, [top], key_rules={"train"}, n_workers=1)
    names = sorted(plan.nodes[j].ref.name for j in plan.jobs)
    assert names == ["shared", "top", "train", "train", "train"]   # shared: computed once
    shared = book.ref.p.shared().id
    assert all(shared in plan.job_deps[book.ref.p.train(i).id] for i in (1, 2, 3))
    # without key rules, independent branches are cut to use 2 workers; a chain never is
    plan2 = plan_jobs(nodes, order, [top], n_workers=2)
    assert len(plan2.jobs) >= 4
    book.define("chain", "def y(n):\n    return ApplyFn(float, n)() if n < 2 else ApplyFn(max)(y(n - 1), y(n - 2))")
    chain = book.ref.chain.y(100)
    assert plan_jobs(*expand([chain], book.rule), [chain], n_workers=4).jobs == [chain.id]


def test_csv_blocks_cover_every_line_once(tmp_path, book):
    path = tmp_path / "t.csv"
    lines = ["a,b"] + [f"{i},{'x' * (i % 7)}" for i in range(500)]
    path.write_text("\n".join(lines) + "\n")
    d = DDataFrame(path, blocksize=300)
    assert d.nblocks == -(-path.stat().st_size // 300) and len(d.chunks) == d.nblocks
    frames = [evaluate(c, book.rule) for c in d.chunks]
    assert [list(f.columns) for f in frames] == [["a", "b"]] * len(frames)
    assert sum(len(f) for f in frames) == 500
    assert sorted(x for f in frames for x in f["a"]) == list(range(500))
    assert d.chunks[1].label == "t.csv[1]"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        DDataFrame(tmp_path / "nope.csv")


def test_mapreduce_groups_by_stable_key(book):
    import julius_magics.rules.node as node_module

    node_module.REMOTE_NAMESPACE.update(first=lambda pair: pair[0])
    book.note_remote_names(["first"])
    book.define("w", textwrap.dedent("""
        def batch(i): return ApplyFn(list, range(i * 10, i * 10 + 10))()
        def pairs(batch): return ApplyFn(lambda xs: [(x % 3, x) for x in xs])(batch)
        def total(pairs): return ApplyFn(lambda ps: [(k, sum(v for kk, v in ps if kk == k)) for k in sorted({k for k, _ in ps})])(pairs)
    """))
    result = book.ref.mr.mapreduce([book.ref.w.batch(i) for i in range(4)], book.ref.w.pairs(),
                                   book.ref.mr.shuffler(remote.first, 2), book.ref.w.total())
    got = dict(evaluate(result, book.rule))
    assert got == {k: sum(x for x in range(40) if x % 3 == k) for k in range(3)}
    bucket_of = {k: stable_hash(k) % 2 for k in range(3)}
    assert set(bucket_of.values()) <= {0, 1}
