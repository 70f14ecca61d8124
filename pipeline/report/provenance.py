"""The report's footer: what produced it, so a reader can tell two reports apart and check that a
report describes the data they think it does.

It states when the page was generated (UTC), the toolkit version, the dataset directory, a sha256
summary of every input file the run's store holds (one digest over the sorted ``path sha256`` lines
of the store manifest, so the same inputs always give the same digest), and the red-flag rule file
with its own sha256. Paths, versions and digests identify no subject.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

#: The distribution name in pyproject.toml.
DISTRIBUTION = "cramp-pipeline"
#: Hex digits of a digest shown in the footer (64 bits: plenty to tell inputs apart by eye).
SHOWN_HEX = 16
SHIPPED_RULES = "pipeline/redflags/rules.toml"


def toolkit_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
        return "unknown"


@dataclass(frozen=True)
class Provenance:
    generated_at: str
    version: str
    data_dir: str | None
    n_input_files: int
    inputs_sha256: str | None
    rules: str
    rules_sha256: str


def inputs_digest(files: list[tuple[str, str]]) -> str | None:
    """One sha256 over ``path sha256`` lines sorted by path (None when there are no files)."""
    if not files:
        return None
    digest = hashlib.sha256()
    for path, sha in sorted(files):
        digest.update(f"{path} {sha}\n".encode())
    return digest.hexdigest()


def _rules_file(rules_path: str | Path | None) -> tuple[str, Path]:
    if rules_path:
        return str(rules_path), Path(rules_path)
    from pipeline.redflags import rules as rules_module

    return f"shipped ({SHIPPED_RULES})", Path(rules_module.__file__).with_name("rules.toml")


def collect(summary: dict, store_dir: Path | None, rules_path: str | Path | None,
            now: dt.datetime | None = None) -> Provenance:
    """Provenance of one run from its summary and store manifest."""
    files: list[tuple[str, str]] = []
    if store_dir is not None:
        from pipeline.store import Store

        files = [(f"{f.table}:{f.path}", f.sha256) for f in Store(store_dir).manifest.files]
    if not files:  # no store (or an empty one): the files this run read
        files = [(f"{f['table']}:{f['path']}", f["sha256"]) for f in summary.get("files", [])]
    label, path = _rules_file(rules_path or summary.get("rules_path"))
    rules_sha = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    generated = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    return Provenance(
        generated_at=generated.strftime("%Y-%m-%d %H:%M UTC"),
        version=toolkit_version(),
        data_dir=summary.get("data_dir"),
        n_input_files=len(files),
        inputs_sha256=inputs_digest(files),
        rules=label,
        rules_sha256=rules_sha,
    )


def footer_html(p: Provenance) -> str:
    """The footer's lines (escaped HTML)."""
    e = lambda s: html.escape(str(s))  # noqa: E731
    inputs = (f"{p.n_input_files} input file(s), sha256 {e(p.inputs_sha256[:SHOWN_HEX])}…"
              if p.inputs_sha256 else "no input files recorded")
    items = [
        f"Generated {e(p.generated_at)} by cramp {e(p.version)}.",
        f"Dataset: <code>{e(p.data_dir or 'not recorded')}</code>; {inputs}",
        f"Red-flag rules: <code>{e(p.rules)}</code>, sha256 {e(p.rules_sha256[:SHOWN_HEX])}…",
    ]
    return "".join(f'<p class="provenance">{i}</p>' for i in items)
