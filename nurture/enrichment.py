"""Lead enrichment: facts derived from the lead's own fields, and company facts
from an outside lookup service merged over them.

`enrich` makes no outside calls, so the API runs it inside the request. The
lead workflow's `enrich_lead` activity also asks the configured `Enricher`:
`OfflineEnricher` adds nothing, `HttpCompanyEnricher` looks the lead's company
domain up in a Clearbit-style company API and caches each result in the
`enrichment_cache` table.
"""

import logging
import re
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal, Protocol

import httpx
import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.dialects import postgresql, sqlite

from nurture.config import Settings
from nurture.db import session_scope
from nurture.models import EnrichmentCacheEntry, Lead, utcnow
from nurture.retry_after import retry_after_seconds

logger = logging.getLogger(__name__)

FREE_MAIL_DOMAINS = frozenset(
    {
        "aol.com",
        "gmail.com",
        "googlemail.com",
        "gmx.com",
        "gmx.de",
        "hotmail.com",
        "hotmail.co.uk",
        "icloud.com",
        "live.com",
        "mac.com",
        "mail.com",
        "mail.ru",
        "me.com",
        "msn.com",
        "outlook.com",
        "proton.me",
        "protonmail.com",
        "qq.com",
        "web.de",
        "yahoo.com",
        "yahoo.co.uk",
        "yandex.ru",
        "zoho.com",
    }
)

ROLE_LOCAL_PARTS = frozenset(
    {
        "admin",
        "billing",
        "contact",
        "hello",
        "help",
        "hr",
        "info",
        "jobs",
        "marketing",
        "no-reply",
        "noreply",
        "office",
        "sales",
        "support",
        "team",
        "webmaster",
    }
)

# Canonical industry names and the words that point at them.
INDUSTRY_SYNONYMS: dict[str, tuple[str, ...]] = {
    "Technology": ("technology", "tech", "software", "saas", "it", "internet"),
    "Financial Services": ("financial", "finance", "fintech", "banking", "insurance"),
    "Healthcare": ("healthcare", "health", "medical", "pharma", "biotech"),
    "Manufacturing": ("manufacturing", "industrial", "automotive"),
    "Retail": ("retail", "e-commerce", "ecommerce", "consumer goods"),
    "Professional Services": ("consulting", "professional services", "legal"),
    "Education": ("education", "edtech", "university", "school"),
    "Government": ("government", "public sector", "non-profit", "nonprofit"),
}

# Employee-count bands as business directories publish them: (low, high, label).
SIZE_BANDS: tuple[tuple[int, int | None, str], ...] = (
    (1, 10, "1-10"),
    (11, 50, "11-50"),
    (51, 200, "51-200"),
    (201, 500, "201-500"),
    (501, 1000, "501-1000"),
    (1001, 5000, "1001-5000"),
    (5001, None, "5001+"),
)

_NUMBER = re.compile(
    r"(\d+(?:[.,]\d+)?)\s*((?:thousand|million|billion|k|m|b)(?![a-z]))?",
    re.IGNORECASE,
)
_MULTIPLIERS = {
    "k": 1_000,
    "thousand": 1_000,
    "m": 1_000_000,
    "million": 1_000_000,
    "b": 1_000_000_000,
    "billion": 1_000_000_000,
}


class CompanyFacts(BaseModel):
    """Company facts from a lookup, mapped from the provider's JSON."""

    name: str | None = None
    # The provider's own industry text, e.g. "Internet Software & Services".
    industry: str | None = None
    employees: int | None = None
    employees_range: str | None = None
    revenue_usd: int | None = None
    revenue_range: str | None = None
    # ISO 3166-1 alpha-2 code when the provider gives one.
    country: str | None = None
    technologies: list[str] = Field(default_factory=list)
    growth_stage: str | None = None


class CompanyLookup(BaseModel):
    """The outcome of one company lookup, stored in `lead.enrichment["lookup"]`."""

    provider: str
    domain: str
    status: Literal["found", "not_found", "failed"]
    company: CompanyFacts | None = None
    # True when the result came from enrichment_cache, with no HTTP call.
    cached: bool = False
    # ISO 8601 time of the provider's response, kept as a string so that the
    # lead's JSON column stores it unchanged.
    fetched_at: str | None = None
    error: str | None = None


class Enrichment(BaseModel):
    email_domain: str | None = None
    free_mail: bool = False
    role_address: bool = False
    company_domain: str | None = None
    industry: str | None = None
    employees: int | None = None
    size_band: str | None = None
    revenue_usd: int | None = None
    company_name: str | None = None
    country: str | None = None
    technologies: list[str] = Field(default_factory=list)
    growth_stage: str | None = None
    # The provider of each fact above that a company lookup supplied, e.g.
    # {"industry": "http"}. Facts not listed are derived offline from the
    # lead's own fields.
    sources: dict[str, str] = Field(default_factory=dict)
    lookup: CompanyLookup | None = None
    # Lead columns that a lookup filled because the lead left them empty, with
    # the value written. A later lookup may replace these values, but never a
    # value the lead gave.
    filled_columns: dict[str, Any] = Field(default_factory=dict)


def parse_amounts(text: str | None) -> list[float]:
    """Read the numbers in a range such as "$5M-$10M", "50-100" or "1000+"."""
    if not text:
        return []
    amounts = []
    for digits, suffix in _NUMBER.findall(text.replace(",", "")):
        value = float(digits)
        if suffix:
            value *= _MULTIPLIERS[suffix.lower()]
        amounts.append(value)
    return amounts


def midpoint(text: str | None) -> int | None:
    """Return the middle of a range, or its single number, or None."""
    amounts = parse_amounts(text)
    if not amounts:
        return None
    return round(sum(amounts[:2]) / len(amounts[:2]))


def normalize_industry(text: str | None) -> str | None:
    if not text:
        return None
    lowered = text.strip().lower()
    words = set(re.split(r"[\s/&,]+", lowered))
    for canonical, synonyms in INDUSTRY_SYNONYMS.items():
        if lowered == canonical.lower() or any(
            s in words or s == lowered for s in synonyms
        ):
            return canonical
    return text.strip().title()


def size_band(employees: int | None) -> str | None:
    if employees is None:
        return None
    for low, high, label in SIZE_BANDS:
        if employees >= low and (high is None or employees <= high):
            return label
    return None


def _website_domain(website: str | None) -> str | None:
    if not website:
        return None
    host = re.sub(r"^[a-z]+://", "", website.strip().lower()).split("/")[0]
    host = host.split(":")[0]
    return host.removeprefix("www.") or None


def _offline_facts(lead: Mapping[str, Any]) -> Enrichment:
    email = lead.get("email")
    result = Enrichment()
    if email and "@" in email:
        local, domain = email.lower().rsplit("@", 1)
        result.email_domain = domain
        result.free_mail = domain in FREE_MAIL_DOMAINS
        result.role_address = local.split("+")[0] in ROLE_LOCAL_PARTS
        if not result.free_mail:
            result.company_domain = domain
    result.company_domain = _website_domain(lead.get("company_website")) or (
        result.company_domain
    )
    result.industry = normalize_industry(lead.get("company_industry"))
    result.employees = midpoint(lead.get("company_size"))
    result.size_band = size_band(result.employees)
    revenue = midpoint(lead.get("company_revenue"))
    result.revenue_usd = int(revenue) if revenue is not None else None
    return result


def enrich(lead: Mapping[str, Any], lookup: CompanyLookup | None = None) -> Enrichment:
    """Derive enrichment facts from a lead's columns and merge a lookup over them.

    Without `lookup`, the lookup already stored in `lead["enrichment"]` is
    merged again while the lead's company domain is unchanged. So an offline
    re-enrichment, which the API runs on every edit, keeps the provider's facts.
    A lookup for another domain than the lead's is ignored.
    """
    result = _offline_facts(lead)
    previous = lead.get("enrichment") or {}
    if lookup is None:
        lookup = _stored_lookup(previous)
    if lookup is not None and lookup.domain == lookup_domain(result):
        _merge(result, lookup)
    filled = previous.get("filled_columns")
    if isinstance(filled, dict):
        # A column the lead has changed since the lookup filled it is the lead's.
        result.filled_columns = {
            column: value
            for column, value in filled.items()
            if lead.get(column) == value
        }
    return result


def _stored_lookup(previous: Mapping[str, Any]) -> CompanyLookup | None:
    stored = previous.get("lookup")
    if not isinstance(stored, dict):
        return None
    try:
        return CompanyLookup.model_validate(stored)
    except ValueError:
        return None


def _merge(result: Enrichment, lookup: CompanyLookup) -> None:
    result.lookup = lookup
    company = lookup.company
    if lookup.status != "found" or company is None:
        return
    supplied: dict[str, Any] = {
        "company_name": company.name,
        "industry": normalize_industry(company.industry),
        "employees": company.employees,
        "size_band": size_band(company.employees),
        "revenue_usd": company.revenue_usd,
        "country": company.country,
        "technologies": company.technologies,
        "growth_stage": company.growth_stage,
    }
    for fact, value in supplied.items():
        if value is None or value == "" or value == []:
            continue
        setattr(result, fact, value)
        result.sources[fact] = lookup.provider


def lookup_domain(facts: Enrichment) -> str | None:
    """Return the company domain to look up, or None for none or a free-mail one."""
    domain = facts.company_domain
    if not domain or domain in FREE_MAIL_DOMAINS or "." not in domain:
        return None
    return domain


def _column_values(company: CompanyFacts) -> dict[str, Any]:
    """Return the lead columns that scoring reads, as a lookup would fill them."""
    size = company.employees_range or (
        str(company.employees) if company.employees is not None else None
    )
    revenue = (
        f"${company.revenue_usd:,}"
        if company.revenue_usd is not None and company.revenue_range is None
        else company.revenue_range
    )
    return {
        "company_name": company.name,
        "company_industry": company.industry,
        "company_size": size,
        "company_revenue": revenue,
        "company_country": company.country,
        "company_technologies": list(company.technologies),
        "company_growth_stage": company.growth_stage,
    }


def fill_lead_columns(lead: Lead, enrichment: Enrichment) -> list[str]:
    """Fill the lead's empty company columns from the enrichment's lookup.

    A column counts as empty when it is None, "" or [], or contains the value
    an earlier lookup wrote there. Records each value written in
    `enrichment.filled_columns` and returns the names of the changed columns.
    """
    lookup = enrichment.lookup
    if lookup is None or lookup.status != "found" or lookup.company is None:
        return []
    changed = []
    for column, value in _column_values(lookup.company).items():
        if value is None or value == "" or value == []:
            continue
        current = getattr(lead, column)
        ours = enrichment.filled_columns.get(column)
        if current not in (None, "", []) and current != ours:
            continue
        enrichment.filled_columns[column] = value
        if current != value:
            setattr(lead, column, value)
            changed.append(column)
    return changed


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _whole_number(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _section(body: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = body.get(name)
    return value if isinstance(value, Mapping) else {}


def company_facts(body: Mapping[str, Any]) -> CompanyFacts:
    """Map a company JSON in Clearbit's Company API shape to CompanyFacts.

    Reads these fields, and counts a field of the wrong type as missing:
    - `name`;
    - `category.industry`, else `category.industryGroup` or `category.sector`;
    - `metrics.employees` and `metrics.employeesRange` (e.g. "51-250");
    - `metrics.annualRevenue` and `metrics.estimatedAnnualRevenue`
      (e.g. "$10M-$50M");
    - `geo.countryCode`, else `geo.country`;
    - `tech`, a list of technology names;
    - `type`, whose value "public" gives the growth stage "public". The shape
      has no funding round, so no other growth stage comes from it.
    """
    category = _section(body, "category")
    metrics = _section(body, "metrics")
    geo = _section(body, "geo")
    employees_range = _text(metrics.get("employeesRange"))
    employees = _whole_number(metrics.get("employees"))
    if employees is None:
        employees = midpoint(employees_range)
    revenue_range = _text(metrics.get("estimatedAnnualRevenue"))
    revenue = _whole_number(metrics.get("annualRevenue"))
    if revenue is None:
        revenue = midpoint(revenue_range)
    country_code = _text(geo.get("countryCode"))
    technologies = body.get("tech")
    return CompanyFacts(
        name=_text(body.get("name")),
        industry=_text(category.get("industry"))
        or _text(category.get("industryGroup"))
        or _text(category.get("sector")),
        employees=employees,
        employees_range=employees_range,
        revenue_usd=revenue,
        revenue_range=revenue_range,
        country=country_code.upper() if country_code else _text(geo.get("country")),
        technologies=[
            name for name in technologies or [] if isinstance(name, str) and name
        ]
        if isinstance(technologies, list)
        else [],
        growth_stage="public" if body.get("type") == "public" else None,
    )


class Enricher(Protocol):
    name: str

    def lookup(self, lead: Mapping[str, Any]) -> CompanyLookup | None:
        """Look the lead's company up; None when there is nothing to look up.

        Returns status "failed" with the error when the provider fails, and
        raises only for errors of our own database.
        """
        ...


class OfflineEnricher:
    """Adds nothing to the offline facts: the default, with no outside calls."""

    name = "offline"

    def lookup(self, lead: Mapping[str, Any]) -> CompanyLookup | None:
        return None


class _Retryable(Exception):
    def __init__(self, message: str, retry_after_seconds: float | None = None):
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class HttpCompanyEnricher:
    """Looks companies up by domain in a Clearbit-style company API.

    Sends `GET <url>?domain=<domain>` with `Authorization: Bearer <api key>`.
    200 returns the company JSON that `company_facts` reads; 404 means an
    unknown company. Both are cached per domain for `cache_hours`. Timeouts,
    transport errors, 408, 429 and 5xx are retried `retries` times with
    exponential backoff, or after the Retry-After header when the provider
    sends one. Other statuses are not retried. A lookup stops retrying once a
    wait would pass `budget_seconds` after its start, so that the activity that
    calls it finishes within its own timeout.
    """

    name = "http"

    def __init__(
        self,
        engine: sa.Engine,
        url: str,
        api_key: str,
        *,
        timeout_seconds: float = 5.0,
        retries: int = 2,
        cache_hours: float = 24.0 * 30,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 8.0,
        budget_seconds: float = 20.0,
    ) -> None:
        self.engine = engine
        self.url = url
        self.api_key = api_key
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        self.cache_hours = cache_hours
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.budget_seconds = budget_seconds

    def lookup(self, lead: Mapping[str, Any]) -> CompanyLookup | None:
        domain = lookup_domain(_offline_facts(lead))
        if domain is None:
            return None
        cached = self._read_cache(domain)
        if cached is not None:
            return cached
        result = self._fetch(domain)
        if result.status == "failed":
            logger.warning(
                "company lookup for %s at %s failed: %s", domain, self.url, result.error
            )
        else:
            self._write_cache(result)
        return result

    def _fetch(self, domain: str) -> CompanyLookup:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        started = time.monotonic()
        attempts = self.retries + 1
        with httpx.Client(headers=headers) as client:
            for attempt in range(1, attempts + 1):
                remaining = self.budget_seconds - (time.monotonic() - started)
                timeout = max(min(self.timeout_seconds, remaining), 0.1)
                try:
                    return self._request(client, domain, timeout)
                except _Retryable as error:
                    failure = error
                if attempt == attempts:
                    break
                delay = failure.retry_after_seconds
                if delay is None:
                    delay = min(
                        self.backoff_seconds * 2 ** (attempt - 1),
                        self.max_backoff_seconds,
                    )
                elapsed = time.monotonic() - started
                if elapsed + delay >= self.budget_seconds:
                    return self._failed(
                        domain,
                        f"{failure}; the next try, in {delay:.1f}s, would pass "
                        f"the {self.budget_seconds:.0f}s budget of a lookup",
                    )
                logger.info(
                    "company lookup for %s: %s; retry %d of %d in %.1fs",
                    domain,
                    failure,
                    attempt,
                    self.retries,
                    delay,
                )
                time.sleep(delay)
        return self._failed(domain, f"{failure} ({attempts} attempts)")

    def _request(
        self, client: httpx.Client, domain: str, timeout: float
    ) -> CompanyLookup:
        """Make one request; raise _Retryable for the failures worth retrying."""
        try:
            response = client.get(self.url, params={"domain": domain}, timeout=timeout)
        except httpx.TimeoutException:
            raise _Retryable(f"timed out after {timeout:.1f}s") from None
        except httpx.TransportError as error:
            raise _Retryable(f"unreachable: {error}") from None
        except httpx.HTTPError as error:
            return self._failed(domain, f"request failed: {error}")
        status = response.status_code
        if status == 200:
            try:
                body = response.json()
            except ValueError:
                return self._failed(domain, "HTTP 200 with a body that is not JSON")
            if not isinstance(body, dict):
                return self._failed(
                    domain, "HTTP 200 with a JSON body that is not an object"
                )
            return CompanyLookup(
                provider=self.name,
                domain=domain,
                status="found",
                company=company_facts(body),
                fetched_at=utcnow().isoformat(),
            )
        if status == 404:
            return CompanyLookup(
                provider=self.name,
                domain=domain,
                status="not_found",
                fetched_at=utcnow().isoformat(),
            )
        if status in (408, 429) or status >= 500:
            raise _Retryable(
                f"HTTP {status}",
                retry_after_seconds(response.headers),
            )
        # 202 is Clearbit's "still looking it up": a later lookup may find it.
        return self._failed(domain, f"HTTP {status}: {response.text[:200]}")

    def _failed(self, domain: str, error: str) -> CompanyLookup:
        return CompanyLookup(
            provider=self.name, domain=domain, status="failed", error=error
        )

    def _read_cache(self, domain: str) -> CompanyLookup | None:
        with session_scope(self.engine) as session:
            entry = session.get(EnrichmentCacheEntry, domain)
            if (
                entry is None
                or entry.provider != self.name
                or entry.expires_at <= utcnow()
            ):
                return None
            data = dict(entry.data)
            fetched_at = entry.fetched_at
        status = data.get("status")
        company = data.get("company")
        if status == "found" and isinstance(company, dict):
            facts: CompanyFacts | None = CompanyFacts.model_validate(company)
        elif status == "not_found":
            facts = None
        else:
            return None
        return CompanyLookup(
            provider=self.name,
            domain=domain,
            status="found" if facts is not None else "not_found",
            company=facts,
            cached=True,
            fetched_at=fetched_at.isoformat(),
        )

    def _write_cache(self, result: CompanyLookup) -> None:
        """Store a found or not-found result, and drop expired ones."""
        if self.cache_hours <= 0:
            return
        now = utcnow()
        data: dict[str, Any] = {"status": result.status}
        if result.company is not None:
            data["company"] = result.company.model_dump()
        values = {
            "key": result.domain,
            "provider": self.name,
            "data": data,
            "fetched_at": now,
            "expires_at": now + timedelta(hours=self.cache_hours),
        }
        table: sa.Table = EnrichmentCacheEntry.__table__  # type: ignore[attr-defined]
        with self.engine.begin() as connection:
            connection.execute(sa.delete(table).where(table.c.expires_at <= now))
            connection.execute(_upsert(connection.dialect.name, table, values))


def _upsert(dialect: str, table: Any, values: dict[str, Any]) -> Any:
    """Build an INSERT that replaces the row with the same key."""
    changed = {name: value for name, value in values.items() if name != "key"}
    if dialect == "postgresql":
        return (
            postgresql.insert(table)
            .values(**values)
            .on_conflict_do_update(index_elements=["key"], set_=changed)
        )
    if dialect == "sqlite":
        return (
            sqlite.insert(table)
            .values(**values)
            .on_conflict_do_update(index_elements=["key"], set_=changed)
        )
    raise ValueError(
        f"the enrichment cache supports PostgreSQL and SQLite, not {dialect}"
    )


def enricher_for(settings: Settings, engine: sa.Engine) -> Enricher:
    """Build the enricher that ENRICHMENT_PROVIDER names."""
    if settings.enrichment_provider == "offline":
        return OfflineEnricher()
    if not settings.enrichment_url:
        raise ValueError("ENRICHMENT_URL is required when ENRICHMENT_PROVIDER=http")
    return HttpCompanyEnricher(
        engine,
        settings.enrichment_url,
        settings.enrichment_api_key,
        timeout_seconds=settings.enrichment_timeout_seconds,
        retries=settings.enrichment_retries,
        cache_hours=settings.enrichment_cache_hours,
    )
