"""A small ESD folder of short tones, in either layout (split folders or flat) and with the three transcript
encodings ESD ships (UTF-8, UTF-16 with BOM, Latin-1)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

ENCODINGS = {"0011": "utf-8", "0012": "utf-16", "0013": "latin-1"}


def write_esd(root: Path, *, flat: bool, per_emotion: int = 4, emotions=("Neutral", "Angry"), rate: int = 16000,
              ascii_only: bool = False) -> dict[str, str]:
    """3 speakers (UTF-8, UTF-16 with BOM, Latin-1 transcripts) x emotions x short tones; ids in ESD's blocks."""
    texts = {}
    for s, (speaker, encoding) in enumerate(ENCODINGS.items()):
        lines = []
        for emotion in emotions:
            block = ["Neutral", "Angry", "Happy", "Sad", "Surprise"].index(emotion)
            for k in range(per_emotion):
                utt = f"{speaker}_{block * 350 + k + 1:06d}"
                split = "evaluation" if k == 0 else "test" if k == 1 else "train"
                folder = root / speaker / emotion if flat else root / speaker / emotion / split
                folder.mkdir(parents=True, exist_ok=True)
                t = np.arange(int(rate * (0.1 + 0.02 * k))) / rate
                soundfile.write(folder / f"{utt}.wav", (0.3 * np.sin(2 * np.pi * (110 + 30 * s) * t)).astype(np.float32),
                                rate)
                word = "cafe naive" if ascii_only else "Caf\u00e9 na\u00efve"  # non-ASCII: encodings must be right
                texts[utt] = f"{word} {k}, {emotion.lower()}!"
                lines.append(f"{utt}\t{texts[utt]}\t{emotion}")
        (root / speaker / f"{speaker}.txt").write_bytes("\r\n".join(lines).encode(encoding))
    return texts
