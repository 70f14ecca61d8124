"""Synthetic contract datasets with planted, documented truth (issue 2, item 7).

``generate(n_subjects, n_days, seed, *, confounded=False, start_date=date(2026, 1, 5),
custom_factor=True)`` returns a :class:`SynthDataset`: polars tables ``subjects``, ``daily``,
``injuries`` and ``episodes`` with the schema's dtypes, the declared ``custom_factors`` and the
``truth`` dict. ``write_dataset(ds, out_dir, fmt="csv"|"jsonl"|"parquet")`` writes the tables (and
``dataset.toml`` when there is a custom factor) into ``out_dir`` and the truth to
``<out_dir>.truth.json`` beside it, never inside. Same arguments, byte-identical files.

The model (every number in :mod:`pipeline.synth.truth`):

- Episodes on each logged day ~ Poisson(rate); ``log rate = intercept + log(age multiplier) +
  log(frailty) + sum_k log(IRR_k) * x_k / unit_k`` in the documented units of the models (exercise
  per 30 min, heat per 5 °C, caffeine per 100 mg, recent_injury = an injury on d-30..d-1). Frailty
  is Gamma(2, 1/2), independent of every exposure. The intercept is calibrated to 0.19 episodes per
  logged subject-day. Some factors are planted nulls (poor_posture, caffeine_mg, alcohol_units).
- The rate uses each day's full values as a diary would log them; a few per cent of values are then
  blanked at random (MCAR: whole diary sections and single values), so complete cases stay unbiased.
- ``confounded=True``: log frailty also rises with each subject's habitual stress and sitting
  (by ``truth.CONFOUNDING``), a between-subject association with no within-subject counterpart. The
  daily exposures are identical to the unconfounded dataset of the same seed; within-subject
  (conditional Poisson) estimates stay right, pooled ones are biased upward for stress and sitting.
"""

from pipeline.synth.simulate import DEFAULT_START, SynthDataset, generate
from pipeline.synth.write import FORMATS, truth_path, write_dataset

__all__ = ["DEFAULT_START", "FORMATS", "SynthDataset", "generate", "truth_path", "write_dataset"]
