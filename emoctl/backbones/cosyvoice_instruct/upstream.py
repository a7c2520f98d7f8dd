"""What the adapter needs from upstream's ``cosyvoice`` package, checked with an error that says how to install it.

``cosyvoice-minicpmo`` (FunAudioLLM's ``cosyvoice`` package on PyPI) is installed with ``pip install --no-deps``
by ``make cosyvoice`` (pinned): its metadata asks for ``onnxruntime-gpu`` and ``modelscope``, which the LLM,
the flow and HiFT do not need.  It also installs top-level ``matcha`` and ``cosyvoice2`` modules; emoctl's own
package is ``emoctl.backbones.cosyvoice_instruct`` so nothing shadows them.
"""
from __future__ import annotations

import importlib
import logging
from types import ModuleType

from emoctl.errors import ConfigError

UPSTREAM_PACKAGE = "cosyvoice-minicpmo==0.1.0"
EXTRA_MODULES = ("openai-whisper", "onnxruntime", "conformer", "diffusers", "hydra-core", "gdown", "wget")
INSTALL_HINT = (f"install it with `make cosyvoice` (pip install --no-deps {UPSTREAM_PACKAGE} plus "
                f"{', '.join(EXTRA_MODULES)}); it cannot be a plain dependency because its metadata pulls "
                "onnxruntime-gpu and modelscope, which the adapter does not need.")


def require_cosyvoice() -> None:
    """Fail with the install command when upstream's package (or a module it imports) is missing."""
    for module in ("cosyvoice.llm.llm", "cosyvoice.flow.flow", "cosyvoice.hifigan.generator", "whisper.tokenizer",
                   "onnxruntime"):
        try:
            import_upstream(module)
        except ImportError as err:
            raise ConfigError(f"the CosyVoice backbone needs upstream's `cosyvoice` package and its modules "
                              f"({module}: {err}); {INSTALL_HINT}") from None


def import_upstream(module: str) -> ModuleType:
    """``importlib.import_module``, undoing what importing upstream does to the process's logging.

    ``cosyvoice.utils.file_utils`` calls ``logging.basicConfig(level=logging.DEBUG)`` when imported, which turns
    every library's debug logging on (numba's alone prints tens of thousands of lines per run); the root
    logger's level and handlers are put back as they were.
    """
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        return importlib.import_module(module)
    finally:
        root.setLevel(level)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
