# SPDX-License-Identifier: Apache-2.0
"""torch_npu coexistence (tests/npu/run.sh): torch_npu owns ACL (it calls
aclInit first and aclFinalize at exit); ferry must share its contexts, accept
its caching-allocator memory as npu:N, move it, and leave nothing that runs
into a finalized ACL at exit.  Prints PASS or raises."""
import ctypes
import os

import torch
import torch_npu  # noqa: F401  (registers the npu device)

import ferry

n = int(os.environ.get("FERRY_NPU", "0"))
torch.npu.set_device(n)
blocks, block = 64, 64 << 10
kv = torch.randint(0, 255, (blocks, block), dtype=torch.uint8, device=f"npu:{n}")
torch.npu.synchronize()
nbytes = kv.numel()

target = ferry.TransferEngine()
assert target.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
host = bytearray(nbytes)
host_addr = ctypes.addressof(ctypes.c_char.from_buffer(host))
assert target.register_memory(host_addr, nbytes, location="cpu") == 0

init = ferry.TransferEngine()
assert init.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
# torch_npu's caching allocator: ACL may not classify it; the name is trusted
assert init.register_memory(kv.data_ptr(), nbytes, location=f"npu:{n}") == 0
rc = init.batch_transfer_sync_write(target.segment_name, [kv.data_ptr() + i * block for i in range(blocks)],
                                    [host_addr + i * block for i in range(blocks)], [block] * blocks)
assert rc == 0, ferry.last_error()
assert bytes(host) == kv.cpu().numpy().tobytes(), "WRITE npu -> cpu: data differs"

kv.zero_()
torch.npu.synchronize()
rc = init.batch_transfer_sync_read(target.segment_name, [kv.data_ptr() + i * block for i in range(blocks)],
                                   [host_addr + i * block for i in range(blocks)], [block] * blocks)
assert rc == 0, ferry.last_error()
assert kv.cpu().numpy().tobytes() == bytes(host), "READ cpu -> npu: data differs"

# the documented order: ferry's engines end before torch_npu finalizes ACL
init.close()
target.close()
print("PASS: torch_npu tensor registered as npu:%d, WRITE and READ of %d x %d bytes checked" % (n, blocks, block))
