# SPDX-License-Identifier: Apache-2.0
"""``mooncake.buffer_pool`` on ferry.  The reference takes ``BufferPool`` (its
store's pool of registered local buffers) from ``mooncake.store`` and sets it
to None where the store is not built; ferry has no store, so both names are
None here, and ``from mooncake import BufferPool`` works as on such a build."""
BufferPool = None
RegisteredBufferPool = BufferPool

__all__ = ["BufferPool", "RegisteredBufferPool"]
