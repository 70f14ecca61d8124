"""Cramp toolkit: validated ingest, factor features and models, red-flag rules and reports for
anonymised muscle-cramp diaries."""

__version__ = "0.1.0"
