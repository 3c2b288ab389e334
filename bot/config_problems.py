"""pydantic's validation errors as the lines check-config prints: `path.to.key: what is wrong`.

Most messages are the config types' own (a ValueError's text); pydantic words only an unknown key and a
missing one, which are said here with what the section does take.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from bot.config_models import STEP_FORMS, ConfigFile

Location = tuple[str | int, ...]


def problem_lines(error: ValidationError, top: str) -> list[str]:
    """One line a problem; `top` names the file itself (a problem with the whole of it)."""
    return [_line(detail, top) for detail in error.errors(include_url=False)]


def _line(detail: ErrorDetails, top: str) -> str:
    loc = _location(detail["loc"])
    return f"{_path(loc) or top}: {_message(detail, loc)}"


def _location(loc: Location) -> Location:
    """pydantic's location without its own marks: `[key]` (the key itself was refused) and the form of
    release.steps (the tag that follows `steps`)."""
    kept: list[str | int] = []
    for i, part in enumerate(loc):
        if part == "[key]" or (part in STEP_FORMS and i > 0 and loc[i - 1] == "steps"):
            continue
        kept.append(part)
    return tuple(kept)


def _path(loc: Location) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _message(detail: ErrorDetails, loc: Location) -> str:
    kind = detail["type"]
    if kind == "value_error":
        return str(detail["ctx"]["error"])
    if kind == "extra_forbidden":
        section = _section_at(loc[:-1])
        return f"unknown key (known here: {', '.join(section.model_fields)})" if section else "unknown key"
    if kind == "missing":
        field = _field_at(loc)
        return f"missing: {field.description}" if field and field.description else "missing"
    return f"{detail['msg']}, got {detail['input']!r}"  # pydantic's own words, for a case no type words itself


def _section_at(loc: Location) -> type[BaseModel] | None:
    node: Any = ConfigFile
    for part in loc:
        node = _inside(node, part)
    node = _unwrapped(node, "")
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def _field_at(loc: Location) -> FieldInfo | None:
    section = _section_at(loc[:-1])
    return section.model_fields.get(str(loc[-1])) if section and loc else None


def _inside(node: Any, part: str | int) -> Any:
    """The type found at `part` inside a value of type `node`: a section's key, a mapping's value, a list's item."""
    node = _unwrapped(node, part)
    if isinstance(node, type) and issubclass(node, BaseModel):
        field = node.model_fields.get(str(part))
        return field.annotation if field else None
    args = get_args(node)
    if get_origin(node) is dict:
        return args[1]
    if get_origin(node) is list:
        return args[0]
    return None


def _unwrapped(node: Any, part: str | int) -> Any:
    """`node` without Annotated's metadata, and of a union (`X | None`, the forms of release.steps) the
    member a key (`part` a string) or an index (a number) goes into."""
    while True:
        origin = get_origin(node)
        if origin is Annotated:
            node = get_args(node)[0]
        elif origin in (Union, types.UnionType):
            members = [_unwrapped(member, part) for member in get_args(node) if member is not type(None)]
            wanted = list if isinstance(part, int) else dict
            node = next((m for m in members if get_origin(m) is wanted), members[0])
        else:
            return node
