"""morphotrust.io: atomic writes, and output problems as one line naming the output (tests run as root, so
chmod cannot make a folder read-only here: real refusals come from /sys, a file where a folder should be, and
a file-size limit, which fails the write itself like a full disk does)."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from morphotrust import io
from morphotrust.errors import OutputError
from workflow_helpers import REPO

TABLE = pd.DataFrame({"a": range(3)})


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    io.write_csv(TABLE, tmp_path / "t.csv")
    assert os.listdir(tmp_path) == ["t.csv"]


def test_file_where_a_folder_should_be(tmp_path):
    (tmp_path / "results").write_text("not a folder")
    with pytest.raises(OutputError) as caught:
        io.write_csv(TABLE, tmp_path / "results" / "t.csv")
    assert str(caught.value) == (f"cannot write {tmp_path / 'results' / 't.csv'}: a file stands where a folder is "
                                 f"needed ({tmp_path / 'results'})")


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs a /sys that refuses new files")
def test_folder_that_refuses_writes():
    with pytest.raises(OutputError, match=r"cannot write /sys/morphotrust-test/t.csv: "):
        io.write_csv(TABLE, "/sys/morphotrust-test/t.csv")


def test_an_input_error_inside_the_block_is_not_blamed_on_the_output(tmp_path):
    with pytest.raises(FileNotFoundError):
        with io.atomic_path(tmp_path / "out.txt") as tmp:
            open(tmp_path / "missing-input.txt").read()
    assert os.listdir(tmp_path) == []


def _cli(args, tmp_path, preexec=None):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "morphotrust", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, preexec_fn=preexec)


def test_cli_says_which_output_in_one_line(tmp_path):
    (tmp_path / "results").write_text("")
    result = _cli(["data", "demo-metadata", "--out", "results/demo"], tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()
    assert last == ["morphotrust: error: cannot write results/demo/metadata.csv: a file stands where a folder is "
                    "needed (results/demo)"], \
        result.stderr
    assert "Traceback" not in result.stderr


def test_cli_write_failing_midway_like_a_full_disk(tmp_path):
    """A 4 KiB file-size limit makes the write itself fail (EFBIG), as ENOSPC would on a full disk."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    result = _cli(["data", "demo-metadata", "--out", "demo"], tmp_path, preexec=limit)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("morphotrust: error: cannot write demo/metadata.csv: File too "
                                                   "large (larger than this file system or a ulimit allows)"), lines
    assert not [p for p in (tmp_path / "demo").iterdir() if p.name.startswith(".")]  # temporary file removed


def test_a_short_write_on_a_full_disk_says_the_disk_is_full(tmp_path):
    """Issue 26: numpy reports a short write without an error number ("16384 requested and 992 written"); the
    output error names the file and the cause. A 64 KiB file system (a tmpfs mount, as root) fills up."""
    import numpy as np

    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a small file system")
    try:
        with pytest.raises(OutputError) as caught:
            with io.atomic_path(mount / "big.npy") as tmp:
                np.save(tmp, np.zeros(100_000))
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    message = str(caught.value)
    assert message.startswith(f"cannot write {mount / 'big.npy'}: ") and "(the disk is full" in message, message
