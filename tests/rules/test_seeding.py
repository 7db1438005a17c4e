"""Per-node seeding: a node's draws equal what seeding both global generators before it gives."""

import random

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import ExtraTreesClassifier

from julius_magics.rules import RuleBook, evaluate
from julius_magics.rules.seeding import node_seed

#: Each rule draws in a different way; `quiet` draws nothing; `gauss` leaves a cached normal
#: behind in both generators (Python's gauss() and NumPy's legacy normal cache the second value).
RULES = """
import random
import numpy as np
import pandas as pd
from sklearn.ensemble import ExtraTreesClassifier
from julius_magics import rng

def py_draw(tag):
    return ApplyFn(lambda: (random.random(), random.randint(0, 10**9), random.gauss(0, 1)))()

def np_draw(tag):
    return ApplyFn(lambda: (np.random.random(3).tolist(), np.random.mtrand._rand.randint(10**9),
                            float(np.random.normal())))()

def sample(tag):
    return ApplyFn(lambda: pd.DataFrame({"x": range(100)}).sample(frac=0.1)["x"].tolist())()

def forest(tag):
    # the seeds an unseeded forest gives its trees come from NumPy's global generator
    fit = lambda: [t.random_state for t in ExtraTreesClassifier(n_estimators=3).fit([[0], [1]], [0, 1]).estimators_]
    return ApplyFn(fit)()

def gauss(tag):
    return ApplyFn(lambda: (random.gauss(0, 1), float(np.random.normal())))()

def quiet(tag):
    return ApplyFn(int, 1)()

def own_seed(tag):
    return ApplyFn(lambda: (random.seed(7), random.random(), np.random.seed(7), np.random.random())[1::2])()

def node_rng(tag):
    return ApplyFn(lambda: rng().random())()

def pair(a, b):
    return ApplyFn(lambda x, y: (x, y))(a, b)
"""


@pytest.fixture
def book():
    book = RuleBook()
    book.define("s", RULES)
    return book


def eagerly(node, fn, seed=0):
    """What ``fn`` draws after both generators are seeded as the contract says (the reference)."""
    low = node_seed(seed, node.id) & 0xFFFFFFFF
    random.seed(low)
    np.random.seed(low)
    return fn()


def test_draws_equal_seeding_before_the_node(book):
    ref = book.ref.s
    cases = {
        ref.py_draw(1): lambda: (random.random(), random.randint(0, 10**9), random.gauss(0, 1)),
        ref.np_draw(1): lambda: (np.random.random(3).tolist(), np.random.mtrand._rand.randint(10**9),
                                 float(np.random.normal())),
        ref.sample(1): lambda: pd.DataFrame({"x": range(100)}).sample(frac=0.1)["x"].tolist(),
        ref.forest(1): lambda: [t.random_state for t in ExtraTreesClassifier(n_estimators=3).fit([[0], [1]], [0, 1]).estimators_],
    }
    for node, fn in cases.items():
        value = evaluate(node, book.rule)
        assert value == eagerly(node, fn), node
        assert evaluate(node, book.rule, seed=1) != value      # the session seed takes part
    # different nodes of one rule draw differently
    assert evaluate(ref.py_draw(2), book.rule) != evaluate(ref.py_draw(1), book.rule)


def test_each_node_of_a_job_gets_its_own_seed_even_after_quiet_nodes_and_cached_normals(book):
    ref = book.ref.s
    first, second = ref.gauss(1), ref.gauss(2)
    # one job: quiet runs first, then two nodes that each read the generators' gaussian caches
    (a, b), q = evaluate(ref.pair(ref.pair(first, second), ref.quiet(0)), book.rule)
    assert q == 1
    normal = lambda: (random.gauss(0, 1), float(np.random.normal()))  # noqa: E731
    assert a == eagerly(first, normal) and b == eagerly(second, normal)


def test_a_node_that_seeds_itself_keeps_its_seed_and_rng_is_per_node(book):
    ref = book.ref.s
    mine = evaluate(ref.own_seed(1), book.rule)
    assert mine == (random.Random(7).random(), np.random.RandomState(7).random())
    x, y = evaluate(ref.pair(ref.node_rng(1), ref.node_rng(2)), book.rule)
    assert x != y and x == evaluate(ref.node_rng(1), book.rule)


def test_outside_nodes_the_generators_behave_as_usual(book):
    evaluate(book.ref.s.py_draw(1), book.rule)   # installs the lazily seeded generators
    random.seed(3)
    np.random.seed(3)
    reference = random.Random(3)
    assert [random.random() for _ in range(3)] == [reference.random() for _ in range(3)]
    assert np.array_equal(np.random.random(5), np.random.RandomState(3).random(5))
    state = np.random.get_state()
    draws = np.random.random(2)
    np.random.set_state(state)
    assert np.array_equal(np.random.random(2), draws)

