"""Fixtures shared by several test modules.

`tiny_demo_run`: ONE run of the whole workflow on the small demo (TINY_DEMO, default generator on latents),
made once per test session and read by every end-to-end assertion that does not need its own run. Put new
end-to-end checks here as tests that take this fixture rather than running another demo.
"""

import pytest

from workflow_helpers import TINY_DEMO, make_workdir, run_snakemake


@pytest.fixture(scope="session")
def tiny_demo_run(tmp_path_factory):
    """The whole workflow on a small demo with the default generator (latents), uninterrupted."""
    workdir = make_workdir(tmp_path_factory.mktemp("tiny_demo"), **TINY_DEMO)
    run_snakemake(workdir, "--cores", "2")
    return workdir
