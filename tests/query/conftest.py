"""Fixtures of the query tests: one seeded traffic set written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.query.traffic import Traffic, default_traffic, write_duckdb


@pytest.fixture(scope="session")
def traffic() -> Traffic:
    """The default scenario: one injected change of each cause and 50 no-change streams."""
    return default_traffic(seed=7)


@pytest.fixture(scope="session")
def traffic_db(traffic: Traffic, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``traffic`` stored in a DuckDB file with the collector's schema (no collector running)."""
    return write_duckdb(tmp_path_factory.mktemp("query-db") / "traces.duckdb", traffic)
