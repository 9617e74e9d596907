"""Fixtures shared by several test modules, and how the suite is split over pytest-xdist workers.

`tiny_demo_run`: ONE run of the whole workflow on the small demo (TINY_DEMO, default generator on latents), made
once per test session and read by every end-to-end assertion that does not need a run of its own. Put new
end-to-end checks here as tests that take this fixture rather than running another demo.

Under xdist (scripts/test.sh runs `-n 2 --dist loadgroup`) a fixture is made once per worker that needs it, so
every test goes to an xdist group that one worker runs: its module's (module fixtures are made once), or, for the
tests that use `tiny_demo_run`, one group of their own; the SLURM tests share one local cluster, which a second
worker must not start or stop beneath them.
"""

import pytest

from workflow_helpers import TINY_DEMO, make_workdir, run_snakemake

SHARED_FIXTURE_GROUPS = {"tiny_demo_run": "tiny_demo", "slurm_cluster": "slurm"}
# The longest groups (minutes each, CI's --durations) start first, so that no worker is left with one of them at
# the end; scripts/test.sh turns off xdist's own order (by number of tests) so that this order holds.
LONGEST_FIRST = ["test_demo_trust", "slurm", "tiny_demo", "test_workflow", "test_segmentation"]


def _group(item) -> str:
    shared = [group for fixture, group in SHARED_FIXTURE_GROUPS.items() if fixture in item.fixturenames]
    return shared[0] if shared else item.module.__name__


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))
    rank = {group: i for i, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_group(item), len(rank)))  # stable: collection order otherwise


@pytest.fixture(scope="session")
def tiny_demo_run(tmp_path_factory):
    """The whole workflow on a small demo with the default generator (latents), uninterrupted."""
    workdir = make_workdir(tmp_path_factory.mktemp("tiny_demo"), **TINY_DEMO)
    run_snakemake(workdir, "--cores", "2")
    return workdir
