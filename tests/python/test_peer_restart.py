# SPDX-License-Identifier: Apache-2.0
"""A decode node that restarts under the same segment name with a new port and
other buffers (an HTTP metadata store, as the reference's callers run one),
seen from a prefill engine that keeps running: no transfer lands in the old
layout, every failure is a named code, and the node is reachable again
without restarting the prefill engine."""
import http.server
import threading

import numpy as np
import pytest

import ferry
from ferry.engine import TransferEngine
from conftest import Target
from test_http_metadata import Store

DECODE = "127.0.0.3"    # the decode node's segment name (and address): the store maps it to its port


@pytest.fixture
def store():
    Store.data = {}
    Store.requests = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Store)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d/metadata" % srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def decode_node(store, size):
    return Target(size=size, env_extra={"TARGET_HOSTNAME": DECODE, "TARGET_METADATA": store})


def test_restart_with_new_port_and_buffers(store):
    decode = decode_node(store, 8 << 20)
    prefill = TransferEngine()
    assert prefill.initialize("127.0.0.2", store, "tcp", "") == 0
    kv = np.zeros(1 << 20, dtype=np.uint8)
    kv[:] = 7
    try:
        assert prefill.register_memory(kv.ctypes.data, kv.nbytes) == 0
        assert prefill.transfer_sync_write(DECODE, kv.ctypes.data, decode.addr, 4096) == 0
        assert prefill.get_first_buffer_address(DECODE) == decode.addr
        old = decode.addr
        decode.kill()
        decode = decode_node(store, 2 << 20)            # other buffers, another port
        assert decode.addr != old
        # SGLang's way back: the probe answers, then it asks where to write
        assert prefill.send_probe(DECODE) == 0
        assert prefill.get_first_buffer_address(DECODE) == decode.addr
        # the old layout is refused before anything is sent, and named
        assert prefill.transfer_sync_write(DECODE, kv.ctypes.data, old, 4096) == ferry.FERRY_ERANGE
        assert DECODE in ferry.last_error()[2]
        assert prefill.transfer_sync_write(DECODE, kv.ctypes.data, decode.addr, 4096) == 0
        assert prefill.transfer_sync_write(DECODE, kv.ctypes.data, decode.addr + (2 << 20) - 100, 4096) == \
            ferry.FERRY_ERANGE
    finally:
        decode.close()
        prefill.close()


def test_restart_seen_by_a_failed_transfer_first(store):
    """No probe: the first transfer after the restart fails with a named code
    (the old port), the next ones judge by the new descriptor."""
    decode = decode_node(store, 8 << 20)
    prefill = TransferEngine()
    assert prefill.initialize("127.0.0.2", store, "tcp", "") == 0
    kv = np.zeros(1 << 20, dtype=np.uint8)
    try:
        assert prefill.register_memory(kv.ctypes.data, kv.nbytes) == 0
        assert prefill.transfer_sync_write(DECODE, kv.ctypes.data, decode.addr, 4096) == 0
        old = decode.addr
        decode.kill()
        decode = decode_node(store, 2 << 20)
        rc = prefill.transfer_sync_write(DECODE, kv.ctypes.data, old, 4096)
        assert rc in (ferry.FERRY_ECONN, ferry.FERRY_ESTALE), ferry.err_name(rc)
        assert prefill.get_first_buffer_address(DECODE) == decode.addr
        assert prefill.transfer_sync_write(DECODE, kv.ctypes.data, old, 4096) == ferry.FERRY_ERANGE
        assert prefill.transfer_sync_write(DECODE, kv.ctypes.data, decode.addr, 4096) == 0
    finally:
        decode.close()
        prefill.close()
