"""Support code of the test suite (oracles, helpers, worker scripts), importable as ``support`` because
pyproject's pytest settings put ``tests/`` on the import path."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
HERE = Path(__file__).resolve().parent  # tests/support: the worker scripts run from here
