"""Run headless CellProfiler on one chunk of sites, and fail loudly when it fails.

`cellprofiler -c -r --always-continue -p PIPELINE -i CHUNKS_DIR -o TMP --data-file CHUNK.csv -d TMP/done.txt`: the
chunk CSV is a LoadData table whose image paths are relative to the chunks folder. A chunk counts as done only when
CellProfiler exits 0, writes "Complete" to its done file and an Image.csv with exactly the chunk's sites; anything
else raises CellProfilerError with the end of CellProfiler's output.

One bad image never fails the chunk: with `--always-continue` CellProfiler skips the rest of the pipeline for an
image set whose module raises (a two-valued stain cannot be thresholded in three classes: blank, constant or
collapsed generations) and goes on; its row then lacks that module's `ModuleError_*` value. Such sites are written
with the module and CellProfiler's error in `ModuleError_Message` (`Metadata_ModuleError_Message` after merge), and
the segmentation gate records them as failed. Only a failure to load a site's images (LoadData: our own PNGs) fails
the chunk.

The chunk's 8-bit PNGs are handed to CellProfiler as float32 `.npy` arrays (value / 255) in the chunk's private
scratch folder (`.{output name}.cellprofiler` beside the output): CellProfiler reads `.npy` with numpy.load instead
of through Bio-Formats, 6x faster (LoadData took 0.44 of 0.78 s per 128-px site in the QC pass, 0.07 with .npy),
with every measurement identical except the bookkeeping column Scaling_* (1 instead of 255).

Every exit removes the scratch folder: success, failure, a stop signal (SIGINT, SIGTERM, SIGHUP: CellProfiler's whole
process session is killed, the job's log gets one line saying so, and the job dies of that signal), and the loss of
the Snakemake that started the job (killed with SIGKILL: the job notices within a second that its parent shell was
orphaned and stops the same way, so no CellProfiler keeps writing behind a rerun). The job holds
`owner.lock` (with its pid) in its scratch folder: a job starting on the same chunk stops a holder that is still
alive, and any job removes the scratch folders in its output folder whose holder died (SIGKILL). A file that
cannot be written is one line naming it and the cause (a full disk says so). The job's log (the `--log` file)
is short: what ran and how it ended; CellProfiler's own output goes to `*.cellprofiler.log` beside it.

Standard library, numpy and Pillow only, Python >= 3.8: under `snakemake --use-conda` this runs inside the
CellProfiler environment (envs/cellprofiler.yaml), which has none of morphotrust's other dependencies.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import InputError, OutputError

SITE_KEY = "Metadata_SiteKey"  # LoadData column naming each site; comes back in Image.csv
FAILURE_COLUMN = "ModuleError_Message"  # added to Image.csv: "Module: error" of a site CellProfiler could not measure
LOADING_MODULE = "LoadData"
SCRATCH_SUFFIX = ".cellprofiler"
OWNER = "owner.lock"
LOG_TAIL_LINES = 40
INSTALL_HINT = ("run scripts/install_cellprofiler.sh (creates .venv-cellprofiler/), or set morphology.cellprofiler "
                "to a CellProfiler 4.2 executable ('cellprofiler' on PATH with --use-conda)")


class CellProfilerError(RuntimeError):
    """CellProfiler failed on a chunk; the message carries the end of its log."""


def resolve_executable(executable: str) -> str:
    """Absolute path of the CellProfiler executable: a path (relative to the working directory) or a name on PATH."""
    if os.sep in executable or (os.altsep and os.altsep in executable):
        path = Path(executable)
        if path.is_file() and os.access(path, os.X_OK):
            return str(path.resolve())
        raise InputError(f"CellProfiler not found at {executable}", where="config morphology.cellprofiler",
                         expected=f"an executable file; {INSTALL_HINT}")
    found = shutil.which(executable)
    if found is None:
        raise InputError(f"CellProfiler executable {executable!r} is not on PATH",
                         where="config morphology.cellprofiler", expected=INSTALL_HINT)
    return found


def log_tail(path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def chunk_site_keys(data_file) -> list:
    """Site keys of a LoadData chunk CSV, in order."""
    with open(data_file, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or SITE_KEY not in reader.fieldnames:
            raise InputError(f"no {SITE_KEY} column", file=data_file,
                             expected="a LoadData CSV written by `morphotrust morphology prepare`")
        return [row[SITE_KEY] for row in reader]


def cellprofiler_command(executable, pipeline, data_file, out_dir) -> list:
    """The bare headless command line for one chunk (also used by the benchmark)."""
    data_file = Path(data_file)
    out_dir = Path(out_dir)
    return [executable, "-c", "-r", "--always-continue", "-p", str(pipeline), "-i", str(data_file.parent),
            "-o", str(out_dir), "--data-file", str(data_file), "-d", str(out_dir / "done.txt")]


def _single_thread_env() -> dict:
    # One chunk = one core: keep numpy's BLAS from spreading over the cores that other chunks use.
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    return env


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stopped(Exception):
    """The job was stopped: a stop signal (`signum`), or the Snakemake that started it is gone (`signum` None)."""

    def __init__(self, reason: str, signum: int | None = None):
        super().__init__(reason)
        self.reason, self.signum = reason, signum


@contextlib.contextmanager
def stop_signals():
    """SIGTERM, SIGINT and SIGHUP raise Stopped in the main thread while this is active: the job cleans up and says
    so in one line instead of dying mid-way (or printing a KeyboardInterrupt traceback). Later signals are ignored
    while it stops (Snakemake follows the terminal's SIGINT with its own SIGTERM)."""
    if threading.current_thread() is not threading.main_thread():  # only there can signals be caught
        yield
        return
    received = []

    def stop(signum, _frame):
        if not received:
            received.append(signum)
            raise Stopped(signal.Signals(signum).name, signum)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def die_of(stopped: Stopped) -> None:
    """Exit as a stopped job does: by its signal (the exit status Snakemake and SLURM expect), else status 1."""
    if stopped.signum is not None:
        signal.signal(stopped.signum, signal.SIG_DFL)
        os.kill(os.getpid(), stopped.signum)
    raise SystemExit(1)


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):  # not Linux, or gone
        return None


def ancestry() -> tuple:
    """This process's parent and grandparent: Snakemake runs a job as `bash -c "...; python -m morphotrust ..."`,
    so the grandparent is Snakemake. When either dies (kill -9), the chain changes (orphans are re-parented)."""
    return os.getppid(), _parent_of(os.getppid())


def _die_with_parent() -> None:
    # Linux: the kernel sends SIGKILL to CellProfiler if this wrapper dies, even by kill -9.
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_stoppable(command, **popen_args) -> int:
    """Run `command` and return its exit status. If this job is stopped meanwhile (Stopped from `stop_signals`, or
    any other exception) or the process that started it is gone (`ancestry` changed: Snakemake was killed), its
    whole session is SIGKILLed before the exception (Stopped for a lost parent) goes on.

    CellProfiler (its embedded JVM) ignores SIGTERM while it measures, so a Snakemake or SLURM stop would leave it
    running as an orphan and the stop would hang. It runs in its own session, SIGKILLed as a whole, and dies with
    this process too (PR_SET_PDEATHSIG).
    """
    lineage = ancestry()
    process = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent, **popen_args)
    try:
        while True:
            try:
                return process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                if ancestry() != lineage:
                    raise Stopped("the Snakemake that started this job is gone") from None
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _held_by(lock_path: Path) -> int | None:
    """The pid of a live process holding `lock_path` (an flock), or None when nobody holds it."""
    import fcntl

    try:
        with open(lock_path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = handle.read().strip()
                return int(text) if text.isdigit() else -1
            return None
    except FileNotFoundError:
        return None


def _stop_holder(lock_path: Path, pid: int) -> str:
    """Stop the job holding `lock_path` (SIGTERM, then SIGKILL after a minute); what was done, in words."""
    for signum, patience in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        if pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        deadline = time.monotonic() + patience
        while _held_by(lock_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _held_by(lock_path):
            return (f"stopped an earlier job (pid {pid}, {signal.Signals(signum).name}) that was still running "
                    "CellProfiler on this chunk")
    raise OutputError(lock_path, OSError(None, f"held by process {pid}, which does not stop"))


def claim_scratch(work: Path):
    """Make `work` this job's scratch folder: remove the scratch folders beside it whose job died, stop a job that
    still holds `work` itself (one of a Snakemake killed earlier), start `work` afresh and hold `work/owner.lock`
    (with this pid). Returns (the lock's open handle: closing it releases the lock, a note for the log or "")."""
    import fcntl

    for other in work.parent.glob(f".*{SCRATCH_SUFFIX}"):
        if other != work and (other / OWNER).exists() and _held_by(other / OWNER) is None:
            shutil.rmtree(other, ignore_errors=True)
    holder = _held_by(work / OWNER)
    note = _stop_holder(work / OWNER, holder) if holder else ""
    try:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        handle = open(work / f".{OWNER}", "w")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        os.replace(work / f".{OWNER}", work / OWNER)  # appears locked: a sweeping job never takes it for dead
    except OSError as error:
        raise OutputError(work, error) from None
    return handle, note


def module_errors(output) -> dict[int, str]:
    """{image number: "Module: the error's last line"} of the image sets CellProfiler skipped (--always-continue),
    read from its output."""
    errors, pending = {}, None
    with open(output, errors="replace") as handle:
        for line in handle:
            started = re.match(r"Error detected during run of module (\w+)", line)
            timing = re.search(r": Image # (\d+), module \w+ # \d+: CPU_time", line)
            if started:
                pending = [started.group(1), ""]
            elif timing and pending:
                errors[int(timing.group(1))] = f"{pending[0]}: {pending[1]}" if pending[1] else pending[0]
                pending = None
            elif pending and line.strip() and not line.startswith(" "):
                pending[1] = line.strip()  # the traceback's last line: the exception
    return errors


def failed_module(row: dict, modules: list) -> str | None:
    """The first module without its `ModuleError_NN<Module>` value in an Image.csv row: where CellProfiler gave up on
    this image set (None when every module ran)."""
    return next((name for column, name in modules if row.get(column, "") == ""), None)


def numpy_chunk(data_file, work) -> Path:
    """A copy of the chunk CSV in `work`/npy whose 8-bit PNGs are float32 .npy files in [0, 1] (as CellProfiler's
    own reader scales them); the chunk CSV itself when some image is not an 8-bit grayscale PNG."""
    import numpy as np
    from PIL import Image

    data_file = Path(data_file)
    with open(data_file, newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames or []), list(reader)
    named = [f[len("FileName_"):] for f in fields if f.startswith("FileName_")]
    stains = [name for name in named if f"PathName_{name}" in fields]
    target = Path(work) / "npy"
    (target / "images").mkdir(parents=True, exist_ok=True)
    for row in rows:
        for stain in stains:
            source = data_file.parent / row[f"PathName_{stain}"] / row[f"FileName_{stain}"]
            if source.suffix.lower() != ".png":
                return data_file
            try:
                with Image.open(source) as image:
                    if image.mode != "L":
                        return data_file
                    pixels = np.asarray(image, dtype=np.float32) / 255
            except (OSError, ValueError):  # unreadable: CellProfiler's own reader fails it, with its log
                return data_file
            name = source.stem + ".npy"
            with _writing(target / "images" / name) as path:
                np.save(path, pixels)
            row[f"FileName_{stain}"], row[f"PathName_{stain}"] = name, "images"
    with _writing(target / data_file.name) as path:
        _write_csv(path, fields, rows)
    return target / data_file.name


@contextlib.contextmanager
def _writing(path):
    """Any OSError while writing `path` is an OutputError naming it (numpy's short write on a full disk has no
    file name and no errno)."""
    try:
        yield path
    except OSError as error:
        raise OutputError(path, error) from None


def _write_csv(path, fields, rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def cellprofiler_output_path(log) -> Path:
    """Where CellProfiler's own output goes: `chunk_001.log` -> `chunk_001.cellprofiler.log`."""
    log = Path(log)
    return log.with_name(f"{log.stem}.cellprofiler{log.suffix or '.log'}")


def _log(log: Path, text: str, mode: str = "a") -> None:
    with _writing(log):
        with open(log, mode) as handle:
            handle.write(text.rstrip("\n") + "\n")


def run_chunk(executable: str, pipeline, data_file, out_csv, log) -> dict:
    """Run CellProfiler on one chunk CSV; write its Image.csv (plus FAILURE_COLUMN) to `out_csv`. Returns a small
    summary. Stop signals raise Stopped (with stop_signals active, as in the CLI) after cleaning up."""
    executable = resolve_executable(executable)
    for path, what in ((pipeline, "CellProfiler pipeline"), (data_file, "chunk CSV")):
        if not Path(path).is_file():
            raise InputError(f"{what} not found", file=path)
    keys = chunk_site_keys(data_file)
    out_csv, log = Path(out_csv), Path(log)
    output = cellprofiler_output_path(log)
    work = out_csv.with_name(f".{out_csv.name}{SCRATCH_SUFFIX}")
    what = f"CellProfiler on {data_file} ({len(keys)} sites)"
    start = time.monotonic()
    with _writing(log):
        log.parent.mkdir(parents=True, exist_ok=True)
    _log(log, f"{what}; CellProfiler's own output: {output}", mode="w")
    with _writing(out_csv):
        out_csv.parent.mkdir(parents=True, exist_ok=True)
    lock = None
    try:
        lock, note = claim_scratch(work)
        if note:
            _log(log, f"morphotrust: {note}")
        command = cellprofiler_command(executable, pipeline, numpy_chunk(data_file, work), work)
        with _writing(output), open(output, "w") as handle:
            handle.write("$ " + " ".join(command) + "\n")
            handle.flush()
            returncode = run_stoppable(command, stdout=handle, stderr=subprocess.STDOUT,
                                       env=_single_thread_env(), stdin=subprocess.DEVNULL)
        failures = _check_and_write(work, keys, returncode, out_csv, output, what, log)
    except Stopped as stopped:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            _log(log, f"morphotrust: stopped ({stopped.reason}) after {time.monotonic() - start:.1f} s: {what} was "
                 "killed and its scratch folder removed; run Snakemake again to measure this chunk", mode="w")
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if lock is not None:
            lock.close()
    seconds = time.monotonic() - start
    lines = [f"morphotrust: {len(keys)} sites in {seconds:.1f} s -> {out_csv}"]
    if failures:
        lines.append(f"morphotrust: CellProfiler could not measure {len(failures)} site(s) (column {FAILURE_COLUMN}; "
                     "the segmentation gate records them as failed):")
        lines += [f"  {key}: {message}" for key, message in list(failures.items())[:10]]
        lines += [f"  ... and {len(failures) - 10} more"] if len(failures) > 10 else []
    _log(log, "\n".join(lines))
    return {"sites": len(keys), "seconds": round(seconds, 2), "failed_sites": len(failures)}


def _check_and_write(work: Path, keys: list, returncode: int, out_csv: Path, output: Path, what: str,
                     log: Path) -> dict:
    """Check CellProfiler's outputs in `work` (CellProfilerError otherwise) and write `out_csv`: its Image.csv with
    FAILURE_COLUMN added. Returns {site key: failure} of the sites it could not measure."""

    def fail(problem):
        full = "" if shutil.disk_usage(work).free > 1 << 20 else f" (the disk holding {work} is full)"
        message = (f"{what} failed: {problem}{full}.\n--- last {LOG_TAIL_LINES} lines of {output} ---\n"
                   f"{log_tail(output)}\n--- full output: {output}")
        with contextlib.suppress(OSError):
            _log(log, f"morphotrust: {problem}{full}\n--- last {LOG_TAIL_LINES} lines of CellProfiler's output "
                 f"---\n{log_tail(output)}")
        raise CellProfilerError(message)

    if returncode != 0:
        fail(f"exit status {returncode}")
    done = work / "done.txt"
    status = done.read_text().strip() if done.is_file() else "(no done file)"
    if status != "Complete":
        fail(f"its done file says {status!r}, not 'Complete'")
    image_csv = work / "Image.csv"
    if not image_csv.is_file():
        fail("no Image.csv was written (does the pipeline end with ExportToSpreadsheet exporting Image?)")
    with open(image_csv, newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames or []), list(reader)
    if SITE_KEY not in fields:
        fail(f"Image.csv has no {SITE_KEY} column")
    got = [row[SITE_KEY] for row in rows]
    if sorted(got) != sorted(keys):
        fail(f"Image.csv holds {len(got)} rows for the chunk's {len(keys)} sites "
             f"(missing: {sorted(set(keys) - set(got))[:5]}, unexpected: {sorted(set(got) - set(keys))[:5]})")
    modules = sorted((column, re.sub(r"^ModuleError_\d+", "", column)) for column in fields
                     if re.match(r"ModuleError_\d+", column))
    errors = module_errors(output)
    failures = {}
    for row in rows:
        module = failed_module(row, modules)
        message = errors.get(int(row.get("ImageNumber") or 0), module) if module else ""
        if module == LOADING_MODULE:
            fail(f"site {row[SITE_KEY]}: its images could not be loaded ({message})")
        row[FAILURE_COLUMN] = message
        if message:
            failures[row[SITE_KEY]] = message
    with _writing(out_csv):
        _write_csv(work / "image_checked.csv", fields + [FAILURE_COLUMN], rows)
        os.replace(work / "image_checked.csv", out_csv)
    return failures


def main_run_chunk(args) -> None:
    """CLI body of `morphotrust morphology run-chunk`: CellProfiler failures exit 1 with the end of its output; a
    stopped job exits by its signal after one line in its log; a write failure is one line (exit 1)."""
    try:
        with stop_signals():
            summary = run_chunk(args.cellprofiler, args.pipeline, args.data_file, args.out, args.log)
    except CellProfilerError as error:
        print(f"morphotrust: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except Stopped as stopped:
        die_of(stopped)
    except OSError as error:  # printed by morphotrust.cli; kept in the log too
        from ..cli import describe_os_error

        with contextlib.suppress(OSError):
            _log(Path(args.log), f"morphotrust: error: {describe_os_error(error)}")
        raise
    failed = f"; {summary['failed_sites']} could not be measured (see {args.log})" if summary["failed_sites"] else ""
    print(f"{args.data_file}: {summary['sites']} sites in {summary['seconds']:.1f} s{failed}")
