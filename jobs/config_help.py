"""`--list-keys`: every settable key of a config tree with its current value and its documentation.

A field is documented by the string literal right under it in its dataclass (the project's one place for
field docs); this module reads those strings from the class source, so the help never drifts from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from functools import cache
from typing import Any, get_type_hints

from rl_platform.config import config_to_dict, is_config


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring under it, for `cls` and its dataclass bases (subclass wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):  # built dynamically: no source to read
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def describe_keys(config: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """[(dotted key, JSON value, doc)] for every leaf field; a variant field (reward, loss, clipping) also
    lists itself with its registered name and the choices."""
    rows = []
    hints = get_type_hints(type(config))
    docs = field_docs(type(config))
    for field in dataclasses.fields(config):
        key = f"{prefix}{field.name}"
        value = getattr(config, field.name)
        doc = docs.get(field.name, "")
        if is_config(value):
            registry = getattr(hints[field.name], "registry", None)
            if callable(registry):
                name = getattr(type(value), "registered_name", type(value).__name__)
                choices = ", ".join(sorted(registry()))
                rows.append((key, name, f"{doc} Variants: {choices}.".strip()))
            rows.extend(describe_keys(value, key + "."))
        else:
            rows.append((key, config_to_dict(value), doc))
    return rows
