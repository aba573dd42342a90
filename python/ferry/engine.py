# SPDX-License-Identifier: Apache-2.0
"""``ferry.engine`` mirrors the reference's ``mooncake.engine`` module, so that
``from mooncake.engine import TransferEngine`` becomes
``from ferry.engine import TransferEngine`` and nothing else changes."""
from . import (  # noqa: F401  (re-exported)
    SUPPORT_CUDA,
    SUPPORT_EFA,
    SUPPORT_HIP,
    SUPPORT_INTRA_NVLINK,
    SUPPORT_MNNVL,
    SUPPORT_MUSA,
    NativeTransferEngine,
    Read,
    TransferEngine,
    TransferNotify,
    TransferOpcode,
    Write,
)
from .shared_segment import EngineSharedSegment as SharedSegment  # noqa: F401,E402  (no backend: supported() is False)
