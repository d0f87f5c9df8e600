"""Consent and suppression: who may get which messages, decided at send time.

Two records decide whether a message may go out:

- the consent ledger, per lead and channel: every opt-in and opt-out with its
  source and proof, append-only. The lead keeps the latest status by the time
  it happened, so an old event that arrives late never overrides a newer one;
- suppressions, per address: bounces, spam reports, invalid addresses and
  numbers the provider refuses. They follow the address, so capturing the
  same person again does not make the address sendable.

`send_refusal` reads both, and the lead's country, at the moment of sending.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import phonenumbers
import pycountry
import sqlalchemy as sa
from pydantic import AwareDatetime, Field, field_validator
from sqlmodel import Session, col, select

from nurture.models import ConsentRecord, Lead, Suppression, utcnow
from nurture.schemas import CamelModel, StrictCamelModel

Channel = Literal["email", "sms"]
ConsentStatus = Literal["opted_in", "opted_out"]
CHANNELS: tuple[Channel, ...] = ("email", "sms")

# SMS keywords as carriers and Twilio's Advanced Opt-Out treat them.
OPT_OUT_KEYWORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "END", "QUIT", "CANCEL", "OPTOUT", "REVOKE"}
)
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})

# Suppressions an opt-in lifts: the provider's own block after a STOP. A
# bounce or an invalid address stays suppressed after an opt-in.
LIFTED_BY_OPT_IN = frozenset({"unsubscribed_at_provider"})

# Names people write for countries that pycountry does not know by that name.
_COUNTRY_ALIASES = {
    "uk": "GB",
    "england": "GB",
    "scotland": "GB",
    "wales": "GB",
    "northern ireland": "GB",
    "great britain": "GB",
    "deutschland": "DE",
    "holland": "NL",
    "the netherlands": "NL",
    "österreich": "AT",
    "schweiz": "CH",
    "suisse": "CH",
    "españa": "ES",
    "italia": "IT",
}


def keyword_of(body: str) -> str:
    """Return an SMS body as a keyword: trimmed, upper case, no final punctuation."""
    return body.strip().strip(".!").upper()


def country_code(text: str | None) -> str | None:
    """Return the ISO 3166 alpha-2 code of a country code or name, or None."""
    if not text or not text.strip():
        return None
    cleaned = text.strip()
    alias = _COUNTRY_ALIASES.get(cleaned.casefold())
    if alias:
        return alias
    try:
        return str(pycountry.countries.lookup(cleaned).alpha_2)
    except LookupError:
        return None


def parse_country_list(text: str) -> frozenset[str]:
    """Parse "DE,FR,GB" into codes; raise ValueError naming an unknown one."""
    codes = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        code = country_code(part)
        if code is None:
            raise ValueError(
                f"unknown country {part!r}: write ISO 3166 codes such as DE,FR,GB"
            )
        codes.add(code)
    return frozenset(codes)


def normalize_address(channel: str, address: str) -> str:
    return address.strip().lower() if channel == "email" else address.strip()


def lead_country(lead: Lead) -> str | None:
    """Return the country whose rules apply: the company's, else the phone's."""
    code = country_code(lead.company_country)
    if code is not None:
        return code
    if lead.phone:
        try:
            number = phonenumbers.parse(lead.phone, None)
        except phonenumbers.NumberParseException:
            return None
        region = phonenumbers.region_code_for_number(number)
        return region if region and region != "ZZ" else None
    return None


def _latest(session: Session, lead_id: str, channel: str) -> ConsentRecord | None:
    return session.exec(
        select(ConsentRecord)
        .where(ConsentRecord.lead_id == lead_id, ConsentRecord.channel == channel)
        .order_by(col(ConsentRecord.occurred_at).desc(), col(ConsentRecord.id).desc())
    ).first()


def record_consent(
    session: Session,
    lead: Lead,
    channel: str,
    status: str,
    *,
    source: str,
    actor: str,
    proof: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
) -> ConsentRecord:
    """Append a consent change and update the lead's current status.

    The current status follows the change that happened last, not the one
    that arrived last: a late opt-in from an old form never undoes a newer
    STOP.
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}: use email or sms")
    if status not in ("opted_in", "opted_out"):
        raise ValueError(
            f"unknown consent status {status!r}: use opted_in or opted_out"
        )
    at = occurred_at or utcnow()
    latest = _latest(session, lead.id, channel)
    record = ConsentRecord(
        lead_id=lead.id,
        channel=channel,
        status=status,
        source=source,
        proof=proof or {},
        occurred_at=at,
        recorded_by=actor,
    )
    session.add(record)
    if latest is None or at >= latest.occurred_at:
        setattr(lead, f"{channel}_consent", status)
        lead.updated_at = utcnow()
        session.add(lead)
    session.flush()
    return record


def leads_with_address(session: Session, channel: str, address: str) -> list[Lead]:
    if channel == "email":
        column = col(Lead.email_normalized)
    else:
        column = col(Lead.phone)
    return list(
        session.exec(
            select(Lead).where(column == normalize_address(channel, address))
        ).all()
    )


def record_address_consent(
    session: Session,
    channel: str,
    address: str,
    status: str,
    *,
    source: str,
    actor: str,
    proof: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
) -> list[str]:
    """Record a consent change for every lead with this address; return their ids.

    STOP from a phone number and an unsubscribe from an address speak for
    the address, so each lead that shares it gets the change.
    """
    leads = leads_with_address(session, channel, address)
    for lead in leads:
        record_consent(
            session,
            lead,
            channel,
            status,
            source=source,
            actor=actor,
            proof=proof,
            occurred_at=occurred_at,
        )
    if status == "opted_in":
        lift_suppressions(session, channel, address, LIFTED_BY_OPT_IN)
    return [lead.id for lead in leads]


def suppress(
    session: Session,
    channel: str,
    address: str,
    reason: str,
    *,
    source: str,
    detail: dict[str, Any] | None = None,
) -> bool:
    """Suppress an address on a channel; return False when it already was."""
    normalized = normalize_address(channel, address)
    existing = session.exec(
        select(Suppression).where(
            Suppression.channel == channel, Suppression.address == normalized
        )
    ).first()
    if existing is not None:
        return False
    try:
        with session.begin_nested():
            session.add(
                Suppression(
                    channel=channel,
                    address=normalized,
                    reason=reason,
                    source=source,
                    detail=detail or {},
                )
            )
    except sa.exc.IntegrityError:
        # Another request suppressed it a moment ago.
        return False
    return True


def lift_suppressions(
    session: Session, channel: str, address: str, reasons: frozenset[str]
) -> int:
    rows = session.exec(
        select(Suppression).where(
            Suppression.channel == channel,
            Suppression.address == normalize_address(channel, address),
            col(Suppression.reason).in_(reasons),
        )
    ).all()
    for row in rows:
        session.delete(row)
    return len(rows)


def suppression_of(session: Session, channel: str, address: str) -> Suppression | None:
    return session.exec(
        select(Suppression).where(
            Suppression.channel == channel,
            Suppression.address == normalize_address(channel, address),
        )
    ).first()


@dataclass(frozen=True)
class ConsentPolicy:
    """Countries whose law needs an opt-in before marketing on a channel."""

    email_opt_in_countries: frozenset[str] = frozenset()
    sms_opt_in_countries: frozenset[str] = frozenset()

    def needs_opt_in(self, channel: str, country: str | None) -> bool:
        countries = (
            self.email_opt_in_countries
            if channel == "email"
            else self.sms_opt_in_countries
        )
        return "*" in countries or (country is not None and country in countries)


def _on(at: datetime) -> str:
    return f"on {at:%Y-%m-%d %H:%M} UTC"


def send_refusal(
    session: Session, lead: Lead, channel: str, policy: ConsentPolicy
) -> str | None:
    """Return why a marketing message may not go to the lead now, or None.

    Sales tasks go to the sales team, not to the lead, so nothing stops them.
    """
    if channel not in CHANNELS:
        return None
    if lead.status == "erased":
        return "lead was erased: nothing may be sent"
    if lead.status == "closed":
        return "lead is closed: do not contact"
    address = lead.email if channel == "email" else lead.phone
    if not address:
        kind = "email address" if channel == "email" else "phone number"
        return f"lead has no {kind}"
    consent = getattr(lead, f"{channel}_consent")
    if consent == "opted_out":
        latest = _latest(session, lead.id, channel)
        source = f" by {latest.source} {_on(latest.occurred_at)}" if latest else ""
        return f"lead opted out of {channel}{source}"
    suppressed = suppression_of(session, channel, address)
    if suppressed is not None:
        return (
            f"{'address' if channel == 'email' else 'number'} is suppressed: "
            f"{suppressed.reason.replace('_', ' ')} ({suppressed.source}, "
            f"{_on(suppressed.created_at)})"
        )
    if channel == "email" and lead.status in ("unsubscribed", "bounced"):
        return f"lead's email is {lead.status}"
    if consent != "opted_in":
        country = lead_country(lead)
        if policy.needs_opt_in(channel, country):
            where = f"in {country}" if country else "everywhere"
            return (
                f"{channel} to leads {where} needs an opt-in first, and this lead "
                "has none on record"
            )
    return None


class ConsentCapture(StrictCamelModel):
    """Consent as a form collects it, sent with the lead.

    `email` and `sms` are true when the person ticked the box, false when
    they declined; leave a channel out when the form did not ask.
    """

    email: bool | None = None
    sms: bool | None = None
    text: str | None = Field(
        None, max_length=2000, description="The wording the person agreed to."
    )
    page_url: str | None = Field(None, max_length=2000)
    ip: str | None = Field(None, max_length=64)
    at: AwareDatetime | None = Field(
        None, description="When the person gave it; default: when we received it."
    )

    def proof(self) -> dict[str, Any]:
        return {
            key: value
            for key, value in {
                "text": self.text,
                "pageUrl": self.page_url,
                "ip": self.ip,
            }.items()
            if value
        }


def record_capture_consent(
    session: Session, lead: Lead, consent: ConsentCapture, actor: str, source: str
) -> list[ConsentRecord]:
    records = []
    for channel in CHANNELS:
        given = getattr(consent, channel)
        if given is None:
            continue
        records.append(
            record_consent(
                session,
                lead,
                channel,
                "opted_in" if given else "opted_out",
                source=source,
                actor=actor,
                proof=consent.proof(),
                occurred_at=consent.at,
            )
        )
    return records


class ConsentChange(StrictCamelModel):
    """A consent change recorded through the API."""

    channel: Channel
    status: ConsentStatus
    source: str = Field(
        "api",
        max_length=64,
        description="Where it came from, e.g. api, call, event, import.",
    )
    proof: dict[str, Any] = Field(
        default_factory=dict,
        description="What proves it: the wording, a recording id, a ticket.",
    )
    occurred_at: AwareDatetime | None = None

    @field_validator("source")
    @classmethod
    def _source_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("missing source: say where the change came from")
        return value.strip()


class ConsentRecordOut(CamelModel):
    id: int
    channel: str
    status: str
    source: str
    proof: dict[str, Any]
    occurred_at: datetime
    recorded_at: datetime
    recorded_by: str

    @classmethod
    def from_record(cls, record: ConsentRecord) -> "ConsentRecordOut":
        assert record.id is not None
        return cls(
            id=record.id,
            channel=record.channel,
            status=record.status,
            source=record.source,
            proof=record.proof,
            occurred_at=record.occurred_at,
            recorded_at=record.recorded_at,
            recorded_by=record.recorded_by,
        )


class ChannelState(CamelModel):
    consent: str
    suppressed: bool
    suppression_reason: str | None = None
    can_send: bool
    # Why a marketing message would not go out now, when it would not.
    blocked_because: str | None = None


class ConsentView(CamelModel):
    lead_id: str
    channels: dict[str, ChannelState]
    records: list[ConsentRecordOut]


def consent_view(session: Session, lead: Lead, policy: ConsentPolicy) -> ConsentView:
    channels = {}
    for channel in CHANNELS:
        address = lead.email if channel == "email" else lead.phone
        suppressed = suppression_of(session, channel, address) if address else None
        refusal = send_refusal(session, lead, channel, policy)
        channels[channel] = ChannelState(
            consent=getattr(lead, f"{channel}_consent"),
            suppressed=suppressed is not None,
            suppression_reason=suppressed.reason if suppressed else None,
            can_send=refusal is None,
            blocked_because=refusal,
        )
    records = session.exec(
        select(ConsentRecord)
        .where(ConsentRecord.lead_id == lead.id)
        .order_by(col(ConsentRecord.occurred_at), col(ConsentRecord.id))
    ).all()
    return ConsentView(
        lead_id=lead.id,
        channels=channels,
        records=[ConsentRecordOut.from_record(r) for r in records],
    )
