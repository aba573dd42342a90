# SPDX-License-Identifier: Apache-2.0
"""A ferry target in its own process, driven by the tests over stdin/stdout.

    target.py SIZE SEED [config=value ...]

Creates a TransferEngine on 127.0.0.1 (or $TARGET_HOSTNAME, with metadata
server $TARGET_METADATA, protocol $TARGET_PROTOCOL when set), registers a numpy buffer of SIZE bytes
filled with pattern(SEED), prints "READY <segment> <addr> <size>", then answers
one line per command:
    check OFF LEN SEED   -> "OK" | "BAD <index>"   buffer[OFF:OFF+LEN] == pattern(SEED)?
    fill OFF LEN SEED    -> "OK"
    notes                -> "NOTES <json [[sender, message-hex], ...]>"
    unregister           -> "OK <rc>"
    quit                 -> exits
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ferry  # noqa: E402
from pattern import first_mismatch, pattern  # noqa: E402


def main():
    size, seed = int(sys.argv[1]), int(sys.argv[2])
    config = dict(a.split("=", 1) for a in sys.argv[3:])
    config = {k: int(v) for k, v in config.items()}
    engine = ferry.TransferEngine()
    rc = engine.initialize(os.environ.get("TARGET_HOSTNAME", "127.0.0.1"),
                           os.environ.get("TARGET_METADATA", "P2PHANDSHAKE"),
                           os.environ.get("TARGET_PROTOCOL", "tcp"), "", **config)
    if rc != 0:
        print("FAILED %d %s" % (rc, ferry.last_error()), flush=True)
        return 1
    buf = pattern(seed, 0, size)
    engine.register_memory(buf)
    print("READY %s %d %d" % (engine.segment_name, buf.ctypes.data, size), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd, args = words[0], [int(w) for w in words[1:]]
        if cmd == "check":
            off, n, s = args
            bad = first_mismatch(buf[off:off + n], s, off)
            print("OK" if bad < 0 else "BAD %d" % bad, flush=True)
        elif cmd == "fill":
            off, n, s = args
            buf[off:off + n] = pattern(s, off, n)
            print("OK", flush=True)
        elif cmd == "notes":
            notes = [[n.sender, n.message.hex()] for n in engine.get_notifications()]
            print("NOTES " + json.dumps(notes), flush=True)
        elif cmd == "unregister":
            try:
                rc = engine.unregister_memory(buf)
            except ferry.FerryError as e:
                rc = e.code
            print("OK %d" % rc, flush=True)
        elif cmd == "quit":
            break
        else:
            print("ERR unknown command %r" % cmd, flush=True)
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
