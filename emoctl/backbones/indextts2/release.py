"""The IndexTTS2 release folder: which files the adapter reads, where each comes from, and their digest.

The layout is upstream's own offline layout (``indextts/utils/model_download.py``
puts the auxiliary models under ``hf_cache/``), so a folder that runs upstream
``IndexTTS2(model_dir=...)`` without a network runs here too::

    config.yaml  bpe.model  gpt.pth  s2mel.pth  wav2vec2bert_stats.pt  feat1.pt  feat2.pt
    hf_cache/w2v-bert-2.0/                       (config.json, model.safetensors, preprocessor_config.json)
    hf_cache/semantic_codec_model.safetensors    (MaskGCT semantic codec)
    hf_cache/campplus_cn_common.bin              (CAMPPlus speaker encoder)
    hf_cache/bigvgan/                            (config.json, bigvgan_generator.pt)

Nothing is fetched: a missing file is reported, with every other missing file and where each comes from, in
one error.  The Qwen text-to-emotion model (``qwen0.6bemo4-merge/``) is not needed: emotion vectors come from
the recipe.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from emoctl.backbones.checkpoint_files import digest_files as _digest_files
from emoctl.backbones.indextts2.release_config import ReleaseConfig, read_release_config
from emoctl.errors import ConfigError, first_line

RELEASE_REPO = "IndexTeam/IndexTTS-2"

# name in the folder -> where it comes from (for the error that lists what is missing)
RELEASE_FILES: dict[str, str] = {
    "config.yaml": RELEASE_REPO,
    "bpe.model": RELEASE_REPO,
    "gpt.pth": RELEASE_REPO,
    "s2mel.pth": RELEASE_REPO,
    "wav2vec2bert_stats.pt": RELEASE_REPO,
    "feat1.pt": RELEASE_REPO,
    "feat2.pt": RELEASE_REPO,
    "hf_cache/w2v-bert-2.0/config.json": "facebook/w2v-bert-2.0",
    "hf_cache/w2v-bert-2.0/model.safetensors": "facebook/w2v-bert-2.0",
    "hf_cache/w2v-bert-2.0/preprocessor_config.json": "facebook/w2v-bert-2.0",
    "hf_cache/semantic_codec_model.safetensors": "amphion/MaskGCT (semantic_codec/model.safetensors)",
    "hf_cache/campplus_cn_common.bin": "funasr/campplus (campplus_cn_common.bin)",
    "hf_cache/bigvgan/config.json": "nvidia/bigvgan_v2_22khz_80band_256x",
    "hf_cache/bigvgan/bigvgan_generator.pt": "nvidia/bigvgan_v2_22khz_80band_256x",
}

@dataclass(frozen=True)
class ReleaseFolder:
    """A checked IndexTTS2 checkpoint folder (``ReleaseFolder.open(path)``)."""

    root: Path

    @classmethod
    def open(cls, path: str | Path) -> ReleaseFolder:
        """Refuse a folder that lacks any file the adapter reads, naming all of them and their sources, or whose
        config.yaml is not a checked IndexTTS2 config (:attr:`settings`)."""
        root = Path(path).expanduser()
        if not root.is_dir():
            raise ConfigError(f"IndexTTS2 checkpoint folder {root} does not exist; set backbone.path to the folder "
                              f"that holds the {RELEASE_REPO} release (config.yaml, gpt.pth, ...).")
        missing = [name for name in RELEASE_FILES if not (root / name).is_file()]
        if missing:
            lines = "; ".join(f"{name} (from {RELEASE_FILES[name]})" for name in missing)
            raise ConfigError(
                f"IndexTTS2 checkpoint folder {root} lacks {len(missing)} file(s) the adapter reads: {lines}. "
                "emoctl never downloads; copy them there (upstream's tools/download or "
                "indextts.utils.model_download.ensure_models_available writes this hf_cache/ layout).")
        folder = cls(root)
        folder.settings  # noqa: B018 - config.yaml is checked before anything else reads it
        return folder

    def path(self, name: str) -> Path:
        """A file of the folder by its fixed name in upstream's layout (``hf_cache/...``, ``config.yaml``)."""
        return self.root / name

    def file(self, key: str) -> Path:
        """The file a path key of config.yaml names (``dataset.bpe_model``, ``gpt_checkpoint``, ``w2v_stat``,
        ``s2mel_checkpoint``, ``emo_matrix``, ``spk_matrix``): checked to lie inside the folder and to exist."""
        return self.root / self.settings.files[key]

    @cached_property
    def settings(self) -> ReleaseConfig:
        """config.yaml read as checked data (:mod:`.release_config`): no interpolation, the gpt section's keys
        and types those of upstream's UnifiedVoice, every path key a file inside the folder."""
        return read_release_config(self.path("config.yaml"))

    @cached_property
    def config(self) -> Any:
        """config.yaml as upstream's classes take it (an OmegaConf DictConfig), built from :attr:`settings`,
        so nothing in it is interpolated or resolved."""
        from omegaconf import OmegaConf

        try:
            return OmegaConf.create(self.settings.data, flags={"allow_objects": False})
        except Exception as err:  # omegaconf refuses some key types
            raise ConfigError(f"{self.path('config.yaml')} cannot be read as upstream's config: "
                              f"{first_line(err)}. Use the config.yaml of the {RELEASE_REPO} release.") from None

    def text_tokenizer(self) -> Any:
        """Upstream's ``TextTokenizer`` on the folder's sentencepiece model (config.yaml's dataset.bpe_model),
        with sentencepiece's own errors ("could not parse ModelProto", "unk is not defined") turned into one
        naming the file, and a model whose pieces exceed the GPT's text vocabulary refused."""
        from indextts.utils.front import TextTokenizer

        path = self.file("dataset.bpe_model")
        fix = f"Copy bpe.model of the {RELEASE_REPO} release there again (config.yaml's dataset.bpe_model names it)."
        if path.stat().st_size == 0:
            raise ConfigError(f"the IndexTTS2 text model {path} is empty; it must be a sentencepiece model. {fix}")
        try:
            tokenizer = TextTokenizer(str(path), None)
            pieces = int(tokenizer.sp_model.get_piece_size())
            unk = tokenizer.sp_model.unk_id()
        except Exception as err:  # sentencepiece raises RuntimeError/OSError with C++ text
            raise ConfigError(f"cannot read the IndexTTS2 text model {path} as a sentencepiece model: "
                              f"{first_line(err)}. {fix}") from None
        if pieces == 0 or not 0 <= unk < pieces:
            raise ConfigError(f"the IndexTTS2 text model {path} has {pieces} pieces and no unknown-word piece; "
                              f"upstream's tokenizer needs one. {fix}")
        vocab = int(self.settings.gpt.get("number_text_tokens", 256))
        if pieces > vocab:
            raise ConfigError(f"the IndexTTS2 text model {path} has {pieces} pieces but config.yaml's "
                              f"gpt.number_text_tokens is {vocab}; text ids beyond it have no embedding. Use the "
                              "bpe.model and config.yaml of the same release.")
        return tokenizer

    @cached_property
    def digest(self) -> str:
        """blake2b over the weights the GPT's behaviour depends on (config, text model, GPT, emotion tables),
        hashed once per load so backbone_id stays cheap."""
        return digest_files((name, self.path(name)) for name in (
            "config.yaml", "bpe.model", "gpt.pth", "feat1.pt", "feat2.pt", "wav2vec2bert_stats.pt",
            "hf_cache/w2v-bert-2.0/model.safetensors", "hf_cache/campplus_cn_common.bin"))


def source_of(path: Path) -> str:
    """Where a release file comes from, for error messages."""
    for name, source in RELEASE_FILES.items():
        if str(path).endswith(name):
            return source
    return RELEASE_REPO


def digest_files(named: Iterable[tuple[str, Path]], extra: bytes = b"") -> str:
    """The shared digest (:func:`emoctl.backbones.checkpoint_files.digest_files`) with IndexTTS2's sources in
    its errors."""
    return _digest_files(named, extra, source_of)
