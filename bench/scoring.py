"""Scoring speed: batch rescoring through the product's code path, against the
raw `predict_proba` rate of the same model on the same leads.

    python -m bench.scoring --database postgresql://postgres@127.0.0.1:5432/postgres

It creates a scratch database `nurture_bench_scoring` on that server (dropped
at the end), fills it with leads copied from the real lead data set, trains
and promotes a model on them, then measures in one run:

- raw model: `predict_proba` on the leads' feature rows, prepared beforehand;
- product: `rescore_many` in batches, the function that the rescoring
  workflow and the CSV import call. It reads each batch's leads, events and
  message responses, and applies the criteria and the model. It then writes
  every score, stage and reason back, one transaction per batch;
- `POST /api/v1/scoring/calculate` over HTTP to a uvicorn server on
  127.0.0.1, one request at a time: median and 99th percentile.
"""

import argparse
import csv
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlmodel import Session, col, select

from bench.lead_data import LEADS_CSV, LEAKING_COLUMNS
from nurture.db import create_db_engine, migrate, normalize_url
from nurture.lead_scoring import (
    feature_row,
    load_activity,
    load_context,
    rescore_many,
    summarize,
)
from nurture.learning import TrainingOptions, train
from nurture.models import EngagementEvent, Lead, ScoringModel, utcnow

# Columns not copied into custom fields: the leaking ones, the id, the label.
LEFT_OUT = {*LEAKING_COLUMNS, "Prospect ID", "Converted"}
MAPPED = {
    "Lead Source": "source_channel",
    "Country": "company_country",
}
ACTIVITY = {
    "TotalVisits": "websiteVisits",
    "Total Time Spent on Website": "timeOnSiteSeconds",
    "Page Views Per Visit": "pagesPerVisit",
}
EVENT_TYPES = ("page_view", "open", "click", "content_download")
DATABASE = "nurture_bench_scoring"
THRESHOLD = 70
API_KEY = "bench-" + "k" * 24


def machine() -> str:
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def lead_rows() -> list[dict[str, str]]:
    with LEADS_CSV.open(newline="") as stream:
        return list(csv.DictReader(stream))


def seed(engine: sa.Engine, count: int, events_per_lead: int) -> None:
    """Insert `count` leads copied round-robin from the data set, with events."""
    source = lead_rows()
    now = utcnow()
    leads: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for index in range(count):
        row = source[index % len(source)]
        lead_id = str(uuid.UUID(int=index + 1))
        custom = {
            key: (None if value in ("", "Select") else value)
            for key, value in row.items()
            if key not in LEFT_OUT and key not in MAPPED and key not in ACTIVITY
        }
        activity: dict[str, Any] = {
            name: float(row[column])
            for column, name in ACTIVITY.items()
            if row[column] not in ("", "Select")
        }
        activity["asOf"] = now.isoformat()
        leads.append(
            {
                "id": lead_id,
                "created_at": now,
                "updated_at": now,
                "email_normalized": f"lead{index}@example.com",
                "email": f"lead{index}@example.com",
                "company_industry": ("Technology", "Retail", "Healthcare")[index % 3],
                "company_size": ("11-50", "51-200", "1001-5000")[index % 3],
                "source_channel": row["Lead Source"] or None,
                "company_country": row["Country"] or None,
                "custom_fields": custom,
                "enrichment": {"email_domain": "example.com"},
                "activity": activity,
                "company_technologies": [],
                "model_contributions": [],
                "score_reasons": [],
                "outcome": "converted" if row["Converted"] == "1" else "lost",
                "stage": "new",
                "status": "active",
                "score": 0,
            }
        )
        for number in range(events_per_lead):
            events.append(
                {
                    "id": str(uuid.uuid4()),
                    "lead_id": lead_id,
                    "type": EVENT_TYPES[number % len(EVENT_TYPES)],
                    "source": "bench",
                    "occurred_at": now - timedelta(days=number * 5),
                    "received_at": now,
                    "data": {},
                }
            )
    with engine.begin() as connection:
        for start in range(0, len(leads), 5000):
            connection.execute(sa.insert(Lead), leads[start : start + 5000])
        for start in range(0, len(events), 5000):
            connection.execute(sa.insert(EngagementEvent), events[start : start + 5000])


def train_and_promote(engine: sa.Engine) -> None:
    with Session(engine) as session:
        leads = session.exec(select(Lead).limit(9240).order_by(col(Lead.id))).all()
        activity = load_activity(session, [lead.id for lead in leads])
        now = utcnow()
        rows = [feature_row(x, summarize(x, activity[x.id], now)) for x in leads]
        labels = [1 if lead.outcome == "converted" else 0 for lead in leads]
    model = train(rows, labels, TrainingOptions())
    with Session(engine) as session:
        session.add(
            ScoringModel(
                status="ready",
                stage="done",
                progress=1,
                created_by="bench",
                artifact=model.to_bytes(),
                metrics=model.metrics.model_dump(mode="json", by_alias=True),
                promoted=True,
                promoted_at=utcnow(),
            )
        )
        session.commit()


def all_ids(engine: sa.Engine) -> list[str]:
    with Session(engine) as session:
        return list(session.exec(select(Lead.id).order_by(col(Lead.id))).all())


def raw_rate(engine: sa.Engine, ids: list[str], batch: int) -> float:
    """Return predict_proba rows per second, with the features built beforehand."""
    with Session(engine) as session:
        context = load_context(session, THRESHOLD)
        assert context.model is not None
        now = utcnow()
        prepared = []
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            leads = session.exec(select(Lead).where(col(Lead.id).in_(chunk))).all()
            activity = load_activity(session, chunk)
            prepared.append(
                [feature_row(x, summarize(x, activity[x.id], now)) for x in leads]
            )
            session.expunge_all()
    began = time.perf_counter()
    for rows in prepared:
        context.model.predict_proba(rows)
    return len(ids) / (time.perf_counter() - began)


def _rescore_share(url: str, ids: list[str], batch: int) -> None:
    engine = create_db_engine(url)
    with Session(engine) as session:
        load_context(session, THRESHOLD)  # loads the model before timing starts
    for start in range(0, len(ids), batch):
        with Session(engine) as session:
            rescore_many(session, ids[start : start + batch], THRESHOLD)
            session.commit()
    engine.dispose()


def product_rate(url: str, ids: list[str], batch: int, processes: int) -> float:
    """Return leads rescored per second by `processes` processes in parallel."""
    shares = [ids[index::processes] for index in range(processes)]
    shares = [sorted(share) for share in shares]
    context = multiprocessing.get_context("spawn")
    began = time.perf_counter()
    workers = [
        context.Process(target=_rescore_share, args=(url, share, batch))
        for share in shares
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise SystemExit(f"a rescoring process failed with {worker.exitcode}")
    return len(ids) / (time.perf_counter() - began)


def api_latency(url: str, requests: int) -> tuple[float, float]:
    """Return the median and 99th percentile of /scoring/calculate, in ms."""
    port = 18765
    env = os.environ | {
        "DATABASE_URL": url,
        "NURTURE_API_KEY": API_KEY,
        "MQL_THRESHOLD": str(THRESHOLD),
        "LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    body = {
        "firmographic": {"industry": "Technology", "size": "50-100"},
        "behavioral": {"websiteVisits": 5, "timeOnSiteSeconds": 900},
        "engagement": {"lastActivity": utcnow().isoformat()},
        "features": {"Lead Origin": "Landing Page Submission"},
    }
    timings = []
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.get("/healthz")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            for number in range(requests + 50):
                began = time.perf_counter()
                response = client.post("/api/v1/scoring/calculate", json=body)
                elapsed = time.perf_counter() - began
                response.raise_for_status()
                assert response.json()["method"] == "rules+model"
                if number >= 50:  # the first requests warm up caches
                    timings.append(elapsed * 1000)
    finally:
        server.terminate()
        server.wait(timeout=20)
    timings.sort()
    return statistics.median(timings), timings[int(len(timings) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="A PostgreSQL server URL; a scratch database is made on it.",
    )
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--events-per-lead", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    if not LEADS_CSV.is_file():
        raise SystemExit(f"{LEADS_CSV} is missing: the benchmark copies its leads")

    server = sa.make_url(normalize_url(args.database))
    url = server.set(database=DATABASE).render_as_string(hide_password=False)
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {DATABASE}"))
        connection.execute(sa.text(f"CREATE DATABASE {DATABASE}"))
    try:
        migrate(url)
        engine = create_db_engine(url)
        began = time.perf_counter()
        seed(engine, args.leads, args.events_per_lead)
        print(
            f"seeded {args.leads:,} leads in {time.perf_counter() - began:.1f} s",
            flush=True,
        )
        train_and_promote(engine)
        ids = all_ids(engine)
        raw = raw_rate(engine, ids, args.batch)
        print(f"raw model: {raw * 60:,.0f} scores/minute", flush=True)
        engine.dispose()
        product = product_rate(url, ids, args.batch, args.processes)
        print(f"product: {product * 60:,.0f} scores/minute", flush=True)
        median, p99 = api_latency(url, args.requests)
        engine.dispose()
    finally:
        with admin.connect() as connection:
            connection.execute(
                sa.text(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            )
        admin.dispose()
    print(f"machine: {machine()}")
    print(
        f"leads: {args.leads:,}, {args.events_per_lead} events each, "
        f"batches of {args.batch:,}, {args.processes} processes"
    )
    print(f"raw predict_proba, 1 process:   {raw * 60:>12,.0f} scores/minute")
    print(f"product rescore_many, with DB:  {product * 60:>12,.0f} scores/minute")
    print(f"product / raw:                  {product / raw:>12.2f}")
    print(f"/scoring/calculate over HTTP:   median {median:.1f} ms, p99 {p99:.1f} ms")


if __name__ == "__main__":
    main()
