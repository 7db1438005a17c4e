"""The table of step kinds: complete, documented in docs/format.md, and used by summaries."""

import pathlib

import pytest

from julius_magics.errors import JuliusError
from julius_magics.recording import steps
from julius_magics.recording.journal import Step

FORMAT_MD = pathlib.Path(__file__).parents[2] / "docs" / "format.md"


def test_format_md_holds_the_table_of_step_kinds():
    text = FORMAT_MD.read_text()
    begin, end = "<!-- step kinds: begin -->\n", "\n<!-- step kinds: end -->"
    documented = text[text.index(begin) + len(begin):text.index(end)]
    assert documented == steps.format_table(), "docs/format.md: paste steps.format_table() between the markers"


def test_every_kind_has_a_summary_and_lists_its_fields():
    for kind in steps.KINDS.values():
        assert kind.fields and callable(kind.summarise), kind.name
        assert (kind.results is None) or (kind.replay is not None), f"{kind.name}: results nobody replays"


def test_summaries_and_results_of_steps():
    dispatch = Step(3, "dispatch", {
        "targets": [{"id": "n1", "key": "ml.score", "label": "AUC"}], "key_rules": [], "seed": 0, "nodes": 7,
        "jobs": 2, "seconds": 0.5, "results": {"n1": {"fp": "ab" * 32, "describe": "0.93", "label": "AUC",
                                                      "target": True}}}, ("targets", "jobs"))
    assert steps.summary(dispatch) == "AUC: 7 nodes in 2 key jobs, 1 results"
    assert steps.results(dispatch) == {"n1": {"label": "AUC", "fp": "ab" * 32, "describe": "0.93"}}
    cell = Step(1, "cell", {"source": "\nx = 1\ny = 2\n"}, ())
    assert steps.summary(cell) == "x = 1 ..." and steps.results(cell) == {}
    graph = Step(2, "graph", {"ntasks": 4, "keys": ["a"], "fingerprints": {"a": "cd" * 32}}, ("specs",))
    assert steps.summary(graph) == "dask graph of 4 tasks, 1 outputs"
    loop = Step(3, "graph", {"ntasks": 50, "graphs": 50, "keys": [f"k{i}" for i in range(50)]}, ("specs",))
    assert steps.summary(loop) == "50 dask graphs of 50 tasks, 50 outputs"
    assert steps.results(graph) == {"a": {"label": "dask key a", "fp": "cd" * 32, "describe": None}}
    assert steps.summary(Step(4, "from-the-future", {}, ())) == "from-the-future"


def test_an_unknown_kind_is_one_clear_error():
    with pytest.raises(JuliusError, match="recording 'x': step 4 has unknown kind 'from-the-future'"):
        steps.kind_of(Step(4, "from-the-future", {}, ()), "recording 'x'")
