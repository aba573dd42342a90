# SPDX-License-Identifier: Apache-2.0
"""An HTTP metadata store (the reference's GET/PUT/DELETE ?key= protocol) in
a process of its own, which can hold a request until told to answer: a test
thereby keeps a ferry call blocked inside the metadata store for as long as
it needs, independently of the GIL of the process under test.

    gate_store.py [MAX_HOLD_S]

Prints "READY <url>", then answers one line per command on stdin:
    hold PUT|DELETE  -> "OK"        the next request of that method waits
    release          -> "OK"        the held request is answered
    state            -> "HOLDING" | "IDLE"   (is a request held now?)
    keys             -> "KEYS k1 k2 ..."     the keys stored now, sorted
    quit             -> exits
and prints "HELD <method>" when a request starts waiting.  A held request is
answered anyway after MAX_HOLD_S (default 60) seconds; "state" tells a test
whether that happened.  Threads: one per request (ThreadingHTTPServer), the
main thread reads commands; `lock` guards the store and the gate.
"""
import http.server
import sys
import threading
import urllib.parse

lock = threading.Lock()
data = {}
gate = {"method": None, "open": threading.Event(), "holding": False}
out_lock = threading.Lock()


def say(line):
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Store(http.server.BaseHTTPRequestHandler):
    max_hold_s = 60.0

    def _gate(self, method):
        with lock:
            held = gate["method"] == method
            if held:
                gate["method"] = None
                gate["holding"] = True
        if held:
            say("HELD " + method)
            gate["open"].wait(self.max_hold_s)
            with lock:
                gate["holding"] = False

    def _key(self):
        url = urllib.parse.urlparse(self.path)
        return urllib.parse.parse_qs(url.query).get("key", [""])[0]

    def _reply(self, code, body=b""):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with lock:
            value = data.get(self._key())
        self._reply(200, value) if value is not None else self._reply(404, b"metadata not found")

    def do_PUT(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._gate("PUT")
        with lock:
            data[self._key()] = body
        self._reply(200, b"metadata updated")

    def do_DELETE(self):
        self._gate("DELETE")
        with lock:
            found = data.pop(self._key(), None) is not None
        self._reply(200 if found else 404, b"metadata deleted" if found else b"metadata not found")

    def log_message(self, *args):
        pass


def main():
    if len(sys.argv) > 1:
        Store.max_hold_s = float(sys.argv[1])
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Store)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    say("READY http://127.0.0.1:%d/metadata" % srv.server_address[1])
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "hold":
            with lock:
                gate["open"].clear()
                gate["method"] = words[1]
            say("OK")
        elif words[0] == "release":
            gate["open"].set()
            say("OK")
        elif words[0] == "state":
            with lock:
                say("HOLDING" if gate["holding"] else "IDLE")
        elif words[0] == "keys":
            with lock:
                say(" ".join(["KEYS"] + sorted(data)))
        elif words[0] == "quit":
            break
    gate["open"].set()
    srv.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
