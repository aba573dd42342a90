# SPDX-License-Identifier: Apache-2.0
"""Replays of the call sequences of the three engines that use the reference
today — SGLang (disaggregation/mooncake/transfer_engine.py + conn.py),
vLLM (kv_connector/v1/mooncake/mooncake_connector.py) and LMCache
(v1/transfer_channel/mooncake_channel.py) — against ferry.engine.TransferEngine
with the target in another process, bytes verified, and their failure paths:
unknown peer, dead peer, peer restarted, with the return values each relies on.
The helpers below do what those files do, call for call, in our own words."""
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import ferry
from ferry.engine import TransferEngine    # the callers' only change: the import
from conftest import Target
from pattern import pattern

KIB = 1024
BLOCK = 16 * KIB


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def restartable_target(port):
    """A decode node that comes back on the same host:port after a crash."""
    return Target(size=8 << 20, env_extra={"TARGET_HOSTNAME": "127.0.0.1:%d" % port})


# ---------------------------------------------------------------- SGLang


class SGLangEngine:
    """SGLang's MooncakeTransferEngine: rdma by default, session = host:rpc_port,
    every failure is a return value < 0 (exceptions are caught and mapped to -1)."""

    def __init__(self, hostname, ib_device=None):
        self.engine = TransferEngine()
        ret = self.engine.initialize(hostname, "P2PHANDSHAKE", "rdma", ib_device if ib_device is not None else "")
        if ret != 0:
            raise RuntimeError("Mooncake Transfer Engine initialization failed.")
        self.session_id = "%s:%d" % (hostname, self.engine.get_rpc_port())

    def register(self, ptr, length):
        try:
            return self.engine.register_memory(ptr, length)
        except Exception:
            return -1

    def transfer_sync(self, session_id, buffer, peer, length):
        try:
            return self.engine.transfer_sync_write(session_id, buffer, peer, length)
        except Exception:
            return -1   # what SGLang does; ferry must not get here

    def batch_transfer_sync(self, session_id, buffers, peers, lengths):
        try:
            return self.engine.batch_transfer_sync_write(session_id, buffers, peers, lengths)
        except Exception:
            return -1


def test_sglang_sequence_and_failure_paths():
    port = free_port()
    decode = restartable_target(port)
    sg = SGLangEngine("127.0.0.1")
    try:
        assert sg.engine.transports == ["tcp"]          # no RDMA NIC here: tcp, not a failed start
        assert sg.session_id == sg.engine.segment_name  # what the decode side is told
        kv = pattern(21, 0, 1 << 20)
        assert sg.register(kv.ctypes.data, kv.nbytes) == 0
        # one block, then a layer's blocks in one batch (the kv sender's two shapes)
        assert sg.transfer_sync(decode.segment, kv.ctypes.data, decode.addr, BLOCK) == 0
        n = 64
        assert sg.batch_transfer_sync(decode.segment, [kv.ctypes.data + i * BLOCK for i in range(n)],
                                      [decode.addr + i * BLOCK for i in range(n)], [BLOCK] * n) == 0
        assert decode.check(0, n * BLOCK, 21) == "OK"
        # unknown peer: < 0, no exception, and SGLang's own fallback (-1) is not what we saw
        assert sg.engine.transfer_sync_write("127.0.0.1:1", kv.ctypes.data, decode.addr, BLOCK) == ferry.FERRY_ENOSEG
        # decode node crashes: < 0; SGLang's recovery probes it: non-zero while it is down
        decode.kill()
        assert sg.engine.transfer_sync_write(decode.segment, kv.ctypes.data, decode.addr, BLOCK) < 0
        assert sg.engine.send_probe(decode.segment) != 0
        # ... it restarts on the same host:port; the probe says so, transfers work again
        decode = restartable_target(port)
        assert sg.engine.send_probe(decode.segment) == 0
        assert sg.transfer_sync(decode.segment, kv.ctypes.data + BLOCK, decode.addr + BLOCK, BLOCK) == 0
        assert decode.check(BLOCK, BLOCK, 21) == "OK"
    finally:
        decode.close()
        sg.engine.close()


def test_sglang_ascend_hostname_form():
    """ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE: host:port:npu_N with protocol 'ascend'."""
    e = TransferEngine()
    port = free_port()
    assert e.initialize("127.0.0.1:%d:npu_0" % port, "P2PHANDSHAKE", "ascend", "") == 0
    assert e.transports == ["tcp"]
    assert e.segment_name == "127.0.0.1:%d" % e.get_rpc_port()
    e.close()


# ---------------------------------------------------------------- vLLM


class VLLMSender:
    """vLLM's prefill worker: batch_register_memory of the kv caches, then a
    10-thread pool running batch_transfer_sync_write per request; `sending`
    goes down only after the call returns (ret != 0: the request is reported
    failed to the decode side)."""

    def __init__(self, workers=10):
        self.engine = TransferEngine()
        if self.engine.initialize("127.0.0.1", "P2PHANDSHAKE", "rdma", "") != 0:
            raise RuntimeError("Mooncake Transfer Engine initialization failed.")
        self.rpc_port = self.engine.get_rpc_port()
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.sending = 0
        self.lock = threading.Lock()
        self.ok, self.failed = [], []

    def register_kv_caches(self, caches):
        ret = self.engine.batch_register_memory([c.ctypes.data for c in caches], [c.nbytes for c in caches])
        if ret != 0:
            raise RuntimeError("Mooncake batch memory registration failed.")

    def _send_blocks(self, session, src, dst, lengths):
        return self.engine.batch_transfer_sync_write(session, src, dst, lengths)

    def send(self, req_id, session, src, dst, lengths):
        with self.lock:
            self.sending += 1

        def run():
            ret = self._send_blocks(session, src, dst, lengths)  # no try: an exception leaks `sending`
            with self.lock:
                self.sending -= 1
                (self.ok if ret == 0 else self.failed).append((req_id, ret))
        return self.pool.submit(run)


def test_vllm_sender_pool_and_failure_paths():
    decode = Target(size=8 << 20)
    p = VLLMSender()
    try:
        layers = [pattern(30 + i, i * 256 * KIB, 256 * KIB) for i in range(4)]  # as at the decode side
        p.register_kv_caches(layers)
        futures = []
        for r in range(20):   # 20 requests, 2 blocks of each layer, on 10 threads
            src, dst = [], []
            for li, layer in enumerate(layers):
                for b in (2 * r % 16, 2 * r % 16 + 1):
                    src.append(layer.ctypes.data + b * BLOCK)
                    dst.append(decode.addr + li * 256 * KIB + b * BLOCK)
            futures.append(p.send("req-%d" % r, decode.segment, src, dst, [BLOCK] * len(src)))
        # failure paths: unknown peer, a range outside the decode buffers, mismatched lists
        futures.append(p.send("bad-peer", "127.0.0.1:1", [layers[0].ctypes.data], [decode.addr], [BLOCK]))
        futures.append(p.send("bad-range", decode.segment, [layers[0].ctypes.data], [decode.addr + (8 << 20)],
                              [BLOCK]))
        futures.append(p.send("bad-lists", decode.segment, [layers[0].ctypes.data], [], [BLOCK]))
        for f in futures:
            f.result()   # re-raises if the sender thread raised
        assert p.sending == 0                       # nothing leaked: every request was accounted
        assert len(p.ok) == 20, p.failed
        assert sorted(r for r, _ in p.failed) == ["bad-lists", "bad-peer", "bad-range"]
        assert dict(p.failed) == {"bad-peer": ferry.FERRY_ENOSEG, "bad-range": ferry.FERRY_ERANGE,
                                  "bad-lists": ferry.FERRY_EINVAL}
        for li in range(4):
            assert decode.check(li * 256 * KIB, 256 * KIB, 30 + li) == "OK"
        # the decode node dies: requests in flight come back != 0, `sending` still drains
        decode.kill()
        futures = [p.send("late-%d" % r, decode.segment, [layers[0].ctypes.data], [decode.addr], [BLOCK])
                   for r in range(10)]
        for f in futures:
            f.result()
        assert p.sending == 0 and all(ret < 0 for r, ret in p.failed if r.startswith("late-"))
    finally:
        p.pool.shutdown()
        decode.close()
        p.engine.close()


# ---------------------------------------------------------------- LMCache


class LMCacheChannel:
    """LMCache's MooncakeChannel: hostname 'localhost' by default, session =
    hostname:rpc_port, one registered buffer, batched_write as one
    transfer_sync_write per page (ret < 0 raises RuntimeError there)."""

    def __init__(self, buffer, align, hostname="localhost", protocol="tcp"):
        self.engine = TransferEngine()
        ret = self.engine.initialize(hostname, "P2PHANDSHAKE", protocol, "")
        if ret != 0:
            raise RuntimeError("initialize failed with code %d" % ret)
        self.session_id = "%s:%d" % (hostname, self.engine.get_rpc_port())
        self.buffer, self.align = buffer, align
        ret = self.engine.register_memory(buffer.ctypes.data, buffer.nbytes)
        if ret != 0:
            raise RuntimeError("register_memory failed with code %d" % ret)

    def batched_write(self, session, remote_base, local_pages, remote_pages):
        for lp, rp in zip(local_pages, remote_pages):
            ret = self.engine.transfer_sync_write(session, self.buffer.ctypes.data + lp * self.align,
                                                  remote_base + rp * self.align, self.align)
            if ret < 0:
                raise RuntimeError("Mooncake transfer_sync_write failed with code %d" % ret)
        return len(local_pages)

    def close(self):
        ret = self.engine.unregister_memory(self.buffer.ctypes.data)
        self.engine.close()
        return ret


def test_lmcache_channel_sequence_and_failure_paths():
    decode = Target(size=8 << 20)
    ch = LMCacheChannel(pattern(44, 0, 1 << 20), align=64 * KIB)
    try:
        assert ch.session_id == ch.engine.segment_name and ch.session_id.startswith("localhost:")
        assert ch.batched_write(decode.segment, decode.addr, [0, 1, 2, 3], [0, 1, 2, 3]) == 4
        assert decode.check(0, 256 * KIB, 44) == "OK"
        # a peer LMCache would reach by its session id "localhost:<port>"
        peer = LMCacheChannel(np.zeros(1 << 20, np.uint8), align=64 * KIB)
        assert ch.batched_write(peer.session_id, peer.buffer.ctypes.data, [5], [7]) == 1
        assert np.array_equal(peer.buffer[7 * 64 * KIB:8 * 64 * KIB], ch.buffer[5 * 64 * KIB:6 * 64 * KIB])
        assert peer.close() == 0
        # failure paths: the peer is gone / was never there -> ret < 0 -> LMCache raises its own error
        with pytest.raises(RuntimeError, match="code -"):
            ch.batched_write(peer.session_id, peer.buffer.ctypes.data, [0], [0])
        decode.kill()
        with pytest.raises(RuntimeError, match="code -"):
            ch.batched_write(decode.segment, decode.addr, [0], [0])
        with pytest.raises(RuntimeError, match="code %d" % ferry.FERRY_ENOSEG):
            ch.batched_write("localhost:1", decode.addr, [0], [0])
    finally:
        decode.close()
        assert ch.close() == 0


# ---------------------------------------------------------------- the reference's own test


def test_reference_initiator_test_sequence():
    """mooncake-wheel/tests/transfer_engine_initiator_test.py, call for call: the
    initiator renames itself host:rpc_port, looks for its OWN first buffer
    (get_first_buffer_address of its own segment), allocates a 64 MiB managed
    buffer when there is none and must then find it there (each test case asks
    again); the peer's first buffer is the destination; str data through
    write_bytes_to_buffer, sync write/read, then 100 x 1 KiB batches."""
    import random
    capacity = 64 << 20
    target = Target(size=8 << 20)
    e = TransferEngine()
    try:
        assert e.initialize("127.0.0.1:12347", "P2PHANDSHAKE", "tcp", "") == 0
        me = "127.0.0.1:12347".rpartition(":")[0] + ":" + str(e.get_rpc_port())
        assert me == e.segment_name
        fallback = None

        def ensure_buffer_available():
            nonlocal fallback
            src = e.get_first_buffer_address(me)
            if src == 0:
                fallback = e.allocate_managed_buffer(capacity)
                assert fallback != 0
                src = fallback
            return src

        src = ensure_buffer_available()
        assert src == fallback
        # the 2nd test case finds that buffer, its first (a buffer above 16 MiB maps no pool, as in the
        # reference), and allocates no 2nd one
        assert ensure_buffer_available() == src and fallback == src
        dst = e.get_first_buffer_address(target.segment)
        assert dst == target.addr
        rnd = random.Random(5)
        for i in range(50):
            data = bytes(rnd.randrange(33, 127) for _ in range(rnd.randint(16, 256)))
            assert e.write_bytes_to_buffer(src, data, len(data)) == 0
            assert e.transfer_sync_write(target.segment, src, dst, len(data)) == 0
            assert e.write_bytes_to_buffer(src, bytes(len(data)), len(data)) == 0
            assert e.transfer_sync_read(target.segment, src, dst, len(data)) == 0
            assert e.read_bytes_from_buffer(src, len(data)) == data, i
        srcs = [src + i * 1024 for i in range(100)]
        dsts = [dst + i * 1024 for i in range(100)]
        for _ in range(2):
            datas = [bytes(rnd.randrange(33, 127) for _ in range(rnd.randint(32, 128))) for _ in range(100)]
            for a, d in zip(srcs, datas):
                assert e.write_bytes_to_buffer(a, d, len(d)) == 0
            lens = [len(d) for d in datas]
            assert e.batch_transfer_sync_write(target.segment, srcs, dsts, lens) == 0
            for a, d in zip(srcs, datas):
                assert e.write_bytes_to_buffer(a, bytes(len(d)), len(d)) == 0
            assert e.batch_transfer_sync_read(target.segment, srcs, dsts, lens) == 0
            assert [e.read_bytes_from_buffer(a, len(d)) for a, d in zip(srcs, datas)] == datas
            # the same through the async calls, each collected by get_batch_transfer_status([id])
            for a, d in zip(srcs, datas):
                assert e.write_bytes_to_buffer(a, d[::-1], len(d)) == 0
            bid = e.batch_transfer_async_write(target.segment, srcs, dsts, lens)
            assert bid != 0 and e.get_batch_transfer_status([bid]) == 0
            for a, d in zip(srcs, datas):
                assert e.write_bytes_to_buffer(a, bytes(len(d)), len(d)) == 0
            bid = e.batch_transfer_async_read(target.segment, srcs, dsts, lens)
            assert bid != 0 and e.get_batch_transfer_status([bid]) == 0
            assert [e.read_bytes_from_buffer(a, len(d)) for a, d in zip(srcs, datas)] == [d[::-1] for d in datas]
        # unknown peer, NULL buffers: the failure sentinel 0, nothing raised
        assert e.batch_transfer_async_write("unreachable_peer:9", [0], [0], [16]) == 0
        assert e.transfer_submit_write("unreachable_peer:9", 0, 0, 16) == 0
        assert e.send_probe(target.segment) == 0 and e.send_probe("unreachable_peer:9") != 0
        assert e.free_managed_buffer(fallback, capacity) == 0
    finally:
        target.close()
        e.close()
