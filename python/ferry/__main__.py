# SPDX-License-Identifier: Apache-2.0
"""python -m ferry --version: the package's version, then the transports and
devices ferry finds on this host (each probed by doing what a user would:
starting an engine with one protocol, registering memory at a location).
python -m ferry --mooncake-path: the folder of the opt-in `mooncake` stand-in."""
import argparse
import os
import sys

import ferry

PROTOCOLS = ("tcp", "shm", "rdma")
DEVICE_KINDS = ("cuda", "npu", "sim")
MAX_DEVICES = 16


def _error():
    code, name, detail = ferry.last_error()
    return "%s: %s" % (name, detail) if detail else name


def probe_transport(protocol):
    """(True, '') if an engine starts with this protocol alone, else (False, why)."""
    saved = os.environ.get("FERRY_TRANSPORT_FALLBACK")
    os.environ["FERRY_TRANSPORT_FALLBACK"] = "0"  # the protocol itself, not tcp standing in for it
    engine = ferry.TransferEngine()
    try:
        rc = engine.initialize("127.0.0.1", "P2PHANDSHAKE", protocol, "")
        return (rc == 0, "" if rc == 0 else _error())
    finally:
        engine.close()
        if saved is None:
            del os.environ["FERRY_TRANSPORT_FALLBACK"]
        else:
            os.environ["FERRY_TRANSPORT_FALLBACK"] = saved


def probe_devices(engine, kind):
    """Number of devices of a kind: indexes whose location the device layer
    accepts (FERRY_ENODEV means the device, or its runtime library, is absent)."""
    buf = bytearray(4096)
    found, why = 0, ""
    for index in range(MAX_DEVICES):
        # the reference-compatible class returns codes instead of raising
        if engine.register_memory(buf, location="%s:%d" % (kind, index)) == 0:
            engine.unregister_memory(buf)
        else:
            code, _, detail = ferry.last_error()
            if code == ferry.FERRY_ENODEV:
                why = detail
                break
        found += 1
    return found, why


def report(out=sys.stdout):
    print("ferry %s" % ferry.__version__, file=out)
    for p in PROTOCOLS:
        ok, why = probe_transport(p)
        print("transport %-5s %s" % (p, "available" if ok else "unavailable (%s)" % why), file=out)
    engine = ferry.TransferEngine()
    if engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") != 0:
        print("devices: cannot start an engine (%s)" % _error(), file=out)
        return 1
    try:
        print("device    cpu   host memory", file=out)
        for kind in DEVICE_KINDS:
            n, why = probe_devices(engine, kind)
            text = "%d device%s" % (n, "" if n == 1 else "s") if n else "none (%s)" % why
            print("device    %-5s %s" % (kind, text), file=out)
    finally:
        engine.close()
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ferry", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="store_true",
                        help="print the version, the transports and the devices found on this host")
    parser.add_argument("--mooncake-path", action="store_true",
                        help="print the folder that, on PYTHONPATH, makes `import mooncake.engine` ferry's")
    args = parser.parse_args(argv)
    if args.mooncake_path:
        print(ferry.mooncake_alias_path())
        return 0
    if not args.version:
        parser.print_help()
        return 0
    return report()


if __name__ == "__main__":
    sys.exit(main())
