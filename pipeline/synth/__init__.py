"""Synthetic contract datasets with planted, documented truth (issue 2, item 7).

``generate(n_subjects, n_days, seed, *, confounded=False, start_date=date(2026, 1, 5),
custom_factor=True)`` returns a :class:`SynthDataset` (polars tables with the schema's dtypes plus a
``truth`` dict); ``write_dataset(ds, out_dir, fmt="csv"|"jsonl"|"parquet")`` writes the tables into
``out_dir`` and the truth to ``<out_dir>.truth.json`` beside it. The planted effects, rates and
distributions are declared once in :mod:`pipeline.synth.truth`.
"""

from pipeline.synth.simulate import DEFAULT_START, SynthDataset, generate
from pipeline.synth.write import FORMATS, truth_path, write_dataset

__all__ = ["DEFAULT_START", "FORMATS", "SynthDataset", "generate", "truth_path", "write_dataset"]
