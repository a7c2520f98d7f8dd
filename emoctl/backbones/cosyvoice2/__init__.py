"""CosyVoice2 (FunAudioLLM) behind emoctl's backbone contract: upstream's ``Qwen2LM``, causal flow and HiFT from
the PyPI package ``cosyvoice-minicpmo``, weights from the user's release folder.  It shares CosyVoice-300M's
front ends, sampler and config reader (:mod:`emoctl.backbones.cosyvoice_instruct`)."""
from emoctl.backbones.cosyvoice2.backbone import CosyVoice2Instruct, load_cosyvoice2

__all__ = ["CosyVoice2Instruct", "load_cosyvoice2"]
