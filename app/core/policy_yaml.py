"""YAML for policy files, with the line of every value, so a problem can name where it is (pure).

`yaml.safe_load` forgets where values came from and silently keeps the last of two
equal keys (a second `production:` would quietly replace the first). Here the file is
composed into nodes first: duplicate keys are refused, and each value's path
(`("rules", 1, "risk_level")`) maps to the line it starts on.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]
# A repository's file is written by anyone who can push to its default branch: aliases that
# repeat one another ("billion laughs") must not make the worker walk millions of values.
MAX_VALUES = 5_000


class PolicyError(ValueError):
    """A policy file that cannot be used: `str()` is `source:line: problem`, on one line."""

    def __init__(self, source: str, line: int, problem: str) -> None:
        self.source, self.line, self.problem = source, line, " ".join(problem.split())
        super().__init__(f"{source}:{line}: {self.problem}")


@dataclass(frozen=True)
class Located:
    """A YAML document's plain value and the line (1-based) each path in it starts on."""

    value: Any
    lines: dict[Path, int]
    source: str

    def line_of(self, path: Path) -> int:
        """The line of `path`, or of its closest enclosing value."""
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)

    def error(self, path: Path, problem: str) -> PolicyError:
        return PolicyError(self.source, self.line_of(path), problem)


def load_located(text: str, source: str) -> Located:
    """Parse one YAML document; PolicyError (with its line) when it is not YAML or repeats a key."""
    loader = yaml.SafeLoader(text)
    walk = _Walk(loader, source)
    try:
        node = loader.get_single_node()
        value = None if node is None else walk.value(node, ())
    except RecursionError:
        raise PolicyError(source, 1, "nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise PolicyError(source, line, f"not valid YAML: {exc.problem or exc.context or 'syntax error'}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(source, 1, f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return Located(value, walk.lines, source)


@dataclass
class _Walk:
    loader: yaml.SafeLoader
    source: str
    lines: dict[Path, int] = field(default_factory=dict)
    count: int = 0

    def value(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise PolicyError(self.source, node.start_mark.line + 1, f"more than {MAX_VALUES} values")
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.value(item, (*path, index)) for index, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)

    def mapping(self, node: yaml.MappingNode, path: Path) -> dict[Hashable, Any]:
        self.loader.flatten_mapping(node)  # `<<:` merge keys, as safe_load reads them
        result: dict[Hashable, Any] = {}
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, Hashable):
                raise PolicyError(self.source, line, "a key must be a plain value")
            if key in result:
                raise PolicyError(self.source, line, f"duplicate key {key!r}")
            step = key if isinstance(key, str | int) and not isinstance(key, bool) else str(key)
            self.lines[(*path, step)] = line  # a problem with a key or its value points at the key's line
            result[key] = self.value(value_node, (*path, step))
        return result
