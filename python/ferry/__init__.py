# SPDX-License-Identifier: Apache-2.0
"""ferry: move KV-cache blocks between processes with one-sided WRITE/READ.

``ferry.TransferEngine`` behaves as the reference engine's Python binding
(``mooncake.engine.TransferEngine``): method names, argument order, return
values, transport fallback, segment names.  Integration code (SGLang, vLLM,
LMCache) switches by changing its import::

    from ferry.engine import TransferEngine      # was: from mooncake.engine import TransferEngine
    engine = TransferEngine()
    engine.initialize("127.0.0.1", "P2PHANDSHAKE", "rdma", "")   # tcp if no NIC (one warning)
    engine.register_memory(buf.ctypes.data, buf.nbytes)
    engine.transfer_sync_write(peer, buf.ctypes.data, peer_addr, 4096)   # 0 or negative

Buffers may be int addresses, objects with the buffer protocol (bytearray,
memoryview, numpy arrays) or tensors (``data_ptr()``, ``numel()*element_size()``,
``device`` -> location ``cuda:N``); torch is never imported by ferry.

Errors
------
``TransferEngine`` (the compatibility class) returns what the reference
returns: 0 on success; a **negative FERRY_E* code** for every failure after
its arguments were parsed (unknown segment, remote range outside the peer's
buffers, unregistered memory, zero length, mismatched lists, peer gone,
timeout); **0 from calls that return a batch id or an address**
(``batch_transfer_async_*``, ``transfer_submit_write``,
``allocate_managed_buffer``, ``get_first_buffer_address``).  Only Python type
errors (``TypeError``, ``BufferError``) raise, and the ``*_on_cuda`` calls,
which return None and raise ``FerryError`` (a ``RuntimeError``) when refused,
as the reference's raise ``RuntimeError``, and ``read_bytes_from_buffer``
(which returns bytes) for memory the process cannot read.  ``ferry.last_error()`` gives
``(code, name, detail)`` of the calling thread's most recent failure.

``NativeTransferEngine`` (= ``TransferEngine(strict=True)``) keeps ferry's
native convention: errors in the call raise (``ValueError``; ``FerryError``, a
``RuntimeError`` with ``.code``, ``.name``, ``.detail``) before anything is
sent, and only a transfer that failed after it was accepted returns its
negative code.

Threads: every method may be called from any thread; blocking calls release the
GIL.  A batch (1,000 requests or more) is converted in one pass and handed to C
in one call.
"""
import atexit
import enum
import errno
import logging
import operator
import os

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

# torch_npu's atexit hook (_npu_shutdown) finalizes ACL, and the callers' engines
# (never closed: the reference has no close()) are collected after the atexit
# hooks, while the interpreter ends.  From this hook on, whichever of the two runs
# first, ferry makes no call into a device runtime (ferry_process_exiting).
atexit.register(_ferry._process_exiting)

__all__ = ["TransferEngine", "NativeTransferEngine", "FerryError", "TransferOpcode", "TransferNotify", "Notification",
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

# The reference's build flags.  ferry loads device libraries at run time, so
# these say which of the reference's optional transports ferry has: none of
# EFA, HIP, MNNVL, MUSA, intra-node NVLink; CUDA memory (staging, shm IPC,
# GPUDirect) and the *_on_cuda methods, yes.
SUPPORT_CUDA = True
SUPPORT_EFA = False
SUPPORT_HIP = False
SUPPORT_MNNVL = False
SUPPORT_MUSA = False
SUPPORT_INTRA_NVLINK = False

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


# Transports of the reference that ferry does not have.  The reference's
# classic engine discovers its transports whatever this argument says, so a
# caller configured for one of them (SGLang's MOONCAKE_PROTOCOL=efa on AWS,
# say) must still get an engine: ferry runs on the rest of the list, or on tcp.
_REFERENCE_ONLY_PROTOCOLS = frozenset((
    "efa", "cxi", "nvlink", "nvlink_intra", "intra_nvlink", "mnnvl", "hip", "barex", "cxl", "gds",
    "io_uring", "nvmeof", "sunrise_link", "ubshmem", "hccs",
))


def _compat_protocols(protocol):
    """The protocol argument with the reference-only transports dropped (one
    warning names them); "tcp" if nothing is left.  Anything else is passed on
    as given, so that a typo still fails."""
    if not isinstance(protocol, str):
        return protocol
    items = [p.strip() for p in protocol.split(",")]
    kept = [p for p in items if p.lower() not in _REFERENCE_ONLY_PROTOCOLS]
    if len(kept) == len(items):
        return protocol
    kept = [p for p in kept if p]
    dropped = [p for p in items if p.lower() in _REFERENCE_ONLY_PROTOCOLS]
    logging.getLogger("ferry").warning(
        "protocol %r: ferry has no %s transport; running on %s", protocol, "/".join(dropped),
        ",".join(kept) if kept else "tcp")
    return ",".join(kept) if kept else "tcp"


def _on_cuda_result(rc):
    """None for 0; a negative code (a refusal: nothing was queued) raised as FerryError."""
    if not rc:
        return None
    code, name, detail = last_error()
    if code != rc:
        name, detail = err_name(rc), ""
    exc = FerryError("%s [%s: %s]" % (detail, name, strerror(rc)) if detail else "%s: %s" % (name, strerror(rc)))
    exc.code, exc.name, exc.detail = rc, name, detail
    raise exc


def _notify_arg(notify):
    return notify.encode() if isinstance(notify, TransferNotify) else notify


def mooncake_alias_path():
    """The folder that, put on sys.path / PYTHONPATH, makes ``import mooncake.engine``
    (and ``from mooncake import engine``) give ferry.engine: code and tests written for
    the reference run unchanged.  Opt-in: ferry never shadows an installed mooncake."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "alias")


def alias_mooncake():
    """Makes ``mooncake`` and its modules ferry has (``engine``, ``buffer_pool``,
    ``shared_segment``) ferry's in this process (sys.modules), whatever else is installed or
    was imported before.  Returns the ``mooncake.engine`` module."""
    import importlib.util
    import sys
    pkg_dir = os.path.join(mooncake_alias_path(), "mooncake")
    mods = {}
    # buffer_pool first: the package's __init__ imports it (a mooncake.buffer_pool of
    # another mooncake already in sys.modules would be taken otherwise)
    for name, file in (("mooncake.buffer_pool", "buffer_pool.py"), ("mooncake", "__init__.py"),
                       ("mooncake.engine", "engine.py"), ("mooncake.shared_segment", "shared_segment.py")):
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(pkg_dir, file), submodule_search_locations=[pkg_dir] if file == "__init__.py" else None)
        mods[name] = importlib.util.module_from_spec(spec)
        sys.modules[name] = mods[name]
        spec.loader.exec_module(mods[name])
    mods["mooncake"].engine = mods["mooncake.engine"]
    mods["mooncake"].buffer_pool = mods["mooncake.buffer_pool"]
    mods["mooncake"].shared_segment = mods["mooncake.shared_segment"]
    return mods["mooncake.engine"]


class TransferEngine(_ferry.Engine):
    """One ferry engine with the reference's conventions.

    ``TransferEngine(managed_pool_size=256 MiB, strict=False)``; ``strict=True``
    (or ``NativeTransferEngine``) raises for errors in the call instead.

    Reference methods: initialize, initialize_ext, get_rpc_port, register_memory,
    unregister_memory, batch_register_memory, batch_unregister_memory,
    transfer_sync_write, transfer_sync_read, transfer_sync, batch_transfer_sync_write,
    batch_transfer_sync_read, batch_transfer_sync, batch_transfer_async_write,
    batch_transfer_async_read, batch_transfer_async, get_batch_transfer_status,
    transfer_submit_write, transfer_check_status, transfer_write_on_cuda,
    transfer_read_on_cuda, batch_transfer_write_on_cuda, batch_transfer_read_on_cuda,
    allocate_managed_buffer, free_managed_buffer, get_first_buffer_address,
    write_bytes_to_buffer, read_bytes_from_buffer, get_notifies, send_probe,
    get_local_topology, warmup_efa_segment, get_engine, get_engine_ptr.
    ferry's own: segment_name, transports, close (and ``with``), notify= on
    transfers, get_notifications, get_stats, batch_status, wait_batch, free_batch,
    get_segment_buffers, managed_buffer_info, location= on register_memory.
    See the module docstring for the error convention.
    """
    __slots__ = ()
    TransferOpcode = TransferOpcode

    def initialize(self, local_hostname, metadata_server=None, protocol=None, device_name=None, **config):
        """The reference's initialize(local_hostname, metadata_server, protocol, device_name) -> 0 / negative
        code; **config: fields of struct ferry_config.  A transport only the reference has (efa, nvlink,
        hip, ...) is left out with one warning, as the reference's engine discovers its own."""
        return _ferry.Engine.initialize(self, local_hostname, metadata_server, _compat_protocols(protocol),
                                        device_name, **config)

    def initialize_ext(self, local_hostname, metadata_server, protocol, device_name, metadata_type):
        """The reference's initialize_ext: metadata_type ('etcd', 'redis', 'http', 'p2p') prefixes a bare server."""
        if metadata_server == "P2PHANDSHAKE" or "://" in metadata_server:
            pass  # as given, whatever metadata_type says (the reference's buildConnString)
        elif metadata_type in ("p2p", "P2PHANDSHAKE"):
            metadata_server = "P2PHANDSHAKE"
        elif metadata_type:
            metadata_server = "%s://%s" % (metadata_type, metadata_server)
        return self.initialize(local_hostname, metadata_server, protocol, device_name)

    def transfer_sync(self, target_hostname, buffer, peer_buffer_address, length, opcode,
                      notify=None, transport_hint=""):
        """transfer_sync(..., opcode, notify=None, transport_hint='') -> int; notify: TransferNotify, bytes or str."""
        return _ferry.Engine.transfer_sync(self, target_hostname, buffer, peer_buffer_address, length,
                                           opcode, notify=_notify_arg(notify), transport_hint=transport_hint)

    def batch_transfer_sync(self, target_hostname, buffers, peer_buffer_addresses, lengths, opcode,
                            notify=None, transport_hint=""):
        """batch_transfer_sync(..., opcode, notify=None, transport_hint='') -> int."""
        return _ferry.Engine.batch_transfer_sync(self, target_hostname, buffers, peer_buffer_addresses,
                                                 lengths, opcode, notify=_notify_arg(notify),
                                                 transport_hint=transport_hint)

    def get_notifies(self):
        """The reference's get_notifies() -> [TransferNotify(name, msg)].

        A notification sent as a TransferNotify comes back with its name; any
        other has the sender's segment name as its name.
        """
        return [TransferNotify.decode(n.sender, n.message) for n in self.get_notifications()]

    # The reference's *_on_cuda return None and raise RuntimeError when the
    # transfer cannot be queued (transfer_engine_py.cpp batchTransferOnCuda:
    # "Failed to open segment", lists of different sizes, cudaLaunchHostFunc
    # failed), so a caller never checks a return value: a refusal answered
    # with a code would let its stream run on as if the data were there.
    # Here a refusal raises FerryError (a RuntimeError) with ferry's code.
    def transfer_write_on_cuda(self, *args, **kwargs):
        """The reference's transfer_write_on_cuda(target_hostname, buffer, peer_buffer_address, length,
        stream_ptr=0, transport_hint='', location=None) -> None; raises FerryError (a RuntimeError) if refused."""
        return _on_cuda_result(_ferry.Engine.transfer_write_on_cuda(self, *args, **kwargs))

    def transfer_read_on_cuda(self, *args, **kwargs):
        """As transfer_write_on_cuda, reading into buffer."""
        return _on_cuda_result(_ferry.Engine.transfer_read_on_cuda(self, *args, **kwargs))

    def batch_transfer_write_on_cuda(self, *args, **kwargs):
        """The reference's batch_transfer_write_on_cuda(target_hostname, buffers, peer_buffer_addresses,
        lengths, stream_ptr=0, transport_hint='', location=None) -> None; raises FerryError if refused."""
        return _on_cuda_result(_ferry.Engine.batch_transfer_write_on_cuda(self, *args, **kwargs))

    def batch_transfer_read_on_cuda(self, *args, **kwargs):
        """As batch_transfer_write_on_cuda, reading into buffers."""
        return _on_cuda_result(_ferry.Engine.batch_transfer_read_on_cuda(self, *args, **kwargs))

    # The reference's pybind11 integer casters take any object with __index__, so a
    # caller's batch ids may be numpy integers (ids kept in a numpy array); the C
    # methods take Python ints.  Anything else goes to C as given, for its TypeError.
    def get_batch_transfer_status(self, batch_ids):
        """get_batch_transfer_status(batch_ids) -> 0 when every batch completed, else the first
        failure's negative code; waits for them and frees them.  batch_ids: a list (or any
        sequence, a numpy array) of ids; one id alone is taken too."""
        try:
            batch_ids = operator.index(batch_ids)
        except TypeError:
            # a str or bytes iterates but holds no ids: left whole for the C method's TypeError
            if not isinstance(batch_ids, (str, bytes, bytearray)):
                try:
                    batch_ids = list(batch_ids)     # once: an iterator is read here, not twice
                    batch_ids = [operator.index(i) for i in batch_ids]
                except TypeError:
                    pass
        return _ferry.Engine.get_batch_transfer_status(self, batch_ids)

    def transfer_check_status(self, batch_id):
        """transfer_check_status(batch_id) -> 1 completed, 0 running, -1 failed, -2 timed out."""
        try:
            batch_id = operator.index(batch_id)
        except TypeError:
            pass
        return _ferry.Engine.transfer_check_status(self, batch_id)

    # The reference binds these two with argument names (py::arg("peer_server_name"),
    # py::arg("segment_name")), so a caller may pass them as keywords; the C methods
    # take one positional argument.
    def send_probe(self, peer_server_name):
        """send_probe(peer_server_name) -> 0 if the peer answers now, else a negative FERRY_E* code."""
        return _ferry.Engine.send_probe(self, peer_server_name)

    def warmup_efa_segment(self, segment_name):
        """warmup_efa_segment(segment_name) -> 0: opens the segment ahead of the first transfer;
        a negative code if it cannot be opened."""
        return _ferry.Engine.warmup_efa_segment(self, segment_name)

    def get_local_topology(self, device_name=None):
        """JSON of the NICs and devices ferry sees, with their PCIe/NUMA placement (ferry.topology)."""
        from .topology import local_topology_json
        return local_topology_json(device_name)

    def write_bytes_to_buffer(self, dest_address, src, length=None):
        """Copies bytes (or a str, as UTF-8) into local host memory at dest_address.  Returns 0;
        FERRY_EINVAL (strict: raises FerryError) when the range is not writable memory of this
        process (the reference's memcpy ends the process there)."""
        dest_address = operator.index(dest_address)
        data = memoryview(src.encode() if isinstance(src, str) else src).cast("B")
        n = len(data) if length is None else operator.index(length)
        if n < 0 or n > len(data):
            raise ValueError("length %d is outside 0 .. %d" % (n, len(data)))
        why = _own_memory_copy(True, dest_address, bytes(data[:n]), n)
        if why:
            return _helper_failure(self, "write_bytes_to_buffer", dest_address, n, why)
        return 0

    def read_bytes_from_buffer(self, source_address, length):
        """Returns length bytes of local (host) memory at source_address; raises FerryError
        (FERRY_EINVAL) when the range is not readable memory of this process (the reference's
        read ends the process there)."""
        source_address, length = operator.index(source_address), operator.index(length)
        if length < 0:
            raise ValueError("length must not be negative")
        out = bytearray(length)
        why = _own_memory_copy(False, source_address, out, length)
        if why:
            _helper_failure(None, "read_bytes_from_buffer", source_address, length, why)
        return bytes(out)


def _helper_failure(engine, what, address, length, why):
    """A helper's address range that is not this process's memory: FERRY_EINVAL, noted for
    last_error(); returned by a compat engine, raised as FerryError otherwise."""
    detail = "%s: 0x%x+%d is not %s memory of this process (%s)" % (
        what, address, length, "writable" if what.startswith("write") else "readable", why)
    _ferry._note_failure(_ferry.FERRY_EINVAL, detail)
    if engine is not None and not engine.strict:
        return _ferry.FERRY_EINVAL
    exc = FerryError("%s [FERRY_EINVAL: %s]" % (detail, strerror(_ferry.FERRY_EINVAL)))
    exc.code, exc.name, exc.detail = _ferry.FERRY_EINVAL, "FERRY_EINVAL", detail
    raise exc


_vm_copy = None


def _own_memory_copy(write, address, data, length):
    """Copies between this process's memory at address and data (bytes to write, or a
    bytearray to read into) with process_vm_writev/readv on the process itself: an address
    range that is not mapped (or not writable) is refused by the kernel (EFAULT) instead of
    ending the process with SIGSEGV.  Returns None, or the reason it was refused.  Where the
    system call is not allowed (seccomp), a plain copy, as before."""
    global _vm_copy
    import ctypes
    if length == 0:
        return None
    if _vm_copy is None:
        class IOVec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
        libc = ctypes.CDLL(None, use_errno=True)
        calls = {}
        for name in ("process_vm_readv", "process_vm_writev"):
            fn = getattr(libc, name, None)
            if fn is not None:
                fn.restype = ctypes.c_ssize_t
                fn.argtypes = [ctypes.c_int, ctypes.POINTER(IOVec), ctypes.c_ulong, ctypes.POINTER(IOVec),
                               ctypes.c_ulong, ctypes.c_ulong]
                calls[name] = fn
        _vm_copy = (IOVec, calls)
    IOVec, calls = _vm_copy
    local = (ctypes.c_char * length).from_buffer(data) if not write else ctypes.create_string_buffer(data, length)
    fn = calls.get("process_vm_writev" if write else "process_vm_readv")
    done = 0
    while fn is not None and done < length:
        mine = IOVec(ctypes.addressof(local) + done, length - done)
        there = IOVec(address + done, length - done)
        n = fn(os.getpid(), ctypes.byref(mine), 1, ctypes.byref(there), 1, 0)
        err = ctypes.get_errno() if n < 0 else 0
        if n > 0:
            done += n
        elif err == errno.EINTR:
            continue
        elif n == 0 or err == errno.EFAULT:
            return os.strerror(errno.EFAULT)
        elif done == 0 and err in (errno.ENOSYS, errno.EPERM):
            fn = None   # not allowed here: the plain copy below
        else:
            return os.strerror(err)
    if fn is None:
        if write:
            ctypes.memmove(address, local, length)
        else:
            ctypes.memmove(local, address, length)
    return None


class NativeTransferEngine(TransferEngine):
    """TransferEngine with ferry's native convention: errors in the call raise
    (ValueError, FerryError with .code/.name/.detail) before anything is sent; a
    transfer that fails after it was accepted returns its negative code."""
    __slots__ = ()

    def __init__(self, managed_pool_size=None):
        super().__init__(managed_pool_size, strict=True)

    initialize = _ferry.Engine.initialize   # a protocol ferry lacks is an error here
    transfer_write_on_cuda = _ferry.Engine.transfer_write_on_cuda    # 0, as ferry's other calls
    transfer_read_on_cuda = _ferry.Engine.transfer_read_on_cuda
    batch_transfer_write_on_cuda = _ferry.Engine.batch_transfer_write_on_cuda
    batch_transfer_read_on_cuda = _ferry.Engine.batch_transfer_read_on_cuda
