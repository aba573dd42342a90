# SPDX-License-Identifier: Apache-2.0
"""The reference's process-shared host segment API (``mooncake.shared_segment``
and ``mooncake.engine.SharedSegment``: one host KV allocation mapped into
every rank of a TP group), as a build of the reference without a backend for
it answers: every mode is unsupported.

ferry has no shared segment.  Callers ask first (vllm-ascend's sparse KV
offload: ``shared_segment_supported(mmap=False)``, then
``shared_segment_supported(mmap=True, host_register=True)``) and take their
own path, or raise their own error, when the answer is False; without this
module their import failed instead.  ``create_shared_segment`` checks its
arguments as the reference does and raises ``SharedSegmentError`` (a
RuntimeError) naming the mode; ``SharedSegment.create`` (the binding's
class) raises RuntimeError.  Nothing here imports torch."""

__all__ = ["SharedSegment", "SharedSegmentError", "create_shared_segment", "shared_segment_supported"]


class SharedSegmentError(RuntimeError):
    """Raised when a shared segment cannot be created or addressed."""


def _mode(mmap, host_register):
    return "mmap=%s, host_register=%s" % (bool(mmap), bool(host_register))


class EngineSharedSegment:
    """``mooncake.engine.SharedSegment`` (the binding's class): ``supported()`` is
    False for every mode; ``create()`` raises RuntimeError."""
    __slots__ = ()

    @staticmethod
    def supported(mmap=True, host_register=False):
        """Whether this build can share memory across processes: never, on ferry."""
        return False

    @staticmethod
    def create(name, size, world_size, rank_id, owner_rank=0, device_id=0, mmap=True, host_register=False):
        raise RuntimeError("shared segment %r (%s): ferry has no shared-segment backend "
                           "(SharedSegment.supported() is False)" % (name, _mode(mmap, host_register)))


class SharedSegment:
    """The handle ``create_shared_segment`` returns in the reference; ferry never makes one."""
    __slots__ = ()

    def __init__(self, *args, **kwargs):
        raise SharedSegmentError("ferry has no shared segment (shared_segment_supported() is False)")


def shared_segment_supported(mmap=True, host_register=False):
    """The reference's capability check: False for every mode on ferry."""
    return EngineSharedSegment.supported(mmap, host_register)


def create_shared_segment(name, blocks, world_size, rank_id, owner_rank=0, device_id=None, comm_group=None,
                          mmap=True, host_register=False, *, tp_group=None):
    """The reference's create_shared_segment: its argument checks and messages, then
    SharedSegmentError, since no mode is supported here."""
    if tp_group is not None and comm_group is not None and comm_group is not tp_group:
        raise SharedSegmentError("pass only comm_group; tp_group is a deprecated alias of comm_group")
    if host_register and not mmap:
        raise SharedSegmentError("host_register requires mmap=True")
    if not mmap:
        why = "no VMM backend for shared segments"
    elif host_register:
        why = "cannot HostRegister shared-segment pages"
    else:
        why = "no mmap shared-segment backend"
    raise SharedSegmentError("shared segment %r (%s): this build (ferry) has %s" % (name, _mode(mmap, host_register), why))
