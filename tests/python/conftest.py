# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the ferry Python tests: the package (in-place build under
python/ first, else the installed one), an initialized engine, and a target
engine in a second process (target.py)."""
import glob
import os
import select
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PYDIR = os.path.join(ROOT, "python")
if glob.glob(os.path.join(PYDIR, "ferry", "_ferry*.so")):
    sys.path.insert(0, PYDIR)
sys.path.insert(0, HERE)

import ferry  # noqa: E402
import ferry.engine as fe  # noqa: E402

TARGET_SIZE = 32 << 20
TARGET_SEED = 7


class Target:
    """A target.py process: .segment, .addr, .size, .pid; .cmd(line) -> reply."""

    def __init__(self, size=TARGET_SIZE, seed=TARGET_SEED, env_extra=None, **config):
        env = dict(os.environ)
        env.update(env_extra or {})
        env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(ferry.__path__[0]), HERE, env.get("PYTHONPATH", "")])
        args = [sys.executable, os.path.join(HERE, "target.py"), str(size), str(seed)]
        args += ["%s=%s" % kv for kv in config.items()]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.pid = self.proc.pid
        line = self._readline(30)
        if not line.startswith("READY "):
            self.kill()
            raise RuntimeError("target.py did not start: %r" % line)
        _, self.segment, addr, size = line.split()
        self.addr, self.size, self.seed = int(addr), int(size), seed

    def _readline(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("target.py did not answer within %ss" % timeout)
        return self.proc.stdout.readline().strip()

    def cmd(self, line, timeout=30):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._readline(timeout)

    def check(self, off, length, seed):
        return self.cmd("check %d %d %d" % (off, length, seed))

    def stop(self):
        """SIGSTOP, and wait until every thread of the process is stopped."""
        os.kill(self.pid, signal.SIGSTOP)
        deadline = time.time() + 10
        while time.time() < deadline:
            states = []
            for tid in os.listdir("/proc/%d/task" % self.pid):
                with open("/proc/%d/task/%s/stat" % (self.pid, tid)) as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            if all(s in ("T", "t") for s in states):
                return
            time.sleep(0.001)
        raise TimeoutError("target %d did not stop" % self.pid)

    def cont(self):
        os.kill(self.pid, signal.SIGCONT)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.cmd("quit", timeout=10)
            except (OSError, TimeoutError, ValueError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


@pytest.fixture(scope="module")
def target():
    t = Target()
    yield t
    t.close()


@pytest.fixture
def fresh_target():
    """A target of its own, for tests that stop or kill it."""
    t = Target(size=8 << 20)
    yield t
    t.close()


@pytest.fixture
def engine():
    e = ferry.NativeTransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    yield e
    e.close()


@pytest.fixture
def compat():
    """The reference-compatible TransferEngine (ferry.engine), on tcp."""
    e = fe.TransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    yield e
    e.close()
