"""The CosyVoice-300M-Instruct release folder: which files the adapter reads, and their digest.

The folder is the released model folder as it is published (FunAudioLLM/CosyVoice-300M-Instruct)::

    cosyvoice.yaml  llm.pt  flow.pt  hift.pt  campplus.onnx  speech_tokenizer_v1.onnx  spk2info.pt

Nothing is fetched: a missing file is reported, with every other missing file, in one error.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Iterable, Mapping

from torch import nn

from emoctl.backbones.checkpoint_files import digest_files as _digest_files
from emoctl.backbones.checkpoint_files import load_state, load_strict
from emoctl.backbones.cosyvoice_instruct.config import CosyVoiceConfig
from emoctl.errors import ConfigError

RELEASE_REPO = "FunAudioLLM/CosyVoice-300M-Instruct"
RELEASE_FILES = ("cosyvoice.yaml", "llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v1.onnx",
                 "spk2info.pt")


@dataclass(frozen=True)
class CosyVoiceRelease:
    """A checked CosyVoice-300M(-Instruct) checkpoint folder (``CosyVoiceRelease.open(path)``)."""

    root: Path
    repo: ClassVar[str] = RELEASE_REPO
    files: ClassVar[tuple[str, ...]] = RELEASE_FILES
    config_name: ClassVar[str] = "cosyvoice.yaml"
    config_class: ClassVar[type[CosyVoiceConfig]] = CosyVoiceConfig
    digest_names: ClassVar[tuple[str, ...]] = ("cosyvoice.yaml", "llm.pt")  # what the LLM's behaviour depends on

    @classmethod
    def open(cls, path: str | Path) -> CosyVoiceRelease:
        """Refuse a folder that lacks any file the adapter reads, naming all of them."""
        root = Path(path).expanduser()
        if not root.is_dir():
            raise ConfigError(f"CosyVoice checkpoint folder {root} does not exist; set backbone.path to the folder "
                              f"that holds the {cls.repo} release ({', '.join(cls.files)}).")
        missing = [name for name in cls.files if not (root / name).is_file()]
        if missing:
            raise ConfigError(f"CosyVoice checkpoint folder {root} lacks {len(missing)} file(s) the adapter reads: "
                              f"{', '.join(missing)} (all from the {cls.repo} release). emoctl never "
                              "downloads; copy them there.")
        return cls(root)

    def path(self, name: str) -> Path:
        return self.root / name

    @cached_property
    def config(self) -> CosyVoiceConfig:
        """cosyvoice.yaml as data (tags recorded, nothing constructed until asked: see :mod:`.config`)."""
        return self.config_class.read(self.path(self.config_name))

    @cached_property
    def digest(self) -> str:
        """blake2b over what the LLM's behaviour depends on (config and weights), hashed once per load."""
        return digest_files(((name, self.path(name)) for name in self.digest_names), release=self.repo)

    def load_weights(self, module: nn.Module, name: str, what: str, rename: Mapping[str, str] | None = None) -> None:
        """The ``what`` checkpoint ``name`` of the release (llm.pt, flow.pt, hift.pt) into ``module``: read
        weights-only, every float finite, every key and shape as cosyvoice.yaml describes
        (:mod:`emoctl.backbones.checkpoint_files`). ``rename`` maps a key prefix of the file to the module's."""
        path = self.path(name)
        state = load_state(path, what, f"Copy it again from the {self.repo} release.")
        for old, new in (rename or {}).items():
            state = {new + k[len(old):] if k.startswith(old) else k: v for k, v in state.items()}
        load_strict(module, state, path, self.config_name, f"Use the {self.config_name} released with these weights.")


def digest_files(named: Iterable[tuple[str, Path]], extra: bytes = b"", release: str = RELEASE_REPO) -> str:
    """The shared digest with the release named in its errors."""
    return _digest_files(named, extra, lambda path: f"the {release} release")
