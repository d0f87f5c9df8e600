"""When a message may go out: send windows, quiet hours and each lead's time zone.

Callers pass aware UTC instants in and get aware UTC instants out. Send windows
and quiet hours are wall-clock times in the lead's IANA time zone, so a 09:00
window opens at 09:00 local on either side of a daylight-saving change. A wall
time that the zone skips (spring forward) resolves to the instant the clock jumps
over it, the first valid instant after the gap. A wall time that the zone repeats
(fall back) resolves to its first occurrence (fold=0). Each local date therefore
has exactly one instant for each wall time.

The module is pure: besides the zone database, read through zoneinfo (the system
one or the tzdata package), it uses only the data that phonenumbers ships.
"""

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from typing import Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezone
from phonenumbers.geodata.locale import LOCALE_DATA
from pydantic import Field, ValidationInfo, field_validator, model_validator

from nurture.schemas import StrictCamelModel

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TimezoneSource = Literal["lead", "phone", "company", "default"]

# How far ahead next_send_time and at_hour search. A window that opens on one
# weekday only opens again within 7 days, and the 8th day covers DST shifts.
SEARCH_DAYS = 8

# Keys that load from some zone databases but name no place: the machine's own
# zone, the POSIX default rules and tzdb's placeholder for an unknown zone.
_NON_PLACE_ZONES = frozenset({"localtime", "posixrules", "Factory"})
# Copies of the whole database. The right/ copies count leap seconds, which civil
# clocks do not.
_NON_PLACE_PREFIXES = ("posix/", "right/")

# Each country whose zones in zone.tab (tzdata 2025b and 2026f) all show the same
# UTC offset at every half hour of 2026 to 2030, mapped to its first-listed zone
# (for UZ, the capital's). Countries that span several offsets, such as US, CA,
# MX, BR, RU, AU, ES and PT, are left out on purpose.
# NOTE: a snapshot, so a country that later changes its zones needs its row
# changed by hand.
_SINGLE_ZONE_COUNTRY_TABLE = """
AD Europe/Andorra  AE Asia/Dubai  AF Asia/Kabul  AG America/Antigua
AI America/Anguilla  AL Europe/Tirane  AM Asia/Yerevan  AO Africa/Luanda
AR America/Argentina/Buenos_Aires  AS Pacific/Pago_Pago  AT Europe/Vienna
AW America/Aruba  AX Europe/Mariehamn  AZ Asia/Baku  BA Europe/Sarajevo
BB America/Barbados  BD Asia/Dhaka  BE Europe/Brussels  BF Africa/Ouagadougou
BG Europe/Sofia  BH Asia/Bahrain  BI Africa/Bujumbura  BJ Africa/Porto-Novo
BL America/St_Barthelemy  BM Atlantic/Bermuda  BN Asia/Brunei  BO America/La_Paz
BQ America/Kralendijk  BS America/Nassau  BT Asia/Thimphu  BW Africa/Gaborone
BY Europe/Minsk  BZ America/Belize  CC Indian/Cocos  CF Africa/Bangui
CG Africa/Brazzaville  CH Europe/Zurich  CI Africa/Abidjan  CK Pacific/Rarotonga
CM Africa/Douala  CO America/Bogota  CR America/Costa_Rica  CU America/Havana
CV Atlantic/Cape_Verde  CW America/Curacao  CX Indian/Christmas  CY Asia/Nicosia
CZ Europe/Prague  DE Europe/Berlin  DJ Africa/Djibouti  DK Europe/Copenhagen
DM America/Dominica  DO America/Santo_Domingo  DZ Africa/Algiers  EE Europe/Tallinn
EG Africa/Cairo  EH Africa/El_Aaiun  ER Africa/Asmara  ET Africa/Addis_Ababa
FI Europe/Helsinki  FJ Pacific/Fiji  FK Atlantic/Stanley  FO Atlantic/Faroe
FR Europe/Paris  GA Africa/Libreville  GB Europe/London  GD America/Grenada
GE Asia/Tbilisi  GF America/Cayenne  GG Europe/Guernsey  GH Africa/Accra
GI Europe/Gibraltar  GM Africa/Banjul  GN Africa/Conakry  GP America/Guadeloupe
GQ Africa/Malabo  GR Europe/Athens  GS Atlantic/South_Georgia  GT America/Guatemala
GU Pacific/Guam  GW Africa/Bissau  GY America/Guyana  HK Asia/Hong_Kong
HN America/Tegucigalpa  HR Europe/Zagreb  HT America/Port-au-Prince
HU Europe/Budapest  IE Europe/Dublin  IL Asia/Jerusalem  IM Europe/Isle_of_Man
IN Asia/Kolkata  IO Indian/Chagos  IQ Asia/Baghdad  IR Asia/Tehran
IS Atlantic/Reykjavik  IT Europe/Rome  JE Europe/Jersey  JM America/Jamaica
JO Asia/Amman  JP Asia/Tokyo  KE Africa/Nairobi  KG Asia/Bishkek  KH Asia/Phnom_Penh
KM Indian/Comoro  KN America/St_Kitts  KP Asia/Pyongyang  KR Asia/Seoul
KW Asia/Kuwait  KY America/Cayman  KZ Asia/Almaty  LA Asia/Vientiane  LB Asia/Beirut
LC America/St_Lucia  LI Europe/Vaduz  LK Asia/Colombo  LR Africa/Monrovia
LS Africa/Maseru  LT Europe/Vilnius  LU Europe/Luxembourg  LV Europe/Riga
LY Africa/Tripoli  MA Africa/Casablanca  MC Europe/Monaco  MD Europe/Chisinau
ME Europe/Podgorica  MF America/Marigot  MG Indian/Antananarivo  MH Pacific/Majuro
MK Europe/Skopje  ML Africa/Bamako  MM Asia/Yangon  MO Asia/Macau  MP Pacific/Saipan
MQ America/Martinique  MR Africa/Nouakchott  MS America/Montserrat  MT Europe/Malta
MU Indian/Mauritius  MV Indian/Maldives  MW Africa/Blantyre  MY Asia/Kuala_Lumpur
MZ Africa/Maputo  NA Africa/Windhoek  NC Pacific/Noumea  NE Africa/Niamey
NF Pacific/Norfolk  NG Africa/Lagos  NI America/Managua  NL Europe/Amsterdam
NO Europe/Oslo  NP Asia/Kathmandu  NR Pacific/Nauru  NU Pacific/Niue  OM Asia/Muscat
PA America/Panama  PE America/Lima  PH Asia/Manila  PK Asia/Karachi
PL Europe/Warsaw  PM America/Miquelon  PN Pacific/Pitcairn  PR America/Puerto_Rico
PS Asia/Gaza  PW Pacific/Palau  PY America/Asuncion  QA Asia/Qatar
RE Indian/Reunion  RO Europe/Bucharest  RS Europe/Belgrade  RW Africa/Kigali
SA Asia/Riyadh  SB Pacific/Guadalcanal  SC Indian/Mahe  SD Africa/Khartoum
SE Europe/Stockholm  SG Asia/Singapore  SH Atlantic/St_Helena  SI Europe/Ljubljana
SJ Arctic/Longyearbyen  SK Europe/Bratislava  SL Africa/Freetown
SM Europe/San_Marino  SN Africa/Dakar  SO Africa/Mogadishu  SR America/Paramaribo
SS Africa/Juba  ST Africa/Sao_Tome  SV America/El_Salvador  SX America/Lower_Princes
SY Asia/Damascus  SZ Africa/Mbabane  TC America/Grand_Turk  TD Africa/Ndjamena
TF Indian/Kerguelen  TG Africa/Lome  TH Asia/Bangkok  TJ Asia/Dushanbe
TK Pacific/Fakaofo  TL Asia/Dili  TM Asia/Ashgabat  TN Africa/Tunis
TO Pacific/Tongatapu  TR Europe/Istanbul  TT America/Port_of_Spain
TV Pacific/Funafuti  TW Asia/Taipei  TZ Africa/Dar_es_Salaam  UG Africa/Kampala
UY America/Montevideo  UZ Asia/Tashkent  VA Europe/Vatican  VC America/St_Vincent
VE America/Caracas  VG America/Tortola  VI America/St_Thomas  VN Asia/Ho_Chi_Minh
VU Pacific/Efate  WF Pacific/Wallis  WS Pacific/Apia  YE Asia/Aden
YT Indian/Mayotte  ZA Africa/Johannesburg  ZM Africa/Lusaka  ZW Africa/Harare
"""
_SINGLE_ZONE_COUNTRIES: dict[str, str] = dict(
    zip(
        _SINGLE_ZONE_COUNTRY_TABLE.split()[::2],
        _SINGLE_ZONE_COUNTRY_TABLE.split()[1::2],
        strict=True,
    )
)

# Country names in common use that phonenumbers' English names spell otherwise,
# keyed as _name_key folds them.
_COUNTRY_ALIASES = {
    "usa": "US",
    "united states of america": "US",
    "uk": "GB",
    "great britain": "GB",
    "britain": "GB",
    "england": "GB",
    "scotland": "GB",
    "wales": "GB",
    "northern ireland": "GB",
    "czechia": "CZ",
    "north macedonia": "MK",
    "eswatini": "SZ",
    "ivory coast": "CI",
    "cabo verde": "CV",
    "turkiye": "TR",
    "holland": "NL",
    "burma": "MM",
    "viet nam": "VN",
    "korea": "KR",
    "republic of korea": "KR",
    "russian federation": "RU",
    "uae": "AE",
    "vatican city": "VA",
}


class _LocalSpan(StrictCamelModel):
    """A daily span of local wall-clock time. An end before the start spans midnight."""

    start: time = Field(description="Local time the span begins, e.g. 09:00.")
    end: time = Field(
        description="Local time the span ends, e.g. 17:00 (next day if before start)."
    )

    @field_validator("start", "end")
    @classmethod
    def _reject_utc_offset(cls, value: time, info: ValidationInfo) -> time:
        if value.tzinfo is not None:
            raise ValueError(
                f"{info.field_name} must be a local time without a UTC offset, "
                "e.g. 09:00"
            )
        return value

    @model_validator(mode="after")
    def _reject_empty_span(self) -> Self:
        if self.start == self.end:
            raise ValueError(
                f"start and end are both {self.start.isoformat()}: give two "
                "different times (end before start spans midnight, e.g. 22:00-06:00)"
            )
        return self

    @property
    def spans_midnight(self) -> bool:
        return self.end < self.start


class SendWindow(_LocalSpan):
    """Local hours in which messages may go out, opening on the given weekdays."""

    days: list[Weekday] = Field(
        default_factory=lambda: list(WEEKDAYS),
        description=(
            "Weekdays on which the window opens. A window spanning midnight "
            "closes on the next day."
        ),
    )

    @field_validator("days")
    @classmethod
    def _check_days(cls, days: list[Weekday]) -> list[Weekday]:
        if not days:
            raise ValueError('days must name at least one weekday, e.g. ["mon"]')
        repeated = sorted({day for day in days if days.count(day) > 1})
        if repeated:
            raise ValueError(f"days lists {', '.join(repeated)} more than once")
        return days


class QuietHours(_LocalSpan):
    """Local hours, every day, in which nothing is sent. Sends due then wait."""


def validate_timezone(name: str) -> str:
    """Return `name` unchanged if zoneinfo can load it as an IANA time zone.

    Raises ValueError naming the zone otherwise.
    """
    _load_zone(name)
    return name


def _load_zone(name: str) -> ZoneInfo:
    error = ValueError(
        f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin"
    )
    if name in _NON_PLACE_ZONES or name.startswith(_NON_PLACE_PREFIXES):
        raise error
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: a malformed key or a file that is not TZif. OSError: a
        # folder such as "America" when the tzdata package supplies the zones.
        raise error from None


def _valid_zone_or_none(name: str) -> str | None:
    try:
        return validate_timezone(name)
    except ValueError:
        return None


def resolve_timezone(
    lead_timezone: str | None,
    phone_e164: str | None,
    company_country: str | None,
    default: str,
) -> tuple[str, TimezoneSource]:
    """Pick a lead's IANA time zone from the first source that names one.

    The sources are tried in this order:
    - "lead": `lead_timezone`, when it is a valid zone.
    - "phone": the zone of the phone number's country when the country has one,
      else the zone phonenumbers gives for the number when it gives exactly one.
    - "company": the zone of `company_country` (ISO 3166 alpha-2 code or English
      name) when the country has one.
    - "default": `default`.
    Returns the zone and its source. Raises ValueError only when it falls back
    to an invalid `default`.
    """
    if lead_timezone:
        zone = _valid_zone_or_none(lead_timezone.strip())
        if zone is not None:
            return zone, "lead"
    if phone_e164:
        zone = _phone_zone(phone_e164)
        if zone is not None:
            return zone, "phone"
    if company_country:
        region = _region_for_country(company_country)
        zone = _single_zone_of(region) if region else None
        if zone is not None:
            return zone, "company"
    return validate_timezone(default), "default"


def _phone_zone(phone_e164: str) -> str | None:
    try:
        number = phonenumbers.parse(phone_e164, None)
    except phonenumbers.NumberParseException:
        return None
    region = phonenumbers.region_code_for_number(number)
    zone = _single_zone_of(region) if region else None
    if zone is not None:
        return zone
    # phonenumbers maps some countries to another country's zone with the same
    # standard offset (Algeria to Europe/Paris), which has the wrong DST rules,
    # so its per-number zone is used only for countries outside the table.
    zones = phone_timezone.time_zones_for_number(number)
    return _valid_zone_or_none(zones[0]) if len(zones) == 1 else None


def _single_zone_of(region: str) -> str | None:
    zone = _SINGLE_ZONE_COUNTRIES.get(region)
    return _valid_zone_or_none(zone) if zone else None


def _region_for_country(country: str) -> str | None:
    key = _name_key(country)
    if key in _COUNTRY_ALIASES:
        return _COUNTRY_ALIASES[key]
    if len(key) == 2 and key.isalpha():
        return key.upper()
    return _english_country_names().get(key)


def _name_key(text: str) -> str:
    """Fold a country name for matching: ASCII, lower case, no punctuation."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    folded = re.sub(r"[.']", "", folded.casefold().replace("&", " and "))
    words = re.sub(r"[^a-z0-9]+", " ", folded).split()
    if words[:1] == ["the"]:
        words = words[1:]
    return " ".join(words)


@cache
def _english_country_names() -> dict[str, str]:
    """Map each region's English name in phonenumbers' geodata to its code."""
    names: dict[str, str] = {}
    for region, by_language in LOCALE_DATA.items():
        name = by_language.get("en", "")
        if name.startswith("*"):
            # A value "*aa" refers to this region's entry for language "aa".
            name = by_language.get(name[1:], "")
        if name:
            names[_name_key(name)] = region
    return names


def _as_utc(instant: datetime, name: str) -> datetime:
    if instant.utcoffset() is None:
        raise ValueError(
            f"{name} must be a timezone-aware datetime (UTC), "
            f"got naive {instant.isoformat()}"
        )
    return instant.astimezone(UTC)


def _wall_clock(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def _to_utc(wall: datetime, tz: ZoneInfo) -> datetime:
    """Return the first instant at which the clock in `tz` shows `wall` or later.

    That is `wall` itself, its first occurrence when the zone repeats it, or the
    instant the clock jumps over it when the zone skips it.
    """
    instant = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if _wall_clock(instant, tz) == wall:
        return instant
    return _jump_over(wall, tz)


def _jump_over(wall: datetime, tz: ZoneInfo) -> datetime:
    """Return the instant at which the clock in `tz` skips past the gap `wall` is in."""
    # Inside a gap, fold=0 and fold=1 apply the offsets from either side of the
    # jump, so the two instants they give lie on either side of it.
    low, high = sorted(
        wall.replace(tzinfo=tz, fold=fold).astimezone(UTC) for fold in (0, 1)
    )
    offset_before = low.astimezone(tz).utcoffset()
    # Because tzdb transitions fall on whole seconds, bisect for the first second
    # that has the new offset.
    low_second = math.floor(low.timestamp())
    high_second = math.ceil(high.timestamp())
    while high_second - low_second > 1:
        middle = (low_second + high_second) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == offset_before:
            low_second = middle
        else:
            high_second = middle
    return datetime.fromtimestamp(high_second, UTC)


_Span = tuple[datetime, datetime]


def _daily_spans(
    span: _LocalSpan,
    weekdays: Collection[str],
    tz: ZoneInfo,
    first_day: date,
    last_day: date,
) -> list[_Span]:
    """Return the [opens, closes) spans in UTC that open on local dates in the range.

    A date on which a DST gap swallows the whole span has none.
    """
    spans: list[_Span] = []
    day = first_day
    while day <= last_day:
        if WEEKDAYS[day.weekday()] in weekdays:
            close_day = day + timedelta(days=1) if span.spans_midnight else day
            opens = _to_utc(datetime.combine(day, span.start), tz)
            closes = _to_utc(datetime.combine(close_day, span.end), tz)
            if opens < closes:
                spans.append((opens, closes))
        day += timedelta(days=1)
    return spans


def _inside(instant: datetime, spans: list[_Span]) -> bool:
    return any(opens <= instant < closes for opens, closes in spans)


@dataclass(frozen=True)
class _SendRules:
    """Send windows (None: any time) and quiet hours over a search range, in UTC."""

    windows: list[_Span] | None
    quiet: list[_Span]

    def allows(self, instant: datetime) -> bool:
        in_window = self.windows is None or _inside(instant, self.windows)
        return in_window and not _inside(instant, self.quiet)

    def first_allowed(self, earliest: datetime, horizon: datetime) -> datetime | None:
        # Windows and quiet hours are half-open, so the first allowed instant is
        # `earliest` itself, a window opening or the end of quiet hours.
        candidates = {earliest}
        candidates.update(opens for opens, _ in self.windows or [])
        candidates.update(closes for _, closes in self.quiet)
        for candidate in sorted(c for c in candidates if earliest <= c <= horizon):
            if self.allows(candidate):
                return candidate
        return None


def _send_rules(
    tz: ZoneInfo,
    window: SendWindow | None,
    quiet: QuietHours | None,
    earliest: datetime,
    horizon: datetime,
) -> _SendRules:
    # Two days back: a window or quiet hours spanning midnight from an earlier
    # date may still cover `earliest`.
    first_day = _wall_clock(earliest, tz).date() - timedelta(days=2)
    last_day = _wall_clock(horizon, tz).date()
    windows = None
    if window is not None:
        windows = _daily_spans(window, window.days, tz, first_day, last_day)
    quiet_spans = []
    if quiet is not None:
        quiet_spans = _daily_spans(quiet, WEEKDAYS, tz, first_day, last_day)
    return _SendRules(windows, quiet_spans)


def next_send_time(
    earliest: datetime,
    zone: str,
    window: SendWindow | None = None,
    quiet: QuietHours | None = None,
) -> datetime:
    """Return the first instant at or after `earliest` at which a send is allowed.

    Allowed means inside `window` (if given) and outside `quiet` (if given), in
    the local time of `zone`. A send due in quiet hours moves to their end, or
    to the next window opening after it. Returns an aware UTC datetime.
    Raises ValueError for a naive `earliest`, an unknown zone, or when nothing
    is allowed within SEARCH_DAYS days (a window that lies inside quiet hours).
    """
    start = _as_utc(earliest, "earliest")
    tz = _load_zone(zone)
    horizon = start + timedelta(days=SEARCH_DAYS)
    rules = _send_rules(tz, window, quiet, start, horizon)
    found = rules.first_allowed(start, horizon)
    if found is None:
        raise ValueError(
            f"no send time within {SEARCH_DAYS} days after {start.isoformat()} "
            f"in {zone}: the send window is never open outside quiet hours"
        )
    return found


def next_local_time(
    after: datetime, zone: str, at: time, days: Sequence[str] | None = None
) -> datetime:
    """Return the next instant after `after` at which the clock in `zone` shows `at`.

    Only local dates on `days` count (every day when None). The result is an
    aware UTC datetime strictly later than `after`. A repeated `at` counts once,
    at its first occurrence, so a daily schedule fires once on the fall-back day
    too. Raises ValueError for a naive `after`, an `at` with a UTC offset, an
    unknown zone, or empty or unknown `days`.
    """
    start = _as_utc(after, "after")
    tz = _load_zone(zone)
    weekdays = _check_weekdays(days)
    if at.tzinfo is not None:
        raise ValueError(f"at must be a local time without a UTC offset, got {at}")
    day = _wall_clock(start, tz).date()
    for _ in range(SEARCH_DAYS):
        if WEEKDAYS[day.weekday()] in weekdays:
            instant = _to_utc(datetime.combine(day, at), tz)
            if instant > start:
                return instant
        day += timedelta(days=1)
    raise ValueError(f"no {at} on {', '.join(weekdays)} within {SEARCH_DAYS} days")


def _check_weekdays(days: Sequence[str] | None) -> tuple[str, ...]:
    if days is None:
        return WEEKDAYS
    if not days:
        raise ValueError('days must name at least one weekday, e.g. ["mon"]')
    unknown = [day for day in days if day not in WEEKDAYS]
    if unknown:
        raise ValueError(
            f"unknown weekday {unknown[0]!r} in days: use {', '.join(WEEKDAYS)}"
        )
    return tuple(days)


def best_send_hour(
    open_times: Sequence[datetime], zone: str, min_opens: int = 3
) -> int | None:
    """Return the local hour (0-23) in `zone` at which most of the opens happened.

    Ties go to the earliest hour. Returns None for fewer than `min_opens` opens.
    Raises ValueError for a naive open time or an unknown zone.
    """
    tz = _load_zone(zone)
    if not open_times or len(open_times) < min_opens:
        return None
    counts = Counter(
        _as_utc(opened, "open time").astimezone(tz).hour for opened in open_times
    )
    top = max(counts.values())
    return min(hour for hour, count in counts.items() if count == top)


def at_hour(
    earliest: datetime,
    zone: str,
    hour: int,
    window: SendWindow | None = None,
    quiet: QuietHours | None = None,
) -> datetime:
    """Return the first local hour:00 at or after `earliest` that allows a send.

    Each local date's hour:00 in `zone` is tried in turn (DST gaps and repeats
    as in the module docstring) and the first one inside `window` and outside
    `quiet` is returned. When none of them within SEARCH_DAYS days qualifies,
    returns next_send_time(earliest, zone, window, quiet). Returns aware UTC.
    Raises ValueError for an hour outside 0-23 and as next_send_time does.
    """
    if not 0 <= hour <= 23:
        raise ValueError(f"hour must be 0 to 23, got {hour}")
    start = _as_utc(earliest, "earliest")
    tz = _load_zone(zone)
    horizon = start + timedelta(days=SEARCH_DAYS)
    rules = _send_rules(tz, window, quiet, start, horizon)
    day = _wall_clock(start, tz).date()
    for _ in range(SEARCH_DAYS + 1):
        candidate = _to_utc(datetime.combine(day, time(hour)), tz)
        if start <= candidate <= horizon and rules.allows(candidate):
            return candidate
        day += timedelta(days=1)
    return next_send_time(start, zone, window, quiet)
