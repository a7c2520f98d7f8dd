"""The IndexTTS2 adapter: upstream's released GPT, conditioners and vocoder chain behind the backbone contract.

Upstream's code comes from the PyPI package ``indextts2-inference`` (installed by ``make indextts2``), the
weights from the user's release folder (:mod:`.release`).  Importing this package does not import upstream's;
``load_backbone("indextts2", folder)`` does.
"""
from __future__ import annotations
