"""Base classes for the camelCase JSON that the API reads and writes."""

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class CamelModel(BaseModel):
    """A model whose JSON keys are camelCase and whose attributes are snake_case."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True
    )


class StrictCamelModel(CamelModel):
    """A camelCase model that rejects keys it does not define."""

    model_config = ConfigDict(extra="forbid")
