"""cramp never deletes or writes into what it did not make, two runs never write one run directory
at once, and a broken environment (disk full, permissions, a path under a file, a symlinked store)
is a user error naming the path, exit 2."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline import atomic
from pipeline.errors import UserError
from pipeline.ingest import ingest_dataset
from pipeline.run import run_job
from pipeline.store import MARKER, Store
from tests.fixtures.ingest.helpers import write_dataset
from tests.test_cli import assert_user_error, cramp

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A small dataset the models can fit (12 subjects x 30 days), written once."""
    from pipeline import synth

    path = tmp_path_factory.mktemp("synthetic") / "data"
    synth.write_dataset(synth.generate(12, 30, 1), path, fmt="csv")
    return path


@pytest.fixture
def data(synthetic, tmp_path) -> Path:
    return Path(shutil.copytree(synthetic, tmp_path / "data"))


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# --- never delete what cramp did not create ---------------------------------------------------

def test_run_with_the_dataset_as_its_own_store_refuses_and_deletes_nothing(tmp_path):
    data = write_dataset(tmp_path / "out" / "store", {})  # the dataset at OUT/store/data
    shutil.copytree(data, tmp_path / "out" / "store", dirs_exist_ok=True)
    shutil.rmtree(data)
    data = tmp_path / "out" / "store"
    before = _files(data)
    result = cramp("run", "--data", str(data), "--out", str(tmp_path / "out"), "--no-report")
    assert_user_error(result, "lies inside the output directory")
    assert _files(data) == before


def test_a_dataset_inside_the_output_directory_is_refused_through_a_symlink(tmp_path):
    data = write_dataset(tmp_path / "out", {})
    (tmp_path / "link").symlink_to(tmp_path / "out")
    with pytest.raises(UserError, match="inside the output directory"):
        run_job(tmp_path / "link" / "data", tmp_path / "out", report=False)


def test_a_store_cramp_did_not_make_is_not_deleted(data, tmp_path):
    out = tmp_path / "out"
    run_job(data, out, report=False)
    shutil.rmtree(out / "store")
    (out / "store").mkdir()
    (out / "store" / "thesis.docx").write_bytes(b"years of work")
    with pytest.raises(UserError, match="not made by cramp.*not deleted"):
        run_job(data, out, report=False)
    assert (out / "store" / "thesis.docx").read_bytes() == b"years of work"


def test_a_store_cramp_made_is_rebuilt_and_marked(data, tmp_path):
    out = tmp_path / "out"
    run_job(data, out, report=False)
    assert (out / "store" / MARKER).is_file() and (out / ".cramp-run").is_file()
    first = Store(out / "store").manifest
    run_job(data, out, report=False)
    again = Store(out / "store").manifest
    assert [f.sha256 for f in again.files] == [f.sha256 for f in first.files]


def test_a_non_empty_output_directory_cramp_did_not_make_is_refused(data, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "effects.csv").write_text("my own effects\n")
    with pytest.raises(UserError, match="not made by `cramp run`"):
        run_job(data, out, report=False)
    assert _files(out) == {"effects.csv": b"my own effects\n"}


def test_a_run_directory_from_before_the_marker_is_still_accepted(data, tmp_path):
    out = tmp_path / "out"
    run_job(data, out, report=False)
    (out / ".cramp-run").unlink()
    (out / "store" / MARKER).unlink()  # its store has cramp's manifest: still cramp's
    run_job(data, out, report=False)


def test_ingest_refuses_a_store_directory_it_did_not_make(tmp_path):
    data = write_dataset(tmp_path, {})
    mine = tmp_path / "mine"
    (mine / "tables" / "daily").mkdir(parents=True)
    (mine / "tables" / "daily" / "notes.txt").write_text("keep me")
    result = cramp("ingest", str(data), "--store", str(mine))
    assert_user_error(result, "not made by cramp", str(mine))
    assert _files(mine) == {"tables/daily/notes.txt": b"keep me"}


def test_ingest_refuses_a_dataset_inside_its_store(tmp_path):
    store = tmp_path / "store"
    ingest_dataset(write_dataset(tmp_path, {}), store)
    inner = write_dataset(store, {})
    with pytest.raises(UserError, match="inside the store"):
        ingest_dataset(inner, store)


def test_a_store_from_an_earlier_format_is_refused_with_what_to_do(tmp_path):
    store = tmp_path / "store"
    ingest_dataset(write_dataset(tmp_path, {}), store)
    manifest = json.loads((store / "manifest.json").read_text())
    (store / "manifest.json").write_text(json.dumps({**manifest, "store_format": 1}))
    with pytest.raises(UserError, match="earlier cramp.*ingest the dataset again"):
        Store(store).read("daily")


# --- one lock for the run directory -----------------------------------------------------------

_HOLD_THE_RUN = textwrap.dedent("""
    import sys, time
    import pipeline.ingest
    original = pipeline.ingest.ingest_dataset

    def slow(*args, **kwargs):
        result = original(*args, **kwargs)
        print("READY", flush=True)
        time.sleep(60)
        return result

    pipeline.ingest.ingest_dataset = slow
    from pipeline.run import run_job
    run_job(sys.argv[1], sys.argv[2], report=False)
""")


def test_a_second_overlapping_run_on_the_same_out_stops(data, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    first = subprocess.Popen([sys.executable, "-c", _HOLD_THE_RUN, str(data), str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout.readline().strip() == "READY", first.stderr.read()
        store_before = _files(out / "store")
        second = cramp("run", "--data", str(data), "--out", str(out), "--no-report")
        assert_user_error(second, f"another run is writing {out}")
        assert _files(out / "store") == store_before  # the first run's store is untouched
    finally:
        first.kill()
        first.wait(timeout=60)
    # Once the first run is gone its lock is free again.
    run_job(data, out, report=False)


def test_a_run_that_did_not_finish_is_marked_and_its_outputs_are_not_read(data, tmp_path,
                                                                           monkeypatch):
    """A run stopped part-way (an error here; Ctrl-C alike) has replaced some outputs and not
    others: the report and notebooks (``load_run``) must refuse the mix, and the next complete
    run must clear the mark."""
    from pipeline import run as run_module
    from pipeline.errors import UserError
    from pipeline.report.load import load_run
    from pipeline.run_dir import UNFINISHED

    out = tmp_path / "out"
    run_job(data, out, report=False)
    assert not (out / UNFINISHED).exists()
    load_run(out)  # a finished run reads

    def fails(*args, **kwargs):
        raise UserError("stopped part-way (simulated)")

    with monkeypatch.context() as mp:
        mp.setattr(run_module, "write_per_patient", fails)
        with pytest.raises(UserError, match="simulated"):
            run_job(data, out, report=False)
    assert (out / UNFINISHED).is_file()
    with pytest.raises(UserError, match="has not finished.*run `cramp run` again"):
        load_run(out)
    run_job(data, out, report=False)
    assert not (out / UNFINISHED).exists()
    assert load_run(out).effects.height


# --- the environment ---------------------------------------------------------------------------

def test_disk_full_while_writing_is_a_user_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old")

    def full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=f"{target}: no space left on the device"):
        atomic.write_with(target, full)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_native_library_reporting_disk_full_is_a_user_error(tmp_path):
    import polars as pl

    def full(tmp: Path) -> None:
        raise pl.exceptions.ComputeError(
            "parquet: File out of specification: underlying IO error: No space left on device "
            "(os error 28)")

    with pytest.raises(UserError, match="no space left"):
        atomic.write_with(tmp_path / "part.parquet", full)


def test_an_unrelated_failure_inside_a_write_is_not_disguised(tmp_path):
    def bug(tmp: Path) -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        atomic.write_with(tmp_path / "x", bug)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"),
                    reason="mounting a tiny tmpfs needs root")
def test_a_real_full_disk_is_a_user_error_for_run(data, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        result = cramp("run", "--data", str(data), "--out", str(disk / "out"), "--no-report")
        assert_user_error(result, "no space left on the device", str(disk / "out"))
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_permission_denied_is_a_user_error_naming_the_path(tmp_path, monkeypatch, capsys):
    import tempfile

    from pipeline import cli

    data = write_dataset(tmp_path, {})
    store = tmp_path / "store"
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # as if the store's tables/ were not writable
        if dir is not None and "tables" in Path(dir).parts:
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(sys, "argv", ["cramp", "ingest", str(data), "--store", str(store)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert f"{store / 'tables'}" in stderr and "permission denied" in stderr, stderr
    assert "bug in cramp" not in stderr
    assert Store(store).manifest.files == ()


@pytest.mark.parametrize("failing", ["staging", "parts"])
def test_disk_full_during_an_ingest_leaves_the_store_exactly_as_it_was(data, tmp_path,
                                                                       monkeypatch, capsys,
                                                                       failing):
    """The disk fills while the validated rows are staged (``.staging-*`` inside the store), or
    while the checked buckets are written as parts: one message, exit 2, and the store's files
    are byte for byte what they were (no staging directory, no unlisted part)."""
    import polars as pl

    from pipeline import cli

    from pipeline import synth

    store = tmp_path / "store"
    ingest_dataset(data, store)
    before = _files(store)
    second = tmp_path / "second"  # another export: new files, new subjects
    synth.write_dataset(synth.generate(6, 20, 2), second, fmt="csv")
    if failing == "staging":
        from pipeline.ingest import staging

        monkeypatch.setattr(staging, "MEMORY_BYTES", 0)  # stage in files, as a big dataset does

        def full(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(pl.DataFrame, "write_ipc", full)
    else:
        real = atomic.write_with
        calls = [0]

        def write_with(path, write):  # the second part written finds the disk full
            if "tables" in Path(path).parts:
                calls[0] += 1
                if calls[0] == 2:
                    raise UserError(atomic.ENVIRONMENT_ERRORS[errno.ENOSPC], path=str(path))
            return real(path, write)

        monkeypatch.setattr(atomic, "write_with", write_with)
    monkeypatch.setattr(sys, "argv", ["cramp", "ingest", str(second), "--store", str(store)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "no space left on the device" in stderr and "bug in cramp" not in stderr, stderr
    assert _files(store) == before
    assert not any(p.name.startswith(".staging-") for p in store.iterdir())


def test_an_output_path_under_a_file_is_a_user_error(tmp_path):
    data = write_dataset(tmp_path, {})
    (tmp_path / "afile").write_text("")
    result = cramp("run", "--data", str(data), "--out", str(tmp_path / "afile" / "out"),
                   "--no-report")
    assert_user_error(result, str(tmp_path / "afile"), "is a file, not a directory")


def test_out_store_as_a_symlink_is_refused_and_its_target_untouched(data, tmp_path):
    out = tmp_path / "out"
    run_job(data, out, report=False)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(out / "store", elsewhere)
    (out / "store").symlink_to(elsewhere)
    before = _files(elsewhere)
    result = cramp("run", "--data", str(data), "--out", str(out), "--no-report")
    assert_user_error(result, str(out / "store"), "symbolic link")
    assert _files(elsewhere) == before


def test_validate_checks_it_can_write_before_validating(tmp_path, monkeypatch):
    from pipeline import cli
    import pipeline.ingest

    def never(*args, **kwargs):
        raise AssertionError("validated before checking --out")

    monkeypatch.setattr(pipeline.ingest, "validate_dataset", never)
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(sys, "argv", ["cramp", "validate", str(tmp_path),
                                      "--out", str(tmp_path / "afile" / "out")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2


def test_ingest_into_a_store_of_an_earlier_format_says_to_rebuild_it(tmp_path):
    data = write_dataset(tmp_path, {})
    store = tmp_path / "store"
    ingest_dataset(data, store)
    (store / MARKER).unlink()  # stores of format 1 had no marker
    manifest = json.loads((store / "manifest.json").read_text())
    (store / "manifest.json").write_text(json.dumps({**manifest, "store_format": 1}))
    result = cramp("ingest", str(data), "--store", str(store))
    assert_user_error(result, "earlier cramp", "ingest the dataset again into a new store")


def test_a_store_killed_while_being_created_is_still_cramps(tmp_path):
    # A kill while the marker was being written leaves the lock and the marker's temporary file.
    data = write_dataset(tmp_path, {})
    store = tmp_path / "store"
    store.mkdir()
    (store / ".lock").touch()
    (store / f".{MARKER}.k1ll3d.tmp").touch()
    ingest_dataset(data, store)
    assert (store / MARKER).is_file() and Store(store).manifest.files


def test_an_environment_error_never_prints_an_identifier_in_the_path():
    error = PermissionError(errno.EACCES, "Permission denied", "data/daily/jane.doe@example.com.csv")
    message = str(atomic.environment_error(error))
    assert "jane.doe" not in message and "permission denied" in message
