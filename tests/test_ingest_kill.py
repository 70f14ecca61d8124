"""Kill-test: ``cramp ingest`` is SIGKILLed at 30 seeded points; after each kill the store is
exactly as before or exactly as after the ingest (manifest, rows, quarantine, held rows), its accounting
adds up, and a re-run ends in the state of a clean ingest, with the same ``quarantine.csv`` and
store totals.

The ingest under test is the hard one: a second export into a store that holds rows of subjects
not yet accepted; it brings those subjects (so held rows are admitted), new rows, exact copies of
stored and held rows (duplicates), rows that contradict them (conflicts) and invalid values.

Kill points: ``N_WRITE_POINTS`` are chosen among the ingest's file writes (the k-th atomic write;
before it starts, after its temporary file is written, or after it is renamed into place: the
process kills itself there), which covers every commit boundary, including "after the manifest,
before quarantine.csv". ``N_TIMED_POINTS`` are delays drawn uniformly over a clean ingest's
wall time (start-up and reading included). Both are drawn from ``SEED``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from pipeline import synth
from pipeline.ingest import ingest_dataset, write_ingest_outputs
from pipeline.ingest.stored import stored_quarantine, store_totals
from pipeline.schema import TABLES
from pipeline.store import Store

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SEED = 20261201
N_WRITE_POINTS = 15
N_TIMED_POINTS = 15
STAGES = ("before", "written", "renamed")

_SELF_KILLING = textwrap.dedent("""
    import os, signal, sys
    import pipeline.atomic as atomic

    target, stage = int(sys.argv[1]), sys.argv[2]
    original, count = atomic.write_with, [0]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def counted(path, write):
        count[0] += 1
        if count[0] != target:
            return original(path, write)
        if stage == "before":
            die()
        def then_die(tmp):
            write(tmp)
            if stage == "written":
                die()
        result = original(path, then_die)
        die()
        return result

    atomic.write_with = counted
    sys.argv = ["cramp", *sys.argv[3:]]
    from pipeline.cli import main
    try:
        main()
    finally:
        print("WRITES", count[0], flush=True)
""")


def _lines(path: Path) -> tuple[str, list[str]]:
    header, *rows = path.read_text(encoding="utf-8").splitlines()
    return header, rows


def _write(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> tuple[Path, Path]:
    """``(export 1, export 2)``: export 2 is export 1 plus the files of the second delivery."""
    root = tmp_path_factory.mktemp("kill")
    full = root / "full"
    synth.write_dataset(synth.generate(40, 60, 7), full, fmt="csv")
    first = root / "export1"
    shutil.copytree(full, first)
    s_header, subjects = _lines(full / "subjects.csv")
    late = {row.split(",")[0] for row in subjects[30:]}       # 10 subjects arrive in export 2
    _write(first / "subjects.csv", s_header, subjects[:30])
    d_header, daily = _lines(full / "daily.csv")
    dates = sorted({row.split(",")[1] for row in daily})
    cutoff = dates[40]
    early = [r for r in daily if r.split(",")[1] < cutoff]
    later = [r for r in daily if r.split(",")[1] >= cutoff]
    sleep = d_header.split(",").index("sleep_h")

    def with_sleep(row: str, value: str) -> str:
        cells = row.split(",")
        cells[sleep] = value
        return ",".join(cells)

    # Export 1: early days of everyone (late subjects' rows are held), two invalid rows.
    _write(first / "daily.csv", d_header, early + [with_sleep(early[0], "99"),
                                                   with_sleep(early[1], "-1")])
    second = root / "export2"
    shutil.copytree(first, second)
    _write(second / "subjects" / "late.csv", s_header, subjects[30:])
    held = [r for r in early if r.split(",")[0] in late]
    known = [r for r in early if r.split(",")[0] not in late]
    copies = known[:5] + held[:5]                                   # duplicates
    contradictions = [with_sleep(r, "3") for r in known[5:8] + held[5:8]
                      if r.split(",")[sleep] != "3"]                # conflicts
    _write(second / "daily" / "late.csv", d_header, later + copies + contradictions)
    assert late and held and contradictions
    return first, second


def _snapshot(store_dir: Path) -> dict:
    store = Store(store_dir)
    manifest = store.manifest
    out: dict = {t: store.read(t).collect().sort("source_file", "source_line") for t in TABLES}
    out.update({f"held:{t}": store.read_held(t).collect().sort("source_file", "source_line")
                for t in TABLES})
    out["quarantine"] = stored_quarantine(store)
    out["files"] = sorted((f.path, f.sha256, f.rows, f.accepted, f.quarantined, f.duplicates)
                          for f in manifest.files)
    out["admissions"] = sorted((a.table, a.source_file, a.admitted, a.duplicates, a.conflicts)
                               for a in manifest.admissions)
    return out


def _same(a: dict, b: dict) -> bool:
    for key in a:
        if isinstance(a[key], pl.DataFrame):
            if not a[key].equals(b[key]):
                return False
        elif a[key] != b[key]:
            return False
    return True


def _assert_consistent(store_dir: Path) -> None:
    """Every listed part exists; the store's own accounting adds up."""
    store = Store(store_dir)
    manifest = store.manifest
    listed = [store_dir / "tables" / t / p for t, ps in manifest.parts.items() for p in ps]
    listed += [store_dir / "quarantine" / p for p in manifest.quarantine_parts]
    listed += [store_dir / "held" / t / p for t, ps in manifest.held_parts.items() for p in ps]
    assert all(p.is_file() for p in listed)
    quarantine = stored_quarantine(store)
    per_table = dict(quarantine.group_by("table").len().iter_rows())
    for table, t in store_totals(store, quarantine).items():
        assert t["rows"] == t["accepted"] + t["quarantined"] + t["duplicates"], table
        assert per_table.get(table, 0) == t["quarantined"], table
        assert store.read(table).collect().height == t["accepted"], table


def _ingest_command(data: Path, store: Path, out: Path) -> list[str]:
    return ["ingest", str(data), "--store", str(store), "--out", str(out)]


def test_sigkill_at_30_points_never_loses_or_double_counts_a_row(exports, tmp_path):
    first, second = exports
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    base = tmp_path / "base"
    ingest_dataset(first, base)

    # The clean reference, and the number of atomic writes a clean ingest makes.
    reference = tmp_path / "reference"
    shutil.copytree(base, reference)
    started = time.monotonic()
    clean = subprocess.run([sys.executable, "-c", _SELF_KILLING, "0", "none",
                            *_ingest_command(second, reference, tmp_path / "reference-out")],
                           capture_output=True, text=True, env=env, timeout=120)
    wall = time.monotonic() - started
    assert clean.returncode == 0, clean.stderr
    writes = int(clean.stdout.split("WRITES")[-1])
    after = _snapshot(reference)
    before = _snapshot(base)
    assert not _same(before, after)
    assert after["admissions"] and after["held:daily"].height < before["held:daily"].height
    reference_quarantine = (tmp_path / "reference-out" / "quarantine.csv").read_bytes()
    reference_totals = json.loads(
        (tmp_path / "reference-out" / "summary.json").read_text())["store_totals"]

    rng = random.Random(SEED)
    points = [("write", rng.randint(1, writes), rng.choice(STAGES))
              for _ in range(N_WRITE_POINTS)]
    points += [("timed", round(rng.uniform(0, wall), 3), "") for _ in range(N_TIMED_POINTS)]
    outcomes = {"before": 0, "after": 0}
    for i, (kind, at, stage) in enumerate(points):
        store, out = tmp_path / f"store-{i}", tmp_path / f"out-{i}"
        shutil.copytree(base, store)
        if kind == "write":
            proc = subprocess.run([sys.executable, "-c", _SELF_KILLING, str(at), stage,
                                   *_ingest_command(second, store, out)],
                                  capture_output=True, text=True, env=env, timeout=120)
            assert proc.returncode == -signal.SIGKILL, (at, stage, proc.stderr)
        else:
            proc = subprocess.Popen([sys.executable, "-m", "pipeline",
                                     *_ingest_command(second, store, out)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            time.sleep(at)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=120)
            assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read()

        point = f"point {i}: {kind} {at} {stage}"
        killed = _snapshot(store)
        state = "before" if _same(killed, before) else "after" if _same(killed, after) else None
        assert state is not None, f"{point}: the store is neither as before nor as after"
        outcomes[state] += 1
        _assert_consistent(store)

        # A re-run completes the ingest exactly once and rebuilds the outputs from the store.
        write_ingest_outputs(ingest_dataset(second, store), out)  # asserts the accounting
        assert _same(_snapshot(store), after), point
        assert (out / "quarantine.csv").read_bytes() == reference_quarantine, point
        assert json.loads((out / "summary.json").read_text())["store_totals"] == \
            reference_totals, point
        listed = {p for ps in Store(store).manifest.parts.values() for p in ps}
        assert {p.name for p in (store / "tables").rglob("*.parquet")} == listed, point
        assert not [p for p in store.rglob("*.tmp")], point
        shutil.rmtree(store)
        shutil.rmtree(out, ignore_errors=True)
    # The seeded points reach both sides of the commit.
    assert outcomes["before"] > 0 and outcomes["after"] > 0, outcomes
    print(f"kill-test: {len(points)} kills, {writes} writes per ingest, clean wall "
          f"{wall:.2f}s, store as before {outcomes['before']}, as after {outcomes['after']}")
