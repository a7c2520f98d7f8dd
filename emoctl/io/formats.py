"""Reading emoctl's own versioned JSON files (a model's config.json, a codec's, a feature set), refused in one
way: a file that is not JSON, not an object, or of another format or version is named with how to remake it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from emoctl.errors import ConfigError


def read_versioned_json(path: Path, format_name: str, version: int, remedy: str) -> dict[str, Any]:
    """The JSON object at ``path``, whose ``format`` and ``version`` entries must be ``format_name`` and
    ``version``; otherwise a ConfigError naming the file and what it holds, ending with ``remedy`` (what makes a
    good file again: "re-export the model")."""
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); {remedy}.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} holds a JSON {type(raw).__name__}, not a {format_name} object; {remedy}.")
    if raw.get("format") != format_name or raw.get("version") != version:
        raise ConfigError(f"{path} is not a version-{version} {format_name} file (format={raw.get('format')!r}, "
                          f"version={raw.get('version')!r}); {remedy}.")
    return raw
