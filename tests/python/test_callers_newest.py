# SPDX-License-Identifier: Apache-2.0
"""Call sequences of the callers' newest code (vLLM's MooncakeConnector, the
reference's own *_on_cuda and initiator tests) that ferry answered differently, each test
written from the caller's real sequence and failing on the ferry before the
fix.  What the reference (kvcache-ai/Mooncake) or the caller does is quoted
with its file above each test; the full list of caller uses is in
/work/wt/_exchange/callers2.md.  A target runs in its own process (target.py);
nothing here depends on timing."""
import socket

import numpy as np
import pytest

import ferry
import ferry.engine as fe
from conftest import Target
from pattern import pattern

KIB = 1024


def ipv6_loopback_or_skip():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as ex:
        pytest.skip("SKIPPED: this host has no IPv6 loopback (::1): %s" % ex)


def registered(engine, size, seed=None):
    buf = np.zeros(size, np.uint8) if seed is None else pattern(seed, 0, size)
    assert engine.register_memory(buf.ctypes.data, buf.nbytes) == 0
    return buf


# ---------------------------------------------------------------- vLLM on an IPv6 host

# vLLM (vllm/distributed/kv_transfer/kv_connector/v1/mooncake/mooncake_connector.py,
# MooncakeConnectorWorker): self.hostname = get_ip() (a bare IPv6 address on an
# IPv6-only host), engine.initialize(self.hostname, "P2PHANDSHAKE", protocol,
# device_name), and the prefill side names the decode engine
#     remote_session = f"{meta.remote_hostname}:{meta.remote_port}"
# (send_kv_to_decode / _build_transfer_params): "fd00::5:15123", no brackets.
# The reference reads that as host fd00::5, port 15123 (mooncake-transfer-engine/
# include/common.h, parseHostNameWithPort: a name that is no IPv6 address as a
# whole is split at its last colon; "15123" cannot be a group, which has at most
# 4 hex digits).  ferry refused every "addr:digits" as ambiguous (FERRY_ENOSEG);
# it now refuses only where the whole is an address too ("::1:8080").


def test_vllm_session_of_a_bare_ipv6_host_and_port():
    ipv6_loopback_or_skip()
    decode = Target(size=4 << 20, env_extra={"TARGET_HOSTNAME": "::1"})
    prefill = fe.TransferEngine()
    try:
        assert decode.segment.startswith("[::1]:")
        remote_hostname, remote_port = "::1", int(decode.segment.rpartition(":")[2])
        assert prefill.initialize("::1", "P2PHANDSHAKE", "rdma", "") == 0, ferry.last_error()
        # register_kv_caches: the storages' data_ptr() and nbytes, as two lists of ints
        kv = [pattern(60 + i, 0, 256 * KIB) for i in range(2)]
        assert prefill.batch_register_memory([t.ctypes.data for t in kv], [t.nbytes for t in kv]) == 0
        remote_session = f"{remote_hostname}:{remote_port}"
        if remote_port < 10000:   # then "::1:NNNN" is an address as well: ambiguous, as the reference's is
            assert prefill.batch_transfer_sync_write(remote_session, [kv[0].ctypes.data], [decode.addr],
                                                     [4096]) == ferry.FERRY_ENOSEG
            pytest.skip("SKIPPED: the target's port %d has 4 digits; the bare form is ambiguous" % remote_port)
        # _send_blocks: one batch of contiguous block groups, then the bytes are in the decode buffer
        block = 16 * KIB
        src = [kv[0].ctypes.data, kv[1].ctypes.data + 4 * block]
        dst = [decode.addr + 2 * block, decode.addr + 10 * block]
        assert prefill.batch_transfer_sync_write(remote_session, src, dst, [2 * block, 3 * block]) == 0, \
            ferry.last_error()
        got = np.zeros(5 * block, np.uint8)
        assert prefill.register_memory(got.ctypes.data, got.nbytes) == 0
        assert prefill.batch_transfer_sync_read(remote_session, [got.ctypes.data, got.ctypes.data + 2 * block],
                                                dst, [2 * block, 3 * block]) == 0
        assert np.array_equal(got[:2 * block], kv[0][:2 * block])
        assert np.array_equal(got[2 * block:], kv[1][4 * block:7 * block])
        # the bracketed name the reference publishes reaches the same segment
        assert prefill.get_first_buffer_address(decode.segment) == decode.addr
        assert prefill.get_first_buffer_address(remote_session) == decode.addr
    finally:
        prefill.close()
        decode.close()


def test_ipv6_names_that_stay_ambiguous_or_wrong():
    """Where the whole is an IPv6 address too, the bare form stays refused, saying how to write it."""
    e = fe.TransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    try:
        assert e.transfer_sync_write("::1:8080", 0x1000, 0x1000, 8) == ferry.FERRY_ENOSEG
        assert "ambiguous" in ferry.last_error()[2] and "[::1]:8080" in ferry.last_error()[2]
        assert e.transfer_sync_write("::1:99999", 0x1000, 0x1000, 8) == ferry.FERRY_ENOSEG
        assert "bad port" in ferry.last_error()[2], ferry.last_error()
    finally:
        e.close()


# ---------------------------------------------------------------- *_on_cuda refusals

# The reference (mooncake-integration/transfer_engine/transfer_engine_py.cpp,
# TransferEnginePy::batchTransferOnCuda, behind all four *_on_cuda): returns
# void (None in Python) and throws std::runtime_error -> RuntimeError when the
# segment cannot be opened ("Failed to open segment"), when the lists differ in
# size, and when cudaLaunchHostFunc fails; docs/source/api-reference/python/
# transfer-engine.md says "Returns: None ... Raises: RuntimeError".  Its caller
# (mooncake-wheel/tests/test_transfer_on_cuda.py) calls
#     self.engine.transfer_write_on_cuda(self.target_name, src.data_ptr(),
#                                        dst.data_ptr(), src.nbytes, self.copy_stream.cuda_stream)
# and looks at no return value: ferry answered a refusal with a negative code,
# so the caller's stream ran on as if the bytes were there.


def test_on_cuda_refusals_raise_runtime_error():
    e = fe.TransferEngine()
    # test_transfer_on_cuda.py's setUpClass: rdma on a named NIC (tcp here), target_name host:rpc_port
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "rdma", "mlx5_bond_0") == 0
    try:
        target_name = "127.0.0.1:%d" % e.get_rpc_port()
        src, dst = registered(e, 64 * KIB, seed=1), registered(e, 64 * KIB)
        stream = 0
        with pytest.raises(RuntimeError) as ei:      # unknown segment
            e.transfer_write_on_cuda("127.0.0.1:1", src.ctypes.data, dst.ctypes.data, 4096, stream)
        assert ei.value.code == ferry.FERRY_ENOSEG and "127.0.0.1:1" in str(ei.value)
        with pytest.raises(RuntimeError) as ei:      # lists of different sizes
            e.batch_transfer_read_on_cuda(target_name, [src.ctypes.data] * 2, [dst.ctypes.data], [4096, 4096], stream)
        assert ei.value.code == ferry.FERRY_EINVAL
        unreg = np.zeros(4096, np.uint8)
        with pytest.raises(RuntimeError) as ei:      # memory nobody registered (the reference: _exit(1) later)
            e.batch_transfer_write_on_cuda(target_name, [unreg.ctypes.data], [dst.ctypes.data], [4096], stream,
                                           location="sim:0")
        assert ei.value.code == ferry.FERRY_ENOTREG
        with pytest.raises(RuntimeError) as ei:      # a location that has no stream
            e.transfer_read_on_cuda(target_name, src.ctypes.data, dst.ctypes.data, 4096, stream, "", "cpu")
        assert ei.value.code == ferry.FERRY_ENOTSUP and ferry.last_error()[0] == ferry.FERRY_ENOTSUP
        with pytest.raises(TypeError):
            e.transfer_write_on_cuda(target_name, src.ctypes.data, dst.ctypes.data, 4096, "stream")
    finally:
        e.close()


def test_native_on_cuda_keeps_its_convention():
    """NativeTransferEngine: errors in the call raise FerryError, success is 0 (unchanged)."""
    e = ferry.NativeTransferEngine()
    assert e.initialize("127.0.0.1") == 0
    try:
        with pytest.raises(ferry.FerryError) as ei:
            e.transfer_write_on_cuda("127.0.0.1:%d" % e.get_rpc_port(), 0x1000, 0x1000, 4096, 0, "", "cpu")
        assert ei.value.code == ferry.FERRY_ENOTSUP
    finally:
        e.close()


# ---------------------------------------------------------------- managed buffers above 16 MiB

# The reference (transfer_engine_py.cpp allocateManagedBuffer): a length above
# its largest slab class gets allocateRawBuffer(length), registered alone; the
# slab's buffers (doBuddyAllocate) exist only once a smaller length is asked
# for.  Its initiator test (mooncake-wheel/tests/transfer_engine_initiator_test.py,
# _ensure_buffer_available) allocates 64 MiB when get_first_buffer_address of
# its own segment is 0, and every later case writes through
# get_first_buffer_address(own) again: that must be the 64 MiB buffer.  ferry
# mapped and registered its 256 MiB pool on any first allocation, so the
# first buffer was the pool's unallocated start (FERRY_ENOTREG on use).


def test_a_large_managed_buffer_is_the_first_buffer_and_maps_no_pool(target):
    e = fe.TransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    try:
        me = e.segment_name
        assert e.get_first_buffer_address(me) == 0
        big = e.allocate_managed_buffer(64 << 20)
        assert big != 0 and e.managed_buffer_info()["size"] == 0          # no pool yet
        assert e.get_first_buffer_address(me) == big
        assert e.write_bytes_to_buffer(big, b"first buffer", 12) == 0
        assert e.transfer_sync_write(target.segment, e.get_first_buffer_address(me), target.addr, 12) == 0
        small = e.allocate_managed_buffer(4096)                           # now the pool
        assert small != 0 and e.managed_buffer_info()["size"] == 256 << 20
        assert e.get_first_buffer_address(me) == big                      # registration order
        assert e.free_managed_buffer(small, 4096) == 0 and e.free_managed_buffer(big, 64 << 20) == 0
    finally:
        e.close()
        target.cmd("fill 0 12 %d" % target.seed)


def test_managed_pool_that_cannot_be_mapped_says_so_and_maps_later():
    """The pool is mapped by the first allocation of <= 16 MiB; if that fails (here: an
    address-space limit), the allocation is 0 with FERRY_ENOMEM, and the next one maps it."""
    script = r'''
import resource, ferry, ferry.engine as fe
e = fe.TransferEngine()
assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
vm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize")][0]
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (vm + (64 << 20), hard))
a = e.allocate_managed_buffer(4096)
err = ferry.last_error()
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
assert a == 0 and err[1] == "FERRY_ENOMEM" and "managed pool of 268435456 bytes" in err[2], (a, err)
assert e.managed_buffer_info()["size"] == 0
b = e.allocate_managed_buffer(4096)
assert b != 0 and e.managed_buffer_info()["size"] == 268435456, ferry.last_error()
assert e.free_managed_buffer(b, 4096) == 0
e.close()
print("OK")
'''
    import os
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=os.path.dirname(ferry.__path__[0]))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "OK", out.stdout + out.stderr


# ---------------------------------------------------------------- callers that check the result's type

# A runtime-owned executor of KV-cache writes (a public caller of the
# reference binding, typed against a Protocol of register_memory(buffer_addr,
# capacity, location="*"), unregister_memory, send_probe and
# batch_transfer_sync_write) accepts a result only when
#     type(code) is int and code == 0
# and otherwise quarantines itself ("native work may still be in flight").
# A bool, None or an int subclass from any of these calls, on success or on
# failure, would wedge it; so would an exception where the reference returns
# a code.  The reference's pybind functions return a plain int in every case.


def test_results_are_plain_ints_for_a_type_checking_executor(target):
    e = fe.TransferEngine()
    assert type(e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")) is int
    buf = pattern(71, 0, 256 * KIB)
    a = buf.ctypes.data
    calls = {
        "register_memory(location='*')": (lambda: e.register_memory(a, 128 * KIB, "*"), 0),
        "register_memory(overlapping)": (lambda: e.register_memory(a + 4096, 4096), ferry.FERRY_EEXIST),
        "send_probe": (lambda: e.send_probe(target.segment), 0),
        "send_probe(unknown peer)": (lambda: e.send_probe("127.0.0.1:1"), None),
        "batch_transfer_sync_write": (lambda: e.batch_transfer_sync_write(
            target.segment, [a, a + 4096], [target.addr, target.addr + 8192], [4096, 4096]), 0),
        "batch_transfer_sync_write(outside the peer's buffers)": (lambda: e.batch_transfer_sync_write(
            target.segment, [a], [target.addr + target.size], [4096]), ferry.FERRY_ERANGE),
        "batch_transfer_sync_write(unregistered source)": (lambda: e.batch_transfer_sync_write(
            target.segment, [a + 128 * KIB], [target.addr], [4096]), ferry.FERRY_ENOTREG),
        "unregister_memory": (lambda: e.unregister_memory(a), 0),
        "unregister_memory(again)": (lambda: e.unregister_memory(a), ferry.FERRY_ENOTREG),
    }
    try:
        for what, (call, want) in calls.items():
            code = call()
            assert type(code) is int, (what, code, type(code))
            assert code == want if want is not None else code < 0, (what, code, ferry.last_error())
        e.close()
        for what, (call, _) in calls.items():   # a closed engine: still a plain negative int
            if what.startswith(("register", "unregister", "send", "batch")):
                code = call()
                assert type(code) is int and code < 0, (what, code, type(code))
    finally:
        e.close()
        target.cmd("fill 0 %d %d" % (16 * KIB, target.seed))


# ---------------------------------------------------------------- vllm-ascend's shared-segment check

# vllm-ascend (vllm_ascend/distributed/kv_transfer/sparse_kv_offload/mooncake_host_pool.py,
# _select_shared_segment_mode) asks the reference which shared-segment mode it has:
#     from mooncake.shared_segment import shared_segment_supported   # ImportError -> its own RuntimeError
#     if shared_segment_supported(mmap=False): ...
#     if shared_segment_supported(mmap=True, host_register=True): ...
# The reference (mooncake-integration/shared_segment.py, transfer_engine/shared_segment_py.cpp,
# Mooncake #3285) answers False on a build without the backend, and create_shared_segment
# raises SharedSegmentError naming the mode.  ferry has no shared segment: it now answers
# as such a build (before: mooncake.shared_segment did not exist, the import failed).


def test_vllm_ascend_shared_segment_capability_check_through_the_alias():
    import os
    import subprocess
    import sys
    script = "\n".join([
        "from mooncake.shared_segment import (SharedSegment, SharedSegmentError, create_shared_segment,",
        "                                     shared_segment_supported)",
        "assert shared_segment_supported(mmap=False) is False",
        "assert shared_segment_supported(mmap=True, host_register=True) is False",
        "assert shared_segment_supported() is False",
        "assert issubclass(SharedSegmentError, RuntimeError)",
        "def refused(match, **kw):",
        "    try:",
        "        create_shared_segment('vllm_sparse_kv', {}, world_size=1, rank_id=0, **kw)",
        "    except SharedSegmentError as ex:",
        "        assert match in str(ex), (match, str(ex))",
        "    else:",
        "        raise AssertionError('create_shared_segment did not raise')",
        "refused('no VMM backend', mmap=False)",
        "refused('cannot HostRegister', mmap=True, host_register=True)",
        "refused('no mmap shared-segment backend')",
        "refused('host_register requires mmap=True', mmap=False, host_register=True)",
        "refused('deprecated alias', comm_group=object(), tp_group=object())",
        "from mooncake.engine import SharedSegment as Binding",
        "assert Binding.supported() is False and Binding.supported(False, False) is False",
        "try:",
        "    Binding.create('x', 4096, 1, 0)",
        "except RuntimeError as ex:",
        "    assert \"'x'\" in str(ex) and 'supported' in str(ex), str(ex)",
        "else:",
        "    raise AssertionError('SharedSegment.create did not raise')",
        "import sys",
        "assert 'torch' not in sys.modules",
        "print('OK')",
    ])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(ferry.__path__[0]), ferry.mooncake_alias_path(),
                                         env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "OK", out.stderr


# ---------------------------------------------------------------- batch ids kept in numpy

# The reference's get_batch_transfer_status(std::vector<batch_id_t>) and
# transfer_check_status(batch_id_t) take any Python integer: pybind11's integer caster
# accepts an object with __index__, so ids a caller keeps in a numpy array (or gets back
# as numpy integers from one) work there.  ferry raised TypeError ("batch id must be an
# int, not numpy.uint64"); it now takes them as their int value.


def test_batch_ids_as_numpy_integers(target):
    e = fe.TransferEngine()
    try:
        assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
        src = registered(e, 64 * KIB, seed=81)
        a = src.ctypes.data
        ids = np.array([e.batch_transfer_async_write(target.segment, [a + i * 4 * KIB], [target.addr + i * 4 * KIB],
                                                     [4 * KIB]) for i in range(4)], dtype=np.uint64)
        assert ids.all()
        assert e.get_batch_transfer_status(ids[:2]) == 0                        # a numpy array of ids
        assert e.get_batch_transfer_status([np.int64(ids[2])]) == 0             # a list of numpy integers
        assert e.get_batch_transfer_status(ids[3]) == 0                         # one numpy id (ferry takes one id too)
        sid = np.uint64(e.transfer_submit_write(target.segment, a + 16 * KIB, target.addr + 16 * KIB, 4 * KIB))
        assert sid
        ret = 0
        while ret == 0:                                                          # the reference's poll
            ret = e.transfer_check_status(sid)
        assert ret == 1 and type(ret) is int
        assert target.check(0, 20 * KIB, 81) == "OK"
        # what is no integer still fails as before
        with pytest.raises(TypeError, match="batch id must be an int"):
            e.get_batch_transfer_status([1.0])
        with pytest.raises(TypeError):
            e.transfer_check_status("1")
        assert e.get_batch_transfer_status(np.array([12345], dtype=np.uint64)) == ferry.FERRY_EINVAL   # unknown id
    finally:
        e.close()
        target.cmd("fill 0 %d %d" % (20 * KIB, target.seed))
