"""Each benchmark script runs end to end in a tiny mode, so none of them rots.

The figures of such small runs mean nothing; what is checked is that each
script starts its stack, measures both sides, verifies what it measured (every
lead stored, every mail sent once), reports, and cleans up. The database is
PostgreSQL when TEST_DATABASE_URL is set, else a SQLite file.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from nurture.db import normalize_url

ROOT = Path(__file__).resolve().parents[1]
DATABASE = os.environ.get("TEST_DATABASE_URL") or "sqlite"
TIMEOUT_SECONDS = 240


def run_bench(script: str, *args: str, tmp_path: Path) -> tuple[dict[str, Any], str]:
    """Run `python -m bench.SCRIPT ARGS`; return its JSON figures and its output."""
    figures = tmp_path / f"{script}.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            f"bench.{script}",
            "--database",
            DATABASE,
            "--json",
            str(figures),
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(figures.read_text()), result.stdout


def bench_databases() -> set[str]:
    if DATABASE == "sqlite":
        return set()
    engine = sa.create_engine(normalize_url(DATABASE))
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT datname FROM pg_database "
                    "WHERE datname LIKE 'nurture_bench_%'"
                )
            )
            return set(rows.scalars())
    finally:
        engine.dispose()


@pytest.fixture(autouse=True)
def no_database_left_behind() -> Any:
    before = bench_databases()
    yield
    assert bench_databases() - before == set()


def test_ingest_reports_both_rates(tmp_path: Path) -> None:
    figures, output = run_bench(
        "ingest",
        "--count",
        "20",
        "--concurrency",
        "5",
        "--rounds",
        "2",
        tmp_path=tmp_path,
    )

    assert figures["stored_leads"] == figures["lead_workflows"]
    assert figures["stored_leads"] == 20 + 2  # measured and warm-up leads
    assert figures["product_per_second"] > 0
    assert figures["baseline_per_second"] > 0
    assert figures["ratio"] == pytest.approx(
        figures["product_per_second"] / figures["baseline_per_second"]
    )
    assert "machine:" in output
    assert "product / baseline:" in output


def test_enrollments_wait_on_timers(tmp_path: Path) -> None:
    figures, output = run_bench(
        "enrollments",
        "--count",
        "20",
        "--baseline-count",
        "20",
        "--settle",
        "0.5",
        tmp_path=tmp_path,
    )

    assert figures["count"] == 20
    assert figures["waiting_seconds"] >= figures["started_seconds"] > 0
    assert figures["rss_idle_kib"] > 0
    assert figures["rss_peak_kib"] >= figures["rss_after_kib"]
    assert "checked: 20 running at step 1" in output


def test_sending_has_no_duplicates(tmp_path: Path) -> None:
    figures, output = run_bench(
        "sending", "--count", "20", "--baseline-count", "20", tmp_path=tmp_path
    )

    assert figures["mails"] == 20
    assert figures["duplicates"] == 0
    assert figures["per_second"] > 0
    assert figures["baseline_per_second"] > 0
    assert "20 messages marked sent" in output


def test_webhook_latency_times_each_open(tmp_path: Path) -> None:
    figures, _output = run_bench(
        "webhook_latency", "--samples", "3", "--warmup", "1", tmp_path=tmp_path
    )

    assert figures["product"]["samples"] == 3
    assert figures["baseline"]["samples"] == 3
    assert figures["product"]["p99_ms"] >= figures["product"]["median_ms"] > 0
    assert figures["baseline"]["median_ms"] > 0


def test_webhook_batch_times_both_sides(tmp_path: Path) -> None:
    figures, output = run_bench(
        "webhook_batch", "--events", "4", "--rounds", "1", tmp_path=tmp_path
    )

    assert figures["events"] == 4
    assert len(figures["baseline_seconds"]) == 1
    assert len(figures["product_seconds"]) == 1
    assert figures["ratio"] > 0
    assert "WEBHOOK_SIGNAL_CONCURRENCY=1" in output


def test_api_latency_covers_each_route(tmp_path: Path) -> None:
    figures, _output = run_bench(
        "api_latency",
        "--leads",
        "5",
        "--requests",
        "20",
        "--concurrency",
        "4",
        "--rounds",
        "1",
        tmp_path=tmp_path,
    )

    routes = figures["routes"]
    assert set(routes) == {
        "/healthz (baseline)",
        "GET /leads/{id}",
        "GET /leads/{id}/journey",
    }
    for summary in routes.values():
        assert summary["samples"] == 20
        assert summary["p99_ms"] >= summary["median_ms"] > 0
