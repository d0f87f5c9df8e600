"""CRM sync behind one interface: a generic webhook, or HubSpot's CRM API.

The lead workflow's `sync_lead_to_crm` activity upserts the lead as a contact
at each stage change through `crm_client_for(settings)`. The send worker
creates sales tasks through `crm_task_sender_for(settings)`.

The HubSpot adapter uses the official SDK (`hubspot-api-client`) against
HUBSPOT_BASE_URL: contacts are upserted by email with
`POST /crm/v3/objects/contacts/batch/upsert`, or updated by id with
`PATCH /crm/v3/objects/contacts/{id}` once the lead has a stored `crm_id`.
Tasks are created with `POST /crm/v3/objects/tasks`, associated with the
contact.
"""

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol

import httpx
import sqlalchemy as sa
import urllib3
from hubspot import Client as HubSpotClient
from hubspot.crm.associations import v4 as hubspot_associations
from hubspot.crm.contacts import ApiException as ContactsApiException
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInputUpsert,
    SimplePublicObjectBatchInputUpsert,
    SimplePublicObjectInput,
)
from hubspot.crm.contacts import OpenApiException as ContactsOpenApiException
from hubspot.crm.objects.tasks import ApiException as TasksApiException
from hubspot.crm.objects.tasks import (
    AssociationSpec,
    BatchReadInputSimplePublicObjectId,
    PublicAssociationsForObject,
    PublicObjectId,
    SimplePublicObjectId,
    SimplePublicObjectInputForCreate,
)
from hubspot.crm.objects.tasks import OpenApiException as TasksOpenApiException
from urllib3.util.retry import Retry

from activities.providers import (
    CrmTaskSender,
    Outgoing,
    ProviderError,
    TaskSender,
)
from nurture.config import Settings
from nurture.db import create_db_engine, session_scope
from nurture.leads import LeadPublic
from nurture.models import Lead, utcnow
from nurture.retry_after import retry_after_seconds

logger = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_SECONDS = 10
# Per HubSpot call. A sales task usually takes three or four calls (an upsert
# when the lead has no crm_id, two reads, the create), which fit the send
# activity's 60-second start-to-close timeout.
HUBSPOT_TIMEOUT_SECONDS = 10
# HubSpot's batch read takes at most 100 ids, its v4 association list 500.
HUBSPOT_BATCH_READ_LIMIT = 100
HUBSPOT_ASSOCIATIONS_PAGE = 500
# The HUBSPOT_DEFINED association type of a task to a contact.
TASK_TO_CONTACT = 204

# HubSpot contact property -> lead field. A field is a Lead column, or
# "custom_fields.<key>" or "enrichment.<key>". HUBSPOT_FIELD_MAPPING is
# merged over it, and maps a property to null to leave it out.
DEFAULT_HUBSPOT_MAPPING: dict[str, str] = {
    "email": "email",
    "firstname": "first_name",
    "lastname": "last_name",
    "phone": "phone",
    "company": "company_name",
    "jobtitle": "job_title",
    # Not "industry": HubSpot's is a list of fixed options (COMPUTER_SOFTWARE,
    # ...) that our free-text industries do not match.
    "country": "company_country",
    "website": "company_website",
    "lifecyclestage": "stage",
    # A custom number property that HubSpot accounts do not have until an
    # admin creates it.
    "nurture_score": "score",
}
# Our stages as HubSpot's internal lifecycle stage values. Values written to
# `lifecyclestage` pass through this map; others are sent as they are.
LIFECYCLE_STAGES = {
    "new": "lead",
    "engaged": "lead",
    "mql": "marketingqualifiedlead",
    "sql": "salesqualifiedlead",
    "customer": "customer",
}


class CrmError(Exception):
    """A CRM call failed.

    `retryable` errors (network, 429, 5xx) may pass later, after
    `retry_after_seconds` when the CRM's response gave a delay. The others
    will fail again.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after_seconds = retry_after_seconds


class CrmSkipped(Exception):
    """The CRM cannot take this lead, so nothing was sent (HubSpot without email)."""


class CrmClient(Protocol):
    name: str
    # False when no CRM is configured: syncs are then no-ops.
    enabled: bool

    def upsert_contact(self, lead: Lead, reason: str) -> str | None:
        """Create or update the lead's contact; return its CRM id, if the CRM gives one.

        Raises CrmError when the call fails and CrmSkipped when the CRM cannot
        take the lead.
        """
        ...

    def create_task(self, message: Outgoing, contact_id: str | None) -> str:
        """Create the sales task once per message id; return the task's id."""
        ...


class WebhookCrmClient:
    """POSTs each lead sync to CRM_WEBHOOK_URL as {"reason", "lead"}.

    The lead is the API's lead JSON. Sales tasks go to the same URL through
    `CrmTaskSender`. Without a URL, nothing is sent.
    """

    name = "webhook"

    def __init__(self, url: str) -> None:
        self.url = url
        self.enabled = bool(url)

    def upsert_contact(self, lead: Lead, reason: str) -> str | None:
        payload = {
            "reason": reason,
            "lead": LeadPublic.from_lead(lead).model_dump(mode="json"),
        }
        try:
            response = httpx.post(
                self.url, json=payload, timeout=WEBHOOK_TIMEOUT_SECONDS
            )
        except httpx.HTTPError as error:
            raise CrmError(
                f"CRM unreachable at {self.url}: {error}", retryable=True
            ) from None
        status = response.status_code
        if status >= 500 or status == 429:
            raise CrmError(
                f"CRM returned HTTP {status}",
                retryable=True,
                status=status,
                retry_after_seconds=retry_after_seconds(response.headers),
            )
        if status >= 400:
            raise CrmError(
                f"CRM returned HTTP {status}: {response.text[:200]}",
                retryable=False,
                status=status,
            )
        return None

    def create_task(self, message: Outgoing, contact_id: str | None) -> str:
        try:
            return CrmTaskSender(self.url).send(message)
        except ProviderError as error:
            raise CrmError(
                str(error),
                retryable=not error.permanent,
                status=error.status,
                retry_after_seconds=error.retry_after_seconds,
            ) from None


def parse_field_mapping(text: str) -> dict[str, str]:
    """Merge HUBSPOT_FIELD_MAPPING (a JSON object) over the default mapping.

    Raises ValueError for invalid JSON, or a value that is no lead field.
    """
    mapping = dict(DEFAULT_HUBSPOT_MAPPING)
    if not text.strip():
        return mapping
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"HUBSPOT_FIELD_MAPPING is not valid JSON: {error}") from None
    if not isinstance(overrides, dict):
        raise ValueError(
            "HUBSPOT_FIELD_MAPPING must be a JSON object of HubSpot property to "
            'lead field, e.g. {"jobtitle": "job_title"}'
        )
    for prop, field in overrides.items():
        if field is None:
            mapping.pop(prop, None)
        elif isinstance(field, str) and _is_lead_field(field):
            mapping[prop] = field
        else:
            raise ValueError(
                f"HUBSPOT_FIELD_MAPPING maps {prop!r} to {field!r}, which is not a "
                "lead field: use a Lead column such as first_name, or "
                "custom_fields.<key>, or enrichment.<key>, or null to leave it out"
            )
    return mapping


def _is_lead_field(field: str) -> bool:
    section, _, key = field.partition(".")
    if key:
        return section in ("custom_fields", "enrichment")
    return field in Lead.model_fields


def _lead_value(lead: Lead, field: str) -> Any:
    section, _, key = field.partition(".")
    if key:
        values = getattr(lead, section) or {}
        return values.get(key) if isinstance(values, dict) else None
    return getattr(lead, field)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, list | tuple):
        # HubSpot separates the options of a multiple checkbox with ";".
        return ";".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def hubspot_properties(lead: Lead, mapping: dict[str, str]) -> dict[str, str]:
    """Return the contact properties for a lead; empty lead fields are left out.

    Leaving them out keeps what a sales rep typed into HubSpot, where an
    empty string would clear it.
    """
    properties = {}
    for prop, field in mapping.items():
        value = _lead_value(lead, field)
        if value is None or value == "" or value == [] or value == {}:
            continue
        text = _as_text(value)
        if prop == "lifecyclestage":
            text = LIFECYCLE_STAGES.get(text, text)
        properties[prop] = text
    return properties


def task_marker(message_id: str) -> str:
    """Return the line that ties a HubSpot task to our message id."""
    return f"[nurture message {message_id}]"


def _task_type(template: str) -> str:
    """Pick HubSpot's task type (CALL, EMAIL or TODO) from the template name."""
    if template.startswith("call"):
        return "CALL"
    if template.startswith("email"):
        return "EMAIL"
    return "TODO"


_API_EXCEPTIONS = (
    ContactsApiException,
    TasksApiException,
    hubspot_associations.ApiException,
)
_CLIENT_EXCEPTIONS = (
    ContactsOpenApiException,
    TasksOpenApiException,
    hubspot_associations.OpenApiException,
)


def _hubspot_message(body: Any) -> str:
    """Return HubSpot's error message, with its category, from an error body."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        return str(body)[:300]
    if not isinstance(parsed, dict):
        return str(body)[:300]
    message = str(parsed.get("message") or "")
    category = parsed.get("category")
    return f"{message} ({category})" if category else message or str(body)[:300]


def _hubspot_retry_after(headers: Any) -> float | None:
    """Return the seconds to wait after a 429, from HubSpot's headers.

    Retry-After comes first. Else, when a rate limit window has no requests
    left, the wait is that window's length: the burst limit's
    X-HubSpot-RateLimit-Interval-Milliseconds, or one second for the
    per-second limit. Otherwise None, so the caller's own backoff applies.
    NOTE: a spent daily limit (X-HubSpot-RateLimit-Daily-Remaining 0) gets no
    delay here, because HubSpot resets it at midnight in the account's time
    zone, which this code does not know.
    """
    if headers is None:
        return None
    retry_after = retry_after_seconds(headers)
    if retry_after is not None:
        return retry_after
    if headers.get("X-HubSpot-RateLimit-Remaining") == "0":
        interval = headers.get("X-HubSpot-RateLimit-Interval-Milliseconds")
        try:
            return float(interval) / 1000 if interval is not None else None
        except ValueError:
            return None
    if headers.get("X-HubSpot-RateLimit-Secondly-Remaining") == "0":
        return 1.0
    return None


def _raise_for(error: Exception, action: str) -> NoReturn:
    if isinstance(error, _API_EXCEPTIONS):
        status = int(getattr(error, "status", 0) or 0)
        headers = getattr(error, "headers", None)
        detail = _hubspot_message(getattr(error, "body", None)) or str(
            getattr(error, "reason", "")
        )
        retryable = status == 0 or status == 429 or status >= 500
        raise CrmError(
            f"HubSpot {action} failed with HTTP {status}: {detail}",
            retryable=retryable,
            status=status or None,
            retry_after_seconds=_hubspot_retry_after(headers) if retryable else None,
        ) from None
    if isinstance(error, urllib3.exceptions.HTTPError):
        raise CrmError(
            f"HubSpot unreachable ({action}): {error}", retryable=True
        ) from None
    # The SDK checked a request before sending it: a bug here, not at HubSpot.
    raise CrmError(f"HubSpot {action} not sent: {error}", retryable=False) from None


@contextmanager
def _hubspot_call(action: str) -> Iterator[None]:
    """Turn the SDK's and urllib3's errors into CrmError."""
    try:
        yield
    except (
        *_API_EXCEPTIONS,
        *_CLIENT_EXCEPTIONS,
        urllib3.exceptions.HTTPError,
    ) as error:
        _raise_for(error, action)


class HubSpotCrmClient:
    """Keeps HubSpot contacts in step with leads, and creates their sales tasks.

    Retries are the caller's: the SDK's own are off, except for connections
    that never opened, so Temporal's retry policy handles every failure.
    """

    name = "hubspot"
    enabled = True

    def __init__(
        self, access_token: str, base_url: str, mapping: dict[str, str]
    ) -> None:
        self.mapping = mapping
        client = HubSpotClient.create(
            access_token=access_token,
            host=base_url.rstrip("/"),
            retry=Retry(connect=2, read=0, redirect=0, status=0, other=0),
        )
        self._contacts = client.crm.contacts.basic_api
        self._contacts_batch = client.crm.contacts.batch_api
        self._tasks = client.crm.objects.tasks.basic_api
        self._tasks_batch = client.crm.objects.tasks.batch_api
        self._associations = client.crm.associations.v4.basic_api

    def upsert_contact(self, lead: Lead, reason: str) -> str | None:
        """Update the lead's contact by its stored id, else upsert it by email.

        An upsert by email is idempotent, so a retry after a lost response
        finds the contact that the first try created.
        """
        properties = hubspot_properties(lead, self.mapping)
        if lead.crm_id:
            try:
                with _hubspot_call("contact update"):
                    self._contacts.update(
                        lead.crm_id,
                        SimplePublicObjectInput(properties=properties),
                        _request_timeout=HUBSPOT_TIMEOUT_SECONDS,
                    )
                return lead.crm_id
            except CrmError as error:
                if error.status != 404:
                    raise
                logger.warning(
                    "HubSpot contact %s of lead %s is gone (deleted or merged); "
                    "upserting the lead by email",
                    lead.crm_id,
                    lead.id,
                )
        email = lead.email_normalized or (lead.email or "").lower()
        if not email:
            raise CrmSkipped(
                f"lead {lead.id} has no email address, which HubSpot upserts "
                "contacts by"
            )
        with _hubspot_call("contact upsert"):
            response = self._contacts_batch.upsert(
                BatchInputSimplePublicObjectBatchInputUpsert(
                    inputs=[
                        SimplePublicObjectBatchInputUpsert(
                            id=email, id_property="email", properties=properties
                        )
                    ]
                ),
                _request_timeout=HUBSPOT_TIMEOUT_SECONDS,
            )
        results = response.results or []
        if not results:
            errors = getattr(response, "errors", None) or []
            detail = "; ".join(str(getattr(e, "message", e)) for e in errors)
            raise CrmError(
                f"HubSpot upserted no contact for lead {lead.id}: "
                f"{detail or 'empty results'}",
                retryable=False,
            )
        return str(results[0].id)

    def create_task(self, message: Outgoing, contact_id: str | None) -> str:
        """Create the message's task on the contact, unless it is there already."""
        if contact_id is None:
            raise CrmError(
                f"no HubSpot contact for lead {message.lead_id} to attach the task to",
                retryable=False,
            )
        existing = self.find_task(contact_id, message.message_id)
        if existing is not None:
            logger.info(
                "HubSpot task %s for message %s already exists; not creating another",
                existing,
                message.message_id,
            )
            return existing
        due = (
            datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )
        properties = {
            "hs_timestamp": due,
            "hs_task_subject": message.subject
            or f"Follow up with lead {message.lead_id}",
            "hs_task_body": f"{message.text}\n\n{task_marker(message.message_id)}",
            "hs_task_status": "NOT_STARTED",
            "hs_task_priority": "HIGH",
            "hs_task_type": _task_type(message.template),
        }
        association = PublicAssociationsForObject(
            to=PublicObjectId(id=contact_id),
            types=[
                AssociationSpec(
                    association_category="HUBSPOT_DEFINED",
                    association_type_id=TASK_TO_CONTACT,
                )
            ],
        )
        with _hubspot_call("task create"):
            created = self._tasks.create(
                SimplePublicObjectInputForCreate(
                    properties=properties, associations=[association]
                ),
                _request_timeout=HUBSPOT_TIMEOUT_SECONDS,
            )
        return str(created.id)

    def find_task(self, contact_id: str, message_id: str) -> str | None:
        """Return the id of the contact's task for this message, if there is one.

        Reads the contact's task associations and the tasks' bodies, which
        carry `task_marker(message_id)`. HubSpot's search API would need one
        call, but its index lags behind creates (Okta's HubSpot connector docs
        advise waiting 10 seconds), so a retry seconds after a lost response
        could miss the task and create it twice.
        """
        marker = task_marker(message_id)
        task_ids = self._task_ids(contact_id)
        for start in range(0, len(task_ids), HUBSPOT_BATCH_READ_LIMIT):
            chunk = task_ids[start : start + HUBSPOT_BATCH_READ_LIMIT]
            with _hubspot_call("task read"):
                response = self._tasks_batch.read(
                    BatchReadInputSimplePublicObjectId(
                        inputs=[SimplePublicObjectId(id=task_id) for task_id in chunk],
                        properties=["hs_task_body"],
                        properties_with_history=[],
                    ),
                    _request_timeout=HUBSPOT_TIMEOUT_SECONDS,
                )
            for task in response.results or []:
                body = (task.properties or {}).get("hs_task_body") or ""
                if marker in body:
                    return str(task.id)
        return None

    def _task_ids(self, contact_id: str) -> list[str]:
        ids: list[str] = []
        after = None
        while True:
            with _hubspot_call("task association read"):
                page = self._associations.get_page(
                    "contacts",
                    contact_id,
                    "tasks",
                    limit=HUBSPOT_ASSOCIATIONS_PAGE,
                    after=after,
                    _request_timeout=HUBSPOT_TIMEOUT_SECONDS,
                )
            ids.extend(str(result.to_object_id) for result in page.results or [])
            paging = page.paging
            after = paging.next.after if paging and paging.next else None
            if not after:
                return ids


class HubSpotTaskSender:
    """Creates sales tasks in HubSpot, associated with the lead's contact.

    Has the shape of `activities.providers.TaskSender`. Reads the lead's
    stored `crm_id`, and upserts the contact first (storing its id) when the
    lead has none yet. Raises ProviderError, permanent for the errors that a
    retry cannot fix.
    """

    name = "hubspot"
    # NOTE: assumes that HubSpot's association reads, which find_sent makes,
    # list a new task at once. Only its search index is known to lag.
    lookup_delay_seconds = 0.0

    def __init__(self, client: HubSpotCrmClient, engine: sa.Engine) -> None:
        self.client = client
        self.engine = engine

    def send(self, message: Outgoing) -> str:
        try:
            contact_id = self._contact_id(message.lead_id)
            return self.client.create_task(message, contact_id)
        except CrmSkipped as skipped:
            raise ProviderError(str(skipped), permanent=True) from None
        except CrmError as error:
            raise ProviderError(
                str(error),
                permanent=not error.retryable,
                status=error.status,
                retry_after_seconds=error.retry_after_seconds,
            ) from None

    def find_sent(self, message: Outgoing, since: datetime) -> str | None:
        """Return the HubSpot id of the message's task, if HubSpot has it."""
        with session_scope(self.engine) as session:
            lead = session.get(Lead, message.lead_id)
            contact_id = lead.crm_id if lead is not None else None
        if contact_id is None:
            return None
        try:
            return self.client.find_task(contact_id, message.message_id)
        except CrmError as error:
            raise ProviderError(str(error), permanent=False) from None

    def _contact_id(self, lead_id: str) -> str:
        with session_scope(self.engine) as session:
            lead = session.get(Lead, lead_id)
            if lead is None:
                raise CrmError(f"lead {lead_id} not found", retryable=False)
        if lead.crm_id:
            return lead.crm_id
        contact_id = self.client.upsert_contact(lead, "sales task")
        if contact_id is None:
            raise CrmError(f"HubSpot gave no id for lead {lead_id}", retryable=False)
        with session_scope(self.engine) as session:
            stored = session.get(Lead, lead_id)
            if stored is not None and stored.crm_id is None:
                stored.crm_id = contact_id
                stored.crm_synced_at = utcnow()
                session.add(stored)
        return contact_id


def hubspot_client_for(settings: Settings) -> HubSpotCrmClient:
    if not settings.hubspot_access_token:
        raise ValueError("HUBSPOT_ACCESS_TOKEN is required when CRM_PROVIDER=hubspot")
    return HubSpotCrmClient(
        settings.hubspot_access_token,
        settings.hubspot_base_url,
        parse_field_mapping(settings.hubspot_field_mapping),
    )


def crm_client_for(settings: Settings) -> CrmClient:
    """Build the CRM client that CRM_PROVIDER names."""
    if settings.crm_provider == "hubspot":
        return hubspot_client_for(settings)
    return WebhookCrmClient(settings.crm_webhook_url)


def crm_task_sender_for(
    settings: Settings, engine: sa.Engine | None = None
) -> TaskSender:
    """Build the sales task sender for CRM_PROVIDER.

    HubSpot's reads and writes the lead's `crm_id`, so it needs the database:
    pass the worker's engine, or it opens one on DATABASE_URL.
    """
    if settings.crm_provider == "hubspot":
        return HubSpotTaskSender(
            hubspot_client_for(settings),
            engine or create_db_engine(settings.database_url),
        )
    return CrmTaskSender(settings.crm_webhook_url)
