"""The report footer: when, which toolkit version, which dataset and inputs (one sha256 over the
store manifest's files), which rule file."""

from __future__ import annotations

import datetime as dt
import hashlib

from pipeline.report.provenance import collect, footer_html, inputs_digest, toolkit_version


def test_the_inputs_digest_is_one_sha256_over_sorted_path_and_hash_lines():
    files = [("daily:daily.csv", "b" * 64), ("subjects:subjects.csv", "a" * 64)]
    expected = hashlib.sha256(f"daily:daily.csv {'b' * 64}\nsubjects:subjects.csv {'a' * 64}\n"
                              .encode()).hexdigest()
    assert inputs_digest(files) == inputs_digest(files[::-1]) == expected
    assert inputs_digest(files[:1]) != expected
    assert inputs_digest([]) is None


def test_the_footer_states_time_version_dataset_inputs_and_rules(tmp_path):
    rules = tmp_path / "my-rules.toml"
    rules.write_text("# rules\n")
    summary = {"data_dir": "/srv/cramp/incoming", "files": [
        {"table": "daily", "path": "daily.csv", "sha256": "c" * 64}]}
    p = collect(summary, None, rules, now=dt.datetime(2026, 3, 1, 6, 30, tzinfo=dt.timezone.utc))
    html = footer_html(p)
    assert "Generated 2026-03-01 06:30 UTC by cramp " + toolkit_version() in html
    assert "<code>/srv/cramp/incoming</code>; 1 input file(s), sha256 " + \
        inputs_digest([("daily:daily.csv", "c" * 64)])[:16] in html
    assert f"<code>{rules}</code>, sha256 " + hashlib.sha256(b"# rules\n").hexdigest()[:16] in html


def test_without_a_rule_file_the_footer_names_the_shipped_rules():
    p = collect({}, None, None)
    assert p.rules.startswith("shipped (") and p.rules_sha256 != "missing"
    assert "no input files recorded" in footer_html(p)
