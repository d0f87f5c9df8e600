"""Temporal client set-up, workflow ids and the search attributes operators query."""

import logging

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)

from nurture.codec import data_converter
from nurture.config import Settings

logger = logging.getLogger(__name__)

LEAD_ID = SearchAttributeKey.for_keyword("LeadId")
LEAD_SCORE = SearchAttributeKey.for_int("LeadScore")
LEAD_STAGE = SearchAttributeKey.for_keyword("LeadStage")
CAMPAIGN_ID = SearchAttributeKey.for_keyword("CampaignId")
CAMPAIGN_STEP = SearchAttributeKey.for_int("CampaignStep")

SEARCH_ATTRIBUTES = {
    LEAD_ID.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    LEAD_SCORE.name: IndexedValueType.INDEXED_VALUE_TYPE_INT,
    LEAD_STAGE.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    CAMPAIGN_ID.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    CAMPAIGN_STEP.name: IndexedValueType.INDEXED_VALUE_TYPE_INT,
}

# The same list in the form of `temporal server start-dev --search-attribute`.
DEV_SERVER_SEARCH_ATTRIBUTES = [
    "LeadId=Keyword",
    "LeadScore=Int",
    "LeadStage=Keyword",
    "CampaignId=Keyword",
    "CampaignStep=Int",
]


def enrollment_search_attributes(
    lead_id: str, campaign_id: str
) -> TypedSearchAttributes:
    """The search attributes an enrollment's workflow starts with."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(LEAD_ID, lead_id),
            SearchAttributePair(CAMPAIGN_ID, campaign_id),
        ]
    )


def lead_workflow_id(lead_id: str) -> str:
    return f"lead-{lead_id}"


def nurture_workflow_id(campaign_id: str, lead_id: str) -> str:
    return f"nurture-{campaign_id}-{lead_id}"


async def connect(settings: Settings) -> Client:
    """Connect to Temporal, encrypting payloads when PAYLOAD_ENCRYPTION_KEYS is set."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings.payload_encryption_keys),
    )


async def ensure_search_attributes(client: Client) -> None:
    """Register the custom search attributes that are not registered yet."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    missing = {
        name: kind
        for name, kind in SEARCH_ATTRIBUTES.items()
        if name not in existing.custom_attributes
    }
    if not missing:
        return
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace, search_attributes=missing
        )
    )
    logger.info("registered search attributes %s", ", ".join(sorted(missing)))
