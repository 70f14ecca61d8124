"""Hostile-input regression suite (issue 8): what a careless or unlucky user feeds ``cramp run``.

Each case is a small change to a tiny valid synthetic dataset: bytes replacing or appended to a
file, a symlink, an extra file. ``cramp run --no-report`` runs in-process through the real CLI
entry point, and each case states

* the exit code (0: the run completes; 2: one clear message, never a traceback),
* the quarantine reasons it adds (``reason: count``),
* text expected in the message (stderr) or printed output,
* identifiers that must appear nowhere: not in any output byte (summary, manifest, quarantine,
  red flags, models' CSVs), not in the Parquet store's decoded values, not on stdout/stderr.

Every case also checks the invariants that hold for every run: no CSV cell a spreadsheet would
evaluate as a formula, and (exit 0) every input row counted once.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest

from pipeline import csvsafe
from pipeline.store import Store

# --- building blocks ------------------------------------------------------------------------

SUBJECT = "S00001"  # a subject of the base dataset
DAILY_HEADER = ("subject_id,date,exercise_min,exercise_rpe,fluid_l,heat_c,electrolytes,"
                "sitting_h,poor_posture,stress,sleep_h,caffeine_mg,alcohol_units,magnesium_mg")


def daily_row(date: str, subject: str = SUBJECT, sleep: str = "7") -> str:
    return f"{subject},{date},0,0,1,10,false,8,false,5,{sleep},60,0,0\n"


def _gzip_bomb() -> bytes:
    # 48 MiB of zeros after a valid header: about 48 KiB compressed, 1000x expansion.
    stream = io.BytesIO()
    with gzip.GzipFile(fileobj=stream, mode="wb", compresslevel=1) as gz:
        gz.write(b"subject_id,date\n")
        block = b"\0" * (1 << 20)
        for _ in range(48):
            gz.write(block)
    return stream.getvalue()


def _parquet(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def _factors_toml(n: int) -> str:
    return "".join(f'[[custom_factors]]\ncolumn = "c{i}"\nfactor = "f{i}"\nlabel = "x"\n'
                   'kind = "boolean"\n' for i in range(n))


@dataclass(frozen=True)
class Case:
    name: str
    #: Relative path -> new content (None deletes the base file).
    files: dict[str, str | bytes | None] = field(default_factory=dict)
    #: Relative path -> text appended to the base file.
    append: dict[str, str] = field(default_factory=dict)
    #: Relative link path -> target (``OUTSIDE`` is replaced by a file outside the dataset).
    symlinks: dict[str, str] = field(default_factory=dict)
    exit_code: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    message: str = ""
    printed: str = ""
    secrets: tuple[str, ...] = ()
    #: Source file -> rows of it the store must hold afterwards.
    stored: dict[str, int] = field(default_factory=dict)
    #: The case must finish (refuse) within this many seconds: resource limits.
    within_s: float | None = None


OUTSIDE_SECRET = "root:x:0:0:TOP-SECRET-OUTSIDE"
_PREVIEW_PREFIX = f'{{"subject_id": "{SUBJECT}", "notes": "'

CASES = [
    # 1a. dates outside the plausible range are quarantined, never crash a later stage.
    Case("year_0_date", append={"daily.csv": daily_row("0000-01-01")},
         reasons={"out_of_range": 1}),
    Case("dates_before_1900_and_year_9999",
         append={"daily.csv": daily_row("1899-12-31") + daily_row("9999-12-31"),
                 "episodes.csv": f",{SUBJECT},0001-01-01T00:00,1,calf,,,,,,,\n"},
         reasons={"out_of_range": 3}),
    Case("first_plausible_date_accepted", append={"daily.csv": daily_row("1900-01-01")}),
    # 2. identifier leaks.
    Case("phone_digits_as_subject_id",
         append={"subjects.csv": "07700900123,18-29,F\n+447700900123,18-29,M\n"},
         reasons={"identifier": 2}, secrets=("07700900123", "447700900123")),
    Case("nhs_number_and_ssn_as_ids",
         append={"subjects.csv": "123456789,18-29,F\n",
                 "episodes.csv": f"9434765919,{SUBJECT},2026-01-20T10:00,1,calf,,,,,,,\n"},
         reasons={"identifier": 2}, secrets=("123456789", "9434765919")),
    Case("pseudonymous_and_short_numeric_ids_pass",
         append={"subjects.csv": "P0012345,18-29,F\nE070000002,30-39,M\n12345,40-49,X\n"
                                 "9434765918,50-59,F\n"}),
    Case("unicode_and_tld_less_emails_masked",
         files={"daily/notes.csv": "subject_id,date,sleep_h,notes\n"
                                   f"{SUBJECT},2026-02-01,x,иван.петров@почта.рф\n"
                                   f"{SUBJECT},2026-02-02,y,jane.roe@localhost\n"
                                   f"{SUBJECT},2026-02-03,z,josé@exämple.de\n"},
         reasons={"identifier": 3}, secrets=("иван", "петров", "jane.roe", "josé")),
    Case("identifier_in_file_name",
         files={"daily/jane.doe@example.com.csv": "subject_id,date,sleep_h\n"
                                                  f"{SUBJECT},2026-02-01,seven\n"},
         reasons={"type": 1}, secrets=("jane.doe", "example.com.csv")),
    Case("preview_cut_never_splits_an_email",
         # An invalid JSON line whose only text is the record: the address starts at character
         # 194, so a cut at 200 before masking showed "maryja".
         files={"daily/bad.jsonl": _PREVIEW_PREFIX + "x" * (194 - len(_PREVIEW_PREFIX))
                + "maryjane.smithson@example.org\n"},
         reasons={"identifier": 1}, secrets=("maryja", "smithson")),
    Case("duplicate_identifier_column_name_message_masked",
         files={"injuries.csv": "subject_id,date,muscle_group,bob.jones@example.org,"
                                "bob.jones@example.org\n"},
         exit_code=2, message="appears twice", secrets=("bob.jones",)),
    Case("columns_found_message_masked",
         files={"injuries.csv": "subject_id,muscle_group,alice.smith@example.org\n"
                                f"{SUBJECT},calf,x\n"},
         exit_code=2, message="columns found", secrets=("alice.smith",)),
    Case("phone_no_column_refused", files={"injuries.csv": "subject_id,date,muscle_group,"
                                                           "phone_no\n"},
         exit_code=2, message="named like a direct identifier"),
    Case("mobile_no_column_refused", files={"injuries.csv": "subject_id,date,muscle_group,"
                                                            "Mobile No.\n"},
         exit_code=2, message="named like a direct identifier"),
    Case("cyrillic_e_email_column_refused",
         files={"injuries.csv": "subject_id,date,muscle_group,\u0415mail\n"},
         exit_code=2, message="named like a direct identifier"),
    Case("fullwidth_zero_width_column_refused",
         files={"injuries.csv": "subject_id,date,muscle_group,ＮＨＳ\u200b num\n"},
         exit_code=2, message="named like a direct identifier"),
    Case("identifier_in_parquet_value",
         files={"daily/extra.parquet": _parquet(pl.DataFrame({
             "subject_id": [SUBJECT, "07700900123", SUBJECT],
             "date": ["2026-03-01", "2026-03-02", "2026-03-03"],
             "contact": [None, None, "pat.doe@example.net"]}))},
         reasons={"identifier": 2}, secrets=("07700900123", "pat.doe")),
    # 3. spreadsheet formula injection: neutralised (checked for every case below).
    Case("formula_values_in_quarantine",
         append={"daily.csv": f'{SUBJECT},2026-03-01,"=HYPERLINK(""http://x.example"")",0,1,10,'
                              "false,8,false,5,7,60,0,0\n"
                              f"{SUBJECT},2026-03-02,@SUM(A1),0,1,10,false,8,false,5,7,60,0,0\n"
                              f"{SUBJECT},2026-03-03,-2+3,0,1,10,false,8,false,5,7,60,0,0\n"
                              f"{SUBJECT},2026-03-04,+1-1,0,1,10,false,8,false,5,7,60,0,0\n"
                              f'{SUBJECT},2026-03-05,"\t=1",0,1,10,false,8,false,5,7,60,0,0\n'},
         reasons={"type": 5}),
    Case("formula_in_custom_factor_label",
         files={"dataset.toml": '[[custom_factors]]\ncolumn = "magnesium_mg"\n'
                                'factor = "magnesium"\nlabel = "=cmd|\' /C calc\'!A0"\n'
                                'kind = "numeric"\nunit = "mg"\nscale = 100.0\n'}),
    # 4. resource exhaustion from small inputs: refused within seconds.
    Case("gzip_bomb", files={"daily/bomb.csv.gz": _gzip_bomb()}, exit_code=2,
         message="expands more than", within_s=5),
    Case("million_comma_header",
         files={"daily/wide.csv": "subject_id,date" + "," * 1_000_000 + "\nS1,2026-01-01\n"},
         exit_code=2, message="MAX_COLUMNS_PER_FILE", within_s=5),
    Case("jsonl_key_bomb",
         files={"daily/keys.jsonl": "\n".join(
             "{" + ",".join(f'"k{j}_{i}": 1' for i in range(100)) + "}" for j in range(1000))},
         exit_code=2, message="MAX_COLUMNS_PER_FILE", within_s=5),
    Case("100k_custom_factors", files={"dataset.toml": _factors_toml(100_000)}, exit_code=2,
         message="MAX_DATASET_CONFIG_BYTES", within_s=5),
    Case("too_many_custom_factors", files={"dataset.toml": _factors_toml(1000)}, exit_code=2,
         message="MAX_CUSTOM_FACTORS", within_s=5),
    # 5. a deeply nested dataset.toml is a user error, not a RecursionError.
    Case("deeply_nested_toml", files={"dataset.toml": "a = " + "[" * 5000 + "]" * 5000 + "\n"},
         exit_code=2, message="nested too deeply"),
    # 6a. symlinks out of the dataset: refused, the link named, the target never echoed.
    Case("symlink_file_outside", files={"injuries.csv": None},
         symlinks={"injuries.csv": "OUTSIDE"}, exit_code=2,
         message="injuries.csv: is a symbolic link", secrets=(OUTSIDE_SECRET, "TOP-SECRET")),
    Case("symlink_directory_outside", symlinks={"daily": "OUTSIDE_DIR"}, exit_code=2,
         message="daily: is a symbolic link", secrets=(OUTSIDE_SECRET, "TOP-SECRET")),
    # 6b. the standard-library CSV path: a long field, CR-only lines, an unterminated quote.
    Case("cr_only_csv_with_a_200kib_field",
         files={"daily/cr.csv": "subject_id,date,notes\r"
                                f"{SUBJECT},2026-03-01,{'n' * (200 << 10)}\r"
                                f"{SUBJECT},2026-03-02,ok\r"},
         stored={"daily/cr.csv": 2}),
    Case("field_over_the_line_limit_quarantines_the_row",
         files={"daily/long.csv": "subject_id,date,notes\r"
                                  f"{SUBJECT},2026-03-01,{'n' * (2 << 20)}\r"
                                  f"{SUBJECT},2026-03-02,ok\r"},
         reasons={"malformed_row": 1}, stored={"daily/long.csv": 1}),
    Case("unterminated_quote_is_quarantined_with_its_line",
         files={"daily/open.csv": "subject_id,date,notes\n"
                                  f'{SUBJECT},2026-03-01,ok\n{SUBJECT},2026-03-02,"open\n'
                                  f"{SUBJECT},2026-03-03,swallowed\n"},
         reasons={"malformed_row": 1}, stored={"daily/open.csv": 1}),
    Case("cr_only_jsonl_read_line_by_line",
         files={"daily/cr.jsonl": f'{{"subject_id": "{SUBJECT}", "date": "2026-03-01"}}\r'
                                  f'{{"subject_id": "{SUBJECT}", "date": "2026-03-02"}}\r'
                                  '{"subject_id": 5\r'},
         reasons={"malformed_row": 1}, stored={"daily/cr.jsonl": 2}),
    # 6c. files the user may not notice are listed, with a hint.
    Case("ignored_exports_listed_with_hints",
         files={"daily.xlsx": b"PK\x03\x04", "daily/2024/old.csv": "subject_id,date\n",
                "episodes.json": "[]", "daily/notes.txt": "x"},
         printed="daily.xlsx found: export it as CSV"),
    # Odd bytes never crash the run.
    Case("nul_and_invalid_utf8_bytes",
         files={"daily/odd.csv": b"subject_id,date,notes\n" + SUBJECT.encode()
                + b",2026-03-01,a\x00b\n" + SUBJECT.encode() + b",2026-03-02,\xff\xfe\n"},
         stored={"daily/odd.csv": 2}),
]


# --- running a case -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_dataset(tmp_path_factory) -> Path:
    """A tiny valid dataset (8 synthetic subjects x 40 days) that ``cramp run`` models fully."""
    from pipeline import synth

    root = tmp_path_factory.mktemp("hostile-base") / "data"
    synth.write_dataset(synth.generate(8, 40, 20261201), root, fmt="csv")
    return root


def _prepare(case: Case, base: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(base, data)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text(OUTSIDE_SECRET + "\n")
    for name, content in case.files.items():
        path = data / name
        if content is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    for name, text in case.append.items():
        with open(data / name, "ab") as handle:
            handle.write(text.encode("utf-8"))
    for name, target in case.symlinks.items():
        link = data / name
        if link.is_dir():
            shutil.rmtree(link)
        link.symlink_to({"OUTSIDE": outside / "secret.csv", "OUTSIDE_DIR": outside}[target])
    return data


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """Run ``cramp ARGS`` in-process through the console-script entry point."""
    from pipeline import cli

    monkeypatch.setattr(sys, "argv", ["cramp", *args])
    capsys.readouterr()
    try:
        cli.main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def output_texts(out: Path) -> dict[str, str]:
    """Every output file as text: raw bytes decoded, plus Parquet files' decoded values."""
    texts = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        texts[str(path.relative_to(out))] = raw.decode("utf-8", errors="replace")
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
            texts[f"{path.relative_to(out)} (values)"] = "\n".join(
                "\t".join("" if v is None else str(v) for v in row) for row in frame.rows())
    return texts


_PLAIN_NUMBER = re.compile(csvsafe._PLAIN_NUMBER)


def formula_cells(out: Path) -> list[tuple[str, str]]:
    """(file, cell) for every CSV cell in ``out`` that a spreadsheet would evaluate."""
    found = []
    for path in out.rglob("*.csv"):
        for row in csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")):
            for cell in row:
                if cell[:1] in csvsafe.FORMULA_TRIGGERS and not _PLAIN_NUMBER.match(cell):
                    found.append((path.name, cell))
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, base_dataset, tmp_path, capsys, monkeypatch):
    data = _prepare(case, base_dataset, tmp_path)
    out = tmp_path / "out"
    started = time.perf_counter()
    code, stdout, stderr = run_cli(["run", "--data", str(data), "--out", str(out),
                                    "--no-report"], capsys, monkeypatch)
    elapsed = time.perf_counter() - started

    assert code == case.exit_code, (stdout, stderr)
    assert "internal error" not in stderr and "Traceback" not in stderr
    if case.exit_code == 2:
        assert stderr.startswith("error: ") and case.message in stderr, stderr
    if case.printed:
        assert case.printed in stdout
    if case.within_s is not None:
        assert elapsed < case.within_s, f"took {elapsed:.1f} s"
    if code == 0:
        quarantine = pl.read_csv(out / "quarantine.csv", infer_schema=False)
        assert dict(Counter(quarantine["reason"].to_list())) == case.reasons
        for source, rows in case.stored.items():
            stored = Store(out / "store").read("daily").filter(pl.col("source_file") == source)
            assert stored.select(pl.len()).collect().item() == rows, source
    texts = {"stdout": stdout, "stderr": stderr, **(output_texts(out) if out.exists() else {})}
    for secret in case.secrets:
        leaks = [name for name, text in texts.items() if secret in text]
        assert not leaks, f"{secret!r} found in {leaks}"
    if out.exists():
        assert formula_cells(out) == []


def test_formula_values_are_kept_as_text_with_a_quote(base_dataset, tmp_path, capsys,
                                                      monkeypatch):
    """The neutralised cells still say what the user wrote, after the ``'``."""
    case = next(c for c in CASES if c.name == "formula_values_in_quarantine")
    data = _prepare(case, base_dataset, tmp_path)
    code, _, _ = run_cli(["run", "--data", str(data), "--out", str(tmp_path / "out"),
                          "--no-report"], capsys, monkeypatch)
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "quarantine.csv", encoding="utf-8")))
    assert [r["value"] for r in rows] == [
        "'=HYPERLINK(\"http://x.example\")", "'@SUM(A1)", "'-2+3", "'+1-1", "'\t=1"]


def test_ignored_files_are_listed_in_the_summary(base_dataset, tmp_path, capsys, monkeypatch):
    import json

    case = next(c for c in CASES if c.name == "ignored_exports_listed_with_hints")
    data = _prepare(case, base_dataset, tmp_path)
    code, stdout, _ = run_cli(["run", "--data", str(data), "--out", str(tmp_path / "out"),
                               "--no-report"], capsys, monkeypatch)
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ignored_files"] == ["daily/2024/", "daily/notes.txt", "daily.xlsx",
                                        "episodes.json"]
    assert "daily/2024/ is a directory inside a table directory" in stdout


@pytest.mark.slow
def test_report_and_its_tables_carry_no_identifier_or_formula(base_dataset, tmp_path, capsys,
                                                               monkeypatch):
    """One full run with the report: report.html and report_tables/ are outputs too."""
    data = _prepare(Case("report", files={
        "daily/jane.doe@example.com.csv": "subject_id,date,sleep_h,notes\n"
                                          f"{SUBJECT},2026-02-01,x,=1+1\n"
                                          f"{SUBJECT},2026-02-02,y,call 07700 900123\n",
        "dataset.toml": '[[custom_factors]]\ncolumn = "magnesium_mg"\nfactor = "magnesium"\n'
                        'label = "=cmd|\' /C calc\'!A0"\nkind = "numeric"\nscale = 100.0\n'}),
        base_dataset, tmp_path)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["run", "--data", str(data), "--out", str(out)], capsys,
                                   monkeypatch)
    assert code == 0, stderr
    assert (out / "report.html").exists() and (out / "report_tables").is_dir()
    texts = output_texts(out)
    for secret in ("jane.doe", "07700 900123"):
        assert not [n for n, t in texts.items() if secret in t], secret
    assert formula_cells(out) == []


def test_printed_paths_are_masked(base_dataset, tmp_path, capsys, monkeypatch):
    """stdout lands in cron logs too: a dataset directory named after a person is masked."""
    data = shutil.copytree(base_dataset, tmp_path / "jane.doe@example.com")
    code, stdout, stderr = run_cli(["validate", str(data)], capsys, monkeypatch)
    assert code == 0, stderr
    assert "jane.doe" not in stdout and "j***@***.com" in stdout
