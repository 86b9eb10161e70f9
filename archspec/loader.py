"""YAML <-> ModelSpec, with every problem reported as ``FILE:LINE: field: message``.

The YAML is composed into nodes first (PyYAML's safe composer: no tags that
build objects, no ``eval``) so that every value keeps the line it came from;
pydantic then validates the plain data and each of its errors is mapped back
to the line of the field it names. All problems are reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from archspec.files import atomic_write_text
from archspec.spec import ModelSpec

FieldPath = tuple[Any, ...]
_ALLOWED_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "map", "seq")}
_MAX_VALUES = 100_000  # far beyond any spec; stops aliases that expand without bound ("billion laughs")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, located as precisely as we can."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class SpecError(Exception):
    """A spec could not be read or is invalid; ``problems`` lists everything found."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def format_field(path: Iterable[Any]) -> str:
    """``('stages', 2, 'mixer', 'kernel_size')`` -> ``stages[2].mixer.kernel_size``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _LocatedData:
    """Plain data built from YAML nodes, plus the line of every field path."""

    def __init__(self, file: str):
        self.file = file
        self.lines: dict[FieldPath, int] = {}
        self.problems: list[Problem] = []
        self._scalars = yaml.SafeLoader("")
        self._open: set[int] = set()  # the mappings and lists being built: an alias to one is a cycle
        self._values = 0

    def build(self, node: yaml.Node, path: FieldPath = ()) -> Any:
        line = node.start_mark.line + 1
        self.lines.setdefault(path, line)
        self._values += 1
        if self._values > _MAX_VALUES:
            raise SpecError([Problem(self.file, line, format_field(path),
                                     f"invalid YAML: more than {_MAX_VALUES} values (aliases expanding without end?)")])
        if node.tag not in _ALLOWED_TAGS:
            self.problems.append(Problem(self.file, line, format_field(path),
                                         f"invalid YAML: tag {node.tag!r} is not allowed in specs"))
            return None
        if id(node) in self._open:
            self.problems.append(Problem(self.file, line, format_field(path),
                                         "invalid YAML: an alias refers to the mapping or list that contains it"))
            return None
        if isinstance(node, yaml.ScalarNode):
            return self._scalars.construct_object(node, deep=True)
        self._open.add(id(node))
        try:
            return self._build_collection(node, path)
        finally:
            self._open.discard(id(node))

    def _build_collection(self, node: yaml.Node, path: FieldPath) -> Any:
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self.problems.append(Problem(self.file, key_node.start_mark.line + 1, format_field(path),
                                                 "invalid YAML: a key must be a plain value, not a mapping or list"))
                    continue
                key = self._scalars.construct_object(key_node, deep=True)
                if key == "<<":
                    self.problems.append(Problem(self.file, key_node.start_mark.line + 1, format_field(path),
                                                 "YAML merge keys (<<) are not supported in specs"))
                    continue
                if key in result:
                    self.problems.append(Problem(
                        self.file, key_node.start_mark.line + 1, format_field(path + (key,)),
                        f"duplicate key {key!r} (first given on line {self.lines[path + (key,)]})"))
                    continue
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                result[key] = self.build(value_node, path + (key,))
            return result
        return [self.build(item, path + (index,)) for index, item in enumerate(node.value)]

    def line_of(self, path: FieldPath) -> int:
        """Line of the deepest existing prefix of ``path`` (a missing key points at its parent)."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 0


def data_path(error: dict[str, Any], data: Any) -> FieldPath:
    """The field path of a pydantic error in the user's data.

    pydantic inserts union members into locations (a discriminator tag such as
    ``peripheral``, or a type name such as ``list[int]``); parts that are not
    keys of the data at that point are dropped, except the missing key itself.
    """
    loc, path, current = error["loc"], [], data
    for index, part in enumerate(loc):
        is_last = index == len(loc) - 1
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
        elif not (is_last and error["type"] == "missing"):
            continue
        path.append(part)
    return tuple(path)


def error_message(error: dict[str, Any]) -> str:
    """A pydantic error as one sentence quoting the offending value."""
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    if error["type"] not in ("value_error", "missing", "assertion_error") and "input" in error:
        shown = error["input"]
        if not isinstance(shown, (dict, list)):
            message += f" (got {shown!r})"
    if error["type"] == "extra_forbidden":
        message = "unknown key (not part of the spec language; see `pelk schema`)"
    return message


ModelT = TypeVar("ModelT", bound=BaseModel)


def loads_model(text: str, file: str, model: type[ModelT], what: str = "spec",
                message: Callable[[dict[str, Any]], str] = error_message) -> ModelT:
    """Parse YAML text and validate it as ``model``; raises SpecError listing every problem.

    Each problem is located as ``FILE:LINE: field: message``; one problem per field
    (a union reports one error per member, the first is kept).
    """
    try:
        nodes = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 0
        raise SpecError([Problem(file, line, "", f"invalid YAML: {error.problem or error}")]) from None
    except yaml.YAMLError as error:
        raise SpecError([Problem(file, 0, "", f"invalid YAML: {error}")]) from None
    if nodes is None:
        raise SpecError([Problem(file, 1, "", f"the {what} is empty")])
    located = _LocatedData(file)
    try:
        data = located.build(nodes)
    except yaml.YAMLError as error:
        raise SpecError([Problem(file, 0, "", f"invalid YAML value: {error}")]) from None
    if not isinstance(data, dict):
        raise SpecError([Problem(file, located.line_of(()), "",
                                 f"a {what} is a mapping of fields, got a {type(data).__name__}")])
    problems = list(located.problems)
    result = None
    try:
        result = model.model_validate(data)
    except ValidationError as error:
        seen: set[str] = set()
        for item in error.errors():
            path = data_path(item, data)
            field = format_field(path)
            if field not in seen:
                seen.add(field)
                problems.append(Problem(file, located.line_of(path), field, message(item)))
    if problems:
        raise SpecError(sorted(problems, key=lambda problem: problem.line))
    return result


def loads_spec(text: str, file: str = "<string>") -> ModelSpec:
    """Parse and validate spec text; raises SpecError listing every problem."""
    return loads_model(text, file, ModelSpec, "spec")


def read_text(path: str | Path, what: str = "spec") -> str:
    """A file's text; every failure is a SpecError naming the file."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Problem(str(path), 0, "", f"no such file (a {what} was expected here)")]) from None
    except IsADirectoryError:
        raise SpecError([Problem(str(path), 0, "", f"is a directory, not a {what} file")]) from None
    except UnicodeDecodeError as error:
        raise SpecError([Problem(str(path), 0, "", f"not UTF-8 text ({error.reason})")]) from None
    except OSError as error:
        raise SpecError([Problem(str(path), 0, "", f"cannot read: {error.strerror}")]) from None


def load_spec(path: str | Path) -> ModelSpec:
    """Read and validate a spec file; every failure is a SpecError naming the file."""
    return loads_spec(read_text(path), str(path))


def dump_spec(spec: ModelSpec) -> str:
    """The spec as YAML text; ``loads_spec(dump_spec(s)) == s``."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def save_spec(spec: ModelSpec, path: str | Path) -> Path:
    """Write the spec as YAML atomically (temp file + rename)."""
    return atomic_write_text(path, dump_spec(spec))
