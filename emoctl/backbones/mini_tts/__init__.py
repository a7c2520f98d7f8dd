"""The mini TTS: a small embedded emotional LLM-TTS (IndexTTS2 in miniature) trained on CPU."""
