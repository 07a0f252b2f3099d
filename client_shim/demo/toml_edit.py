"""Set a few keys in a TOML file and keep every other line of it, comments included.

The demo starts from the ``sealagg.toml`` that ``sealagg init`` writes and changes only the
settings a demo needs (mode, client counts, deadlines, optimizer); it never writes a whole
configuration of its own. Handles flat tables of scalars, which is all the demo sets.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

Scalar = bool | int | float | str

_TABLE = re.compile(r"^\s*\[([A-Za-z0-9_.-]+)\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def toml_value(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for the names and modes we write
    raise TypeError(f"cannot write {value!r} to TOML")


def set_keys(text: str, tables: Mapping[str, Mapping[str, Scalar]]) -> str:
    """``text`` with ``tables`` set: existing keys replaced in place, missing keys appended at
    the end of their table, missing tables appended at the end. Checked by parsing it back."""
    lines = text.splitlines()
    out: list[str] = []
    written: dict[str, set[str]] = {name: set() for name in tables}
    table: str | None = None

    def close_table() -> None:
        """Append the keys ``table`` still lacks, before the blank lines that end it."""
        if table not in tables:
            return
        missing = [k for k in tables[table] if k not in written[table]]
        blanks = 0
        while out and not out[-1].strip():
            out.pop()
            blanks += 1
        out.extend(f"{key} = {toml_value(tables[table][key])}" for key in missing)
        written[table].update(missing)
        out.extend([""] * blanks)

    for line in lines:
        header = _TABLE.match(line)
        if header:
            close_table()
            table = header.group(1)
            out.append(line)
            continue
        key = _KEY.match(line)
        if key and table in tables and key.group(1) in tables[table]:
            name = key.group(1)
            out.append(f"{name} = {toml_value(tables[table][name])}")
            written[table].add(name)
            continue
        out.append(line)
    close_table()
    for name, values in tables.items():
        if written[name] or not values:
            continue
        if out and out[-1].strip():
            out.append("")
        out.append(f"[{name}]")
        out.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        written[name].update(values)
    result = "\n".join(out) + "\n"
    parsed = tomllib.loads(result)
    for name, values in tables.items():
        for key, value in values.items():
            if parsed.get(name, {}).get(key) != value:
                raise ValueError(f"could not set [{name}].{key} (a multi-line value there?)")
    return result


def set_keys_in_file(path: Path, tables: Mapping[str, Mapping[str, Scalar]]) -> None:
    path.write_text(set_keys(path.read_text(encoding="utf-8"), tables), encoding="utf-8")
