"""``python -m emoctl`` is the ``emoctl`` command."""
from __future__ import annotations

import sys

from emoctl.cli import main

sys.exit(main())
