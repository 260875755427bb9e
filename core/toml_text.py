"""Settings written back out as TOML (nomconf.toml for encoders and hosts)."""
from __future__ import annotations

import math


def toml_string(text: str) -> str:
    """A TOML basic string: quote, backslash and control characters (DEL too)
    escaped, everything else as UTF-8."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(key: str, value) -> str:
    """One setting's value in TOML. Raises ValueError, naming `key`, for a
    value TOML cannot carry (NaN, infinity, an unknown type)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"setting {key!r}: {value!r} cannot be written to nomconf.toml")
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(key, item) for item in value) + "]"
    raise ValueError(f"setting {key!r}: {type(value).__name__} cannot be written to nomconf.toml")
