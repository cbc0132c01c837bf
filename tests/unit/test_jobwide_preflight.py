"""Issue 16: the memory preflight of a multi-node job is decided by its tightest node."""
from __future__ import annotations

from guardrun.launcher.preflight import Resources
from guardrun.launcher.units import GIB
from guardrun.supervisor.watch.fitcheck import tightest


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
