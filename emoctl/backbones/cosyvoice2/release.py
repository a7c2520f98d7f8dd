"""The CosyVoice2-0.5B release folder: which files the adapter reads, and their digest.

The folder as published (FunAudioLLM/CosyVoice2-0.5B)::

    cosyvoice2.yaml  llm.pt  flow.pt  hift.pt  campplus.onnx  speech_tokenizer_v2.onnx
    CosyVoice-BlankEN/  config.json  tokenizer_config.json  vocab.json  merges.txt  (model.safetensors: not read)

``llm.pt`` holds every weight of the LLM, the Qwen2 model's included, so the Qwen2 folder's own weights are
never read.  Nothing is fetched: a missing file is reported, with every other missing file, in one error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from emoctl.backbones.cosyvoice2.config import QWEN_FILES, QWEN_FOLDER, CosyVoice2Config
from emoctl.backbones.cosyvoice_instruct.config import CosyVoiceConfig
from emoctl.backbones.cosyvoice_instruct.release import CosyVoiceRelease

RELEASE_REPO = "FunAudioLLM/CosyVoice2-0.5B"
RELEASE_FILES = ("cosyvoice2.yaml", "llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v2.onnx",
                 *(f"{QWEN_FOLDER}/{name}" for name in QWEN_FILES))


@dataclass(frozen=True)
class CosyVoice2Release(CosyVoiceRelease):
    """A checked CosyVoice2 checkpoint folder (``CosyVoice2Release.open(path)``)."""

    repo: ClassVar[str] = RELEASE_REPO
    files: ClassVar[tuple[str, ...]] = RELEASE_FILES
    config_name: ClassVar[str] = "cosyvoice2.yaml"
    config_class: ClassVar[type[CosyVoiceConfig]] = CosyVoice2Config
    # the text ids depend on the tokenizer files, the model on the yaml, the Qwen2 config and the weights
    digest_names: ClassVar[tuple[str, ...]] = ("cosyvoice2.yaml", "llm.pt", *(f"{QWEN_FOLDER}/{n}" for n in QWEN_FILES))
