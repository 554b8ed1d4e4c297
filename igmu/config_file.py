"""Settings files (sweep files, the judges' Serve config) read so that every mistake is one line
that points at the file, the line and the key, and names what would have been valid::

    sweeps/x.yaml:7: search.sampler: 'tpee' is not valid; valid: tpe, nsga2, random, grid (did you mean tpe?)

Pydantic models do the checking. A pydantic error names the offending key by its `loc`, not by
where the key was written, so YAML is read node by node here, keeping every key's line, and the
first error is translated into a `UsageError` (exit code 2) against that tree. The reader also
takes YAML 1.2 floats such as `3e-5`, which YAML 1.1 (and so plain PyYAML) reads as text.
"""

from __future__ import annotations

import difflib
import re
import reprlib
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, Strict, StringConstraints, ValidationError
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic.fields import FieldInfo
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError
from typing_extensions import is_typeddict

from igmu.errors import UsageError

KeyPath = tuple  # of str (mapping keys) and int (list positions)
Explain = Callable[[ErrorDetails, KeyPath], str | None]
Model = TypeVar("Model", bound=BaseModel)


# --- value types and validators for the models -------------------------------------------------

def _whole_number(value: Any) -> Any:
    """`1e3` is a float in YAML 1.2; let whole floats stand for integers, as JSON Schema does."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def integer(**limits: Any) -> Any:
    """An integer with `Field` limits (ge=, le=); they precede the float conversion so that they stay
    part of the integer's own schema, and so of the JSON schema."""
    return Annotated[int, Strict(), Field(**limits), BeforeValidator(_whole_number)]


# Strict scalars: YAML's `yes` or a quoted "3" must not slip through as a flag or a number.
Integer = integer()
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict(), StringConstraints(strip_whitespace=True, min_length=1)]


def _listed_once(values: list) -> list:
    for i, value in enumerate(values):
        if value in values[:i]:
            raise key_error((i,), f"{value!r} is listed twice", value)
    return values


def distinct_list(item: Any) -> Any:
    """A non-empty list in which no value repeats."""
    return Annotated[list[item], Field(min_length=1, json_schema_extra={"uniqueItems": True}),
                     AfterValidator(_listed_once)]


def key_error(loc: KeyPath, message: str, value: Any) -> ValidationError:
    """For validators: an error that points at one key, where a plain ValueError would point at the
    whole model. Pydantic prefixes `loc` with the validated field's own."""
    error = InitErrorDetails(type=PydanticCustomError("invalid", message), loc=loc, input=value)
    return ValidationError.from_exception_data("settings", [error])


class _WithoutFieldTitles(GenerateJsonSchema):
    """Pydantic titles every field after its key ("num_samples" -> "Num Samples"), which says nothing new."""

    def field_title_should_be_set(self, schema) -> bool:
        return False


def json_schema(model: type[BaseModel]) -> dict:
    """The JSON schema of `model`, without titles that only repeat key names."""
    return model.model_json_schema(schema_generator=_WithoutFieldTitles)


# --- reading YAML with line numbers -----------------------------------------------------------

@dataclass(frozen=True)
class Location:
    """Where a key was written, shown as `file:line`; settings that came from no file have no line."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass(frozen=True)
class Node:
    """A YAML value and where it was written (a mapping entry's key line, or a list item's line).
    Mappings hold `dict[str, Node]`, lists hold `list[Node]`, scalars hold plain values."""

    value: Any
    where: Location

    @classmethod
    def wrap(cls, value: Any, where: Location) -> Node:
        """Plain data from no file (builder args, say) as a tree whose nodes all share `where`."""
        if isinstance(value, dict):
            return cls({key: cls.wrap(child, where) for key, child in value.items()}, where)
        if isinstance(value, list):
            return cls([cls.wrap(child, where) for child in value], where)
        return cls(value, where)

    def children(self) -> Iterable[tuple[str | int, Node]]:
        if isinstance(self.value, dict):
            return self.value.items()
        return enumerate(self.value) if isinstance(self.value, list) else ()

    def plain(self) -> Any:
        if isinstance(self.value, dict):
            return {key: child.plain() for key, child in self.value.items()}
        if isinstance(self.value, list):
            return [child.plain() for child in self.value]
        return self.value

    def locations(self, path: KeyPath = ()) -> dict[str, Location]:
        """Where every key below this node was written, by dotted key path (`search.sampler`, `a[0]`)."""
        out = {dotted(path): self.where} if path else {}
        for key, child in self.children():
            out.update(child.locations(path + (key,)))
        return out


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that also reads `3e-5` and `1.0e5` as floats (YAML 1.2); YAML 1.1 wants `3.0e-05`."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_node(path: Path, shown: str, what: str) -> Node:
    """One YAML file as `Node`s (an empty file is a None value); `what` names the file in errors.
    A missing file or a syntax error becomes a one-line UsageError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{shown}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{shown}: cannot read the {what} ({error})") from None
    loader = _Yaml12Loader(text)
    try:
        root = loader.get_single_node()  # what yaml.compose does, with our float resolver
        return Node(None, Location(shown, 1)) if root is None else _to_node(root, loader, shown)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise UsageError(f"{shown}:{line}: YAML syntax error: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise UsageError(f"{shown}: YAML syntax error: {' '.join(str(error).split())}") from None
    finally:
        loader.dispose()


def _to_node(node: yaml.Node, loader: yaml.SafeLoader, shown: str) -> Node:
    where = Location(shown, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        entries: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node)
            key_where = Location(shown, key_node.start_mark.line + 1)
            if not isinstance(key, str):
                raise UsageError(f"{key_where}: key {key!r} must be text (quote it)")
            if key in entries:
                raise UsageError(f"{key_where}: {key}: duplicate key (first written on line {entries[key].where.line})")
            entries[key] = Node(_to_node(value_node, loader, shown).value, key_where)
        return Node(entries, where)
    if isinstance(node, yaml.SequenceNode):
        return Node([_to_node(item, loader, shown) for item in node.value], where)
    return Node(loader.construct_object(node), where)


def mapping_entries(node: Node, what: str) -> dict[str, Node]:
    """The entries of a file's top level, which must be a mapping."""
    if isinstance(node.value, dict):
        return node.value
    if node.value is None:
        raise fail(node.where, (), f"the {what} is empty")
    raise fail(node.where, (), f"the {what} must be a mapping of keys, got {show_value(node.plain())}")


def _merge(base: Node, over: Node) -> Node:
    """Deep merge: mappings merge key by key, anything else in `over` replaces what `base` had."""
    if not (isinstance(base.value, dict) and isinstance(over.value, dict)):
        return over
    merged = dict(base.value)
    for key, node in over.value.items():
        merged[key] = _merge(base.value[key], node) if key in base.value else node
    return Node(merged, over.where)


def read_layered(path: Path, shown: str, what: str, seen: tuple[Path, ...] = ()) -> Node:
    """A file whose top level is a mapping, deep-merged over the file its `base:` key names (relative
    to it, recursively), so that shared settings live in one file. The `base` key itself is dropped."""
    root = read_node(path, shown, what)
    entries = mapping_entries(root, what)
    if "base" not in entries:
        return root
    base = entries["base"]
    if not isinstance(base.value, str) or not base.value.strip():
        raise fail(base.where, ("base",),
                   f"expected a file name relative to this file, got {show_value(base.plain())}")
    base_path, base_shown = path.parent / base.value, str(Path(shown).parent / base.value)
    if not base_path.is_file():
        raise fail(base.where, ("base",), f"base file {base_shown!r} not found; valid: a path relative to {shown}")
    if base_path.resolve() in seen + (path.resolve(),):
        raise fail(base.where, ("base",), f"{base_shown!r} is already being layered (a base cycle)")
    layered_base = read_layered(base_path, base_shown, what, seen + (path.resolve(),))
    own = Node({key: node for key, node in entries.items() if key != "base"}, root.where)
    return _merge(layered_base, own)


# --- one-line errors ---------------------------------------------------------------------------

def dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def fail(where: Location, path: KeyPath, message: str) -> UsageError:
    """The one error format: `file:line: key.path: message`, always on one line."""
    text = f"{where}: {dotted(path)}: {message}" if path else f"{where}: {message}"
    return UsageError(" ".join(text.splitlines()))


def closest_hint(word: Any, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(valid), n=1) if isinstance(word, str) else []
    return f" (did you mean {close[0]}?)" if close else ""


def show_value(value: Any) -> str:
    """A value as YAML users know it, cut short when long."""
    return "null" if value is None else reprlib.repr(value)


def unknown_key(key: str, valid: Iterable[str]) -> str:
    valid = list(valid)
    return f"unknown key; valid: {', '.join(valid)}{closest_hint(key, valid)}"


def validate(model: type[Model], root: Node, path: KeyPath = (), explain: Explain | None = None) -> Model:
    """`root` (found at `path` in its file) validated by `model`. Pydantic's first error becomes a
    one-line UsageError; `explain(error, key path)` may word an error better than the generic text."""
    try:
        return model.model_validate(root.plain())
    except ValidationError as error:
        raise _usage_error(error, model, root, path, explain) from None


_UNKNOWN_KEY_TYPES = ("extra_forbidden", "unexpected_keyword_argument")


def _usage_error(error: ValidationError, model: type, root: Node, path: KeyPath, explain: Explain | None):
    # A misspelt key also leaves the real key missing; the misspelling is the more useful report.
    first = min(error.errors(include_url=False), key=lambda e: e["type"] not in _UNKNOWN_KEY_TYPES)
    loc = first["loc"]
    if first["type"] == "union_tag_invalid":
        loc += (first["ctx"]["tag"],)  # a tag read from a one-key mapping: point at that key
    key_path, node = _locate(root, loc)
    message = (explain(first, key_path) if explain else None) or _message(first, model)
    return fail(node.where, path + key_path, message)


def _locate(root: Node, loc: KeyPath) -> tuple[KeyPath, Node]:
    """The key path and the deepest node that a pydantic `loc` names in the data. Parts that are not
    keys (union tags, '[key]') are skipped; past a key absent from the data, every part is a key."""
    path: KeyPath = ()
    node = root
    for i, part in enumerate(loc):
        children = node.value
        if isinstance(children, dict) and isinstance(part, str) and part != "[key]":
            if part not in children:
                return path + tuple(p for p in loc[i:] if isinstance(p, str)), node
            path += (part,)
            node = children[part]
        elif isinstance(children, list) and isinstance(part, int) and part < len(children):
            path += (part,)
            node = children[part]
    return path, node


# --- wording pydantic's errors -----------------------------------------------------------------

_EXPECTED = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
             "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
             "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "text",
             "string_too_short": "non-empty text", "list_type": "a list", "tuple_type": "a list",
             "dict_type": "a mapping", "model_type": "a mapping", "dataclass_type": "a mapping",
             "model_attributes_type": "a mapping"}
_OPERATORS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_BOUND_ERRORS = {"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le", "less_than": "lt"}


def _message(error: ErrorDetails, model: type) -> str:
    kind, value, ctx, loc = error["type"], error["input"], error.get("ctx", {}), error["loc"]
    if kind in _UNKNOWN_KEY_TYPES:
        return unknown_key(loc[-1], _fields(_container_at(model, loc[:-1])) or ())
    if kind == "missing":
        required = _required(_container_at(model, loc[:-1]))
        return f"missing; required: {', '.join(required)}" if required else "missing"
    if kind == "literal_error":
        choices = literal_choices(ctx["expected"])
        if loc[-1] == "[key]":
            return unknown_key(value, choices)
        return f"{value!r} is not valid; valid: {', '.join(choices)}{closest_hint(value, choices)}"
    if kind in _BOUND_ERRORS:
        name = _BOUND_ERRORS[kind]
        # pydantic reports a float field's bound as a float, an int field's as an int
        word = "a number" if isinstance(ctx[name], float) else "an integer"
        return f"{show_value(value)} is not valid; valid: {word} {_OPERATORS[name]} {_number(ctx[name])}"
    if kind in _EXPECTED and _EXPECTED[kind] == "a mapping":
        keys = _fields(_container_at(model, loc))
        return f"{show_value(value)} is not valid; expected a mapping" + (f" with keys {', '.join(keys)}" if keys else "")
    if kind in _EXPECTED:
        return f"{show_value(value)} is not valid; expected {_EXPECTED[kind]}{_limits(_field_at(model, loc))}"
    if kind in ("too_short", "too_long"):
        return _length_message(kind, ctx)
    if kind == "union_tag_invalid":
        tags = literal_choices(ctx["expected_tags"])
        return f"{ctx['tag']!r} is not valid; valid: {', '.join(tags)}{closest_hint(ctx['tag'], tags)}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx["error"])
    return error["msg"]


def _number(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def _limits(field: FieldInfo | None) -> str:
    """' >= 1' and the like: the limits a field declares, for errors about its type."""
    limits = [f"{_OPERATORS[name]} {_number(getattr(meta, name))}"
              for meta in (field.metadata if field else ()) for name in _OPERATORS if hasattr(meta, name)]
    return f" {' and '.join(limits)}" if limits else ""


def _length_message(kind: str, ctx: dict) -> str:
    noun, item = ("mapping", "key") if ctx.get("field_type") == "Dictionary" else ("list", "item")
    if kind == "too_long":
        return f"{ctx['actual_length']} {item}s; valid: at most {ctx['max_length']}"
    least = "one" if ctx["min_length"] == 1 else str(ctx["min_length"])
    if ctx["actual_length"] == 0:
        return f"empty {noun}; give at least {least} {item}{'' if least == 'one' else 's'}"
    return f"{ctx['actual_length']} {item}s; valid: at least {least}"


def literal_choices(expected: str) -> list[str]:
    """The values in pydantic's `'a', 'b' or 'c'` (it lists a Literal's or a union's choices as reprs)."""
    return re.findall(r"'([^']*)'", expected) or [expected]


# --- finding the model of a nested mapping -----------------------------------------------------

def _fields(container: Any) -> dict[str, FieldInfo] | None:
    """The keys a model, pydantic dataclass or TypedDict takes, with their fields."""
    if isinstance(container, type) and issubclass(container, BaseModel):
        return container.model_fields
    if is_pydantic_dataclass(container):
        return container.__pydantic_fields__
    if is_typeddict(container):
        hints = typing.get_type_hints(container, include_extras=True)
        return {name: FieldInfo.from_annotation(hint) for name, hint in hints.items()}
    return None


def _required(container: Any) -> list[str]:
    if is_typeddict(container):
        return sorted(container.__required_keys__)
    return [name for name, f in (_fields(container) or {}).items() if f.is_required()]


def _container_in(annotation: Any) -> Any:
    """The model, pydantic dataclass or TypedDict in `X`, `X | None` or `Annotated[X, ...]`."""
    if _fields(annotation) is not None:
        return annotation
    return next((found for arg in typing.get_args(annotation) if (found := _container_in(arg)) is not None), None)


def _container_at(model: type, loc: KeyPath) -> Any:
    """The model (or pydantic dataclass, TypedDict) that validates the mapping at `loc`, if any."""
    container = model
    for part in loc:
        field = (_fields(container) or {}).get(part)
        if field is not None:
            container = _container_in(field.annotation)
    return container


def _field_at(model: type, loc: KeyPath) -> FieldInfo | None:
    return (_fields(_container_at(model, loc[:-1])) or {}).get(loc[-1]) if loc else None
