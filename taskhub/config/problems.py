"""Validation errors as problems a user can act on: the YAML path, its line, the value
given and what is allowed, with secrets masked."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from taskhub.config.paths import Loc
from taskhub.config.raw import RawConfig
from taskhub.config.secrets import mask_secrets, mask_url
from taskhub.errors import ConfigError, Problem

M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: Any, loc: Loc, raw: RawConfig) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(raw.source, problems_from(exc, model, loc, raw)) from None


def problems_from(
    exc: ValidationError, model: type[BaseModel], prefix: Loc, raw: RawConfig
) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False):
        inner: Loc = tuple(p for p in error["loc"] if not _is_union_tag(p))
        loc = (*prefix, *inner)
        kind = error["type"]
        if kind == "extra_forbidden":
            allowed = allowed_keys(model, inner[:-1])
            message = f"unknown option {inner[-1]!r}"
            if allowed:
                message += f"; allowed here: {', '.join(allowed)}"
        elif kind == "missing":
            message = "required, but missing"
        else:
            message = _lower_first(str(error["msg"]))
            given = mask_secrets(error.get("input"), loc, raw)  # a mapping may hold secrets
            message += f" (got {show_value(given, raw.is_secret(loc))})"
        problems.append(raw.problem(loc, message))
    return problems


def allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """The option names a model accepts at ``loc``, walking nested models."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(str(part))
        if info is None:
            return []
        current = info.annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(name for name, f in current.model_fields.items() if not f.exclude)
    return []


def show_value(value: Any, secret: bool = False) -> str:
    if secret:
        return "'***'"
    if isinstance(value, str) and "://" in value:
        value = mask_url(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_union_tag(part: str | int) -> bool:
    # pydantic adds the union member's type name to the location; users never wrote it.
    return isinstance(part, str) and part in {"str", "int", "float", "bool", "none"}


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]
