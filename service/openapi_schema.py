"""Request-body schemas for OpenAPI that resolve on their own.

A door that reads its body itself documents it through `openapi_extra`; pydantic's schema of a
nested model points into its own `$defs`, which OpenAPI never sees (ReDoc then fails with "Invalid
reference token: $defs"). `inline` replaces every such reference with the definition it names.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_PREFIX = "#/$defs/"


def inline(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with no `$ref` (its models are not recursive)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(_PREFIX):
                merged = {**defs[ref.removeprefix(_PREFIX)], **{k: v for k, v in node.items() if k != "$ref"}}
                return resolve(merged)
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved
