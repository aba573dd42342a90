# SPDX-License-Identifier: Apache-2.0
"""A Python process on an Ascend host ends without ferry calling a finalized ACL.

torch_npu registers, when imported, ``atexit.register(_npu_shutdown)``, which
resets the devices and calls aclFinalize (torch_npu/__init__.py); aclFinalize is
not reference-counted.  The callers (SGLang's MooncakeTransferEngine with
ENABLE_ASCEND_TRANSFER_WITH_MOONCAKE, vLLM's connector) keep their engine for the
life of the process and never close it: the reference's TransferEngine has no
close().  The engine is collected while the interpreter finalizes, after the
atexit hooks ran, and ferry's teardown called into the finalized ACL (the strict
fake aborts: SIGABRT at exit; undefined on a 910B).  ferry's package now tells
libferry at exit, from an atexit hook of its own, that the process is ending
(ferry_process_exiting): with torch_npu imported before ferry or after it, no ACL
call follows.  Runs on the fake ACL runtime (tests/ascend), built under build/."""
import os
import subprocess
import sys

import pytest

import ferry

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAKE = os.environ.get("FERRY_TEST_FAKE_ACL", os.path.join(ROOT, "build", "tests", "ascend", "full", "libascendcl.so"))

# torch_npu's part is played with ctypes on the same library ferry loads.
TORCH_NPU = """
import atexit, ctypes, os
acl = ctypes.CDLL(os.environ["FERRY_ASCEND_LIBRARY"])
assert acl.aclInit(None) in (0, 100002)
assert acl.aclrtSetDevice(0) == 0
atexit.register(acl.aclFinalize)  # torch_npu: atexit.register(_npu_shutdown)
"""

FERRY = """
import ctypes, os
import numpy as np
import ferry.engine as fe
"""

CALLER = """
acl = ctypes.CDLL(os.environ["FERRY_ASCEND_LIBRARY"])
dev = ctypes.c_void_p()
assert acl.aclrtMalloc(ctypes.byref(dev), 1 << 20, 0) == 0
prefill = fe.TransferEngine()
assert prefill.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
decode = fe.TransferEngine()
assert decode.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
kv = np.zeros(1 << 20, np.uint8)
assert decode.register_memory(kv.ctypes.data, kv.nbytes) == 0
assert prefill.register_memory(dev.value, 1 << 20, location="npu:0") == 0
# a staged WRITE: npu:0 -> pinned chunk -> tcp; the engine now holds ACL streams and pinned memory
assert prefill.transfer_sync_write(decode.segment_name, dev.value, kv.ctypes.data, 1 << 20) == 0
print("TRANSFERRED", flush=True)
# the engines stay in the module's globals, as SGLang and vLLM keep theirs
"""


@pytest.mark.parametrize("order", ["torch_npu_first", "ferry_first"])
def test_engine_collected_after_torch_npu_finalized_acl(order):
    if not os.path.exists(FAKE):
        pytest.skip("SKIPPED: no fake ACL runtime at %s (build tests/ascend, or set FERRY_TEST_FAKE_ACL)" % FAKE)
    script = TORCH_NPU + FERRY + CALLER if order == "torch_npu_first" else FERRY + TORCH_NPU + CALLER
    env = dict(os.environ, FERRY_ASCEND_LIBRARY=FAKE, FAKEACL_DEVICES="2")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(ferry.__path__[0]), env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert "TRANSFERRED" in p.stdout, p.stderr
    assert "after aclFinalize" not in p.stderr, p.stderr
    assert p.returncode == 0, p.stderr
