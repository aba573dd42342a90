# SPDX-License-Identifier: Apache-2.0
"""Lifetimes under concurrency, as callers with worker pools meet them: an
engine closed while other threads keep calling it, batches collected while
other threads wait on them, memory unregistered while a transfer from it is
in flight.  Each call ends with its result or a named error; nothing hangs
(every wait here has a generous bound that only keeps a broken run from
hanging, never a measurement)."""
import threading

import numpy as np
import pytest

import ferry
from ferry.engine import TransferEngine
from test_gil_waits import MAX_HOLD_S, GateStore

BOUND_S = 120   # a broken run fails after this long instead of hanging


def compat_engine(**config):
    e = TransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "", **config) == 0
    return e


def run_bounded(fn, what):
    """Runs fn in a thread; fails the test if it has not returned within BOUND_S."""
    out = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as x:  # noqa: B902 (reported below)
            out["error"] = x
    th = threading.Thread(target=body, daemon=True)
    th.start()
    th.join(BOUND_S)
    assert not th.is_alive(), "%s did not return within %d s" % (what, BOUND_S)
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_close_while_other_threads_keep_calling(target):
    """vLLM's sender pool keeps submitting while the worker shuts down: close()
    must get the engine from them.  Before, the lock that keeps the engine
    alive under a call let every new call in ahead of the waiting close(), so
    four threads calling in a loop held it off for ever."""
    e = compat_engine()
    buf = np.zeros(4 << 20, dtype=np.uint8)
    assert e.register_memory(buf.ctypes.data, buf.nbytes) == 0
    stop = threading.Event()
    seen = [set() for _ in range(4)]
    calls = [0] * 4

    def worker(i):
        src, dst = buf.ctypes.data + i * 65536, target.addr + i * 65536
        while not stop.is_set():
            try:
                seen[i].add(e.transfer_sync_write(target.segment, src, dst, 65536))
                e.get_rpc_port()
            except ferry.FerryError as x:
                seen[i].add(x.name)
            calls[i] += 1
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(4)]
    for th in threads:
        th.start()
    while min(calls) < 3:   # every worker is in its loop
        threading.Event().wait(0.01)
    try:
        run_bounded(e.close, "close() while four threads call the engine")
    finally:
        stop.set()
        for th in threads:
            th.join(BOUND_S)
    # what the workers saw: transfers that completed, and after the close
    # the compat class's code for a closed engine (or its raised error)
    for s in seen:
        assert s <= {0, ferry.FERRY_EINVAL, ferry.FERRY_ECANCELED, "FERRY_EINVAL"}, s
    assert target.check(0, 0, 7) == "OK"


def test_close_ends_a_call_blocked_on_a_hung_peer(fresh_target):
    """A worker thread is blocked in transfer_sync_write to a decode node that
    hangs (stopped); the process shuts down and calls close().  The blocked
    call ends FERRY_ECANCELED when close() starts, and close() with it.
    Before, close() waited for the call, which waited for its own deadline
    (request_timeout_ms, here 100 s: the 30 s default is a whole grace period
    of a terminating pod), and the call ended FERRY_ETIMEDOUT."""
    e = compat_engine(request_timeout_ms=100000)
    buf = np.zeros(1 << 20, dtype=np.uint8)
    assert e.register_memory(buf.ctypes.data, buf.nbytes) == 0
    assert e.transfer_sync_write(fresh_target.segment, buf.ctypes.data, fresh_target.addr, 4096) == 0
    sent = e.get_stats()["tcp"]["frames_sent"]
    fresh_target.stop()
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault(
        "rc", e.transfer_sync_write(fresh_target.segment, buf.ctypes.data, fresh_target.addr, 1 << 20)))
    worker.start()
    try:
        while e.get_stats()["tcp"]["frames_sent"] == sent:   # the worker's frame is out: it waits in the call
            threading.Event().wait(0.01)
        run_bounded(e.close, "close() while a call waits on a hung peer")
        worker.join(BOUND_S)
        assert not worker.is_alive()
        assert out["rc"] == ferry.FERRY_ECANCELED, ferry.err_name(out["rc"])
    finally:
        fresh_target.cont()
        worker.join(BOUND_S)


def test_a_second_initialize_while_the_first_runs_leaks_no_engine():
    """Two threads call initialize() on one TransferEngine at once (a worker
    pool's retry racing its first attempt).  The store holds the first one's
    PUT of its descriptor, so it is inside engine creation while the second
    runs.  Before, both created an engine and the one stored last won: the
    other stayed alive with its listener, threads and published descriptor
    after close() (round 7's finding).  Now the second is turned away at once
    with FERRY_EBUSY, naming the other initialize; the first one's engine is
    the object's, and close() unpublishes it: the store ends empty."""
    gate = GateStore()
    e = TransferEngine()
    got = {}

    def init(name, host):
        # the compat class publishes under local_hostname as given: two hosts, two keys;
        # the store may hold the PUT for MAX_HOLD_S: the client must not give up first
        got[name] = e.initialize(host, gate.url, "tcp", "", connect_timeout_ms=int(3 * MAX_HOLD_S * 1000),
                                 metadata_ttl_s=3600)
        got[name + "_why"] = ferry.last_error()[2]
    first = threading.Thread(target=init, args=("first", "127.0.0.1"))
    try:
        assert gate.cmd("hold PUT") == "OK"
        first.start()
        gate.wait_held("PUT")                         # the first is inside engine creation
        run_bounded(lambda: init("second", "127.0.0.2"), "a second initialize() while the first runs")
        assert got["second"] == ferry.FERRY_EBUSY, (got, gate.cmd("keys"))
        assert "another thread" in got["second_why"], got["second_why"]
        assert gate.cmd("state") == "HOLDING"         # the first one is still held meanwhile
        assert gate.cmd("release") == "OK"
        first.join(BOUND_S)
        assert not first.is_alive() and got["first"] == 0, got
        assert gate.cmd("keys").split()[1:] == ["ferry/segments/127.0.0.1"]
        assert e.get_rpc_port() > 0
    finally:
        gate.cmd("release")
        first.join(BOUND_S)
        e.close()
        keys = gate.cmd("keys")
        gate.close()
    assert keys == "KEYS", "an engine outlived close(): its descriptor is still published: " + keys


def test_close_while_initialize_runs_wins():
    """close() is called (a shutting-down worker) while another thread's initialize() is
    inside engine creation (the store holds its PUT).  close() returns at once; it must
    also be the last word: the engine initialize() then finishes creating is destroyed
    again, initialize() returns FERRY_ECANCELED naming the close, and the object stays
    closed.  Before, initialize() installed its engine after close() had returned: the
    object was open (and published) after close()."""
    gate = GateStore()
    e = TransferEngine()
    got = {}

    def init():
        got["rc"] = e.initialize("127.0.0.1", gate.url, "tcp", "", connect_timeout_ms=int(3 * MAX_HOLD_S * 1000),
                                 metadata_ttl_s=3600)
        got["why"] = ferry.last_error()[2]
    first = threading.Thread(target=init)
    try:
        assert gate.cmd("hold PUT") == "OK"
        first.start()
        gate.wait_held("PUT")                         # initialize() is inside engine creation
        run_bounded(e.close, "close() while initialize() runs")
        assert gate.cmd("release") == "OK"
        first.join(BOUND_S)
        assert not first.is_alive()
        assert got["rc"] == ferry.FERRY_ECANCELED and "close" in got["why"], got
        assert not e.initialized
        assert e.get_rpc_port() == ferry.FERRY_EINVAL and "closed" in ferry.last_error()[2]
        assert gate.cmd("keys") == "KEYS"            # its descriptor went with it
        # a later initialize() opens it again, as after any close()
        assert e.initialize("127.0.0.1", gate.url, "tcp", "", metadata_ttl_s=3600) == 0
        assert e.initialized
    finally:
        gate.cmd("release")
        first.join(BOUND_S)
        e.close()
        gate.close()


def test_calls_during_initialize_wait_for_it():
    """vLLM's mooncake store connector shares one engine between workers with double-checked
    locking that publishes the TransferEngine object before initialize() returns
    (vllm/.../mooncake_store/mooncake_transfer_engine.py, GlobalTE.get_transfer_engine): a
    second worker calls register_memory on it while initialize() still runs.  The reference
    dereferences its null engine there; ferry answered FERRY_EINVAL ("not initialized") and
    the worker raised "Mooncake memory registration failed".  Now a call made while
    initialize() runs waits for it (the GIL released) and then runs on the new engine.
    The bounded join only gives the call the chance to return early (it did, with the
    error); the checks hold at any speed."""
    gate = GateStore()
    e = TransferEngine()
    buf = np.zeros(64 << 10, np.uint8)
    got = {}

    def init():
        got["init"] = e.initialize("127.0.0.1", gate.url, "tcp", "", connect_timeout_ms=int(3 * MAX_HOLD_S * 1000),
                                   metadata_ttl_s=3600)

    def register():
        got["register"] = e.register_memory(buf.ctypes.data, buf.nbytes)
        got["why"] = ferry.last_error()[2]
    first, second = threading.Thread(target=init), threading.Thread(target=register)
    try:
        assert gate.cmd("hold PUT") == "OK"
        first.start()
        gate.wait_held("PUT")                         # initialize() is inside engine creation
        second.start()
        second.join(2)                                # it returned here with the error before
        assert "register" not in got, got
        assert gate.cmd("state") == "HOLDING"
        assert gate.cmd("release") == "OK"
        first.join(BOUND_S)
        second.join(BOUND_S)
        assert not first.is_alive() and not second.is_alive()
        assert got["init"] == 0 and got["register"] == 0, got
        assert [b[0] for b in e.get_segment_buffers(e.segment_name)] == [buf.ctypes.data]
    finally:
        gate.cmd("release")
        first.join(BOUND_S)
        second.join(BOUND_S)
        e.close()
        gate.close()
