# SPDX-License-Identifier: Apache-2.0
"""``mooncake.engine`` on ferry: the names of ``ferry.engine`` (TransferEngine,
TransferOpcode, Read, Write, TransferNotify, the SUPPORT_* flags)."""
from ferry.engine import *  # noqa: F401,F403
from ferry.engine import (  # noqa: F401  (names the star leaves out, for clarity)
    Read, TransferEngine, TransferNotify, TransferOpcode, Write,
)
