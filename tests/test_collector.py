"""The garbage collector's pauses overlap across threads and still leave it as they found it."""

import gc
import threading

import pytest

from julius_magics import collector


@pytest.fixture
def collecting():
    gc.enable()
    yield
    gc.enable()


def test_a_pause_that_ends_while_another_thread_is_paused_keeps_that_one_paused(collecting):
    """The main thread builds a graph while a journal's flush thread seals a step: the pause that began
    first ends first, and must not switch the collector back on under the other (each pause used to
    restore what it saw when it began)."""
    entered, first_ended, states = threading.Event(), threading.Event(), []

    def sealing():
        with collector.paused():
            entered.set()
            assert first_ended.wait(10)
            states.append(gc.isenabled())

    with collector.paused():
        thread = threading.Thread(target=sealing)
        thread.start()
        assert entered.wait(10)
    first_ended.set()
    thread.join(10)
    assert states == [False]
    assert gc.isenabled()


def test_pauses_nest_and_leave_a_collector_that_was_off_off(collecting):
    with collector.paused():
        with collector.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()

    gc.disable()
    with pytest.raises(ZeroDivisionError):
        with collector.paused():
            1 / 0
    assert not gc.isenabled()
