"""Analytics query times on 1,000,000 messages, beside a plain count of them.

    python -m bench.analytics --database postgresql://postgres@127.0.0.1:5432/postgres

It creates a scratch database `nurture_bench_analytics` on that server
(dropped at the end unless --keep), migrates it, and fills it with COPY.
The data: 20 campaigns with a split each, and leads captured over one year
from 10 source channels. Each enrollment has three messages, a split
assignment, and engagement events for its opens, clicks, replies and
unsubscribes. Outcomes, spend and two promoted models complete it.
`--database sqlite:///PATH` fills a SQLite file with batched INSERTs instead.

Then it runs each report's queries as the API runs them (the functions of
`nurture.analytics`, on one connection), over all time and over the last 30
days, `--repeat` times after one warm-up run, and prints the median and the
slowest beside the baseline `SELECT count(*) FROM messages` measured in the
same run.
"""

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bench.machine import CpuMeter, describe_machine
from nurture.analytics.acquisition import acquisition, attribution
from nurture.analytics.funnel import funnel
from nurture.analytics.scoring import scoring_quality
from nurture.analytics.splits import decide_winners, split_results
from nurture.analytics.sql import TimeRange
from nurture.db import create_db_engine, migrate, normalize_url

DATABASE = "nurture_bench_analytics"
CAMPAIGNS = 20
CHANNELS = [f"channel-{n}" for n in range(10)]
UTM_CAMPAIGNS = [f"utm-{n}" for n in range(50)]
MESSAGES_PER_ENROLLMENT = 3
ENROLLMENTS_PER_LEAD = 1.5
END = datetime(2026, 7, 1, tzinfo=UTC)
DAYS = 365
# Message statuses and the share of messages in each, chosen by hand.
STATUSES = [
    ("queued", 0.05),
    ("failed", 0.02),
    ("sent", 0.08),
    ("delivered", 0.42),
    ("opened", 0.28),
    ("clicked", 0.12),
    ("bounced", 0.03),
]
SEQUENCE = [
    {"id": "hello", "channel": "email", "template": "welcome_email"},
    {
        "id": "ab",
        "type": "split",
        "variants": [
            {"name": "A", "weight": 1, "next": "mail-a"},
            {"name": "B", "weight": 1, "next": "mail-b"},
        ],
        # More leads than the bench makes: the winner check reads every
        # split's counts and never decides, so each run measures the same.
        "winner": {"minLeadsPerVariant": 1000000, "significance": 0.01},
    },
    {
        "id": "mail-a",
        "channel": "email",
        "template": "value_proposition",
        "next": "pause",
    },
    {"id": "mail-b", "channel": "email", "template": "welcome_email"},
    {"id": "pause", "type": "wait", "duration": "3 days"},
    {"id": "follow-up", "channel": "email", "template": "value_proposition"},
]
FOLLOW_UP_STEP = 6
# A short plain-text email, so the table is about as wide as a real outbox.
# Real rows also carry HTML, which PostgreSQL moves out of line when long.
BODY = ("Hi Ada, teams like yours cut their invoice backlog in half. " * 7).strip()


def _pick(rng: random.Random, weighted: list[tuple[str, float]]) -> str:
    point = rng.random()
    for value, share in weighted:
        point -= share
        if point < 0:
            return value
    return weighted[-1][0]


class Rows:
    """Generator of the tables' rows from one seed, so every run fills the same data."""

    def __init__(self, messages: int, seed: int = 7) -> None:
        self.messages = messages
        self.enrollments = max(1, -(-messages // MESSAGES_PER_ENROLLMENT))
        self.leads = max(1, int(self.enrollments / ENROLLMENTS_PER_LEAD))
        self.seed = seed
        self.rng = random.Random(seed)
        self.lead_created: list[datetime] = []
        self.converted_at: dict[int, datetime] = {}

    def campaigns(self) -> Iterator[tuple[Any, ...]]:
        for n in range(CAMPAIGNS):
            yield (f"campaign-{n}", f"Campaign {n}", "active", 1, END, END)

    def versions(self) -> Iterator[tuple[Any, ...]]:
        for n in range(CAMPAIGNS):
            definition = {
                "name": f"Campaign {n}",
                "trigger": {"type": "lead_created"},
                "goals": [{"event": "converted"}],
                "sequence": SEQUENCE,
            }
            yield (f"campaign-{n}", 1, json.dumps(definition), END)

    def lead_rows(self) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        for n in range(self.leads):
            created = END - timedelta(seconds=rng.uniform(0, DAYS * 86_400))
            self.lead_created.append(created)
            score = min(100, max(0, int(rng.gauss(50, 20))))
            converts = rng.random() < 0.02 + score / 1000
            stage = "new"
            if converts:
                stage = "customer"
            elif score >= 70:
                stage = "mql"
            mql_at = (
                created + timedelta(hours=rng.expovariate(1 / 72))
                if stage != "new"
                else None
            )
            outcome = None
            if converts:
                outcome = "converted"
                self.converted_at[n] = created + timedelta(days=rng.expovariate(1 / 20))
            elif rng.random() < 0.1:
                outcome = "lost"
            yield (
                f"lead-{n}",
                created,
                created,
                f"lead{n}@example.com",
                rng.choice(CHANNELS),
                rng.choice(UTM_CAMPAIGNS),
                "{}",
                "{}",
                score,
                "[]",
                stage,
                mql_at,
                "active",
                outcome,
                round(min(1.0, score / 100 + rng.uniform(-0.2, 0.2)), 4)
                if outcome
                else None,
                rng.choice((1, 2)) if outcome else None,
            )

    def outcome_rows(self) -> Iterator[tuple[Any, ...]]:
        for n, converted in self.converted_at.items():
            yield (f"lead-{n}", "converted", converted, converted, "bench", "bench")

    def enrollment_rows(self) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        for n in range(self.enrollments):
            lead = n % self.leads
            enrolled = self.lead_created[lead] + timedelta(hours=rng.uniform(0, 48))
            converted = self.converted_at.get(lead)
            status = "converted" if converted and converted > enrolled else "completed"
            yield (
                f"enrollment-{n}",
                f"campaign-{n % CAMPAIGNS}",
                1,
                f"lead-{lead}",
                f"nurture-campaign-{n % CAMPAIGNS}-lead-{lead}",
                status,
                enrolled,
                "bought" if status == "converted" else None,
            )

    def _plan(
        self, n: int
    ) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Return enrollment n's split assignment, messages and events.

        Each enrollment has a generator of its own, so the three tables can
        be generated in separate passes without holding them in memory.
        """
        rng = random.Random(self.seed * 10_000_000 + n)
        lead = n % self.leads
        campaign = f"campaign-{n % CAMPAIGNS}"
        start = self.lead_created[lead] + timedelta(hours=1)
        variant = "A" if rng.random() < 0.5 else "B"
        assignment = (f"enrollment-{n}", campaign, 1, "ab", variant, False, start)
        steps = [(1, None), (3 if variant == "A" else 4, variant)]
        steps.append((FOLLOW_UP_STEP, variant))
        # The last enrollment has fewer messages when the count needs it.
        steps = steps[: self.messages - MESSAGES_PER_ENROLLMENT * n]
        messages: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        for index, (step, message_variant) in enumerate(steps):
            message_id = f"m-{n}-{index}"
            status = _pick(rng, STATUSES)
            scheduled = start + timedelta(days=3 * index)
            sent = scheduled if status not in ("queued", "failed") else None
            rank = {"delivered": 1, "opened": 2, "clicked": 3}.get(status, 0)
            opened = sent + timedelta(hours=2) if sent and rank >= 2 else None
            clicked = sent + timedelta(hours=3) if sent and rank >= 3 else None
            messages.append(
                (
                    message_id,
                    f"lead-{lead}",
                    f"enrollment-{n}",
                    campaign,
                    1,
                    step,
                    "email",
                    "welcome_email",
                    f"lead{lead}@example.com",
                    BODY,
                    status,
                    message_variant,
                    "sendgrid",
                    1,
                    scheduled,
                    scheduled,
                    scheduled,
                    sent,
                    sent if rank >= 1 else None,
                    opened,
                    clicked,
                )
            )
            for kind, at in (("open", opened), ("click", clicked)):
                if at is not None:
                    events.append(self._event(lead, message_id, kind, at))
            if sent and rng.random() < 0.01:
                events.append(self._event(lead, message_id, "replied", sent))
            if sent and rng.random() < 0.005:
                events.append(self._event(lead, message_id, "unsubscribe", sent))
        return assignment, messages, events

    def message_rows(self) -> Iterator[tuple[Any, ...]]:
        for n in range(self.enrollments):
            yield from self._plan(n)[1]

    def event_rows(self) -> Iterator[tuple[Any, ...]]:
        for n in range(self.enrollments):
            yield from self._plan(n)[2]

    def assignment_rows(self) -> Iterator[tuple[Any, ...]]:
        for n in range(self.enrollments):
            yield self._plan(n)[0]

    def _event(
        self, lead: int, message_id: str, kind: str, at: datetime
    ) -> tuple[Any, ...]:
        return (
            f"ev-{message_id}-{kind}",
            f"lead-{lead}",
            message_id,
            kind,
            "sendgrid",
            at,
            at,
            "{}",
        )

    def spend_rows(self) -> Iterator[tuple[Any, ...]]:
        for channel in CHANNELS:
            for month in range(12):
                first = date(2025, 7, 1) + timedelta(days=30 * month)
                yield (
                    channel,
                    "",
                    first,
                    first + timedelta(days=29),
                    1000,
                    "EUR",
                    END,
                    "bench",
                )


COLUMNS = {
    "campaigns": "id, name, status, current_version, created_at, updated_at",
    "campaign_versions": "campaign_id, version, definition, created_at",
    "leads": (
        "id, created_at, updated_at, email_normalized, source_channel, "
        "source_campaign, custom_fields, enrichment, score, score_reasons, stage, "
        "mql_at, status, outcome, conversion_probability, model_version"
    ),
    "lead_outcomes": "lead_id, outcome, occurred_at, recorded_at, source, recorded_by",
    "enrollments": (
        "id, campaign_id, campaign_version, lead_id, workflow_id, status, "
        "enrolled_at, goal"
    ),
    "messages": (
        "id, lead_id, enrollment_id, campaign_id, campaign_version, step, channel, "
        "template, to_address, body, status, variant, provider, attempts, "
        "created_at, updated_at, scheduled_at, sent_at, delivered_at, opened_at, "
        "clicked_at"
    ),
    "engagement_events": (
        "id, lead_id, message_id, type, source, occurred_at, received_at, data"
    ),
    "split_assignments": (
        "enrollment_id, campaign_id, campaign_version, step_id, variant, "
        "by_winner, assigned_at"
    ),
    "channel_spend": (
        "channel, utm_campaign, period_start, period_end, amount, currency, "
        "updated_at, updated_by"
    ),
}


def load(engine: sa.Engine, table: str, rows: Any) -> int:
    """Insert rows into a table: COPY on PostgreSQL, batched INSERTs on SQLite."""
    columns = [name.strip() for name in COLUMNS[table].split(",")]
    count = 0
    if engine.dialect.name == "postgresql":
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                for row in rows:
                    copy.write_row(row)
                    count += 1
            connection.commit()
        finally:
            connection.close()
        return count
    placeholders = ", ".join("?" for _ in columns)
    statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"
    batch: list[tuple[Any, ...]] = []
    with engine.begin() as connection:
        raw = connection.connection.driver_connection
        assert raw is not None
        for row in rows:
            batch.append(tuple(_sqlite_value(value) for value in row))
            if len(batch) == 10_000:
                raw.executemany(statement, batch)
                count += len(batch)
                batch.clear()
        raw.executemany(statement, batch)
        count += len(batch)
    return count


def _sqlite_value(value: Any) -> Any:
    # SQLAlchemy's SQLite storage format for datetimes, in UTC.
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, date):
        return value.isoformat()
    return value


def fill(engine: sa.Engine, messages: int) -> dict[str, int]:
    rows = Rows(messages)

    counts = {
        "campaigns": load(engine, "campaigns", rows.campaigns()),
        "campaign_versions": load(engine, "campaign_versions", rows.versions()),
        "leads": load(engine, "leads", rows.lead_rows()),
        "lead_outcomes": load(engine, "lead_outcomes", rows.outcome_rows()),
        "enrollments": load(engine, "enrollments", rows.enrollment_rows()),
    }
    counts["messages"] = load(engine, "messages", rows.message_rows())
    counts["engagement_events"] = load(engine, "engagement_events", rows.event_rows())
    counts["split_assignments"] = load(
        engine, "split_assignments", rows.assignment_rows()
    )
    counts["channel_spend"] = load(engine, "channel_spend", rows.spend_rows())

    with engine.begin() as connection:
        for version, promoted in ((1, False), (2, True)):
            connection.execute(
                sa.text(
                    "INSERT INTO scoring_models (version, status, stage, progress, "
                    "options, metrics, features, dropped_features, created_at, "
                    "created_by, promoted, promoted_at) VALUES (:v, 'ready', 'done', "
                    "1, '{}', :m, '[]', '{}', :t, 'bench', :p, :t)"
                ),
                {
                    "v": version,
                    "m": json.dumps({"rocAuc": 0.8 + version / 100}),
                    "t": _sqlite_value(END - timedelta(days=40 - version))
                    if engine.dialect.name == "sqlite"
                    else END - timedelta(days=40 - version),
                    "p": promoted,
                },
            )
    # What autovacuum does on a live database: statistics for the planner,
    # and the visibility map that lets index-only scans skip the table.
    maintenance = "VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text(maintenance))
    return counts


def time_query(
    engine: sa.Engine, run: Callable[[sa.Connection], Any], repeat: int
) -> list[float]:
    """Run once to warm the caches, then `repeat` times; return the seconds."""
    seconds = []
    with engine.connect() as connection:
        run(connection)
        for _ in range(repeat):
            began = time.perf_counter()
            run(connection)
            seconds.append(time.perf_counter() - began)
    return seconds


def count_messages(connection: sa.Connection) -> int:
    return int(
        connection.execute(sa.text("SELECT count(*) FROM messages")).scalar_one()
    )


def measurements() -> list[tuple[str, Callable[[sa.Connection, TimeRange], Any]]]:
    return [
        ("funnel", funnel),
        ("ab", split_results),
        ("acquisition", acquisition),
        ("attribution", attribution),
        ("scoring", scoring_quality),
    ]


def winner_check(connection: sa.Connection) -> Any:
    """Run the scheduled winner check and roll it back, so every run checks again."""
    transaction = connection.begin()
    try:
        return decide_winners(connection, END)
    finally:
        transaction.rollback()


def run(url: str, messages: int, repeat: int, keep: bool) -> None:
    url = normalize_url(url)
    admin = None
    if url.startswith("postgresql"):
        server = sa.make_url(url)
        admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{DATABASE}"'))
            connection.execute(sa.text(f'CREATE DATABASE "{DATABASE}"'))
        url = server.set(database=DATABASE).render_as_string(hide_password=False)
    engine = create_db_engine(url)
    try:
        migrate(url)
        began = time.perf_counter()
        counts = fill(engine, messages)
        filled = time.perf_counter() - began
        with engine.connect() as connection:
            server_version = connection.execute(
                sa.text("SELECT version()" if admin else "SELECT sqlite_version()")
            ).scalar_one()
        print(describe_machine(str(server_version).split(" on ")[0]))
        print(
            "filled in "
            f"{filled:.0f} s: "
            + ", ".join(f"{name} {count:,}" for name, count in counts.items())
        )
        last_month = TimeRange(END - timedelta(days=30), END)
        meter = CpuMeter().start()
        baseline = time_query(engine, count_messages, repeat)
        results = [("SELECT count(*) FROM messages", "", baseline)]
        for name, report in measurements():
            for label, period in (
                ("all time", TimeRange()),
                ("last 30 days", last_month),
            ):
                seconds = time_query(
                    engine,
                    lambda c, report=report, period=period: report(c, period),
                    repeat,
                )
                results.append((name, label, seconds))
        results.append(("winner check", "", time_query(engine, winner_check, repeat)))
        share = meter.stop()
        base = statistics.median(baseline)
        print(
            f"median and slowest of {repeat} runs after one warm-up; {share.describe()}"
        )
        print(
            f"{'query':32} {'range':13} {'median':>10} {'slowest':>10} {'x count':>8}"
        )
        for name, label, seconds in results:
            middle = statistics.median(seconds)
            print(
                f"{name:32} {label:13} {middle * 1000:8.1f} ms "
                f"{max(seconds) * 1000:7.1f} ms {middle / base:8.1f}"
            )
    finally:
        engine.dispose()
        if admin is not None:
            if not keep:
                with admin.connect() as connection:
                    connection.execute(
                        sa.text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
                    )
            admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--database",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="A PostgreSQL server URL (a scratch database is made there) or "
        "sqlite:///PATH.",
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="Timed runs per query.")
    parser.add_argument(
        "--keep", action="store_true", help="Keep the scratch database afterwards."
    )
    args = parser.parse_args()
    run(args.database, args.messages, args.repeat, args.keep)


if __name__ == "__main__":
    main()
