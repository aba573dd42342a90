# SPDX-License-Identifier: Apache-2.0
"""``mooncake.shared_segment`` on ferry: the reference's names, from
``ferry.shared_segment``; ferry has no shared segment, so
``shared_segment_supported()`` is False for every mode and
``create_shared_segment`` raises SharedSegmentError naming the mode."""
from ferry.shared_segment import (  # noqa: F401
    SharedSegment,
    SharedSegmentError,
    create_shared_segment,
    shared_segment_supported,
)

__all__ = ["SharedSegment", "SharedSegmentError", "create_shared_segment", "shared_segment_supported"]
