"""Fixtures shared by several test modules, and how the suite is split over pytest-xdist workers.

`tiny_demo_run`: ONE run of the whole workflow on the small demo (TINY_DEMO, default generator on latents), made
once per test session and read by every end-to-end assertion that does not need a run of its own. Put new
end-to-end checks here as tests that take this fixture rather than running another demo; a test about one stage
can start from copies of the stages before it (workflow_helpers.workdir_with_results_of). Where a local SLURM
cluster can run (root, as in CI) the run goes through it and the SLURM profile, so that one run also serves the
SLURM tests; elsewhere it runs locally (the other end-to-end tests run locally in any case).

Under xdist (scripts/test.sh runs `-n 2 --dist loadgroup`) a fixture is made once per worker that needs it, so
every test goes to an xdist group that one worker runs: its module's (module fixtures are made once), or, for the
tests that use `tiny_demo_run` or the local SLURM cluster, one group of their own (a second worker must not start or
stop the cluster beneath them).
"""

import pytest

from workflow_helpers import TINY_DEMO, local_slurm, make_workdir, run_snakemake, run_through_slurm, \
    small_slurm_profile

SHARED_FIXTURE_GROUPS = {"tiny_demo_run": "tiny_demo", "local_slurm_cluster": "tiny_demo"}
# The longest groups (minutes each, CI's --durations) start first, so that no worker is left with one of them at
# the end; scripts/test.sh turns off xdist's own order (by number of tests) so that this order holds.
LONGEST_FIRST = ["tiny_demo", "test_demo_trust", "test_workflow", "test_segmentation"]


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
def local_slurm_cluster():
    """Starts the local SLURM cluster (scripts/local_slurm.sh) for the session and yields None, or yields why SLURM
    cannot run on this machine (not root, no packages); stopped afterwards unless it was running before."""
    was_running = local_slurm("status").returncode == 0
    started = local_slurm("start")
    if started.returncode == 2:
        yield started.stderr.strip()
        return
    assert started.returncode == 0, f"scripts/local_slurm.sh start failed:\n{started.stdout}\n{started.stderr}"
    yield None
    if not was_running:
        local_slurm("stop")


@pytest.fixture(scope="session")
def slurm_cluster(local_slurm_cluster):
    """A running local SLURM cluster, or the test is skipped."""
    if local_slurm_cluster is not None:
        pytest.skip(f"SLURM cannot be installed or started on this machine: {local_slurm_cluster}")


@pytest.fixture(scope="session")
def tiny_demo_run(tmp_path_factory, local_slurm_cluster):
    """The whole workflow on a small demo with the default generator (latents), uninterrupted: through the local
    SLURM cluster and the SLURM profile where the cluster runs, else locally. Snakemake's output: `run.log` beside
    the working directory."""
    root = tmp_path_factory.mktemp("tiny_demo")
    workdir = make_workdir(root / "work", **TINY_DEMO)
    if local_slurm_cluster is None:
        run = run_through_slurm(workdir, small_slurm_profile(root / "profile"))
    else:
        run = run_snakemake(workdir, "--cores", "2")
    (root / "run.log").write_text(run.stdout + run.stderr)
    return workdir
