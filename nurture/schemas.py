"""Base classes for the camelCase JSON the API reads and writes, and its paths."""

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# The range of an INTEGER column on PostgreSQL (32-bit signed). A larger
# number in a query makes PostgreSQL raise "integer out of range", and one
# past 64 bits makes SQLite's driver raise OverflowError. Ids, offsets and
# filters are bounded by this range, so a larger value gets a 422 instead.
MIN_DB_INTEGER = -(2**31)
MAX_DB_INTEGER = 2**31 - 1
DbInteger = Annotated[int, Field(ge=MIN_DB_INTEGER, le=MAX_DB_INTEGER)]


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


def inline_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Return the model's camelCase JSON schema with its `$defs` inlined.

    A schema put into a route's `openapi_extra` lands inside the OpenAPI
    document, where `#/$defs/...` resolves against the document's root and
    finds nothing. Raises ValueError for a model that refers to itself.
    """
    schema = model.model_json_schema(by_alias=True)
    definitions = schema.pop("$defs", {})

    def resolve(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        reference = node.get("$ref")
        if isinstance(reference, str) and reference.startswith("#/$defs/"):
            name = reference.removeprefix("#/$defs/")
            if name in seen:
                raise ValueError(f"{model.__name__} refers to itself through {name}")
            siblings = {key: value for key, value in node.items() if key != "$ref"}
            return {**resolve(definitions[name], (*seen, name)), **siblings}
        return {key: resolve(value, seen) for key, value in node.items()}

    resolved: dict[str, Any] = resolve(schema, ())
    return resolved
