"""Offline enrichment: facts derived from what the lead gave us, no outside calls."""

import re
from typing import Any

from pydantic import BaseModel

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


class Enrichment(BaseModel):
    email_domain: str | None = None
    free_mail: bool = False
    role_address: bool = False
    company_domain: str | None = None
    industry: str | None = None
    employees: int | None = None
    size_band: str | None = None
    revenue_usd: int | None = None


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


def enrich(lead: dict[str, Any]) -> Enrichment:
    """Derive enrichment facts from a lead's stored columns."""
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
