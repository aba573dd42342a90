# SPDX-License-Identifier: Apache-2.0
"""The reference's transfer-engine target (mooncake-wheel/tests/
transfer_engine_target.py), in our words, run through ``mooncake.engine``
(ferry's opt-in stand-in must be on PYTHONPATH): the same environment
variables and defaults, the same calls (initialize, get_first_buffer_address
of its own name, a 64 MiB managed buffer when it has none).  Where the
reference spins forever, this one prints

    READY <target_server_name> <rpc_port> <buffer_address>

and waits for "quit" (or the end of stdin) on one thread, so it costs no CPU.
"""
import os
import sys

from mooncake.engine import TransferEngine

DEFAULT_BUFFER_CAPACITY = 64 * 1024 * 1024


def main():
    target_server_name = os.getenv("TARGET_SERVER_NAME", "127.0.0.1:12345")
    metadata_server = os.getenv("MC_METADATA_SERVER", "127.0.0.1:2379")
    protocol = os.getenv("PROTOCOL", "tcp")

    target = TransferEngine()
    ret = target.initialize(target_server_name, metadata_server, protocol, "")
    if ret != 0:
        print("FAILED %d" % ret, flush=True)
        return 1
    if metadata_server == "P2PHANDSHAKE":   # as the initiator test names itself
        target_server_name = target_server_name.rpartition(":")[0] + ":" + str(target.get_rpc_port())
    buffer_addr = target.get_first_buffer_address(target_server_name)
    if buffer_addr == 0:
        buffer_addr = target.allocate_managed_buffer(DEFAULT_BUFFER_CAPACITY)
        if buffer_addr == 0:
            print("FAILED allocate_managed_buffer", flush=True)
            return 1
    print("READY %s %d %d" % (target_server_name, target.get_rpc_port(), buffer_addr), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
