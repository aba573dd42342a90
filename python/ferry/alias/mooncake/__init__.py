# SPDX-License-Identifier: Apache-2.0
"""An opt-in stand-in for the reference's ``mooncake`` package, so code and
tests written for ``mooncake.engine`` run on ferry unchanged.  It is found
only where its folder is on the path: ``ferry.mooncake_alias_path()`` (or
``python -m ferry --mooncake-path``) names the folder, ``ferry.alias_mooncake()``
installs it in the running process.  Only ``mooncake.engine`` (the transfer
engine binding) is provided; the reference's store, EP and PG modules are not.
The top-level names the reference exports (``BufferPool``,
``RegisteredBufferPool``, from ``mooncake.buffer_pool``) are None, as in a
reference build without its store."""
from mooncake.buffer_pool import BufferPool, RegisteredBufferPool  # noqa: F401

__all__ = ["BufferPool", "RegisteredBufferPool"]
