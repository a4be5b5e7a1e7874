"""Reading recipes: a TOML file or text, ``--set section.key=value`` overrides, then validation.

Every problem is one :class:`~pace_cli.errors.PaceError` line: a validation error has
``where = "invalid recipe '<file>'"`` and the '; '-joined problems as ``what``; a bad override
has ``where = "bad --set '<item>'"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from pace_cli.errors import PaceError, one_line
from pace_cli.recipe.messages import format_validation_error, unknown_name
from pace_cli.recipe.schema import SECTIONS, Recipe
from pace_cli.recipe.toml import toml_key

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe file, apply ``--set`` overrides and validate it."""
    p = Path(path)
    if not p.exists():
        raise PaceError(f"recipe file '{p}' not found", remedy="check the path")
    if not p.is_file():
        raise PaceError(f"recipe '{p}' is not a file", remedy="pass a .toml recipe file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise PaceError(f"recipe file '{p}' is not UTF-8 text (byte {e.start})", remedy="save it as UTF-8") from None
    except OSError as e:
        raise PaceError(e.strerror or one_line(e), where=f"cannot read recipe file '{p}'") from None
    return parse_recipe(text, overrides, source=str(p))


def parse_recipe(text: str, overrides: Sequence[str] = (), *, source: str = "<recipe>") -> Recipe:
    """Parse recipe TOML text; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PaceError(f"recipe '{source}' is not valid TOML: {one_line(e)}", remedy="fix the syntax there") from None
    except RecursionError:
        raise PaceError(f"recipe '{source}' nests arrays or tables too deeply", remedy="flatten it") from None
    invalid = f"invalid recipe '{source}'"
    try:
        return Recipe.model_validate(apply_overrides(data, overrides))
    except ValidationError as e:
        raise PaceError(format_validation_error(e), where=invalid) from None
    except RecursionError:
        raise PaceError("values nest too deeply", where=invalid, remedy="flatten them") from None


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Return a copy of ``data`` with each ``section.key[.sub]=value`` applied.

    The value is read as a TOML value (``1e-3``, ``true``, ``[1, 2]``, ``"x"``); anything that
    is not valid TOML is kept as a plain string, so ``train.device=cpu`` works unquoted.
    """
    if isinstance(overrides, str):  # a lone "a.b=c" would otherwise be iterated per character
        overrides = [overrides]
    out = _deep_copy(data)
    for item in overrides:
        bad = f"bad --set {_quote_override(item)}"
        if "=" not in item:
            raise PaceError("expected section.key=value, e.g. optim.lr=1e-3", where=bad)
        key, _, raw = item.partition("=")
        parts = [k.strip() for k in key.strip().split(".")]
        if len(parts) < 2 or any(not k for k in parts):
            raise PaceError("the key must be section.key, e.g. train.epochs=5", where=bad)
        if parts[0] not in SECTIONS:
            raise PaceError(unknown_name("section", f"[{toml_key(parts[0])}]", parts[0], SECTIONS), where=bad)
        node = out
        for depth, k in enumerate(parts[:-1]):
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                table = ".".join(toml_key(k) for k in parts[: depth + 1])
                raise PaceError(f"{table} is a value, not a table; set {table}=... instead", where=bad)
            node = child
        node[parts[-1]] = parse_override_value(raw.strip())
    return out


def _quote_override(item: str) -> str:
    return f"'{item}'" if item.isprintable() and "'" not in item else repr(item)


def parse_override_value(raw: str) -> Any:
    """``raw`` read as one TOML value, or ``raw`` itself when it is not one (``cpu``, ``a b``)."""
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    if set(parsed) != {"v"}:  # e.g. a newline smuggling in another key
        return raw
    return parsed["v"]


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
