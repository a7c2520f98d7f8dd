"""File formats at the bottom of the house: emoctl's own versioned JSON files (a model's config.json, a codec's, a
feature set), refused in one way (a file that is not JSON, not an object, or of another format or version is named
with how to remake it), and the 16-bit WAV every written clip uses."""
from __future__ import annotations

import io
import json
import wave
from pathlib import Path
from typing import Any

import numpy as np

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


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A mono 16-bit PCM WAV file of ``samples`` (float, full scale ±1; clipped there)."""
    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(int(sample_rate))
        wav.writeframes(pcm.tobytes())
    return buffer.getvalue()
