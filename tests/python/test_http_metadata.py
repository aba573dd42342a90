# SPDX-License-Identifier: Apache-2.0
"""http:// metadata, as the reference's HTTP metadata server speaks it
(GET/PUT/DELETE /metadata?key=...), against a real HTTP server started here:
segment names as given, lookups, deletion at close, expiry of a dead
publisher's entry, and re-population of a server that lost its data."""
import http.server
import json
import threading
import time
import urllib.parse

import numpy as np
import pytest

import ferry
import ferry.engine as fe
from conftest import Target

KEY = "ferry/segments/"


class Store(http.server.BaseHTTPRequestHandler):
    """The reference server's protocol: 200 with the value, 404 'metadata not found'."""
    data = {}
    lock = threading.Lock()
    requests = []

    def _key(self):
        url = urllib.parse.urlparse(self.path)
        key = urllib.parse.parse_qs(url.query).get("key", [""])[0]
        return url.path, key

    def _reply(self, code, body=b""):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path, key = self._key()
        with self.lock:
            self.requests.append(("GET", key))
            value = self.data.get(key)
        if path != "/metadata" or not key:
            return self._reply(400, b"metadata key is required")
        self._reply(200, value) if value is not None else self._reply(404, b"metadata not found")

    def do_PUT(self):
        path, key = self._key()
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            self.requests.append(("PUT", key))
            self.data[key] = body
        self._reply(200, b"metadata updated")

    def do_DELETE(self):
        path, key = self._key()
        with self.lock:
            self.requests.append(("DELETE", key))
            found = self.data.pop(key, None) is not None
        self._reply(200 if found else 404, b"metadata deleted" if found else b"metadata not found")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Store.data = {}
    Store.requests = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Store)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield "http://127.0.0.1:%d/metadata" % srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def wait_until(cond, what, deadline_s=30):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("not within %ss: %s" % (deadline_s, what))


def http_target(url, name, **config):
    return Target(size=8 << 20, env_extra={"TARGET_METADATA": url, "TARGET_HOSTNAME": name,
                                           "MC_TCP_BIND_ADDRESS": "127.0.0.1"}, **config)


def test_http_metadata_end_to_end(server, monkeypatch):
    monkeypatch.setenv("MC_TCP_BIND_ADDRESS", "127.0.0.1")  # the names below are not addresses
    t = http_target(server, "decode-0")
    try:
        assert t.segment == "decode-0"            # the reference's name with a metadata server
        with Store.lock:
            stored = json.loads(Store.data[KEY + "decode-0"])
        assert stored["descriptor"]["name"] == "decode-0" and stored["expires_unix_s"] > time.time()
        e = fe.TransferEngine()
        assert e.initialize("prefill-0", server, "tcp", "") == 0
        assert e.segment_name == "prefill-0"
        buf = np.arange(64 * 1024, dtype=np.uint8) ^ 0x5A
        assert e.register_memory(buf.ctypes.data, buf.nbytes) == 0
        assert e.get_first_buffer_address("decode-0") == t.addr
        assert e.transfer_sync_write("decode-0", buf.ctypes.data, t.addr, buf.nbytes) == 0
        back = np.zeros_like(buf)
        assert e.register_memory(back.ctypes.data, back.nbytes) == 0
        assert e.transfer_sync_read("decode-0", back.ctypes.data, t.addr, back.nbytes) == 0
        assert np.array_equal(back, buf)
        assert ("GET", KEY + "decode-0") in Store.requests
        assert e.send_probe("decode-0") == 0 and e.send_probe("nobody") == ferry.FERRY_ENOSEG
        # a clean close deletes the entry: the peer is unknown afterwards
        t.close()
        assert ("DELETE", KEY + "decode-0") in Store.requests and KEY + "decode-0" not in Store.data
        assert e.send_probe("decode-0") == ferry.FERRY_ENOSEG
        e.close()
        assert KEY + "prefill-0" not in Store.data
    finally:
        t.close()


def test_http_dead_publisher_expires_and_store_is_repopulated(server, monkeypatch):
    monkeypatch.setenv("MC_TCP_BIND_ADDRESS", "127.0.0.1")
    t = http_target(server, "decode-1", metadata_ttl_s=1)
    e = fe.TransferEngine()
    try:
        assert e.initialize("prefill-1", server, "tcp", "") == 0
        # the server loses everything: the keepalive puts the descriptor back
        with Store.lock:
            Store.data.clear()
        wait_until(lambda: KEY + "decode-1" in Store.data, "descriptor re-published")
        assert e.send_probe("decode-1") == 0
        # killed without a DELETE: the entry expires after the TTL
        t.kill()
        assert KEY + "decode-1" in Store.data
        wait_until(lambda: e.send_probe("decode-1") < 0, "dead publisher's entry expired")
        assert "expired" in ferry.last_error()[2]
    finally:
        t.close()
        e.close()


def test_http_bad_urls(server):
    e = fe.TransferEngine()
    assert e.initialize("127.0.0.1", "http://", "tcp", "") == ferry.FERRY_EINVAL
    assert e.initialize("127.0.0.1", server + "?key=x", "tcp", "") == ferry.FERRY_EINVAL
    rc = e.initialize("127.0.0.1", "http://127.0.0.1:1/metadata", "tcp", "")  # nothing listens there
    assert rc == ferry.FERRY_ECONN and "127.0.0.1:1" in ferry.last_error()[2]
    # the reference's initialize_ext('http') form
    assert e.initialize_ext("127.0.0.1", server[len("http://"):], "tcp", "", "http") == 0
    assert e.segment_name == "127.0.0.1"
    e.close()
