"""ferry: move KV-cache blocks between processes with one-sided WRITE/READ.

``ferry.TransferEngine`` has the method names, argument order and return values of
the reference engine's Python binding (``mooncake.engine.TransferEngine``), so
integration code switches by changing its import::

    from ferry import TransferEngine
    engine = TransferEngine()
    engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
    engine.register_memory(buf.ctypes.data, buf.nbytes)      # or register_memory(buf)
    engine.transfer_sync_write(peer, buf, peer_addr, 4096)

Buffers may be int addresses, objects with the buffer protocol (bytearray,
memoryview, numpy arrays) or tensors (``data_ptr()``, ``numel()*element_size()``,
``device`` -> location ``cuda:N``); torch is never imported by ferry.

Errors
------
* Methods that return an int in the reference return one here: 0 (or a batch
  id, an address) on success and a **negative FERRY_E* code when a transfer
  that was accepted failed** (peer gone, connection broke, timeout, I/O error,
  engine shut down).  ``ferry.last_error()`` gives ``(code, name, detail)`` for
  the calling thread's most recent failure.  ``initialize`` returns a negative
  code for every failure; ``allocate_managed_buffer`` returns 0 when the pool is
  exhausted; ``batch_transfer_async_*`` return 0 if submitting failed at run time.
* **Errors in the call itself raise**, before anything is sent: ``TypeError``
  (wrong types), ``ValueError`` (negative, zero or huge lengths, mismatched
  lists, unknown batch id), ``FerryError`` (unknown or unreachable segment:
  FERRY_ENOSEG; unregistered local memory or a freed managed buffer:
  FERRY_ENOTREG; remote range outside the peer's buffers: FERRY_ERANGE;
  overlapping registration: FERRY_EEXIST; double free: FERRY_EINVAL; ...).
  ``FerryError`` is a ``RuntimeError`` with ``.code``, ``.name`` and ``.detail``.

Threads: every method may be called from any thread; blocking calls release the
GIL.  A batch (1,000 requests or more) is converted in one pass and handed to C
in one call.
"""
import enum

from . import _ferry
from ._ferry import (  # noqa: F401  (re-exported)
    FerryError,
    Notification,
    RequestStatus,
    config_knobs,
    err_name,
    last_error,
    strerror,
    READ,
    WRITE,
    SLAB_MIN_BLOCK,
    SLAB_MAX_BLOCK,
    __version__,
)

# FERRY_OK, FERRY_EINVAL, ... FERRY_ECANCELED
globals().update({k: v for k, v in vars(_ferry).items() if k.startswith("FERRY_")})

__all__ = ["TransferEngine", "FerryError", "TransferOpcode", "TransferNotify", "Notification",
           "RequestStatus", "strerror", "err_name", "last_error", "config_knobs", "READ", "WRITE"] + \
          sorted(k for k in vars(_ferry) if k.startswith("FERRY_"))


class TransferOpcode(enum.IntEnum):
    """The reference's opcode enum (``TransferOpcode.Read`` / ``.Write``)."""
    Read = READ
    Write = WRITE
    READ = READ
    WRITE = WRITE


Read = TransferOpcode.Read     # the reference exports the values at module level
Write = TransferOpcode.Write

_NOTIFY_TAG = b"TN\x00"


class TransferNotify:
    """A named notification, as in the reference: ``TransferNotify(name, msg)``.

    ferry carries it as one message (``b"TN\\0" + name + b"\\0" + msg``);
    ``get_notifies()`` turns it back into a TransferNotify.
    """
    __slots__ = ("name", "msg")

    def __init__(self, name="", msg=""):
        self.name = name
        self.msg = msg

    def __repr__(self):
        return "TransferNotify(name=%r, msg=%r)" % (self.name, self.msg)

    def __eq__(self, other):
        return isinstance(other, TransferNotify) and (self.name, self.msg) == (other.name, other.msg)

    def encode(self):
        def b(x):
            return x.encode() if isinstance(x, str) else bytes(x)
        return _NOTIFY_TAG + b(self.name) + b"\x00" + b(self.msg)

    @classmethod
    def decode(cls, sender, message):
        if message.startswith(_NOTIFY_TAG):
            name, _, msg = message[len(_NOTIFY_TAG):].partition(b"\x00")
            return cls(name.decode(errors="replace"), msg.decode(errors="replace"))
        return cls(sender, message.decode(errors="replace"))


def _notify_arg(notify):
    return notify.encode() if isinstance(notify, TransferNotify) else notify


class TransferEngine(_ferry.Engine):
    """One ferry engine.  ``TransferEngine(managed_pool_size=256 MiB)``.

    Reference methods: initialize, initialize_ext, get_rpc_port, register_memory,
    unregister_memory, batch_register_memory, batch_unregister_memory,
    transfer_sync_write, transfer_sync_read, transfer_sync, batch_transfer_sync_write,
    batch_transfer_sync_read, batch_transfer_sync, batch_transfer_async_write,
    batch_transfer_async_read, batch_transfer_async, get_batch_transfer_status,
    transfer_submit_write, transfer_check_status, allocate_managed_buffer,
    free_managed_buffer, get_first_buffer_address, write_bytes_to_buffer,
    read_bytes_from_buffer, get_notifies.
    ferry's own: segment_name, close (and ``with``), notify= on transfers,
    get_notifications, get_stats, batch_status, wait_batch, free_batch,
    get_segment_buffers, managed_buffer_info, location= on register_memory.
    See the module docstring for the error convention.
    """
    __slots__ = ()

    def initialize_ext(self, local_hostname, metadata_server, protocol, device_name, metadata_type):
        """The reference's initialize_ext: metadata_type ('etcd', 'redis', 'p2p') prefixes a bare server."""
        if metadata_server != "P2PHANDSHAKE" and "://" not in metadata_server and \
                metadata_type not in ("", "p2p", "P2PHANDSHAKE"):
            metadata_server = "%s://%s" % (metadata_type, metadata_server)
        elif metadata_type in ("p2p", "P2PHANDSHAKE"):
            metadata_server = "P2PHANDSHAKE"
        return self.initialize(local_hostname, metadata_server, protocol, device_name)

    def transfer_sync(self, target_hostname, buffer, peer_buffer_address, length, opcode,
                      notify=None, transport_hint=""):
        """transfer_sync(..., opcode, notify=None) -> int; notify: TransferNotify, bytes or str."""
        return _ferry.Engine.transfer_sync(self, target_hostname, buffer, peer_buffer_address, length,
                                           opcode, _notify_arg(notify))

    def batch_transfer_sync(self, target_hostname, buffers, peer_buffer_addresses, lengths, opcode,
                            notify=None, transport_hint=""):
        """batch_transfer_sync(..., opcode, notify=None) -> int; notify: TransferNotify, bytes or str."""
        return _ferry.Engine.batch_transfer_sync(self, target_hostname, buffers, peer_buffer_addresses,
                                                 lengths, opcode, _notify_arg(notify))

    def get_notifies(self):
        """The reference's get_notifies() -> [TransferNotify(name, msg)].

        A notification sent as a TransferNotify comes back with its name; any
        other has the sender's segment name as its name.
        """
        return [TransferNotify.decode(n.sender, n.message) for n in self.get_notifications()]

    def write_bytes_to_buffer(self, dest_address, src, length=None):
        """Copies bytes into local memory at dest_address (host memory).  Returns 0."""
        data = memoryview(src).cast("B")
        n = len(data) if length is None else length
        if n < 0 or n > len(data):
            raise ValueError("length %d is outside 0 .. %d" % (n, len(data)))
        import ctypes
        ctypes.memmove(dest_address, bytes(data[:n]), n)
        return 0

    def read_bytes_from_buffer(self, source_address, length):
        """Returns length bytes of local (host) memory at source_address."""
        if length < 0:
            raise ValueError("length must not be negative")
        import ctypes
        return ctypes.string_at(source_address, length)
