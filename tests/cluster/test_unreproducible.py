"""Work a replay cannot repeat is reported in the recording, with what it was and why, never dropped."""

import pytest

from julius_magics import recording
from julius_magics.recording import summary
from julius_magics.recording.store import Store
from tests.support import record_notebook


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


def record(store, name, source, capsys):
    """Run ``source`` while recording ``name``; returns (namespace, what ``%record stop`` printed)."""
    namespace, _ = record_notebook(store, name, source)
    return namespace, capsys.readouterr().out


def unreproducible(rec):
    return {(s.data["what"], s.data["name"]) for s in rec.steps if s.kind == "unreproducible"}


FED_FROM_THE_KERNEL = '''
from distributed import Client, LocalCluster, Event, Lock, Queue, Semaphore, Variable, worker_client

def work(x):
    from distributed import Event, Queue, Variable
    Event("go").wait(1)
    return x * Queue("jobs").get(timeout=1) * Variable("factor").get(timeout=1)

def inside():   # coordination between tasks only: the graphs reproduce it
    from distributed import Queue
    Queue("inner").put(4)
    return Queue("inner").get(timeout=5)

def nested(x):   # a graph submitted from inside a task: the outer graph reproduces it
    with worker_client() as client:
        return client.submit(lambda v: v + 1, x).result()

# worker processes: tasks use their workers' clients (in a threads cluster they share the kernel's
# client, and their calls are reported too: the recording errs on the side of partial)
cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0")
client = Client(cluster)
Queue("jobs").put(5)
Variable("factor").set(3)
Event("go").set()
with Lock("shared"):
    pass
with Semaphore(max_leases=2, name="pool"):
    pass
result = client.submit(work, 2).result()
between_tasks = client.submit(inside).result()
outer = client.submit(nested, 9).result()
client.close()
cluster.close()
'''


def test_coordination_objects_fed_from_the_kernel_are_reported_and_the_recording_never_verifies(store, capsys):
    ns, printed = record(store, "fed", FED_FROM_THE_KERNEL, capsys)
    assert (ns["result"], ns["between_tasks"], ns["outer"]) == (30, 4, 10)
    rec = store.open("fed")
    assert unreproducible(rec) == {("Queue", "jobs"), ("Variable", "factor"), ("Event", "go"), ("Lock", "shared"),
                                   ("Semaphore", "pool")}
    assert rec.info.status == "partial" and len(rec.meta["partial_reasons"]) == 5
    graph_steps = [s for s in rec.steps if s.kind == "graph"]
    assert {s.data["client"] for s in graph_steps} == {rec.steps[0].data["client"]}
    assert sum(s.data["graphs"] for s in graph_steps) == 3
    assert "julius: warning: the recording is partial (it will not verify)" in printed
    assert "Queue jobs: items put into it from the kernel reach tasks outside any graph" in printed
    assert "Lock shared: acquired from the kernel" in printed
    shown = summary.format_details(summary.details("fed", store=store))
    assert "NOT REPRODUCIBLE (Variable factor): set from the kernel" in shown
    assert "partial (a replay will not verify): Queue jobs: items put" in shown
    report = recording.replay("fed", store=store)
    assert not report.verified and "the recording is partial" in report.summary()


ACTOR_AND_ASYNCHRONOUS = '''
import asyncio
from distributed import Client, LocalCluster

class Counter:
    def __init__(self):
        self.n = 0
    def add(self, k):
        self.n += k
        return self.n

cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0")
client = Client(cluster)
counter = client.submit(Counter, actor=True).result()
counted = [counter.add(k).result() for k in (1, 2, 3)]

async def main():
    async with Client(cluster.scheduler_address, asynchronous=True) as other:
        return await other.submit(lambda: 41 + 1, pure=False)

awaited = asyncio.run(main())
plain = client.submit(lambda: 7, pure=False).result()
client.close()
cluster.close()
'''


def test_actors_and_asynchronous_clients_are_reported(store, capsys):
    ns, printed = record(store, "actors", ACTOR_AND_ASYNCHRONOUS, capsys)
    assert (ns["counted"], ns["awaited"], ns["plain"]) == ([1, 3, 6], 42, 7)
    rec = store.open("actors")
    found = unreproducible(rec)
    assert {what for what, _ in found} == {"actor", "asynchronous client"}
    assert any(name.startswith("Counter-") for what, name in found if what == "actor")
    assert rec.info.status == "partial"
    assert "actor Counter-" in printed and "asynchronous client Client-" in printed
    assert "never through the scheduler" in printed
    report = recording.replay("actors", store=store)
    assert not report.verified and report.partial
