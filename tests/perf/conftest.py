"""The benchmark's modules for the bench/ tests, imported from bench/ the way
bench/run.py imports them (as top-level modules: run, report, scratchfs)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench_module(monkeypatch, name: str):
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module(name)


@pytest.fixture
def run(monkeypatch):
    return _bench_module(monkeypatch, "run")


@pytest.fixture
def report(monkeypatch):
    return _bench_module(monkeypatch, "report")


@pytest.fixture
def scratchfs(monkeypatch):
    return _bench_module(monkeypatch, "scratchfs")
