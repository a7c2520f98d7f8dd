"""Model-based metrics of generated speech: emotion recognition (SER accuracy, Emo-SIM) and, beside it,
WER, speaker similarity and DNSMOS."""
from emoctl.metrics.ser import ESD_EMOTIONS, EmotionRecognizer, SERResult

__all__ = ["ESD_EMOTIONS", "EmotionRecognizer", "SERResult"]
