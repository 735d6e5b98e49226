"""dispatch: the host side of dispatch-emu.

(The package essay is written in full as the runtime lands; see README.md.)
"""

__version__ = "0.1.0"
