# SPDX-License-Identifier: Apache-2.0
"""Tests of the ferry Python package: every TransferEngine method, two engines in
two processes (target.py) with the bytes checked on both sides, bad input, the
managed-buffer allocator, GIL release, and torch tensors (skipped without torch
or without a GPU, with the reason shown by `pytest -rs`)."""
import threading
import time

import numpy as np
import pytest

import ferry
from conftest import TARGET_SEED
from pattern import first_mismatch, pattern

KIB = 1024
MIB = 1024 * KIB


def local_buffer(engine, size, seed=None, base=0):
    """A registered numpy buffer, zeroed or holding pattern(seed) as it should
    look at offset `base` of the target's buffer."""
    buf = np.zeros(size, dtype=np.uint8) if seed is None else pattern(seed, base, size)
    assert engine.register_memory(buf) == 0
    return buf


# ---------------------------------------------------------------- module


def test_module_exports():
    assert ferry.FERRY_OK == 0 and ferry.FERRY_ENOSEG == -5 and ferry.FERRY_ECANCELED == -17
    assert ferry.strerror(ferry.FERRY_ERANGE) == "remote range outside the target's registered buffers"
    assert ferry.err_name(-5) == "FERRY_ENOSEG"
    assert ferry.err_name(-999) == "FERRY_E?"
    assert ferry.READ == ferry.TransferOpcode.Read == 0 and ferry.WRITE == ferry.TransferOpcode.Write == 1
    assert issubclass(ferry.FerryError, RuntimeError)
    assert ferry.__version__.count(".") == 2
    envs = [k[0] for k in ferry.config_knobs()]
    assert "FERRY_TCP_CONNECTIONS" in envs and all(len(k) == 3 for k in ferry.config_knobs())
    assert all(isinstance(k, str) for k in ferry.__all__)


def test_methods_before_initialize_raise():
    e = ferry.NativeTransferEngine()
    assert not e.initialized
    for call in (e.get_rpc_port, lambda: e.segment_name, lambda: e.register_memory(bytearray(4096)),
                 lambda: e.transfer_sync_write("127.0.0.1:1", 4096, 0, 1), e.get_stats,
                 lambda: e.allocate_managed_buffer(4096)):
        with pytest.raises(ferry.FerryError, match="not initialized"):
            call()


# ---------------------------------------------------------------- initialize


def test_initialize_and_names(engine):
    assert engine.initialized
    host, port = engine.segment_name.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) == engine.get_rpc_port() > 0
    # a second initialize is refused with a negative code, the reference's convention
    assert engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == ferry.FERRY_EBUSY
    assert ferry.last_error()[1] == "FERRY_EBUSY"


def test_initialize_failures_return_negative():
    e = ferry.NativeTransferEngine()
    rc = e.initialize("127.0.0.1", "P2PHANDSHAKE", "nosuchproto", "")
    assert rc < 0
    code, name, detail = ferry.last_error()
    assert code == rc and "nosuchproto" in detail
    assert e.initialize("127.0.0.1", "bogus://x", "tcp", "") < 0
    assert not e.initialized
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0  # still usable after failures
    e.close()


def test_initialize_config_kwargs_and_ext():
    e = ferry.NativeTransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "", tcp_connections=2, request_timeout_ms=5000) == 0
    e.close()
    with pytest.raises(TypeError, match="unexpected keyword"):
        ferry.NativeTransferEngine().initialize("127.0.0.1", tcp_conections=2)
    with pytest.raises(TypeError):
        ferry.NativeTransferEngine().initialize(12345)
    with pytest.raises(ValueError):
        ferry.NativeTransferEngine().initialize("127.0.0.1", tcp_connections=-1)
    assert ferry.NativeTransferEngine().initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "", tcp_connections=0) < 0
    e = ferry.NativeTransferEngine()
    assert e.initialize_ext("127.0.0.1", "P2PHANDSHAKE", "tcp", "", "p2p") == 0
    e.close()


def test_close_and_context_manager():
    with ferry.NativeTransferEngine() as e:
        assert e.initialize("127.0.0.1") == 0
        name = e.segment_name
    assert not e.initialized
    with pytest.raises(ferry.FerryError, match="closed"):
        e.get_rpc_port()
    assert e.initialize("127.0.0.1") == ferry.FERRY_EBUSY  # a closed engine stays closed
    e.close()  # idempotent
    assert name


# ---------------------------------------------------------------- registration


def test_register_kinds_of_buffers(engine):
    ba = bytearray(8 * KIB)
    arr = np.zeros(8 * KIB, dtype=np.uint8)
    raw = np.zeros(16 * KIB, dtype=np.uint8)
    assert engine.register_memory(ba) == 0
    assert engine.register_memory(memoryview(arr)) == 0
    assert engine.register_memory(raw.ctypes.data, raw.nbytes, location="cpu") == 0
    with pytest.raises(BufferError):  # a held view stops a registered bytearray from moving
        ba.extend(b"x" * 4096)
    for b in (ba, arr, raw.ctypes.data):
        assert engine.unregister_memory(b) == 0
    ba.extend(b"x")  # released again


def test_register_errors(engine):
    arr = np.zeros(64 * KIB, dtype=np.uint8)
    assert engine.register_memory(arr) == 0
    with pytest.raises(ferry.FerryError) as ei:
        engine.register_memory(arr.ctypes.data + 4096, 4096)
    assert ei.value.name == "FERRY_EEXIST" and ei.value.code == ferry.FERRY_EEXIST and ei.value.detail
    with pytest.raises(ferry.FerryError) as ei:
        engine.register_memory(np.zeros(4096, np.uint8), location="cuda:99")
    assert ei.value.name in ("FERRY_ENODEV", "FERRY_EINVAL")
    with pytest.raises(ferry.FerryError):
        engine.register_memory(np.zeros(4096, np.uint8), location="nonsense")
    with pytest.raises(BufferError):  # read-only memory cannot be remote accessible
        engine.register_memory(b"immutable bytes")
    assert engine.register_memory(b"read-only is fine locally", remote_accessible=False) == 0
    with pytest.raises(TypeError):
        engine.register_memory("a string")
    with pytest.raises(ValueError, match="required"):
        engine.register_memory(arr.ctypes.data)
    with pytest.raises(ValueError, match="negative"):
        engine.register_memory(arr.ctypes.data, -1)
    with pytest.raises(ValueError, match="exceeds"):
        engine.register_memory(bytearray(10), 11)
    with pytest.raises(ValueError):
        engine.register_memory(bytearray(10), 1 << 60)
    with pytest.raises(ferry.FerryError) as ei:
        engine.unregister_memory(arr.ctypes.data + 1)
    assert ei.value.name == "FERRY_ENOTREG"
    assert engine.register_memory(np.zeros(4096, np.uint8), location="*") == 0  # the reference's wildcard


def test_batch_register(engine):
    bufs = [np.zeros(8 * KIB, np.uint8) for _ in range(4)]
    assert engine.batch_register_memory([b.ctypes.data for b in bufs], [b.nbytes for b in bufs]) == 0
    assert engine.batch_unregister_memory([b.ctypes.data for b in bufs]) == 0
    # all or nothing: the overlap in the last entry undoes the first ones
    with pytest.raises(ferry.FerryError):
        engine.batch_register_memory([bufs[0], bufs[1], bufs[0]], [None, None, None])
    assert engine.register_memory(bufs[0]) == 0
    with pytest.raises(ValueError):
        engine.batch_register_memory([bufs[0]], [])
    with pytest.raises(ferry.FerryError):
        engine.batch_unregister_memory([bufs[1].ctypes.data, bufs[0].ctypes.data])
    assert engine.register_memory(bufs[0]) == 0  # was unregistered despite the error


# ---------------------------------------------------------------- two processes


def test_segment_buffers(engine, target):
    assert engine.get_first_buffer_address(target.segment) == target.addr
    assert engine.get_segment_buffers(target.segment) == [(target.addr, target.size, "cpu")]
    with pytest.raises(ferry.FerryError) as ei:
        engine.get_first_buffer_address("127.0.0.1:1")
    assert ei.value.name == "FERRY_ENOSEG"


def test_sync_write_and_read(engine, target):
    src = local_buffer(engine, 1 * MIB, seed=101)
    assert engine.transfer_sync_write(target.segment, src.ctypes.data, target.addr, 4096) == 0
    assert target.check(0, 4096, 101) == "OK"
    # a buffer object: its size is the default length; a slice of a memoryview moves its own bytes
    assert engine.transfer_sync_write(target.segment, memoryview(src)[8192:16384], target.addr + 8192) == 0
    assert target.check(8192, 8192, 101) == "OK"
    assert engine.transfer_sync_write(target.segment, src, target.addr, length=1 * MIB) == 0
    assert target.check(0, 1 * MIB, 101) == "OK"
    target.cmd("fill 0 %d %d" % (1 * MIB, TARGET_SEED))
    dst = local_buffer(engine, 256 * KIB)
    assert engine.transfer_sync_read(target.segment, dst, target.addr + 4096, 256 * KIB) == 0
    assert first_mismatch(dst, TARGET_SEED, 4096) == -1
    # the generic form with an opcode, and a notification
    assert engine.transfer_sync(target.segment, src, target.addr, 4096, ferry.TransferOpcode.Write,
                                ferry.TransferNotify("blk", "0")) == 0
    assert engine.transfer_sync(target.segment, dst, target.addr, 4096, ferry.READ) == 0
    assert first_mismatch(dst[:4096], 101, 0) == -1
    target.cmd("notes")


def test_batch_sync_1000_requests(engine, target):
    n, bs = 1000, 4 * KIB
    src = local_buffer(engine, n * bs * 2, seed=202)
    # every other block, so a misplaced block would show
    bufs = [src.ctypes.data + 2 * i * bs for i in range(n)]
    peers = [target.addr + 2 * i * bs for i in range(n)]
    assert engine.batch_transfer_sync_write(target.segment, bufs, peers, [bs] * n) == 0
    for i in (0, 1, n // 2, n - 1):
        assert target.check(2 * i * bs, bs, 202) == "OK"
    assert target.check(bs, bs, TARGET_SEED) == "OK"  # the gaps are untouched
    dst = local_buffer(engine, n * bs * 2)
    assert engine.batch_transfer_sync_read(target.segment, [dst.ctypes.data + a - target.addr for a in peers],
                                           peers, bs) == 0  # one int for every length
    for i in range(n):
        assert first_mismatch(dst[2 * i * bs:(2 * i + 1) * bs], 202, 2 * i * bs) == -1
    assert engine.batch_transfer_sync(target.segment, bufs[:3], peers[:3], [bs] * 3, ferry.WRITE,
                                      notify=ferry.TransferNotify("done", "3")) == 0


def test_batch_of_buffer_objects_and_tuples(engine, target):
    src = local_buffer(engine, 64 * KIB, seed=303, base=1 * MIB)
    views = tuple(memoryview(src)[i * 16 * KIB:(i + 1) * 16 * KIB] for i in range(4))
    peers = tuple(target.addr + 1 * MIB + i * 16 * KIB for i in range(4))
    assert engine.batch_transfer_sync_write(target.segment, views, peers, None) == 0
    assert target.check(1 * MIB, 64 * KIB, 303) == "OK"
    dst = local_buffer(engine, 64 * KIB)
    dviews = [memoryview(dst)[i * 16 * KIB:(i + 1) * 16 * KIB] for i in range(4)]
    assert engine.batch_transfer_sync_read(target.segment, dviews, list(peers), [16 * KIB] * 4) == 0
    assert np.array_equal(dst, src)


def test_numpy_integers_as_addresses(engine, target):
    src = local_buffer(engine, 64 * KIB, seed=909, base=12 * MIB)
    assert engine.transfer_sync_write(target.segment, np.uint64(src.ctypes.data), np.uint64(target.addr + 12 * MIB),
                                      np.int32(4096)) == 0
    n = 16
    assert engine.batch_transfer_sync_write(
        target.segment, np.array([src.ctypes.data + i * 4 * KIB for i in range(n)], dtype=np.uint64),
        np.array([target.addr + 12 * MIB + i * 4 * KIB for i in range(n)], dtype=np.uint64),
        np.full(n, 4 * KIB)) == 0
    assert target.check(12 * MIB, 64 * KIB, 909) == "OK"
    with pytest.raises(TypeError):
        engine.transfer_sync_write(target.segment, np.float64(1.0), target.addr, 4096)


def test_async_batches_and_statuses(engine, target):
    n, bs = 64, 16 * KIB
    src = local_buffer(engine, n * bs, seed=404, base=2 * MIB)
    ids = [engine.batch_transfer_async_write(target.segment, [src.ctypes.data + i * bs],
                                             [target.addr + 2 * MIB + i * bs], [bs]) for i in range(n)]
    assert all(i > 0 for i in ids) and len(set(ids)) == n
    assert set(ids) <= set(engine.pending_batches())
    st = engine.batch_status(ids[0])
    assert len(st) == 1 and st[0].state in ("PENDING", "COMPLETED")
    assert engine.get_batch_transfer_status(ids) == 0
    assert target.check(2 * MIB, n * bs, 404) == "OK"
    with pytest.raises(ValueError, match="unknown batch id"):
        engine.get_batch_transfer_status(ids[:1])  # collected already
    # one batch of many, per-request statuses, wait + free
    dst = local_buffer(engine, n * bs)
    bid = engine.batch_transfer_async_read(target.segment, [dst.ctypes.data + i * bs for i in range(n)],
                                           [target.addr + 2 * MIB + i * bs for i in range(n)], bs)
    assert engine.wait_batch(bid) == 0
    st = engine.batch_status(bid)
    assert len(st) == n and all(s.state == "COMPLETED" and s.error == 0 and s.transferred == bs for s in st)
    assert st[0].error_name == "FERRY_OK" and st[0].message == ""
    assert np.array_equal(dst, src)
    engine.free_batch(bid)
    with pytest.raises(ValueError):
        engine.batch_status(bid)
    # the reference's single-request async pair
    bid = engine.transfer_submit_write(target.segment, src.ctypes.data, target.addr, 4096)
    deadline = time.time() + 10
    while (rc := engine.transfer_check_status(bid)) == 0 and time.time() < deadline:
        time.sleep(0.001)
    assert rc == 1
    assert engine.transfer_check_status(bid) == 1  # collected; its result stays until the id is taken
    assert engine.get_batch_transfer_status([bid]) == 0
    with pytest.raises(ValueError):
        engine.transfer_check_status(bid)
    bid = engine.batch_transfer_async(target.segment, [src.ctypes.data], [target.addr], [4096], ferry.WRITE)
    assert engine.get_batch_transfer_status(bid) == 0  # a single id is accepted too


def test_async_batch_keeps_buffer_alive(engine, target):
    src = np.zeros(1 * MIB, np.uint8)
    engine.register_memory(src)
    bid = engine.batch_transfer_async_read(target.segment, [memoryview(src)], [target.addr], None)
    assert engine.get_batch_transfer_status([bid]) == 0


def test_notifications(engine, target):
    target.cmd("notes")  # drain
    src = local_buffer(engine, 8 * KIB, seed=505)
    assert engine.batch_transfer_sync_write(target.segment, [src], [target.addr + 3 * MIB], None,
                                            notify=b"kv ready: req 42") == 0
    bid = engine.batch_transfer_async_write(target.segment, [src], [target.addr + 3 * MIB], None, notify="text")
    assert engine.get_batch_transfer_status([bid]) == 0
    import json
    notes = json.loads(target.cmd("notes")[len("NOTES "):])
    assert [bytes.fromhex(m) for _, m in notes] == [b"kv ready: req 42", b"text"]
    assert all(s == engine.segment_name for s, _ in notes)
    with pytest.raises(ValueError, match="4096"):
        engine.batch_transfer_sync_write(target.segment, [src], [target.addr], None, notify=b"x" * 4097)
    with pytest.raises(TypeError):
        engine.batch_transfer_sync_write(target.segment, [src], [target.addr], None, notify=12)


def test_notifications_between_local_engines(engine):
    with ferry.NativeTransferEngine() as peer:
        assert peer.initialize("127.0.0.1") == 0
        dst = local_buffer(peer, 8 * KIB)
        src = local_buffer(engine, 8 * KIB, seed=1)
        assert engine.transfer_sync(peer.segment_name, src, dst.ctypes.data, 4096, ferry.WRITE,
                                    notify=ferry.TransferNotify("layer", "7")) == 0
        assert engine.batch_transfer_sync_write(peer.segment_name, [src], [dst.ctypes.data], None,
                                                notify=b"raw") == 0
        notes = peer.get_notifies()
        assert notes[0] == ferry.TransferNotify("layer", "7")
        assert notes[1].name == engine.segment_name and notes[1].msg == "raw"
        assert peer.get_notifications() == []
        assert np.array_equal(dst, src)


def test_stats(engine, target):
    before = engine.get_stats()["tcp"]
    src = local_buffer(engine, 64 * KIB, seed=9)
    assert engine.transfer_sync_write(target.segment, src, target.addr) == 0
    assert engine.transfer_sync_read(target.segment, src, target.addr) == 0
    after = engine.get_stats()["tcp"]
    assert after["bytes_written"] - before["bytes_written"] == 64 * KIB
    assert after["bytes_read"] - before["bytes_read"] == 64 * KIB
    assert after["requests_completed"] - before["requests_completed"] == 2
    assert after["bytes_target_staged"] == 0 and after["nics"] == {}  # rdma fills these


# ---------------------------------------------------------------- bad input


def test_bad_types(engine, target):
    src = local_buffer(engine, 8 * KIB, seed=1)
    seg, peer = target.segment, target.addr
    with pytest.raises(TypeError, match="target_hostname"):
        engine.transfer_sync_write(b"127.0.0.1:1", src, peer, 10)
    with pytest.raises(TypeError, match="buffer"):
        engine.transfer_sync_write(seg, "not a buffer", peer, 10)
    with pytest.raises(TypeError):
        engine.transfer_sync_write(seg, src, "0x10", 10)
    with pytest.raises(TypeError):
        engine.transfer_sync_write(seg, src, peer, 1.5)
    with pytest.raises(TypeError):
        engine.transfer_sync_write(seg, src)
    with pytest.raises(TypeError):
        engine.transfer_sync_write(seg, src, peer, 10, bogus=1)
    with pytest.raises(TypeError):
        engine.batch_transfer_sync_write(seg, 12, [peer], [10])
    with pytest.raises(TypeError, match=r"lengths\[1\]"):
        engine.batch_transfer_sync_write(seg, [src.ctypes.data] * 2, [peer] * 2, [10, "10"])
    with pytest.raises(TypeError, match=r"buffers\[0\]"):
        engine.batch_transfer_sync_write(seg, [object()], [peer], [10])
    with pytest.raises(TypeError):
        engine.get_batch_transfer_status(["1"])
    with pytest.raises(ValueError):
        engine.transfer_sync(seg, src, peer, 10, 7)


def test_bad_lengths(engine, target):
    src = local_buffer(engine, 8 * KIB, seed=1)
    seg, peer = target.segment, target.addr
    for bad in (-1, -(1 << 70)):  # (0 is a transfer of nothing: test_reference_calls.py)
        with pytest.raises(ValueError):
            engine.transfer_sync_write(seg, src.ctypes.data, peer, bad)
    with pytest.raises(ValueError, match="larger than any buffer"):
        engine.transfer_sync_write(seg, src.ctypes.data, peer, 1 << 50)
    with pytest.raises(ValueError, match="64 bits"):
        engine.transfer_sync_write(seg, src.ctypes.data, peer, 1 << 70)
    with pytest.raises(ValueError, match="exceeds"):
        engine.transfer_sync_write(seg, src, peer, 8 * KIB + 1)
    with pytest.raises(ValueError, match="required"):
        engine.transfer_sync_write(seg, src.ctypes.data, peer)
    with pytest.raises(ValueError):
        engine.transfer_sync_write(seg, 0, peer, 10)
    with pytest.raises(ValueError, match="negative"):
        engine.transfer_sync_write(seg, src, -4, 10)
    with pytest.raises(ValueError, match="items"):
        engine.batch_transfer_sync_write(seg, [src.ctypes.data] * 2, [peer], [10, 10])
    with pytest.raises(ValueError, match="empty"):
        engine.batch_transfer_sync_write(seg, [], [], [])
    with pytest.raises(ValueError, match=r"lengths\[1\]"):
        engine.batch_transfer_sync_write(seg, [src.ctypes.data] * 2, [peer] * 2, [10, -10])
    with pytest.raises(ValueError, match=r"lengths\[0\]"):
        engine.batch_transfer_sync_write(seg, [src.ctypes.data], [peer], [1 << 60])
    with pytest.raises(ValueError):
        engine.allocate_managed_buffer(-1)
    with pytest.raises(ValueError):
        engine.allocate_managed_buffer(0)


def test_unknown_segment(engine):
    src = local_buffer(engine, 8 * KIB, seed=1)
    for call in (lambda: engine.transfer_sync_write("127.0.0.1:1", src, 4096, 10),
                 lambda: engine.batch_transfer_async_write("127.0.0.1:1", [src], [4096], [10]),
                 lambda: engine.get_first_buffer_address("no-such-host-xyz.invalid:1234")):
        with pytest.raises(ferry.FerryError) as ei:
            call()
        assert ei.value.name == "FERRY_ENOSEG" and ei.value.code == ferry.FERRY_ENOSEG
        assert "FERRY_ENOSEG" in str(ei.value)


def test_unregistered_local_and_remote_range(engine, target):
    loose = bytearray(8 * KIB)
    with pytest.raises(ferry.FerryError) as ei:
        engine.transfer_sync_write(target.segment, loose, target.addr)
    assert ei.value.name == "FERRY_ENOTREG" and "request 0" in ei.value.detail
    src = local_buffer(engine, 8 * KIB, seed=1)
    with pytest.raises(ferry.FerryError) as ei:
        engine.transfer_sync_write(target.segment, src, target.addr + target.size - 100, 4096)
    assert ei.value.name == "FERRY_ERANGE"
    with pytest.raises(ferry.FerryError) as ei:  # all or nothing: request 1 is bad
        engine.batch_transfer_sync_write(target.segment, [src, src], [target.addr, 16], None)
    assert ei.value.name == "FERRY_ERANGE"
    assert ferry.last_error()[1] == "FERRY_ERANGE"


# ---------------------------------------------------------------- failures after submit: negative codes


def test_timeout_returns_negative(fresh_target):
    e = ferry.NativeTransferEngine()
    assert e.initialize("127.0.0.1", request_timeout_ms=300, connect_timeout_ms=300) == 0
    src = local_buffer(e, 64 * KIB, seed=3)
    assert e.transfer_sync_write(fresh_target.segment, src, fresh_target.addr) == 0  # connected
    fresh_target.stop()
    try:
        rc = e.transfer_sync_write(fresh_target.segment, src, fresh_target.addr)
        assert rc == ferry.FERRY_ETIMEDOUT
        assert ferry.last_error()[0] == rc
        bid = e.batch_transfer_async_write(fresh_target.segment, [src], [fresh_target.addr], None)
        assert e.get_batch_transfer_status([bid]) == ferry.FERRY_ETIMEDOUT
        bid = e.batch_transfer_async_write(fresh_target.segment, [src], [fresh_target.addr], None)
        assert e.wait_batch(bid, timeout_ms=10) == ferry.FERRY_ETIMEDOUT  # the wait ran out first
        assert e.wait_batch(bid) == ferry.FERRY_ETIMEDOUT  # then the request did
        st = e.batch_status(bid)[0]
        assert st.state == "TIMEOUT" and st.error_name == "FERRY_ETIMEDOUT"
        e.free_batch(bid)
        bid = e.transfer_submit_write(fresh_target.segment, src, fresh_target.addr, 4096)
        deadline = time.time() + 10
        while (rc := e.transfer_check_status(bid)) == 0 and time.time() < deadline:
            time.sleep(0.01)
        assert rc in (-1, -2)
    finally:
        fresh_target.cont()
        e.close()


def test_peer_killed_returns_negative(engine, fresh_target):
    src = local_buffer(engine, 1 * MIB, seed=3)
    assert engine.transfer_sync_write(fresh_target.segment, src, fresh_target.addr) == 0
    fresh_target.kill()
    rc = engine.batch_transfer_sync_write(fresh_target.segment, [src] * 8, [fresh_target.addr] * 8, None)
    assert rc == ferry.FERRY_ECONN
    code, name, detail = ferry.last_error()
    assert (code, name) == (rc, "FERRY_ECONN") and "request" in detail
    assert engine.transfer_sync_read(fresh_target.segment, src, fresh_target.addr) == ferry.FERRY_ECONN


def test_close_cancels_running_batches(fresh_target):
    e = ferry.NativeTransferEngine()
    assert e.initialize("127.0.0.1") == 0
    src = local_buffer(e, 64 * KIB, seed=3)
    assert e.transfer_sync_write(fresh_target.segment, src, fresh_target.addr) == 0
    fresh_target.stop()
    try:
        bid = e.batch_transfer_async_write(fresh_target.segment, [src], [fresh_target.addr], None)
        assert bid > 0
        t0 = time.time()
        e.close()  # must not wait for the 30 s request timeout
        assert time.time() - t0 < 10
        with pytest.raises(ferry.FerryError, match="closed"):
            e.batch_status(bid)
    finally:
        fresh_target.cont()


# ---------------------------------------------------------------- GIL


def test_gil_released_while_blocked(engine, fresh_target):
    """A transfer blocked on a stopped peer must let other Python threads run."""
    src = local_buffer(engine, 64 * KIB, seed=3)
    assert engine.transfer_sync_write(fresh_target.segment, src, fresh_target.addr) == 0
    result = []
    fresh_target.stop()
    try:
        t = threading.Thread(target=lambda: result.append(
            engine.transfer_sync_write(fresh_target.segment, src, fresh_target.addr)))
        t.start()
        time.sleep(0.05)
        count, end = 0, time.time() + 0.3
        while time.time() < end:
            count += 1
        assert t.is_alive() and not result  # still blocked in ferry...
        assert count > 10000                 # ...while this thread kept running Python
    finally:
        fresh_target.cont()
    t.join(30)
    assert result == [0]


def test_threads_share_one_engine(engine, target):
    src = local_buffer(engine, 8 * 64 * KIB, seed=606, base=8 * MIB)
    errors = []

    def worker(k):
        try:
            for _ in range(20):
                off = k * 64 * KIB
                assert engine.transfer_sync_write(target.segment, src.ctypes.data + off,
                                                  target.addr + 8 * MIB + off, 64 * KIB) == 0
        except Exception as ex:  # noqa: BLE001  (reported below)
            errors.append(ex)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert target.check(8 * MIB, 8 * 64 * KIB, 606) == "OK"


# ---------------------------------------------------------------- managed buffers


def test_managed_buffers_classes_and_reuse(engine):
    sizes = [1, 4096, 4097, 8192, 100000, 1 * MIB, 16 * MIB]
    addrs = [engine.allocate_managed_buffer(s) for s in sizes]
    assert all(a for a in addrs) and all(a % 4096 == 0 for a in addrs)
    spans = sorted((a, a + max(4096, 1 << (s - 1).bit_length())) for a, s in zip(addrs, sizes))
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))  # no overlap
    info = engine.managed_buffer_info()
    assert info["size"] == 256 * MIB and info["used"] > 16 * MIB
    for a, s in zip(addrs, sizes):
        assert engine.free_managed_buffer(a, s) == 0
    assert engine.managed_buffer_info()["used"] == 0
    # buddies merged back: the whole pool is available as 16 MiB blocks again
    big = [engine.allocate_managed_buffer(16 * MIB) for _ in range(16)]
    assert all(big) and engine.allocate_managed_buffer(4096) == 0  # exhausted: 0, as the reference
    assert "exhausted" in ferry.last_error()[2]
    for a in big:
        engine.free_managed_buffer(a, 16 * MIB)
    # larger than the largest class: a registered region of its own
    large = engine.allocate_managed_buffer(40 * MIB)
    assert large and engine.managed_buffer_info()["large_buffers"] == 1
    assert engine.free_managed_buffer(large, 40 * MIB) == 0
    assert engine.managed_buffer_info()["large_buffers"] == 0


def test_managed_buffer_errors(engine, target):
    a = engine.allocate_managed_buffer(64 * KIB)
    with pytest.raises(ferry.FerryError, match="does not match"):
        engine.free_managed_buffer(a, 4096)
    assert engine.transfer_sync_write(target.segment, a, target.addr, 64 * KIB) == 0
    engine.write_bytes_to_buffer(a, b"hello managed")
    assert engine.read_bytes_from_buffer(a, 13) == b"hello managed"
    assert engine.free_managed_buffer(a, 64 * KIB) == 0
    with pytest.raises(ferry.FerryError) as ei:  # double free
        engine.free_managed_buffer(a, 64 * KIB)
    assert ei.value.name == "FERRY_EINVAL" and "not a live managed buffer" in str(ei.value)
    with pytest.raises(ferry.FerryError) as ei:  # use after free
        engine.transfer_sync_write(target.segment, a, target.addr, 4096)
    assert ei.value.name == "FERRY_ENOTREG" and "freed managed buffer" in ei.value.detail
    b = engine.allocate_managed_buffer(4096)
    with pytest.raises(ferry.FerryError, match="past the end"):
        engine.batch_transfer_sync_write(target.segment, [b], [target.addr], [8192])
    with pytest.raises(ferry.FerryError):
        engine.free_managed_buffer(12345, 4096)
    large = engine.allocate_managed_buffer(20 * MIB)
    engine.free_managed_buffer(large, 20 * MIB)
    with pytest.raises(ferry.FerryError) as ei:  # a freed large buffer is unregistered
        engine.transfer_sync_write(target.segment, large, target.addr, 4096)
    assert ei.value.name == "FERRY_ENOTREG"


def test_managed_buffers_thread_safe():
    with ferry.NativeTransferEngine(managed_pool_size=32 * MIB) as e:
        assert e.initialize("127.0.0.1") == 0
        held, lock, errors = [], threading.Lock(), []

        def worker(seed):
            rng = np.random.default_rng(seed)
            mine = []
            try:
                for _ in range(300):
                    if mine and rng.random() < 0.5:
                        a, s = mine.pop(rng.integers(len(mine)))
                        assert e.free_managed_buffer(a, s) == 0
                    else:
                        s = int(rng.integers(1, 256 * KIB))
                        a = e.allocate_managed_buffer(s)
                        if a:
                            mine.append((a, s))
                with lock:
                    held.extend(mine)
            except Exception as ex:  # noqa: BLE001
                errors.append(ex)
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        spans = sorted((a, a + s) for a, s in held)
        assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))
        for a, s in held:
            e.free_managed_buffer(a, s)
        assert e.managed_buffer_info()["used"] == 0
    with pytest.raises(ValueError):
        ferry.NativeTransferEngine(managed_pool_size=1024)


def test_managed_buffer_between_processes(engine):
    with ferry.NativeTransferEngine() as peer:
        assert peer.initialize("127.0.0.1") == 0
        remote = peer.allocate_managed_buffer(1 * MIB)  # managed buffers are remote accessible
        local = engine.allocate_managed_buffer(1 * MIB)
        engine.write_bytes_to_buffer(local, pattern(5, 0, 1 * MIB))
        assert engine.transfer_sync_write(peer.segment_name, local, remote, 1 * MIB) == 0
        assert first_mismatch(np.frombuffer(peer.read_bytes_from_buffer(remote, 1 * MIB), np.uint8), 5, 0) == -1


# ---------------------------------------------------------------- tensors


class FakeTensor:
    """Duck-typed like a torch tensor over a numpy array (no torch needed)."""

    class device:  # noqa: N801
        type, index = "cpu", None

    def __init__(self, arr, contiguous=True):
        self.arr, self.contiguous = arr, contiguous

    def data_ptr(self):
        return self.arr.ctypes.data

    def numel(self):
        return self.arr.size

    def element_size(self):
        return self.arr.itemsize

    def is_contiguous(self):
        return self.contiguous


def test_wait_batch_while_another_thread_collects(engine, target):
    """A batch collected (get_batch_transfer_status / transfer_check_status / free_batch) while
    another thread is in wait_batch on it: the waiter gets its outcome (or 'unknown batch id' if
    it came too late), the collector its own; the batch is freed once, by the last one out."""
    src = local_buffer(engine, 256 * KIB)

    def poll(b):
        while (r := engine.transfer_check_status(b)) == 0:
            pass
        return r == 1
    for collect in (lambda b: engine.get_batch_transfer_status([b]) == 0, lambda b: engine.free_batch(b) is None,
                    poll):
        for _ in range(40):
            bid = engine.batch_transfer_async_write(target.segment, [src.ctypes.data], [target.addr], [256 * KIB])
            got, go = [], threading.Barrier(2)

            def waiter():
                go.wait()
                try:
                    got.append(engine.wait_batch(bid))
                except ValueError as e:
                    got.append(str(e))
            t = threading.Thread(target=waiter)
            t.start()
            go.wait()
            assert collect(bid)
            t.join()
            assert got[0] == 0 or "unknown batch id" in got[0], got
    assert engine.pending_batches() == []
    target.cmd("fill 0 %d %d" % (1 << 20, TARGET_SEED))


def test_tensor_like_objects(engine, target):
    arr = pattern(808, 4 * MIB, 256 * KIB).view(np.float32)
    t = FakeTensor(arr)
    assert engine.register_memory(t) == 0
    assert engine.transfer_sync_write(target.segment, t, target.addr + 4 * MIB) == 0
    assert target.check(4 * MIB, 256 * KIB, 808) == "OK"
    back = FakeTensor(np.zeros(64 * KIB, np.float32))
    assert engine.register_memory(back) == 0
    assert engine.batch_transfer_sync_read(target.segment, [back], [target.addr + 4 * MIB], None) == 0
    assert np.array_equal(back.arr.view(np.uint8), arr.view(np.uint8))
    with pytest.raises(ValueError, match="contiguous"):
        engine.transfer_sync_write(target.segment, FakeTensor(arr, contiguous=False), target.addr)
    assert engine.unregister_memory(t) == 0


def _torch():
    return pytest.importorskip("torch", reason="torch is not installed: tensor tests need it")


def test_torch_cpu_tensor(engine, target):
    torch = _torch()
    src = torch.arange(64 * KIB, dtype=torch.int32)
    assert engine.register_memory(src) == 0
    nbytes = src.numel() * src.element_size()
    assert engine.transfer_sync_write(target.segment, src, target.addr + 5 * MIB) == 0
    dst = torch.zeros_like(src)
    assert engine.register_memory(dst) == 0
    assert engine.transfer_sync_read(target.segment, dst, target.addr + 5 * MIB, nbytes) == 0
    assert torch.equal(src, dst)


def test_torch_cuda_tensor(engine, target):
    torch = _torch()
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine: CUDA tensor test skipped")
    src = torch.arange(256 * KIB, dtype=torch.int32, device="cuda:0")
    dst = torch.zeros_like(src)
    assert engine.register_memory(src) == 0  # location cuda:0 from the tensor
    assert engine.register_memory(dst) == 0
    nbytes = src.numel() * src.element_size()
    assert engine.transfer_sync_write(target.segment, src, target.addr + 6 * MIB) == 0
    assert engine.batch_transfer_sync_read(target.segment, [dst], [target.addr + 6 * MIB], [nbytes]) == 0
    torch.cuda.synchronize()
    assert torch.equal(src.cpu(), dst.cpu())


def test_torch_cuda_tensor_as_target(engine):
    """The peer publishes GPU memory; host blocks are written into it and read back."""
    torch = _torch()
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine: CUDA tensor test skipped")
    with ferry.NativeTransferEngine() as peer:
        assert peer.initialize("127.0.0.1") == 0
        remote = torch.zeros(4 * MIB, dtype=torch.uint8, device="cuda:0")
        assert peer.register_memory(remote) == 0
        assert peer.get_segment_buffers(peer.segment_name)[0][2] == "cuda:0"
        n, bs = 1000, 4 * KIB
        src = local_buffer(engine, n * bs, seed=77)
        base = remote.data_ptr()
        assert engine.batch_transfer_sync_write(peer.segment_name, [src.ctypes.data + i * bs for i in range(n)],
                                                [base + i * bs for i in range(n)], bs) == 0
        torch.cuda.synchronize()
        assert first_mismatch(remote[:n * bs].cpu().numpy(), 77, 0) == -1
        back = local_buffer(engine, n * bs)
        assert engine.batch_transfer_sync_read(peer.segment_name, [back], [base], None) == 0
        assert np.array_equal(back, src)


def test_torch_two_gpus(engine):
    """Initiator memory on cuda:0, the peer's on cuda:1: small blocks written GPU to GPU and
    read back, data checked (staged through host memory over tcp, or direct over shm)."""
    torch = _torch()
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("fewer than two CUDA GPUs on this machine: two-GPU test skipped")
    with ferry.NativeTransferEngine() as peer:
        assert peer.initialize("127.0.0.1") == 0
        remote = torch.zeros(8 * MIB, dtype=torch.uint8, device="cuda:1")
        assert peer.register_memory(remote) == 0
        assert peer.get_segment_buffers(peer.segment_name)[0][2] == "cuda:1"
        n, bs = 256, 16 * KIB
        src = torch.randint(0, 255, (n * bs,), dtype=torch.uint8, device="cuda:0")
        back = torch.zeros_like(src)
        assert engine.register_memory(src) == 0
        assert engine.register_memory(back) == 0
        base = remote.data_ptr()
        # every other block, so the blocks are scattered on both sides
        srcs = [src.data_ptr() + i * bs for i in range(n)]
        dsts = [base + 2 * i * bs for i in range(n)]
        assert engine.batch_transfer_sync_write(peer.segment_name, srcs, dsts, bs) == 0
        torch.cuda.synchronize(1)
        got = remote.view(n, 2 * bs)[:, :bs].reshape(-1)
        assert torch.equal(got.cpu(), src.cpu())
        assert engine.batch_transfer_sync_read(peer.segment_name, [back.data_ptr() + i * bs for i in range(n)],
                                               dsts, bs) == 0
        torch.cuda.synchronize(0)
        assert torch.equal(back.cpu(), src.cpu())
