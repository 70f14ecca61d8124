"""The issue's acceptance case: a dataset of mixed formats, bad rows, duplicates and an e-mail
address is ingested with exact accounting, each bad row quarantined at its line, and the address
nowhere in the outputs or the store."""

from __future__ import annotations

import gzip
import io
import json

import polars as pl

from pipeline.ingest import ingest_dataset, write_ingest_outputs
from pipeline.store import Store
from tests.fixtures.ingest.helpers import quarantine_rows, spec_table, write_dataset

EMAIL = "jane.doe@example.com"
PHONE = "07700 900123"


def _parquet(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def _mixed_dataset(tmp_path):
    subjects = ("subject_id,age_band,sex\r\n"
                "S1,18-29,F\r\n"
                "S2,30-39,m\r\n"
                "S3,40-49,X\r\n"
                "S3,40-49,X\r\n"            # line 5: exact duplicate
                "S4,90-99,F\r\n")           # line 6: invalid age band
    daily_csv = ("subject_id,date,sleep_h,notes\n"
                 "S1,2025-01-01,7,\n"
                 "S1,2025-01-02,seven,\n"      # line 3: type
                 "S1,2025-01-03,7,\"see\nattached\"\n"  # lines 4-5: accepted
                 f"S2,2025-01-01,6,{EMAIL}\n"  # line 6: identifier (masked)
                 "S1,2025-01-01,7,\n")         # line 7: duplicate of line 2
    daily_jsonl = "\n".join([
        json.dumps({"subject_id": "S2", "date": "2025-01-02", "sleep_h": 8}),
        json.dumps({"subject_id": "S2", "date": "2025-01-03", "sleep_h": "eight"}),  # 2: type
        '{"subject_id": "S2", "date": "2025-01-04", "sleep_h": 8',                  # 3: malformed
        json.dumps({"subject_id": "S9", "date": "2025-01-04", "sleep_h": 8}),       # 4: unknown
        json.dumps({"subject_id": "S3", "date": "2025-01-01", "comment": f"ring {PHONE}"}),  # 5
    ])
    daily_parquet = _parquet(pl.DataFrame({
        "subject_id": ["S3", "S3", "S1"],
        "date": pl.Series(["2025-01-02", "2025-01-03", "2025-01-01"]).str.to_date(),
        "sleep_h": [7.5, 25.0, 7.0],        # row 1: out of range; row 2: duplicate of a CSV row
    }))
    episodes = gzip.compress((
        "episode_id,subject_id,started_at,muscle_group,pain\n"
        "E1,S1,2025-01-01T03:00,calf,4\n"
        "E2,S1,2025-01-02T03:00:00+01:00,Calf,4\n"
        "E2,S1,2025-01-02T04:00,calf,4\n"                     # line 4: conflict with line 3
        f"E3,S2,2025-01-02T04:00,calf,{EMAIL}\n"              # line 5: identifier in numeric
        "E4,S4,2025-01-02T04:00,calf,2\n"                     # line 6: S4 was quarantined
    ).encode())
    injuries = (json.dumps({"subject_id": "S1", "date": "2025-01-01", "muscle_group": "calf"})
                + "\n" + f"not json {EMAIL}\n")               # line 2: malformed, masked
    return write_dataset(tmp_path, {
        "subjects.csv": b"\xef\xbb\xbf" + subjects.encode(),
        "daily.csv": None,
        "daily/a.csv": daily_csv,
        "daily/b.jsonl": daily_jsonl,
        "daily/c.parquet": daily_parquet,
        "episodes.csv": None,
        "episodes.csv.gz": episodes,
        "injuries.ndjson": injuries,
    })


def test_mixed_dataset_exact_accounting_lines_and_no_leak(tmp_path):
    data = _mixed_dataset(tmp_path)
    out = tmp_path / "out"
    result = ingest_dataset(data, out / "store")
    write_ingest_outputs(result, out)

    assert quarantine_rows(result.quarantine, ("table", "source_file", "line", "column", "value",
                                               "reason")) == spec_table("""
        | table    | source_file     | line | column     | value                        | reason          |
        |----------|-----------------|------|------------|------------------------------|-----------------|
        | daily    | daily/a.csv     | 3    | sleep_h    | seven                        | type            |
        | daily    | daily/a.csv     | 6    | notes      | j***@***.com                 | identifier      |
        | daily    | daily/b.jsonl   | 2    | sleep_h    | eight                        | type            |
        | daily    | daily/b.jsonl   | 3    |            | {"subject_id": "S2", "date": "2025-01-04", "sleep_h": 8 | malformed_row |
        | daily    | daily/b.jsonl   | 4    | subject_id | S9                           | unknown_subject |
        | daily    | daily/b.jsonl   | 5    | comment    | ring 0**** ******            | identifier      |
        | daily    | daily/c.parquet | 1    | sleep_h    | 25.0                         | out_of_range    |
        | episodes | episodes.csv.gz | 3    | episode_id | E2                           | conflict        |
        | episodes | episodes.csv.gz | 4    | episode_id | E2                           | conflict        |
        | episodes | episodes.csv.gz | 5    | pain       | j***@***.com                 | identifier      |
        | episodes | episodes.csv.gz | 6    | subject_id | S4                           | unknown_subject |
        | injuries | injuries.ndjson | 2    |            | not json j***@***.com        | identifier      |
        | subjects | subjects.csv    | 6    | age_band   | 90-99                        | invalid_value   |
    """)
    tables = json.loads((out / "summary.json").read_text())["tables"]
    counts = {name: (t["read"], t["accepted"], t["quarantined"], t["duplicates"])
              for name, t in tables.items()}
    assert counts == {
        "subjects": (5, 3, 1, 1),
        "daily": (13, 4, 7, 2),
        "injuries": (2, 1, 1, 0),
        "episodes": (5, 1, 4, 0),
    }
    assert tables["daily"]["unknown_columns"] == ["comment", "notes"]
    store = Store(out / "store")
    assert store.read("daily").collect().select("source_file", "source_line").rows() == [
        ("daily/a.csv", 2), ("daily/a.csv", 4), ("daily/b.jsonl", 1), ("daily/c.parquet", 0)]

    # The raw identifiers appear nowhere: not in any output file, not in any stored value.
    for path in out.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for secret in (EMAIL, "jane.doe", "example.com", PHONE, "900123"):
                assert secret.encode() not in content, (secret, path)
    for table in ("subjects", "daily", "injuries", "episodes"):
        frame = store.read(table).collect()
        text = " ".join(str(v) for row in frame.rows() for v in row)
        assert "jane.doe" not in text and "900123" not in text
    quarantine_csv = pl.read_csv(out / "quarantine.csv", infer_schema=False)
    assert quarantine_csv.columns == ["table", "source_file", "line", "column", "value", "reason",
                                      "message"]
    assert quarantine_csv.height == 13
