"""CosyVoice-300M-Instruct (FunAudioLLM) behind emoctl's backbone contract: upstream's classes from the PyPI
package ``cosyvoice-minicpmo``, weights from the user's release folder."""
from emoctl.backbones.cosyvoice_instruct.backbone import CosyVoiceInstruct, load_cosyvoice

__all__ = ["CosyVoiceInstruct", "load_cosyvoice"]
