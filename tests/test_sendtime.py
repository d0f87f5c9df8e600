"""Send windows, quiet hours and time zones, checked against exact UTC instants.

DST dates used below (tzdb 2025b and 2026f):
- America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT (07:00 UTC),
  2026-11-01 02:00 EDT -> 01:00 EST (06:00 UTC). EST is -5, EDT -4.
- Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST (01:00 UTC),
  2026-10-25 03:00 CEST -> 02:00 CET (01:00 UTC). CET is +1, CEST +2.
- Australia/Sydney: 2026-04-05 03:00 AEDT -> 02:00 AEST (04-04 16:00 UTC),
  2026-10-04 02:00 AEST -> 03:00 AEDT (10-03 16:00 UTC). AEST is +10, AEDT +11.
- Asia/Kolkata: +05:30 all year.
"""

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from nurture.sendtime import (
    _SINGLE_ZONE_COUNTRIES,
    WEEKDAYS,
    QuietHours,
    SendWindow,
    at_hour,
    best_send_hour,
    next_local_time,
    next_send_time,
    resolve_timezone,
    validate_timezone,
)

NY = "America/New_York"
BERLIN = "Europe/Berlin"
SYDNEY = "Australia/Sydney"
KOLKATA = "Asia/Kolkata"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def window(start: str, end: str, days: list[str] | None = None) -> SendWindow:
    fields: dict[str, object] = {"start": start, "end": end}
    if days is not None:
        fields["days"] = days
    return SendWindow.model_validate(fields)


def quiet(start: str, end: str) -> QuietHours:
    return QuietHours.model_validate({"start": start, "end": end})


OFFICE = window("09:00", "17:00")
OFFICE_WEEKDAYS = window("09:00", "17:00", ["mon", "tue", "wed", "thu", "fri"])
NIGHT = quiet("21:00", "08:00")
EARLY_MORNING = window("02:30", "06:00")
FALL_BACK_HOURS = window("01:30", "05:00")
FRIDAY_NIGHT = window("22:00", "06:00", ["fri"])


# --- next_send_time ---------------------------------------------------------

NEXT_SEND_CASES = [
    # id, zone, earliest, window, quiet, expected
    ("no rules", NY, utc(2026, 1, 13, 3), None, None, utc(2026, 1, 13, 3)),
    # Fri 18:00 EST -> Mon 09:00 EST
    ("fri evening to mon", NY, utc(2026, 1, 16, 23), OFFICE_WEEKDAYS, None,
     utc(2026, 1, 19, 14)),
    # Fri 18:00 EST -> Mon 09:00 EDT: the weekend contains the spring-forward day
    ("fri evening to mon across dst", NY, utc(2026, 3, 6, 23), OFFICE_WEEKDAYS,
     None, utc(2026, 3, 9, 13)),
    # Tue 10:00 EST is inside the window
    ("inside window", NY, utc(2026, 1, 13, 15), OFFICE_WEEKDAYS, None,
     utc(2026, 1, 13, 15)),
    # Tue 17:00 EST: the window closes at 17:00, so Wed 09:00 EST
    ("at window close", NY, utc(2026, 1, 13, 22), OFFICE_WEEKDAYS, None,
     utc(2026, 1, 14, 14)),
    # Mon 17:01 EST with a Monday-only window: a week later
    ("one weekday a week ahead", NY, utc(2026, 1, 12, 22, 1),
     window("09:00", "17:00", ["mon"]), None, utc(2026, 1, 19, 14)),
    # Thu 23:00 EST in quiet hours -> Fri 08:00 EST
    ("quiet at 23:00", NY, utc(2026, 1, 16, 4), None, NIGHT, utc(2026, 1, 16, 13)),
    ("quiet at 07:59", NY, utc(2026, 1, 16, 12, 59), None, NIGHT,
     utc(2026, 1, 16, 13)),
    ("quiet ended at 08:00", NY, utc(2026, 1, 16, 13), None, NIGHT,
     utc(2026, 1, 16, 13)),
    # Sat 20:00 EST before spring forward -> Sun 09:00 EDT = 13:00 UTC, not 14:00
    ("09:00 on spring-forward day", NY, utc(2026, 3, 8, 1), OFFICE, None,
     utc(2026, 3, 8, 13)),
    # Sat 23:00 EST -> Sun 08:00 EDT
    ("quiet across spring forward", NY, utc(2026, 3, 8, 4), None, NIGHT,
     utc(2026, 3, 8, 12)),
    # Sat 23:00 EDT -> Sun 08:00 EST
    ("quiet across fall back", NY, utc(2026, 11, 1, 3), None, NIGHT,
     utc(2026, 11, 1, 13)),
    # 02:30 does not exist on 2026-03-08: the window opens at 03:00 EDT
    ("window opens in skipped hour", NY, utc(2026, 3, 8, 5), EARLY_MORNING, None,
     utc(2026, 3, 8, 7)),
    # 01:30 happens twice on 2026-11-01: the window opens at the first, EDT
    ("window opens in repeated hour", NY, utc(2026, 11, 1, 4), FALL_BACK_HOURS,
     None, utc(2026, 11, 1, 5, 30)),
    # 01:15 EST, the second pass, is inside the window opened at 01:30 EDT
    ("second pass of repeated hour", NY, utc(2026, 11, 1, 6, 15), FALL_BACK_HOURS,
     None, utc(2026, 11, 1, 6, 15)),
    # Sat 20:00 CET -> Sun 09:00 CEST
    ("berlin spring forward", BERLIN, utc(2026, 3, 28, 19), OFFICE, None,
     utc(2026, 3, 29, 7)),
    # Sat 18:00 CEST -> Sun 09:00 CET
    ("berlin fall back", BERLIN, utc(2026, 10, 24, 16), OFFICE, None,
     utc(2026, 10, 25, 8)),
    ("berlin skipped 02:30", BERLIN, utc(2026, 3, 28, 23), EARLY_MORNING, None,
     utc(2026, 3, 29, 1)),
    ("berlin repeated 02:30", BERLIN, utc(2026, 10, 24, 22), EARLY_MORNING, None,
     utc(2026, 10, 25, 0, 30)),
    # Sat 20:00 AEDT -> Mon 09:00 AEST, DST having ended on Sunday
    ("sydney dst end weekend", SYDNEY, utc(2026, 4, 4, 9), OFFICE_WEEKDAYS, None,
     utc(2026, 4, 5, 23)),
    # Sun 00:00 AEST; 02:30 does not exist on 2026-10-04 -> 03:00 AEDT
    ("sydney skipped 02:30", SYDNEY, utc(2026, 10, 3, 14), EARLY_MORNING, None,
     utc(2026, 10, 3, 16)),
    # 22:00 AEST in quiet hours -> 08:00 AEST
    ("sydney quiet", SYDNEY, utc(2026, 7, 1, 12), None, NIGHT, utc(2026, 7, 1, 22)),
    # 05:30 IST -> 09:00 IST
    ("kolkata window", KOLKATA, utc(2026, 6, 1), OFFICE, None,
     utc(2026, 6, 1, 3, 30)),
    # 21:30 IST -> 08:00 IST
    ("kolkata quiet", KOLKATA, utc(2026, 6, 1, 16), None, NIGHT,
     utc(2026, 6, 2, 2, 30)),
    # Thu 23:00 EST: Thursday's night window is off -> Fri 22:00 EST
    ("overnight window thursday", NY, utc(2026, 1, 16, 4), FRIDAY_NIGHT, None,
     utc(2026, 1, 17, 3)),
    # Sat 03:00 EST is inside the window that opened on Friday
    ("overnight window saturday", NY, utc(2026, 1, 17, 8), FRIDAY_NIGHT, None,
     utc(2026, 1, 17, 8)),
    # Fri 03:00 EST would be Thursday's window -> Fri 22:00 EST
    ("overnight window friday morning", NY, utc(2026, 1, 16, 8), FRIDAY_NIGHT,
     None, utc(2026, 1, 17, 3)),
    # Sat 06:00 EST: closed -> next Fri 22:00 EST
    ("overnight window closed", NY, utc(2026, 1, 17, 11), FRIDAY_NIGHT, None,
     utc(2026, 1, 24, 3)),
    # 07:30 EST: window open, quiet until 08:00
    ("window and quiet morning", NY, utc(2026, 1, 13, 12, 30),
     window("07:00", "22:00"), NIGHT, utc(2026, 1, 13, 13)),
    # 21:30 EST: window open, quiet until 08:00 next day
    ("window and quiet evening", NY, utc(2026, 1, 14, 2, 30),
     window("07:00", "22:00"), NIGHT, utc(2026, 1, 14, 13)),
    # Fri 20:00 EST, quiet until Sat 08:00, window opens Mon 09:00
    ("quiet then weekend", NY, utc(2026, 1, 17, 1), OFFICE_WEEKDAYS, NIGHT,
     utc(2026, 1, 19, 14)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("zone", "earliest", "send_window", "quiet_hours", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in NEXT_SEND_CASES],
)
def test_next_send_time(
    zone: str,
    earliest: datetime,
    send_window: SendWindow | None,
    quiet_hours: QuietHours | None,
    expected: datetime,
) -> None:
    result = next_send_time(earliest, zone, send_window, quiet_hours)
    assert result == expected
    assert result.tzinfo is UTC


def test_next_send_time_local_aware_input() -> None:
    friday_evening = datetime(2026, 1, 16, 18, tzinfo=ZoneInfo(NY))
    result = next_send_time(friday_evening, NY, OFFICE_WEEKDAYS)
    assert result == utc(2026, 1, 19, 14)
    assert result.tzinfo is UTC


def test_next_send_time_rejects_naive_datetime() -> None:
    with pytest.raises(ValueError, match="earliest must be a timezone-aware"):
        next_send_time(datetime(2026, 1, 13, 15), NY, OFFICE)


def test_next_send_time_rejects_unknown_zone() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        next_send_time(utc(2026, 1, 13), "Mars/Olympus", OFFICE)


def test_next_send_time_window_inside_quiet_hours() -> None:
    late_window = window("22:00", "23:00")
    with pytest.raises(ValueError, match="no send time within 8 days"):
        next_send_time(utc(2026, 1, 13), NY, late_window, NIGHT)


def _wall_inside(local: datetime, start: time, end: time, days: set[int]) -> bool:
    """Return whether a local wall time is in a daily span, by wall-clock arithmetic."""
    for opening in (local.date() - timedelta(days=1), local.date()):
        if opening.weekday() not in days:
            continue
        close_day = opening + timedelta(days=1) if end < start else opening
        opens = datetime.combine(opening, start)
        if opens <= local < datetime.combine(close_day, end):
            return True
    return False


def _brute_force_send_time(
    earliest: datetime, zone: str, send_window: SendWindow, quiet_hours: QuietHours
) -> datetime:
    tz = ZoneInfo(zone)
    window_days = {WEEKDAYS.index(day) for day in send_window.days}
    every_day = set(range(7))
    instant = earliest
    while True:
        local = instant.astimezone(tz).replace(tzinfo=None)
        in_window = _wall_inside(local, send_window.start, send_window.end, window_days)
        in_quiet = _wall_inside(local, quiet_hours.start, quiet_hours.end, every_day)
        if in_window and not in_quiet:
            return instant
        instant += timedelta(minutes=15)


@pytest.mark.parametrize(
    ("zone", "send_window", "quiet_hours"),
    [
        (NY, OFFICE_WEEKDAYS, quiet("12:00", "13:00")),
        (NY, window("22:00", "06:00", ["fri", "sat"]), quiet("23:00", "01:00")),
        (KOLKATA, OFFICE_WEEKDAYS, NIGHT),
        (KOLKATA, window("18:00", "10:30", ["mon", "thu"]), NIGHT),
    ],
)
def test_next_send_time_matches_brute_force_without_dst(
    zone: str, send_window: SendWindow, quiet_hours: QuietHours
) -> None:
    # The instants run from 2026-01-05 to 2026-02-13, weeks before New York's DST
    # change on 2026-03-08. Kolkata has no DST.
    for step in range(200):
        earliest = utc(2026, 1, 5) + step * timedelta(hours=4, minutes=45)
        expected = _brute_force_send_time(earliest, zone, send_window, quiet_hours)
        assert next_send_time(earliest, zone, send_window, quiet_hours) == expected


# --- next_local_time ----------------------------------------------------------

NEXT_LOCAL_CASES = [
    # id, zone, after, at, days, expected
    # Sat 09:00 EDT -> Sun 09:00 EST, the fall-back day
    ("09:00 on fall-back day", NY, utc(2026, 10, 31, 13), time(9), None,
     utc(2026, 11, 1, 14)),
    # Sat 09:00 EST -> Sun 09:00 EDT, the spring-forward day
    ("09:00 on spring-forward day", NY, utc(2026, 3, 7, 14), time(9), None,
     utc(2026, 3, 8, 13)),
    # exactly 09:00 EST: strictly after, so the next day
    ("strictly after", NY, utc(2026, 1, 13, 14), time(9), None,
     utc(2026, 1, 14, 14)),
    # 01:30 happens twice on 2026-11-01: the first, EDT
    ("repeated 01:30 first occurrence", NY, utc(2026, 11, 1, 4), time(1, 30), None,
     utc(2026, 11, 1, 5, 30)),
    # after the first 01:30 the second one (06:30 UTC) does not count again
    ("repeated 01:30 counts once", NY, utc(2026, 11, 1, 5, 30), time(1, 30), None,
     utc(2026, 11, 2, 6, 30)),
    # 02:30 does not exist on 2026-03-08: 03:00 EDT
    ("skipped 02:30", NY, utc(2026, 3, 8, 5), time(2, 30), None,
     utc(2026, 3, 8, 7)),
    # Tue 10:00 EST -> Wed 09:00 EST
    ("mon and wed from tuesday", NY, utc(2026, 1, 13, 15), time(9), ["mon", "wed"],
     utc(2026, 1, 14, 14)),
    # Wed 10:00 EST -> Mon 09:00 EST
    ("mon and wed from wednesday", NY, utc(2026, 1, 14, 15), time(9),
     ["mon", "wed"], utc(2026, 1, 19, 14)),
    ("berlin 09:00 on fall-back day", BERLIN, utc(2026, 10, 24, 7), time(9), None,
     utc(2026, 10, 25, 8)),
    # Sat 23:00 AEDT -> Sun 09:00 AEST
    ("sydney dst end", SYDNEY, utc(2026, 4, 4, 12), time(9), None,
     utc(2026, 4, 4, 23)),
    ("kolkata", KOLKATA, utc(2026, 6, 1), time(9), None, utc(2026, 6, 1, 3, 30)),
    # Samoa skipped 2011-12-30: its 09:00 becomes 2011-12-31 00:00 +14
    ("apia skipped day", "Pacific/Apia", utc(2011, 12, 29, 20), time(9), None,
     utc(2011, 12, 30, 10)),
    ("apia after skipped day", "Pacific/Apia", utc(2011, 12, 30, 10), time(9), None,
     utc(2011, 12, 30, 19)),
    # Lord Howe moves 30 minutes: 02:00 +10:30 -> 02:30 +11
    ("lord howe half-hour gap", "Australia/Lord_Howe", utc(2026, 10, 3, 10),
     time(2, 15), None, utc(2026, 10, 3, 15, 30)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("zone", "after", "at", "days", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in NEXT_LOCAL_CASES],
)
def test_next_local_time(
    zone: str, after: datetime, at: time, days: list[str] | None, expected: datetime
) -> None:
    result = next_local_time(after, zone, at, days)
    assert result == expected
    assert result.tzinfo is UTC


def test_next_local_time_daily_stays_at_local_hour() -> None:
    instant = utc(2026, 10, 30, 13)
    seen = []
    for _ in range(4):
        instant = next_local_time(instant, NY, time(9))
        seen.append(instant)
    assert seen == [
        utc(2026, 10, 31, 13),
        utc(2026, 11, 1, 14),
        utc(2026, 11, 2, 14),
        utc(2026, 11, 3, 14),
    ]
    for instant in seen:
        assert instant.astimezone(ZoneInfo(NY)).time() == time(9)


@pytest.mark.parametrize(
    ("days", "message"),
    [
        ([], "days must name at least one weekday"),
        (["monday"], "unknown weekday 'monday'"),
        (["mon", "Tue"], "unknown weekday 'Tue'"),
    ],
)
def test_next_local_time_rejects_bad_days(days: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        next_local_time(utc(2026, 1, 13), NY, time(9), days)


def test_next_local_time_rejects_time_with_offset() -> None:
    with pytest.raises(ValueError, match="at must be a local time"):
        next_local_time(utc(2026, 1, 13), NY, time(9, tzinfo=UTC))


def test_next_local_time_rejects_naive_datetime() -> None:
    with pytest.raises(ValueError, match="after must be a timezone-aware"):
        next_local_time(datetime(2026, 1, 13), NY, time(9))


# --- resolve_timezone and validate_timezone -----------------------------------

RESOLVE_CASES = [
    # id, lead zone, phone, company country, expected (zone, source)
    ("lead zone wins", "Europe/Paris", "+12125550100", "DE",
     ("Europe/Paris", "lead")),
    ("lead zone stripped", " Europe/Paris ", None, None, ("Europe/Paris", "lead")),
    ("invalid lead zone", "Mars/Olympus", "+12125550100", "DE",
     (NY, "phone")),
    ("lead zone wrong case", "america/new_york", None, "DE", (BERLIN, "company")),
    ("machine zone rejected", "localtime", None, "DE", (BERLIN, "company")),
    ("placeholder zone rejected", "Factory", None, None, ("UTC", "default")),
    ("blank lead zone", "  ", None, None, ("UTC", "default")),
    ("us area code 212", None, "+12125550100", None, (NY, "phone")),
    ("us area code 415", None, "+14155550100", None,
     ("America/Los_Angeles", "phone")),
    ("canada area code 416", None, "+14165550100", None,
     ("America/Toronto", "phone")),
    ("uk number", None, "+442071838750", None, ("Europe/London", "phone")),
    ("german number", None, "+4930123456", None, (BERLIN, "phone")),
    # phonenumbers gives the legacy Asia/Calcutta; the country table Asia/Kolkata
    ("india number", None, "+919876543210", None, (KOLKATA, "phone")),
    # phonenumbers gives Europe/Paris, whose DST Algeria does not keep
    ("algeria number", None, "+21312345678", None, ("Africa/Algiers", "phone")),
    ("toll-free number", None, "+18005550100", "DE", (BERLIN, "company")),
    ("phone without country code", None, "2125550100", "DE", (BERLIN, "company")),
    ("not a phone", None, "call me", None, ("UTC", "default")),
    ("country code", None, None, "DE", (BERLIN, "company")),
    ("country code lower case", None, None, "de", (BERLIN, "company")),
    ("country name", None, None, "Germany", (BERLIN, "company")),
    ("country name padded", None, None, " germany ", (BERLIN, "company")),
    ("united kingdom", None, None, "United Kingdom", ("Europe/London", "company")),
    ("uk alias", None, None, "UK", ("Europe/London", "company")),
    ("u.k. alias", None, None, "U.K.", ("Europe/London", "company")),
    ("india", None, None, "India", (KOLKATA, "company")),
    ("accented name", None, None, "Côte d'Ivoire", ("Africa/Abidjan", "company")),
    ("unaccented name", None, None, "Cote d'Ivoire", ("Africa/Abidjan", "company")),
    ("leading article", None, None, "The Netherlands",
     ("Europe/Amsterdam", "company")),
    ("germany with a DST-identical second zone", None, None, "DE",
     (BERLIN, "company")),
    ("united states spans zones", None, None, "United States", ("UTC", "default")),
    ("usa spans zones", None, None, "USA", ("UTC", "default")),
    ("us code spans zones", None, None, "US", ("UTC", "default")),
    ("australia spans zones", None, None, "AU", ("UTC", "default")),
    ("spain spans zones", None, None, "Spain", ("UTC", "default")),
    ("unknown country", None, None, "Narnia", ("UTC", "default")),
    ("unassigned code", None, None, "ZZ", ("UTC", "default")),
    ("nothing known", None, None, None, ("UTC", "default")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("lead_timezone", "phone", "country", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in RESOLVE_CASES],
)
def test_resolve_timezone(
    lead_timezone: str | None,
    phone: str | None,
    country: str | None,
    expected: tuple[str, str],
) -> None:
    assert resolve_timezone(lead_timezone, phone, country, "UTC") == expected


def test_resolve_timezone_uses_given_default() -> None:
    result = resolve_timezone(None, None, None, "Europe/Lisbon")
    assert result == ("Europe/Lisbon", "default")


def test_resolve_timezone_rejects_invalid_default() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Nowhere'"):
        resolve_timezone(None, None, None, "Nowhere")


def test_single_zone_countries_load() -> None:
    # A zone this machine's database lacks would be skipped silently by
    # resolve_timezone; this catches it.
    for region, zone in _SINGLE_ZONE_COUNTRIES.items():
        assert resolve_timezone(None, None, region, "UTC") == (zone, "company")


def test_validate_timezone_returns_name() -> None:
    assert validate_timezone("Asia/Kolkata") == "Asia/Kolkata"
    assert validate_timezone("UTC") == "UTC"


@pytest.mark.parametrize(
    "name",
    ["Mars/Olympus", "America", "../etc/passwd", "/etc/localtime", "", "zone.tab"]
    + ["localtime", "posixrules", "Factory", "right/UTC", "Europe/Berlin/"],
)
def test_validate_timezone_rejects(name: str) -> None:
    expected = f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin"
    with pytest.raises(ValueError) as raised:
        validate_timezone(name)
    assert str(raised.value) == expected


# --- best_send_hour -----------------------------------------------------------

BEST_HOUR_CASES = [
    # id, zone, opens, min_opens, expected
    # 09:10, 09:50 and 15:00 EST
    ("most opens", NY,
     [utc(2026, 1, 13, 14, 10), utc(2026, 1, 14, 14, 50), utc(2026, 1, 15, 20)],
     3, 9),
    # two at 15:00 EST, two at 09:00 EST
    ("tie goes to earliest hour", NY,
     [utc(2026, 1, 13, 20), utc(2026, 1, 14, 20), utc(2026, 1, 15, 14),
      utc(2026, 1, 16, 14)],
     3, 9),
    # 09:30 EST, then 09:30 and 09:45 EDT: 14 and 13 UTC, all 09 local
    ("local hour across dst", NY,
     [utc(2026, 3, 6, 14, 30), utc(2026, 3, 9, 13, 30), utc(2026, 3, 10, 13, 45)],
     3, 9),
    # 03:45 UTC is 09:15 IST
    ("half-hour offset", KOLKATA,
     [utc(2026, 6, 1, 3, 45), utc(2026, 6, 2, 3, 45), utc(2026, 6, 3, 3, 45)],
     3, 9),
    ("below min opens", NY, [utc(2026, 1, 13, 14), utc(2026, 1, 14, 14)], 3, None),
    ("no opens", NY, [], 3, None),
    ("no opens min zero", NY, [], 0, None),
    ("min opens one", NY, [utc(2026, 1, 13, 23)], 1, 18),
]  # fmt: skip


@pytest.mark.parametrize(
    ("zone", "opens", "min_opens", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in BEST_HOUR_CASES],
)
def test_best_send_hour(
    zone: str, opens: list[datetime], min_opens: int, expected: int | None
) -> None:
    assert best_send_hour(opens, zone, min_opens) == expected


def test_best_send_hour_rejects_naive_datetime() -> None:
    opens = [utc(2026, 1, 13, 14), datetime(2026, 1, 14, 14), utc(2026, 1, 15, 14)]
    with pytest.raises(ValueError, match="open time must be a timezone-aware"):
        best_send_hour(opens, NY)


# --- at_hour ------------------------------------------------------------------

AT_HOUR_CASES = [
    # id, zone, earliest, hour, window, quiet, expected
    # Fri 18:00 EST -> Mon 10:00 EST
    ("weekday window", NY, utc(2026, 1, 16, 23), 10, OFFICE_WEEKDAYS, None,
     utc(2026, 1, 19, 15)),
    # Tue 08:00 EST -> Tue 10:00 EST
    ("later today", NY, utc(2026, 1, 13, 13), 10, OFFICE_WEEKDAYS, None,
     utc(2026, 1, 13, 15)),
    ("exactly now", NY, utc(2026, 1, 13, 15), 10, OFFICE_WEEKDAYS, None,
     utc(2026, 1, 13, 15)),
    # Tue 11:00 EST -> Wed 10:00 EST
    ("passed today", NY, utc(2026, 1, 13, 16), 10, OFFICE_WEEKDAYS, None,
     utc(2026, 1, 14, 15)),
    # 07:00 is never in the window: next_send_time from Tue 08:00 EST -> 09:00
    ("hour outside window falls back", NY, utc(2026, 1, 13, 13), 7, OFFICE, None,
     utc(2026, 1, 13, 14)),
    # next_send_time from Tue 11:00 EST, inside the window, is now
    ("fallback sends now", NY, utc(2026, 1, 13, 16), 7, OFFICE, None,
     utc(2026, 1, 13, 16)),
    # 22:00 is always in quiet hours: next_send_time from Tue 10:00 EST
    ("hour in quiet hours falls back", NY, utc(2026, 1, 13, 15), 22, None, NIGHT,
     utc(2026, 1, 13, 15)),
    # Sat 20:00 EST -> Sun 09:00 EDT
    ("spring-forward day", NY, utc(2026, 3, 8, 1), 9, OFFICE, None,
     utc(2026, 3, 8, 13)),
    # Sat 10:00 EDT -> Sun 09:00 EST
    ("fall-back day", NY, utc(2026, 10, 31, 14), 9, None, None,
     utc(2026, 11, 1, 14)),
    # Sat 20:00 CET -> Sun 09:00 CEST
    ("berlin spring forward", BERLIN, utc(2026, 3, 28, 19), 9, OFFICE, NIGHT,
     utc(2026, 3, 29, 7)),
    ("kolkata", KOLKATA, utc(2026, 6, 1), 9, OFFICE, NIGHT, utc(2026, 6, 1, 3, 30)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("zone", "earliest", "hour", "send_window", "quiet_hours", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in AT_HOUR_CASES],
)
def test_at_hour(
    zone: str,
    earliest: datetime,
    hour: int,
    send_window: SendWindow | None,
    quiet_hours: QuietHours | None,
    expected: datetime,
) -> None:
    result = at_hour(earliest, zone, hour, send_window, quiet_hours)
    assert result == expected
    assert result.tzinfo is UTC


@pytest.mark.parametrize("hour", [-1, 24])
def test_at_hour_rejects_hour_out_of_range(hour: int) -> None:
    with pytest.raises(ValueError, match=f"hour must be 0 to 23, got {hour}"):
        at_hour(utc(2026, 1, 13), NY, hour)


# --- SendWindow and QuietHours ------------------------------------------------


def test_send_window_defaults_to_every_day() -> None:
    parsed = SendWindow.model_validate({"start": "09:00", "end": "17:00"})
    assert parsed.start == time(9)
    assert parsed.end == time(17)
    assert parsed.days == list(WEEKDAYS)
    assert not parsed.spans_midnight


def test_send_window_spanning_midnight() -> None:
    parsed = window("22:00", "06:00", ["fri"])
    assert parsed.spans_midnight
    assert parsed.days == ["fri"]


def test_send_window_serializes_camel_case() -> None:
    dumped = window("09:00", "17:00", ["mon"]).model_dump(mode="json")
    assert dumped == {"start": "09:00:00", "end": "17:00:00", "days": ["mon"]}


@pytest.mark.parametrize(
    ("fields", "location", "message"),
    [
        ({"start": "09:00", "end": "09:00"}, (), "start and end are both 09:00"),
        ({"start": "09:00", "end": "17:00", "days": []}, ("days",),
         "days must name at least one weekday"),
        ({"start": "09:00", "end": "17:00", "days": ["mon", "fri", "mon"]},
         ("days",), "days lists mon more than once"),
        ({"start": "09:00", "end": "17:00", "days": ["monday"]}, ("days", 0),
         "Input should be 'mon', 'tue'"),
        ({"start": "09:00+02:00", "end": "17:00"}, ("start",),
         "start must be a local time without a UTC offset"),
        ({"start": "09:00", "end": "17:00", "timezone": "UTC"}, ("timezone",),
         "Extra inputs are not permitted"),
    ],
    ids=["start equals end", "no days", "repeated day", "unknown day",
         "utc offset", "unknown key"],
)  # fmt: skip
def test_send_window_rejects(
    fields: dict[str, object], location: tuple[object, ...], message: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        SendWindow.model_validate(fields)
    errors = raised.value.errors()
    assert len(errors) == 1
    assert errors[0]["loc"] == location
    assert message in errors[0]["msg"]


def test_send_window_error_is_value_error() -> None:
    with pytest.raises(ValueError, match="start and end are both"):
        window("09:00", "09:00")


def test_quiet_hours_rejects_start_equal_end() -> None:
    with pytest.raises(ValueError, match="start and end are both 21:00"):
        quiet("21:00", "21:00")


def test_quiet_hours_spanning_midnight() -> None:
    assert NIGHT.spans_midnight
    assert not quiet("12:00", "13:00").spans_midnight


def test_case_dates_fall_on_documented_weekdays() -> None:
    # The weekday cases above rely on these.
    assert date(2026, 1, 16).strftime("%a") == "Fri"
    assert date(2026, 3, 8).strftime("%a") == "Sun"
    assert date(2026, 11, 1).strftime("%a") == "Sun"
    assert date(2026, 4, 4).strftime("%a") == "Sat"
