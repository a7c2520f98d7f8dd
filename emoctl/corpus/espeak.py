"""eSpeak NG through ctypes: one call, one utterance, as float32 samples.

The PyPI package ``espeakng-loader`` ships ``libespeak-ng.so`` and its
``espeak-ng-data`` folder, so the corpus is synthesized offline without a
system install.

Why each call loads a fresh copy of the library: libespeak-ng keeps its
waveform generator state in C statics that nothing resets (the pitch-flutter
phase, the echo buffer, the gain control, the C ``rand()`` behind breathy and
Klatt voices).  Measured: the same sentence spoken twice in one process came out
55829, 55819 and 55834 samples long.  A corpus must be a pure function of its
seed, so every call ``dlopen``s a private copy of the library, initializes it,
seeds both random sources, synthesizes, terminates and ``dlclose``s it: the next
call starts from the library's pristine ``.data``.  Measured on 2 CPU cores,
the reload is about 5 ms of the ~10 ms that one sentence takes.

Two traps of the C API are checked here: ``espeak_SetVoiceByName`` returns
non-zero for an unknown name and would keep the previous voice, and a variant
after ``+`` with no file is silently ignored.  Both raise ``ConfigError``.
"""
from __future__ import annotations

import _ctypes
import atexit
import ctypes
import os
import shutil
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from emoctl.errors import ConfigError

__all__ = ["KNOB_LIMITS", "SAMPLE_RATE", "available_variants", "espeak_ng_version", "synthesize"]

SAMPLE_RATE = 22050
"""eSpeak NG's output rate in Hz (fixed by the library)."""

KNOB_LIMITS = {"rate": (80, 450), "pitch": (0, 100), "pitch_range": (0, 100), "volume": (0, 200)}
"""Accepted (min, max) of each prosody knob: words per minute, then eSpeak's own scales."""

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_ID = {"rate": 1, "volume": 2, "pitch": 3, "pitch_range": 4}
_RAND_SEED = 0

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_lock = threading.Lock()  # the C library is process-global state
_libc = ctypes.CDLL(None)


@lru_cache(maxsize=1)
def _paths() -> tuple[str, Path]:
    """(path to a private copy of libespeak-ng, espeak-ng-data folder).

    The copy has a path no other package can have opened, so ``dlclose`` really
    unloads it (a shared handle would keep its statics alive between calls).
    On Linux it lives in an anonymous memory file, so nothing is left behind.
    """
    import espeakng_loader

    data_path = Path(espeakng_loader.get_data_path())
    image = Path(espeakng_loader.get_library_path()).read_bytes()
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("libespeak-ng-emoctl")  # closed when the process exits
        os.write(fd, image)
        return f"/proc/self/fd/{fd}", data_path
    private_dir = Path(tempfile.mkdtemp(prefix="emoctl-espeak-"))
    atexit.register(shutil.rmtree, private_dir, ignore_errors=True)
    library = private_dir / Path(espeakng_loader.get_library_path()).name
    library.write_bytes(image)
    return str(library), data_path


@lru_cache(maxsize=1)
def available_variants() -> tuple[str, ...]:
    """Names usable after ``+`` in a voice name (``m1``..``m8``, ``f1``..``f5``, ``klatt``.., named ones)."""
    return tuple(sorted(p.name for p in (_paths()[1] / "voices" / "!v").iterdir() if p.is_file()))


@lru_cache(maxsize=1)
def espeak_ng_version() -> str:
    """The library's version string, e.g. "1.52.0" (recorded with the corpus)."""
    with _lock:
        lib = ctypes.CDLL(_paths()[0], mode=ctypes.RTLD_LOCAL)
        try:
            lib.espeak_Info.argtypes = [ctypes.c_void_p]
            lib.espeak_Info.restype = ctypes.c_char_p
            return lib.espeak_Info(None).decode()
        finally:
            _ctypes.dlclose(lib._handle)


def _check_voice(voice: str) -> None:
    if not isinstance(voice, str) or not voice.strip():
        raise ConfigError(f"eSpeak NG voice must be a non-empty name such as 'en-us+m3', got {voice!r}.")
    if "+" in voice:
        variant = voice.split("+", 1)[1]
        if variant not in available_variants():
            numbered = [v for v in available_variants() if v[:1] in "mf" and v[1:].isdigit()]
            raise ConfigError(
                f"eSpeak NG voice {voice!r} names the variant {variant!r}, which has no file in "
                f"{_paths()[1] / 'voices' / '!v'} (eSpeak would silently ignore it and speak the base voice). "
                f"Use one of {', '.join(numbered)} or another file in that folder.")


def _check_knobs(knobs: dict[str, int]) -> None:
    for name, value in knobs.items():
        low, high = KNOB_LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
            raise ConfigError(f"synthesize(): {name}={value!r} must be an integer in [{low}, {high}].")


def _synthesize_int16(text: str, voice: str, knobs: dict[str, int]) -> np.ndarray:
    """Load, initialize, speak, unload; returns (n,) int16. Caller holds ``_lock``."""
    library_path, data_path = _paths()
    lib = ctypes.CDLL(library_path, mode=ctypes.RTLD_LOCAL)
    chunks: list[np.ndarray] = []

    def collect(wav, num_samples: int, events) -> int:
        if num_samples > 0 and wav:
            chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = go on

    callback = _SynthCallback(collect)  # referenced until after espeak_Terminate
    try:
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), _INITIALIZE_DONT_EXIT)
        if rate != SAMPLE_RATE:
            raise RuntimeError(f"espeak_Initialize returned {rate}, expected the sample rate {SAMPLE_RATE}; the data "
                               f"folder {data_path} may be damaged: reinstall espeakng-loader.")
        lib.espeak_SetSynthCallback(callback)
        lib.espeak_ng_SetRandSeed(_RAND_SEED)
        _libc.srand(_RAND_SEED)  # breath noise and Klatt voices call the C library's rand()
        code = lib.espeak_SetVoiceByName(voice.encode())
        if code != 0:
            raise ConfigError(
                f"eSpeak NG has no voice named {voice!r} (espeak_SetVoiceByName returned {code}). Use a language "
                f"voice with an optional variant, e.g. 'en-us+m3' or 'en+f2' ('en-gb' does not exist in this build); "
                f"language voices are under {data_path / 'lang'}.")
        for name, value in knobs.items():
            lib.espeak_SetParameter(_PARAM_ID[name], int(value), 0)
        data = text.encode("utf-8")
        code = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if code != 0:
            raise RuntimeError(f"espeak_Synth failed with code {code} for the text {text[:60]!r}.")
    finally:
        lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def synthesize(text: str, voice: str = "en-us+m3", *, rate: int = 175, pitch: int = 50, pitch_range: int = 50,
               volume: int = 100) -> tuple[np.ndarray, int]:
    """Speak ``text`` with eSpeak NG; return mono float32 samples in [-1, 1] and the rate (22050).

    ``rate`` is words per minute (80-450); ``pitch`` and ``pitch_range`` are
    eSpeak's 0-100 scales (50 = the voice's own setting); ``volume`` is 0-200
    (100 = normal).  The output keeps eSpeak's own leading and trailing
    silence.  The same arguments always give the same samples, whatever was
    synthesized before.  Thread-safe (calls are serialized).
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"synthesize() needs non-empty text to speak, got {text!r}.")
    knobs = {"rate": rate, "pitch": pitch, "pitch_range": pitch_range, "volume": volume}
    _check_knobs(knobs)
    _check_voice(voice)
    with _lock:
        samples = _synthesize_int16(text, voice, knobs)  # (n,) int16
    return samples.astype(np.float32) / 32768.0, SAMPLE_RATE
