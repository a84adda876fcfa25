"""Declarative settings: each field of a settings dataclass carries its rule (`setting(default, rule)`), and the
dataclass checks every field against it on construction (`Checked`). A config file, a command-line flag and a test
that builds the dataclass directly all meet the same check, with one message format: the key, the value, and what
is allowed (runtime/config.py declares the runtime's sections with these)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from runtime.errors import MobileVLAError, range_problem

Rule = Callable[[str, Any], Any]  # (key, value) -> the value to keep, or MobileVLAError naming what is allowed


def config_error(key: str, value: object, allowed: str) -> MobileVLAError:
    return MobileVLAError(f"config key `{key}` has value {value!r}; allowed: {allowed}")


def setting(default: Any, rule: Rule) -> Any:
    """A dataclass field with its rule (a mutable default is copied per instance)."""
    if isinstance(default, dict | list):
        return field(default_factory=lambda: type(default)(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


class Checked:
    """A frozen settings dataclass whose fields are checked (and normalized: a YAML list becomes the tuple the field
    holds) on construction; `check()` adds the rules between fields. `SECTION` prefixes the keys in messages."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        prefix = f"{self.SECTION}." if self.SECTION else ""
        for f in fields(self):  # type: ignore[arg-type]
            rule = f.metadata.get("rule")
            if rule is not None:
                object.__setattr__(self, f.name, rule(prefix + f.name, getattr(self, f.name)))
        self.check()

    def check(self) -> None:
        """Rules that involve more than one field."""


def range_text(kind: str, low: float | None, high: float | None, exclusive_low: bool) -> str:
    parts = [kind if kind == "an integer" else "a finite number"]
    if low is not None:
        parts.append(f"{'>' if exclusive_low else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    return " ".join(parts)


@dataclass(frozen=True)
class Number:
    low: float | None = None
    high: float | None = None
    exclusive_low: bool = False
    integer: bool = False
    optional: bool = False  # None allowed (the bundle's value, for instance)

    def __call__(self, key: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        kind = "an integer" if self.integer else "a number"
        allowed = range_text(kind, self.low, self.high, self.exclusive_low) + (" or null" if self.optional else "")
        wrong_type = not isinstance(value, int | float) or (self.integer and not isinstance(value, int))
        if isinstance(value, bool) or wrong_type:
            raise config_error(key, value, allowed)
        if not math.isfinite(value) or range_problem(float(value), self.low, self.high,
                                                     low_open=self.exclusive_low) is not None:
            raise config_error(key, value, allowed)
        return int(value) if self.integer else float(value)


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]

    def __call__(self, key: str, value: Any) -> str:
        if value not in self.options:
            raise config_error(key, value, " | ".join(self.options))
        return str(value)


def flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise config_error(key, value, "true or false")
    return value


@dataclass(frozen=True)
class Text:
    optional: bool = False

    def __call__(self, key: str, value: Any) -> str | None:
        if value is None and self.optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise config_error(key, value, "a non-empty string" + (" or null" if self.optional else ""))
        return value


def optional_path(key: str, value: Any) -> Path | None:
    if value is None or isinstance(value, Path):
        return value
    text = Text(optional=True)(key, value)
    return None if text is None else Path(text).expanduser()


@dataclass(frozen=True)
class Axes:
    """A mapping of axis name to a positive limit; null or missing: no limits."""

    axes: tuple[str, ...]
    high: float

    def __call__(self, key: str, value: Any) -> dict[str, float]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise config_error(key, value, f"a mapping of axis to a positive number, axes {' | '.join(self.axes)}")
        limit = Number(0.0, self.high, exclusive_low=True)
        return {Choice(self.axes)(f"{key}.{axis}", axis): limit(f"{key}.{axis}", v) for axis, v in value.items()}


def pixel_size(key: str, value: Any) -> tuple[int, int]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise config_error(key, value, "[width, height] in pixels, e.g. [1280, 720]")
    width, height = (Number(1, 10000, integer=True)(key, v) for v in value)
    return width, height


@dataclass(frozen=True)
class SpecList:
    """One spec or a list of them (a YAML string or list; a tuple in code)."""

    forms: str

    def __call__(self, key: str, value: Any) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(item, str) and item for item in items):
            raise config_error(key, value, f"a list of sink specs: {self.forms}")
        return tuple(items)


def check_keys(section: str, data: dict[str, Any], cls: type, hidden: tuple[str, ...] = ()) -> None:
    allowed = [f.name for f in fields(cls) if f.name not in hidden]
    for key in data:
        if key not in allowed:
            where = f" in {section}" if section else ""
            prefix = f"{section}." if section else ""
            raise MobileVLAError(f"unknown config key `{prefix}{key}`; allowed keys{where}: {', '.join(allowed)}")
