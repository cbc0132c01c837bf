"""Issue 16: the memory preflight of a multi-node job is decided by its tightest node."""
from __future__ import annotations

from fakes import FakeClock, FakeGpuSource, ScriptedMemory
from recipes_util import make_recipe
from test_preflight import PLENTY, SITUATION_4

from guardrun.launcher.ladder import walk
from guardrun.launcher.preflight import Resources
from guardrun.launcher.units import GIB
from guardrun.supervisor.core.context import Context
from guardrun.supervisor.record.shared import SharedDir
from guardrun.supervisor.run.loop import nodes_free
from guardrun.supervisor.run.nodes import NodeFacts
from guardrun.supervisor.watch.fitcheck import preflight_plan, tightest


def test_each_figure_is_the_smallest_any_node_measured():
    node0 = Resources(gpu_free={0: 70 * GIB, 1: 60 * GIB}, host_available=400 * GIB, host_limit=300 * GIB)
    node1 = Resources(gpu_free={0: 50 * GIB, 1: 75 * GIB}, host_available=200 * GIB, host_limit=320 * GIB)
    assert tightest(node0, [node1]) == Resources(gpu_free={0: 50 * GIB, 1: 60 * GIB},
                                                 host_available=200 * GIB, host_limit=300 * GIB)


def test_what_one_node_does_not_know_the_others_decide():
    mine = Resources(gpu_free=None, host_available=None, host_limit=None)   # no NVML, no /proc here
    other = Resources(gpu_free={0: 10 * GIB}, host_available=8 * GIB)
    assert tightest(mine, [other]) == Resources(gpu_free={0: 10 * GIB}, host_available=8 * GIB)


def test_one_node_alone_is_measured_as_it_is():
    mine = Resources(gpu_free={0: GIB}, host_available=2 * GIB, host_limit=None)
    assert tightest(mine, []) == mine
    assert tightest(Resources(), [Resources()]) == Resources()


def test_the_tightest_node_picks_the_rung_of_every_node(tmp_path):
    # FIELD_NOTES situation 4 on two nodes: this one has 80 GiB GPUs, the other 24 GiB ones;
    # the job starts where the 24 GiB node fits (offload, batch 8 x accumulation 2), here too.
    recipe = make_recipe(tmp_path, SITUATION_4)
    said = []
    ctx = Context(FakeClock(), lambda event, **fields: None, said.append)
    here = FakeGpuSource(count=8, total=80 * GIB)
    memory = ScriptedMemory(total=PLENTY, readings=[(0, 0, PLENTY)])
    alone = preflight_plan(recipe, [], None, walk(recipe)[0], here, memory, ctx)
    assert alone.rungs == () and said == []
    mine = Resources(gpu_free={index: 80 * GIB for index in range(8)}, host_available=PLENTY)
    other = Resources(gpu_free={index: 24 * GIB for index in range(8)}, host_available=PLENTY)
    plan = preflight_plan(recipe, [], None, walk(recipe)[0], here, memory, ctx, nodes=[mine, other])
    assert plan.rungs == (1, 2, 3) and (plan.per_device, plan.grad_accum) == (8, 2)
    assert said[0].startswith("skipping rung 0: ") and "usable of 24.0 GiB free on GPU 0" in said[0]
    # before the job's first attempt no node knows the others' memory: none skips, all start alike
    assert preflight_plan(recipe, [], None, walk(recipe)[0], FakeGpuSource(count=8, total=24 * GIB), memory,
                          ctx, nodes=[]).rungs == ()


def test_every_nodes_reading_comes_from_its_facts_of_the_last_attempt(tmp_path):
    me, other = SharedDir(tmp_path, "job", 3, 0), SharedDir(tmp_path, "job", 3, 1)
    assert nodes_free(me, 0) == []                                  # before the job's first attempt
    reading = Resources(gpu_free={0: 24 * GIB}, host_available=100 * GIB, host_limit=80 * GIB)
    other.put(1, "node", NodeFacts.of(None, reading).as_json())
    mine = Resources(host_available=GIB)
    me.put(1, "node", NodeFacts.of(None, mine).as_json())       # this node's own, from the file too
    SharedDir(tmp_path, "job", 3, 2).put(1, "node", {"kind": "no such kind"})   # unreadable: left out
    assert nodes_free(me, 1) == [mine, reading]
