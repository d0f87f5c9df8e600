"""Lead capture: validation, normalization and de-duplication."""

from datetime import datetime
from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import Field, field_validator
from sqlmodel import Session, col, select

from nurture.config import get_settings
from nurture.consent import ConsentCapture, record_capture_consent
from nurture.models import AuditEntry, EngagementEvent, Lead, utcnow
from nurture.schemas import CamelModel, StrictCamelModel
from nurture.sendtime import validate_timezone

MAX_TEXT = 255


def normalize_email(value: str) -> str:
    """Validate an address and return it with its domain lower-cased."""
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as error:
        raise ValueError(f"invalid email address: {error}") from None
    return result.normalized


def normalize_phone(value: str, default_region: str) -> tuple[str, str]:
    """Return the E.164 form of a phone number and its status.

    The status is "valid" when the number is assigned in its numbering plan and
    "unverified" when it only has a possible shape (555 numbers, for example):
    such leads are kept and flagged, not rejected.
    """
    try:
        number = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_possible_number(number):
        raise ValueError(
            f"invalid phone number {value!r}: use international format, "
            "e.g. +14155550100"
        )
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    status = "valid" if phonenumbers.is_valid_number(number) else "unverified"
    return e164, status


def _strip(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


class ContactIn(StrictCamelModel):
    first_name: str | None = Field(None, max_length=MAX_TEXT)
    last_name: str | None = Field(None, max_length=MAX_TEXT)
    email: str | None = Field(None, max_length=MAX_TEXT)
    phone: str | None = Field(None, max_length=40)
    timezone: str | None = Field(
        None, max_length=64, description="IANA time zone, e.g. Europe/Berlin."
    )
    job_title: str | None = Field(None, max_length=MAX_TEXT)

    _strip = field_validator("*", mode="before")(_strip)

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str | None) -> str | None:
        return validate_timezone(value) if value else None

    @field_validator("email")
    @classmethod
    def _check_email(cls, value: str | None) -> str | None:
        return normalize_email(value) if value else None

    @field_validator("phone")
    @classmethod
    def _check_phone(cls, value: str | None) -> str | None:
        if not value:
            return None
        return normalize_phone(value, get_settings().default_phone_region)[0]


class CompanyIn(StrictCamelModel):
    name: str | None = Field(None, max_length=MAX_TEXT)
    industry: str | None = Field(None, max_length=MAX_TEXT)
    size: str | None = Field(None, max_length=64)
    revenue: str | None = Field(None, max_length=64)
    website: str | None = Field(None, max_length=MAX_TEXT)
    country: str | None = Field(
        None, max_length=64, description='ISO 3166 code or name, e.g. "DE".'
    )
    growth_stage: str | None = Field(
        None, max_length=64, description='Funding or growth stage, e.g. "Series B".'
    )
    technologies: list[str] | None = Field(
        None, max_length=100, description='Tools the company uses: ["HubSpot"].'
    )

    _strip = field_validator("*", mode="before")(_strip)


class SourceIn(StrictCamelModel):
    """The lead's origin, as UTM parameters name it."""

    channel: str | None = Field(None, max_length=64)
    campaign: str | None = Field(None, max_length=MAX_TEXT)
    medium: str | None = Field(None, max_length=64)
    content: str | None = Field(None, max_length=MAX_TEXT)

    _strip = field_validator("*", mode="before")(_strip)


class LeadCreate(StrictCamelModel):
    """A lead as web forms and partners submit it."""

    contact: ContactIn
    company: CompanyIn = Field(default_factory=CompanyIn)
    source: SourceIn = Field(default_factory=SourceIn)
    custom_fields: dict[str, Any] = Field(default_factory=dict)
    consent: ConsentCapture | None = Field(
        None,
        description=(
            "What the form asked and the person answered; true is an opt-in, "
            "false a refusal. Leave out a channel the form did not ask about."
        ),
    )

    @field_validator("contact")
    @classmethod
    def _require_email_or_phone(cls, contact: ContactIn) -> ContactIn:
        if not contact.email and not contact.phone:
            raise ValueError(
                "contact.email or contact.phone is required: a lead needs a way "
                "to be reached"
            )
        return contact


class LeadUpdate(StrictCamelModel):
    """A partial change to a lead: only the keys present are applied."""

    contact: ContactIn | None = None
    company: CompanyIn | None = None
    source: SourceIn | None = None
    custom_fields: dict[str, Any] | None = None
    status: str | None = Field(None, pattern="^(active|unsubscribed|bounced|closed)$")


# Form fields from a web page: the plain names that form builders use, mapped
# onto the JSON shape. Any other field lands in customFields.
FORM_FIELDS: dict[str, tuple[str, str]] = {
    "firstName": ("contact", "firstName"),
    "first_name": ("contact", "firstName"),
    "lastName": ("contact", "lastName"),
    "last_name": ("contact", "lastName"),
    "email": ("contact", "email"),
    "phone": ("contact", "phone"),
    "company": ("company", "name"),
    "companyName": ("company", "name"),
    "company_name": ("company", "name"),
    "industry": ("company", "industry"),
    "companySize": ("company", "size"),
    "company_size": ("company", "size"),
    "revenue": ("company", "revenue"),
    "website": ("company", "website"),
    "country": ("company", "country"),
    "timezone": ("contact", "timezone"),
    "jobTitle": ("contact", "jobTitle"),
    "job_title": ("contact", "jobTitle"),
    "title": ("contact", "jobTitle"),
    "utm_source": ("source", "channel"),
    "utm_campaign": ("source", "campaign"),
    "utm_medium": ("source", "medium"),
    "utm_content": ("source", "content"),
    "consent_email": ("consent", "email"),
    "emailConsent": ("consent", "email"),
    "email_consent": ("consent", "email"),
    "consent_sms": ("consent", "sms"),
    "smsConsent": ("consent", "sms"),
    "sms_consent": ("consent", "sms"),
    "consent_text": ("consent", "text"),
    "consentText": ("consent", "text"),
}
# Form values that mean a ticked box; anything else is a refusal.
_TICKED = frozenset({"on", "true", "yes", "1", "checked", "y"})


def form_to_payload(form: dict[str, str]) -> dict[str, Any]:
    """Map flat web-form fields onto the JSON lead shape."""
    payload: dict[str, Any] = {
        "contact": {},
        "company": {},
        "source": {},
        "customFields": {},
    }
    consent: dict[str, Any] = {}
    for key, value in form.items():
        target = FORM_FIELDS.get(key)
        if target is None:
            payload["customFields"][key] = value
        elif target[0] == "consent":
            field = target[1]
            consent[field] = (
                value.strip().lower() in _TICKED if field in ("email", "sms") else value
            )
        else:
            section, field = target
            payload[section][field] = value
    if consent:
        payload["consent"] = consent
    return payload


def lead_columns(
    contact: ContactIn | None, company: CompanyIn | None, source: SourceIn | None
) -> dict[str, Any]:
    """Return the lead columns that the given sections set, without None values."""
    columns: dict[str, Any] = {}
    if contact is not None:
        columns |= {
            "first_name": contact.first_name,
            "last_name": contact.last_name,
            "timezone": contact.timezone,
            "job_title": contact.job_title,
        }
        if contact.email:
            columns["email"] = contact.email
            columns["email_normalized"] = contact.email.lower()
        if contact.phone:
            phone, status = normalize_phone(
                contact.phone, get_settings().default_phone_region
            )
            columns["phone"] = phone
            columns["phone_status"] = status
    if company is not None:
        columns |= {
            "company_name": company.name,
            "company_industry": company.industry,
            "company_size": company.size,
            "company_revenue": company.revenue,
            "company_website": company.website,
            "company_country": company.country,
            "company_growth_stage": company.growth_stage,
            "company_technologies": company.technologies,
        }
    if source is not None:
        columns |= {
            "source_channel": source.channel,
            "source_campaign": source.campaign,
            "source_medium": source.medium,
            "source_content": source.content,
        }
    return {key: value for key, value in columns.items() if value is not None}


def find_duplicate(
    session: Session, email: str | None, phone: str | None
) -> Lead | None:
    """Find the lead with the same address, or with the same phone when no email."""
    if email:
        return session.exec(
            select(Lead).where(Lead.email_normalized == email.lower())
        ).first()
    if phone:
        return session.exec(
            select(Lead).where(Lead.phone == phone).order_by(col(Lead.created_at))
        ).first()
    return None


def capture_lead(
    session: Session, payload: LeadCreate, actor: str
) -> tuple[Lead, bool]:
    """Store a new lead, or merge it into the lead it duplicates.

    Returns the lead and whether it was a duplicate. The capture itself is
    recorded as a form submission, the lead's first behavior event.
    """
    columns = lead_columns(payload.contact, payload.company, payload.source)
    existing = find_duplicate(session, columns.get("email"), columns.get("phone"))
    now = utcnow()
    if existing is None:
        lead = Lead(**columns, custom_fields=dict(payload.custom_fields))
        session.add(lead)
        action = "lead.created"
        changed = sorted(columns) + (["custom_fields"] if payload.custom_fields else [])
    else:
        lead = existing
        changed = [key for key, value in columns.items() if getattr(lead, key) != value]
        for key in changed:
            setattr(lead, key, columns[key])
        if payload.custom_fields:
            lead.custom_fields = {**lead.custom_fields, **payload.custom_fields}
            changed.append("custom_fields")
        lead.updated_at = now
        action = "lead.merged"
    session.flush()
    if payload.consent is not None:
        record_capture_consent(session, lead, payload.consent, actor, source="form")
    session.add(
        EngagementEvent(
            lead_id=lead.id,
            type="form_submission",
            source="capture",
            occurred_at=now,
            data={"channel": lead.source_channel, "campaign": payload.source.campaign},
        )
    )
    session.add(
        AuditEntry(
            actor=actor,
            action=action,
            entity_type="lead",
            entity_id=lead.id,
            detail={"fields": changed},
        )
    )
    return lead, existing is not None


def update_lead(
    session: Session, lead: Lead, change: LeadUpdate, actor: str
) -> list[str]:
    """Apply a partial change to a lead and return the names of changed columns."""
    columns = lead_columns(change.contact, change.company, change.source)
    if change.status is not None:
        columns["status"] = change.status
    changed = [key for key, value in columns.items() if getattr(lead, key) != value]
    for key in changed:
        setattr(lead, key, columns[key])
    if change.custom_fields is not None:
        lead.custom_fields = {**lead.custom_fields, **change.custom_fields}
        changed.append("custom_fields")
    if changed:
        lead.updated_at = utcnow()
        session.add(
            AuditEntry(
                actor=actor,
                action="lead.updated",
                entity_type="lead",
                entity_id=lead.id,
                detail={"fields": changed},
            )
        )
    return changed


def template_context(lead: Lead) -> dict[str, Any]:
    """Build the `lead` variable of templates: the lead's public fields in camelCase."""
    public = LeadPublic.from_lead(lead).model_dump(mode="json")
    contact = public.pop("contact")
    public.pop("duplicate", None)
    return {**contact, **public}


class ContactOut(CamelModel):
    first_name: str | None
    last_name: str | None
    email: str | None
    phone: str | None
    phone_status: str | None
    timezone: str | None
    job_title: str | None = None


class CompanyOut(CamelModel):
    name: str | None
    industry: str | None
    size: str | None
    revenue: str | None
    website: str | None
    country: str | None
    growth_stage: str | None = None
    technologies: list[str] = []


class SourceOut(CamelModel):
    channel: str | None
    campaign: str | None
    medium: str | None
    content: str | None


class LeadPublic(CamelModel):
    id: str
    contact: ContactOut
    company: CompanyOut
    source: SourceOut
    custom_fields: dict[str, Any]
    enrichment: dict[str, Any]
    score: int
    score_reasons: list[dict[str, Any]]
    rules_score: int | None = None
    conversion_probability: float | None = None
    model_contributions: list[dict[str, Any]] = []
    criteria_version: int | None = None
    model_version: int | None = None
    outcome: str | None = None
    outcome_at: datetime | None = None
    external_id: str | None = None
    activity: dict[str, Any] = {}
    stage: str
    status: str
    # The latest consent per channel: opted_in, opted_out or unknown.
    consent: dict[str, str] = {}
    crm_id: str | None = None
    created_at: datetime
    updated_at: datetime
    scored_at: datetime | None
    duplicate: bool | None = None

    @classmethod
    def from_lead(cls, lead: Lead, duplicate: bool | None = None) -> "LeadPublic":
        return cls(
            id=lead.id,
            contact=ContactOut(
                first_name=lead.first_name,
                last_name=lead.last_name,
                email=lead.email,
                phone=lead.phone,
                phone_status=lead.phone_status,
                timezone=lead.timezone,
                job_title=lead.job_title,
            ),
            company=CompanyOut(
                name=lead.company_name,
                industry=lead.company_industry,
                size=lead.company_size,
                revenue=lead.company_revenue,
                website=lead.company_website,
                country=lead.company_country,
                growth_stage=lead.company_growth_stage,
                technologies=lead.company_technologies,
            ),
            source=SourceOut(
                channel=lead.source_channel,
                campaign=lead.source_campaign,
                medium=lead.source_medium,
                content=lead.source_content,
            ),
            custom_fields=lead.custom_fields,
            enrichment=lead.enrichment,
            score=lead.score,
            score_reasons=lead.score_reasons,
            rules_score=lead.rules_score,
            conversion_probability=lead.conversion_probability,
            model_contributions=lead.model_contributions,
            criteria_version=lead.criteria_version,
            model_version=lead.model_version,
            outcome=lead.outcome,
            outcome_at=lead.outcome_at,
            external_id=lead.external_id,
            activity=lead.activity,
            stage=lead.stage,
            status=lead.status,
            consent={"email": lead.email_consent, "sms": lead.sms_consent},
            crm_id=lead.crm_id,
            created_at=lead.created_at,
            updated_at=lead.updated_at,
            scored_at=lead.scored_at,
            duplicate=duplicate,
        )
