# SPDX-License-Identifier: Apache-2.0
"""Every method the reference binds with argument names (mooncake-integration/
transfer_engine/transfer_engine_py.cpp, the py::arg(...) of each .def), called
with those names as keywords, against a real target in its own process
(target.py): a caller may write any of them as a keyword, and pybind11 accepts
it there.  The *_on_cuda methods (stream_ptr=, transport_hint=) are in
test_engine's CUDA tests; the methods bound without names (unregister_memory,
get_batch_transfer_status, ...) take their arguments by position in the
reference too."""
import json

import numpy as np
import pytest

import ferry
import ferry.engine as fe
from pattern import pattern

KIB = 1024


def test_transfers_by_the_reference_argument_names(compat, target):
    src = pattern(31, 0, 64 * KIB)
    dst = np.zeros(64 * KIB, np.uint8)
    assert compat.register_memory(buffer_addr=src.ctypes.data, capacity=src.nbytes, location="cpu:0") == 0
    assert compat.batch_register_memory(buffer_addresses=[dst.ctypes.data], capacities=[dst.nbytes],
                                        location="cpu:0") == 0
    s, r = target.segment, target.addr
    a, d = src.ctypes.data, dst.ctypes.data
    assert compat.transfer_sync_write(target_hostname=s, buffer=a, peer_buffer_address=r, length=4 * KIB,
                                      transport_hint="") == 0
    assert compat.transfer_sync_read(target_hostname=s, buffer=d, peer_buffer_address=r, length=4 * KIB,
                                     transport_hint="") == 0
    assert np.array_equal(dst[:4 * KIB], src[:4 * KIB])
    assert compat.batch_transfer_sync_write(target_hostname=s, buffers=[a + 4 * KIB], peer_buffer_addresses=[r + 4 * KIB],
                                            lengths=[4 * KIB], transport_hint="") == 0
    assert compat.batch_transfer_sync_read(target_hostname=s, buffers=[d + 4 * KIB], peer_buffer_addresses=[r + 4 * KIB],
                                           lengths=[4 * KIB], transport_hint="") == 0
    ids = [compat.batch_transfer_async_write(target_hostname=s, buffers=[a + 8 * KIB], peer_buffer_addresses=[r + 8 * KIB],
                                             lengths=[4 * KIB], transport_hint=""),
           compat.batch_transfer_async_read(target_hostname=s, buffers=[d + 12 * KIB],
                                            peer_buffer_addresses=[r + 12 * KIB], lengths=[4 * KIB], transport_hint="")]
    assert all(ids) and compat.get_batch_transfer_status(ids) == 0
    assert compat.transfer_sync(target_hostname=s, buffer=a + 12 * KIB, peer_buffer_address=r + 12 * KIB,
                                length=4 * KIB, opcode=fe.TransferOpcode.Write,
                                notify=fe.TransferNotify(name="req-7", msg="done"), transport_hint="") == 0
    assert compat.batch_transfer_sync(target_hostname=s, buffers=[d + 16 * KIB], peer_buffer_addresses=[r + 12 * KIB],
                                      lengths=[4 * KIB], opcode=fe.TransferOpcode.Read, notify=None,
                                      transport_hint="") == 0
    bid = compat.batch_transfer_async(target_hostname=s, buffers=[a + 16 * KIB], peer_buffer_addresses=[r + 16 * KIB],
                                      lengths=[4 * KIB], opcode=fe.TransferOpcode.Write, transport_hint="")
    assert bid and compat.get_batch_transfer_status([bid]) == 0
    sid = compat.transfer_submit_write(target_hostname=s, buffer=a + 20 * KIB, peer_buffer_address=r + 20 * KIB,
                                       length=4 * KIB, transport_hint="")
    assert sid and compat.get_batch_transfer_status([sid]) == 0
    assert target.check(0, 24 * KIB, 31) == "OK"
    assert np.array_equal(dst[:8 * KIB], src[:8 * KIB])                          # the sync reads
    assert np.array_equal(dst[16 * KIB:20 * KIB], src[12 * KIB:16 * KIB])        # batch_transfer_sync READ


def test_probe_warmup_and_topology_by_the_reference_argument_names(compat, target):
    """send_probe(peer_server_name=...), warmup_efa_segment(segment_name=...),
    get_local_topology(device_name=...): before, the first two took no keywords
    (TypeError: takes no keyword arguments)."""
    assert compat.send_probe(peer_server_name=target.segment) == 0
    assert compat.warmup_efa_segment(segment_name=target.segment) == 0
    assert compat.send_probe(peer_server_name="127.0.0.1:1") < 0           # nobody there: a code, as by position
    assert ferry.last_error()[1] == "FERRY_ENOSEG"
    json.loads(compat.get_local_topology(device_name=None))
    # by position, as before
    assert compat.send_probe(target.segment) == 0
    assert compat.warmup_efa_segment(target.segment) == 0
    with pytest.raises(TypeError):
        compat.send_probe(peer=target.segment)                             # a name the reference does not have
