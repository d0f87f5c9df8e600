"""Base classes for the camelCase JSON the API reads and writes, and its paths."""

from collections.abc import Sequence

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


def json_path(loc: Sequence[int | str]) -> str:
    """Turn a pydantic location such as ("sequence", 1, "delay") into a JSON path.

    That example becomes `sequence[1].delay`.
    """
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(body)"
