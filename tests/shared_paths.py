"""Where the shared real captures are: ../shared/captures beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

CAPTURES = Path(os.environ.get(
    "DEMU_CAPTURES", Path(__file__).resolve().parents[2] / "shared" / "captures"))
