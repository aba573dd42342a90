# SPDX-License-Identifier: Apache-2.0
"""Call sequences of the reference binding's callers that ferry answered
differently: zero-length transfers (no-ops that complete), and polling a
batch again after transfer_check_status said -2 (timed out).

What the reference (kvcache-ai/Mooncake) does is quoted with its file above
each test."""
import time

import numpy as np
import pytest

import ferry
import ferry.engine as fe
from conftest import TARGET_SEED, Target
from pattern import pattern

KIB = 1024
MIB = 1024 * KIB


@pytest.fixture
def native():
    e = ferry.NativeTransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    yield e
    e.close()


def registered(engine, size, seed=None):
    buf = np.zeros(size, np.uint8) if seed is None else pattern(seed, 0, size)
    assert engine.register_memory(buf.ctypes.data, buf.nbytes) == 0
    return buf


# ---------------------------------------------------------------- zero-length transfers

# The reference: a zero-length request is complete by definition
# (mooncake-transfer-engine/src/transport/tcp_transport/tcp_transport.cpp,
# TcpTransport::startTransfer: "Zero-length requests are complete by
# definition"; rdma_transport.cpp submitTransferTask cuts it into no slice),
# and transfer_engine_py.cpp passes lengths through unchecked: transfer_sync_*
# returns 0, a batch with zero lengths returns 0, an async one an id whose
# status is completed.  Neither address is looked at.


@pytest.mark.parametrize("make", ["compat", "native"])
def test_zero_length_transfers_complete(make, request, target):
    e = request.getfixturevalue(make)
    src = registered(e, 64 * KIB, seed=41)
    addr = src.ctypes.data
    seg = target.segment
    assert e.transfer_sync_write(seg, addr, target.addr, 0) == 0
    assert e.transfer_sync_read(seg, addr, target.addr, 0) == 0
    assert e.transfer_sync(seg, addr, target.addr, 0, fe.TransferOpcode.Write) == 0
    # no address is checked: NULL, unregistered, outside the peer's buffers
    assert e.transfer_sync_write(seg, 0, 0, 0) == 0
    assert e.transfer_sync_read(seg, np.zeros(16, np.uint8).ctypes.data, target.addr + target.size + 4096, 0) == 0
    # in a batch, next to a real request: that one moves, the others complete
    assert e.batch_transfer_sync_write(seg, [addr, addr + 4 * KIB, 0], [target.addr, target.addr + 4 * KIB, 0],
                                       [0, 8 * KIB, 0]) == 0
    assert target.cmd("check %d %d 41" % (4 * KIB, 8 * KIB)) == "OK"                 # moved
    assert target.cmd("check 0 %d %d" % (4 * KIB, TARGET_SEED)) == "OK"              # nothing moved here
    assert target.cmd("check %d %d %d" % (12 * KIB, 4 * KIB, TARGET_SEED)) == "OK"
    assert e.batch_transfer_sync_read(seg, [addr], [target.addr], 0) == 0                  # one int for all
    bid = e.batch_transfer_async_write(seg, [addr, addr], [target.addr, target.addr], [0, 0])
    assert bid != 0
    deadline = time.monotonic() + 60
    while (rc := e.transfer_check_status(bid)) == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert rc == 1
    bid = e.transfer_submit_write(seg, addr, target.addr, 0)
    assert bid != 0 and e.get_batch_transfer_status([bid]) == 0
    target.cmd("fill 0 %d %d" % (target.size, TARGET_SEED))


def test_zero_length_from_a_freed_managed_buffer_completes(compat, target):
    """A transfer of nothing from a freed managed buffer touches nothing: no error."""
    buf = compat.allocate_managed_buffer(4096)
    assert buf and compat.free_managed_buffer(buf, 4096) == 0
    assert compat.transfer_sync_write(target.segment, buf, target.addr, 0) == 0
    assert compat.transfer_sync_write(target.segment, buf, target.addr, 16) == ferry.FERRY_ENOTREG  # still checked


def test_zero_length_keeps_the_other_checks(native, target):
    src = registered(native, 4096)
    with pytest.raises(ferry.FerryError) as ei:           # the segment is still opened
        native.transfer_sync_write("127.0.0.1:1", src.ctypes.data, target.addr, 0)
    assert ei.value.code == ferry.FERRY_ENOSEG
    with pytest.raises(ValueError, match="NULL"):         # NULL with a length
        native.transfer_sync_write(target.segment, 0, target.addr, 16)
    with pytest.raises(ValueError, match="NULL"):
        native.batch_transfer_sync_write(target.segment, [0], [target.addr], [16])
    with pytest.raises(ValueError, match="positive"):     # registering nothing is an error
        native.register_memory(src.ctypes.data, 0)
    with pytest.raises(ValueError, match="NULL"):
        native.register_memory(0, 4096)


# ---------------------------------------------------------------- polling after a timeout

# The reference (mooncake-integration/transfer_engine/transfer_engine_py.cpp,
# TransferEnginePy::transferCheckStatus): COMPLETED -> freeBatchID, 1; FAILED
# -> freeBatchID, -1; TIMEOUT -> -2 *without* freeing the batch, so the next
# call polls the same batch and answers -2 again (or 1 / -1 once it ended);
# getBatchTransferStatus on it reports FAILED (a TIMEOUT task counts as
# failed, multi_transport.cpp getBatchTransferStatus), returns -1 and frees
# it.  ferry's TIMEOUT is final (the request ended at its deadline), so the
# batch is freed at once and -2 is the answer for every later poll, until
# get_batch_transfer_status or free_batch takes the id.


def poll_until_ended(engine, bid, deadline_s=60):
    deadline = time.monotonic() + deadline_s
    while (rc := engine.transfer_check_status(bid)) == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    return rc


@pytest.mark.parametrize("strict", [False, True])
def test_check_status_after_a_timeout_says_so_again(strict, fresh_target):
    e = fe.TransferEngine(strict=strict)
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "", request_timeout_ms=300, connect_timeout_ms=300) == 0
    src = registered(e, 64 * KIB, seed=3)
    assert e.transfer_sync_write(fresh_target.segment, src.ctypes.data, fresh_target.addr, 4096) == 0  # connected
    fresh_target.stop()
    try:
        bid = e.transfer_submit_write(fresh_target.segment, src.ctypes.data, fresh_target.addr, 4096)
        assert bid != 0
        assert poll_until_ended(e, bid) == -2
        assert ferry.last_error()[1] == "FERRY_ETIMEDOUT"
        for _ in range(3):                      # every later poll: -2 again (was: unknown id)
            assert e.transfer_check_status(bid) == -2
        assert bid not in e.pending_batches()   # the batch itself is freed already
        assert e.wait_batch(bid) == ferry.FERRY_ETIMEDOUT
        assert e.get_batch_transfer_status([bid]) == ferry.FERRY_ETIMEDOUT   # takes the id
        assert "transfer_check_status" in ferry.last_error()[2]
        # taken: now unknown (native: raises; compat: the negative code)
        if strict:
            with pytest.raises(ValueError, match="unknown batch id"):
                e.transfer_check_status(bid)
        else:
            assert e.transfer_check_status(bid) == ferry.FERRY_EINVAL

        # free_batch takes a kept result too; a list mixing both kinds works
        bid = e.transfer_submit_write(fresh_target.segment, src.ctypes.data, fresh_target.addr, 4096)
        assert poll_until_ended(e, bid) == -2
        assert e.free_batch(bid) == (None if strict else 0)
        assert bid not in e.pending_batches()
        a = e.transfer_submit_write(fresh_target.segment, src.ctypes.data, fresh_target.addr, 4096)
        b = e.transfer_submit_write(fresh_target.segment, src.ctypes.data, fresh_target.addr, 4096)
        assert poll_until_ended(e, a) == -2
        assert e.get_batch_transfer_status([a, b]) == ferry.FERRY_ETIMEDOUT
        assert e.pending_batches() == []
    finally:
        fresh_target.cont()
        e.close()


def test_check_status_after_completion_says_so_again(compat, target):
    src = registered(compat, 64 * KIB, seed=5)
    bid = compat.transfer_submit_write(target.segment, src.ctypes.data, target.addr, 4096)
    assert poll_until_ended(compat, bid) == 1
    assert compat.transfer_check_status(bid) == 1
    assert compat.get_batch_transfer_status([bid]) == 0
    target.cmd("fill 0 %d %d" % (4096, TARGET_SEED))


def test_kept_results_are_bounded(compat, target):
    """Ids nobody collects after their last poll cost at most 4096 kept results."""
    src = registered(compat, 4096, seed=5)
    first = None
    for _ in range(4100):
        bid = compat.batch_transfer_async_write(target.segment, [src.ctypes.data], [target.addr], [0])
        assert poll_until_ended(compat, bid) == 1
        first = first or bid
    assert compat.transfer_check_status(bid) == 1
    assert compat.transfer_check_status(first) == ferry.FERRY_EINVAL   # the oldest went


# ---------------------------------------------------------------- get_first_buffer_address

# The reference (transfer_engine_py.cpp getFirstBufferAddress): buffers[0]
# of the segment's descriptor, whose list is in registration order
# (transfer_metadata.cpp: addLocalMemoryBuffer push_back,
# removeLocalMemoryBuffer erase).  ferry returned the lowest address.


def test_first_buffer_address_is_the_first_registered(compat):
    peer = fe.TransferEngine()
    assert peer.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    try:
        mem = np.zeros(4 * 4096, np.uint8)
        lo, hi, top = (mem.ctypes.data + k * 4096 for k in (0, 2, 3))
        for a in (hi, lo, top):                              # hi first, not the lowest
            assert compat.register_memory(a, 4096) == 0
        own = compat.segment_name
        assert compat.get_first_buffer_address(own) == hi
        assert peer.get_first_buffer_address(own) == hi
        assert [b[0] for b in peer.get_segment_buffers(own)] == [hi, lo, top]
        assert compat.unregister_memory(hi) == 0
        assert compat.get_first_buffer_address(own) == lo  # the next one registered
        # a managed buffer (the pool, registered now) comes after them
        managed = compat.allocate_managed_buffer(4096)
        assert managed and compat.get_first_buffer_address(own) == lo
        assert [b[0] for b in compat.get_segment_buffers(own)][:2] == [lo, top]
    finally:
        peer.close()


# ---------------------------------------------------------------- empty request lists

# The reference (transfer_engine_py.cpp batchTransferSync / batchTransferAsync)
# opens the segment, checks that the three lists have one size, then
# allocateBatchID(0) and submitTransfer(batch_id, {}), which succeeds
# (multi_transport.cpp submitTransfer loops over nothing); the status of a
# batch with no task is COMPLETED (getBatchTransferStatus: task_count == 0).
# So batch_transfer_sync_* of empty lists returns 0, batch_transfer_async_*
# returns a batch id, and get_batch_transfer_status([id]) returns 0.  Only a
# notification with no request is refused (transfer_engine_impl.h
# submitTransferWithNotify: "entries must not be empty"; -1).  ferry's compat
# class answered FERRY_EINVAL (sync) and 0, "no batch" (async).  vLLM and
# SGLang skip the call when they have no block to send; LMCache-style
# callers with a computed list do not.  (The reference's
# transfer_check_status of such an id asserts and ends the process:
# getTransferStatus(batch, 0) is out of range; ferry answers 1.)


def test_empty_request_lists_are_batches_of_nothing(compat, target):
    before = target.check(0, 4096, TARGET_SEED)
    for sync in (compat.batch_transfer_sync_write, compat.batch_transfer_sync_read):
        assert sync(target.segment, [], [], []) == 0, ferry.last_error()
    assert compat.batch_transfer_sync(target.segment, [], [], [], fe.TransferOpcode.Write) == 0
    ids = [call(target.segment, [], [], []) for call in (compat.batch_transfer_async_write,
                                                         compat.batch_transfer_async_read)]
    ids.append(compat.batch_transfer_async(target.segment, [], [], [], fe.TransferOpcode.Read))
    assert all(i > 0 for i in ids) and len(set(ids)) == 3, (ids, ferry.last_error())
    assert compat.get_batch_transfer_status(ids[:2]) == 0
    assert compat.transfer_check_status(ids[2]) == 1
    assert compat.get_batch_transfer_status([ids[2]]) == 0
    assert compat.pending_batches() == []
    # stream-ordered: nothing to order (the reference's callback submits nothing)
    assert compat.batch_transfer_write_on_cuda(target.segment, [], [], [], 0) is None
    assert compat.batch_transfer_read_on_cuda(target.segment, [], [], []) is None
    # a notification needs a request to follow (the reference: -1), and
    # lists of different sizes stay an error
    assert compat.batch_transfer_sync(target.segment, [], [], [], fe.TransferOpcode.Write,
                                      notify=fe.TransferNotify("n", "m")) == ferry.FERRY_EINVAL
    assert "notification" in ferry.last_error()[2]
    assert compat.batch_transfer_sync_write(target.segment, [], [target.addr], []) == ferry.FERRY_EINVAL
    assert compat.batch_transfer_async_write(target.segment, [], [target.addr], []) == 0
    # an unknown segment is still one, whatever the lists hold
    assert compat.batch_transfer_sync_write("127.0.0.1:1", [], [], []) == ferry.FERRY_ENOSEG
    assert target.check(0, 4096, TARGET_SEED) == before == "OK"


def test_native_empty_request_lists_raise(native, target):
    """The native class keeps its convention: an empty list is an error in the call."""
    with pytest.raises(ValueError, match="empty"):
        native.batch_transfer_sync_write(target.segment, [], [], [])
    with pytest.raises(ValueError, match="empty"):
        native.batch_transfer_async_read(target.segment, [], [], [])


# ---------------------------------------------------------------- free_batch of a collected id

# free_batch is ferry's own (the reference binding has none: its batches are
# freed by get_batch_transfer_status and transfer_check_status, and its C++
# freeBatchID of a freed id is a use after free).  The compat class returns
# what its other calls return, never raising for an error found after the
# arguments were parsed: 0 when the batch was freed, FERRY_EINVAL (with the
# id in ferry.last_error()) when the id is unknown or was collected already.
# It raised ValueError, which a caller of the reference's conventions does
# not catch (round 7's finding).


def test_free_batch_of_a_collected_id(compat, target):
    src = registered(compat, 4096, seed=5)
    bid = compat.batch_transfer_async_write(target.segment, [src.ctypes.data], [target.addr], [4096])
    assert bid > 0
    assert compat.free_batch(bid) == 0
    for collected in (bid, 987654321):
        assert compat.free_batch(collected) == ferry.FERRY_EINVAL
        assert str(collected) in ferry.last_error()[2]
    bid = compat.batch_transfer_async_write(target.segment, [src.ctypes.data], [target.addr], [4096])
    assert compat.get_batch_transfer_status([bid]) == 0
    assert compat.free_batch(bid) == ferry.FERRY_EINVAL
    with pytest.raises(TypeError):
        compat.free_batch("1")
    target.cmd("fill 0 %d %d" % (4096, TARGET_SEED))


def test_batch_status_of_an_unknown_id(compat, native, target):
    """batch_status is ferry's own: the compat class answers an unknown or collected id with
    FERRY_EINVAL naming it, as free_batch does (it raised ValueError, which a caller of the
    reference's conventions does not catch; round 8's finding); strict still raises."""
    src = registered(compat, 4096, seed=5)
    bid = compat.batch_transfer_async_write(target.segment, [src.ctypes.data], [target.addr], [4096])
    assert bid > 0
    assert compat.wait_batch(bid) == 0
    assert [s.state for s in compat.batch_status(bid)] == ["COMPLETED"]
    assert compat.free_batch(bid) == 0
    for unknown in (bid, 987654321):
        assert compat.batch_status(unknown) == ferry.FERRY_EINVAL
        assert str(unknown) in ferry.last_error()[2]
    with pytest.raises(TypeError):
        compat.batch_status("1")
    with pytest.raises(ValueError, match="unknown batch id"):
        native.batch_status(987654321)
    target.cmd("fill 0 %d %d" % (4096, TARGET_SEED))


def test_native_free_batch_of_a_collected_id_raises(native, target):
    src = registered(native, 4096, seed=5)
    bid = native.batch_transfer_async_write(target.segment, [src.ctypes.data], [target.addr], [4096])
    assert native.free_batch(bid) is None
    with pytest.raises(ValueError, match="unknown batch id"):
        native.free_batch(bid)
    target.cmd("fill 0 %d %d" % (4096, TARGET_SEED))
