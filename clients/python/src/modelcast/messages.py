"""Which generated data model belongs to which wire `type` — read from the generated union,
so there is no hand-kept table to go stale."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel

from . import models


def _branches() -> dict[str, type[BaseModel]]:
    out: dict[str, type[BaseModel]] = {}
    for branch in typing.get_args(models.ServerMessage.model_fields["root"].annotation):
        (type_name,) = typing.get_args(branch.model_fields["type"].annotation)
        out[type_name] = branch.model_fields["data"].annotation
    return out


#: wire type name → the pydantic model of its `data` (e.g. "alert" → `models.Alert`).
DATA_MODELS: dict[str, type[BaseModel]] = _branches()
#: the reverse: data model class → wire type name.
TYPE_NAMES: dict[type[BaseModel], str] = {cls: name for name, cls in DATA_MODELS.items()}


def frame_of(message: Any) -> dict[str, Any]:
    """`{"type", "data"}` for `POST /api/publish` from a generated data model (its type is
    known from its class) or from a dict already in that form. Anything else is a TypeError."""
    if isinstance(message, BaseModel):
        type_name = TYPE_NAMES.get(type(message))
        if type_name is None:
            raise TypeError(
                f"{type(message).__name__} is not a message's data model (use one of modelcast.models: "
                f"{', '.join(sorted(c.__name__ for c in TYPE_NAMES))})"
            )
        return {"type": type_name, "data": message.model_dump(mode="json", exclude_none=True)}
    if isinstance(message, dict) and set(message) >= {"type", "data"}:
        return message
    raise TypeError(
        f"cannot publish {type(message).__name__}: pass a modelcast.models data model "
        '(e.g. models.Alert(...)) or a dict {"type": ..., "data": {...}}'
    )
