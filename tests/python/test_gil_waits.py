# SPDX-License-Identifier: Apache-2.0
"""Calls that wait inside ferry must let the interpreter's other threads run.

A metadata store in a process of its own (gate_store.py) holds one request
of ferry's until the test lets it go, so a call is blocked for as long as the
test needs, whatever the GIL does in this process.  A second thread then
makes a call that has to wait for the first; meanwhile this thread must run
Python.  If the second thread waited with the GIL held, this thread would run
again only after the store gave up holding (GATE_MAX_HOLD_S), and the store's
"state" would no longer be HOLDING: the test fails instead of hanging.

No case depends on timing: the checks hold at whatever speed the threads
run; the short sleeps only give the second thread the chance to reach its
wait before the check (before the fix, that is where it took the GIL away).
"""
import os
import select
import subprocess
import sys
import threading
import time

import pytest

import ferry

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_HOLD_S = float(os.environ.get("GATE_MAX_HOLD_S", "60"))


class GateStore:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "gate_store.py"), str(MAX_HOLD_S)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.held = []
        line = self._readline(30)
        assert line.startswith("READY "), line
        self.url = line.split()[1]

    def _readline(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("gate_store.py did not answer within %ss" % timeout)
        return self.proc.stdout.readline().strip()

    def _reply(self, timeout=60):
        while True:
            line = self._readline(timeout)
            if not line.startswith("HELD "):
                return line
            self.held.append(line[5:])

    def cmd(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def wait_held(self, method, timeout=60):
        while method not in self.held:
            line = self._readline(timeout)
            assert line.startswith("HELD "), line
            self.held.append(line[5:])

    def close(self):
        if self.proc.poll() is None:
            try:
                self.cmd("release")
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, TimeoutError, ValueError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def gate():
    g = GateStore()
    yield g
    g.close()


def engine_on(gate):
    e = ferry.TransferEngine()
    # the store may hold a request for MAX_HOLD_S: the client must not give up first;
    # no renewal during the test (it would be a PUT of its own)
    assert e.initialize("127.0.0.1", gate.url, "tcp", "", connect_timeout_ms=int(3 * MAX_HOLD_S * 1000),
                        metadata_ttl_s=3600) == 0, ferry.last_error()
    return e


def run_python_meanwhile(started):
    """This thread's work while the other waits: counts, and lets it run first."""
    assert started.wait(60)
    count = 0
    for _ in range(100):
        time.sleep(0.002)
        count += 1
    return count


def test_other_threads_run_while_a_large_managed_buffer_registers(gate):
    """allocate_managed_buffer(> 16 MiB) registers a region of its own, which
    publishes the descriptor (here: held by the store).  It held the slab lock
    meanwhile, and managed_buffer_info / transfer checks of other threads
    waited for that lock with the GIL held: every thread stood still."""
    e = engine_on(gate)
    try:
        assert e.allocate_managed_buffer(4096) != 0      # the pool: mapped and published now
        assert gate.cmd("hold PUT") == "OK"
        got = {}
        a = threading.Thread(target=lambda: got.__setitem__("big", e.allocate_managed_buffer(32 << 20)))
        a.start()
        gate.wait_held("PUT")                            # a is inside the registration
        started = threading.Event()

        def other():
            started.set()
            got["info"] = e.managed_buffer_info()
        b = threading.Thread(target=other)
        b.start()
        assert run_python_meanwhile(started) == 100
        assert gate.cmd("state") == "HOLDING"            # this thread ran while the PUT was held
        assert "big" not in got
        assert gate.cmd("release") == "OK"
        a.join(60)
        b.join(60)
        assert got["big"] != 0 and got["info"]["used"] >= 4096
        assert e.managed_buffer_info()["large_buffers"] == 1
        assert e.free_managed_buffer(got["big"], 32 << 20) == 0
    finally:
        gate.cmd("release")
        e.close()


def test_other_threads_run_while_close_destroys(gate):
    """close() holds the engine's life lock while it destroys the engine (here:
    the store holds its DELETE of the descriptor).  Another thread's call
    waited for that lock with the GIL held: every thread stood still.  Now
    a call made while close() runs is turned away at once (EINVAL, naming
    the close), so that callers in a loop cannot hold close() off."""
    e = engine_on(gate)
    assert gate.cmd("hold DELETE") == "OK"
    closer = threading.Thread(target=e.close)
    closer.start()
    gate.wait_held("DELETE")                             # close() is inside the destroy
    started = threading.Event()
    got = {}

    def other():
        started.set()
        got["port"] = e.get_rpc_port()
        got["why"] = ferry.last_error()[2]
    b = threading.Thread(target=other)
    b.start()
    try:
        assert run_python_meanwhile(started) == 100
        assert gate.cmd("state") == "HOLDING"            # this thread ran while the DELETE was held
        b.join(60)                                       # the other one did not wait for close() ...
        assert gate.cmd("state") == "HOLDING"            # ... which still runs
    finally:
        gate.cmd("release")
        closer.join(60)
        b.join(60)
    assert got["port"] == ferry.FERRY_EINVAL and "closed" in got["why"]
    assert not e.initialized
