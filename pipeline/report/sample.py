"""The bundled sample's run directory, built on first use and cached by content.

Notebooks default to the sample (their papermill ``run_dir`` parameter is ``None``), and nbval in CI
runs them on a fresh clone, so the run they read must exist without ``make run``. The cache key is
the sha256 of the sample's files and of the package code that produces a run (everything under
``pipeline/`` except the report itself), so a change to the data or to any stage rebuilds it and a
change to the presentation does not. A file lock makes parallel test workers build it once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from filelock import FileLock

from pipeline.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PROJECT_ROOT = PACKAGE_DIR.parent
SAMPLE_DATA_DIR = PROJECT_ROOT / "data" / "sample"
#: Where cached sample runs live (``reports/`` is git-ignored); override with CRAMP_SAMPLE_CACHE.
DEFAULT_CACHE_DIR = PROJECT_ROOT / "reports" / ".sample-run-cache"
#: Cached runs of other keys are removed once this old (seconds since built or last used).
STALE_AFTER_S = 3600


def _files(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    found = {p for pattern in patterns for p in root.rglob(pattern) if p.is_file()}
    return sorted(p for p in found if "__pycache__" not in p.parts)


def sample_key(data_dir: Path = SAMPLE_DATA_DIR) -> str:
    """sha256 over the sample's files and the run-producing package code (not ``report/``)."""
    digest = hashlib.sha256()
    code = [p for p in _files(PACKAGE_DIR, ("*.py", "*.toml"))
            if (PACKAGE_DIR / "report") not in p.parents]
    for base, paths in ((data_dir, _files(data_dir, ("*",))), (PACKAGE_DIR, code)):
        for path in paths:
            digest.update(str(path.relative_to(base)).encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_sample_run(cache_dir: Path | None = None, data_dir: Path = SAMPLE_DATA_DIR) -> Path:
    """Return a complete run directory (no report) for the bundled sample, building it if needed.

    Built in a temporary directory and renamed into place, so an interrupted build is never used.
    """
    from pipeline.report.load import REQUIRED_FILES

    if not data_dir.is_dir():
        raise UserError("the bundled sample dataset is missing (regenerate it with `make sample`)",
                        path=str(data_dir))
    cache_dir = Path(cache_dir or os.environ.get("CRAMP_SAMPLE_CACHE") or DEFAULT_CACHE_DIR)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / sample_key(data_dir)
    with FileLock(str(cache_dir / ".lock")):
        if all((target / name).is_file() for name in REQUIRED_FILES):
            os.utime(target)  # mark as recently used
            return target
        from pipeline.run import run_job

        building = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
        try:
            run_job(data_dir, building, report=False)
            if target.exists():
                shutil.rmtree(target)
            building.rename(target)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        # Drop runs of older code or data, unless recently used (another process may be reading).
        cutoff = time.time() - STALE_AFTER_S
        for stale in cache_dir.iterdir():
            if stale.is_dir() and stale != target and stale.stat().st_mtime < cutoff:
                shutil.rmtree(stale, ignore_errors=True)
    return target
