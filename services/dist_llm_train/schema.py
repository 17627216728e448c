"""Base of every config model and the formatting of its errors.

Kept apart from config.py so that each component's own config module can import it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A config or preset that cannot be used; the message names the file and the field."""


class Section(BaseModel):
    """Strict types, unknown keys refused, immutable once built."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def format_validation_error(source: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"][:1].lower() + item["msg"][1:]
        got = "" if item["type"] in ("missing", "value_error") else f" (got {item['input']!r})"
        lines.append(f"{source}: {field}: {message}{got}")
    return "\n".join(lines)


def validate(model: type[BaseModel], data: Any, source: str) -> Any:
    """Build `model` from `data`; on failure raise ConfigError naming `source` and each field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None


def check_range(value: list, name: str = "range") -> list:
    """A [low, high] pair with low <= high."""
    if len(value) != 2:
        raise ValueError(f"{name} must be [low, high], got {len(value)} numbers")
    if value[0] > value[1]:
        raise ValueError(f"{name} low {value[0]} is above high {value[1]}")
    return value
