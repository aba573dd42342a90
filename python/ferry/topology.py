# SPDX-License-Identifier: Apache-2.0
"""get_local_topology(): the NICs and devices ferry sees, and where they sit.

Read from sysfs, as the rdma transport and the device backends see the host:
RDMA NICs (``/sys/class/infiniband``) with their PCI address, NUMA node and
ports; NUMA nodes (``cpu:N``); NVIDIA GPUs (``cuda:N``, PCI vendor 0x10de, in
PCI bus order as ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` numbers them) and Ascend NPUs
(``npu:N``, vendor 0x19e5, class 0x12) with their PCI address and NUMA node.

The result also carries the reference's shape, one entry per location with
its preferred NICs (same NUMA node) and the others::

    {"cpu:0": [["mlx5_0"], ["mlx5_1"]], "cuda:0": [...], ...,
     "nics": [...], "devices": [...]}
"""
import json
import os

_SYS = "/sys"


def _read(path, default=""):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def _numa(pci_dir):
    try:
        return int(_read(os.path.join(pci_dir, "numa_node"), "-1"))
    except ValueError:
        return -1


def _nics(root, only):
    base = os.path.join(root, "class", "infiniband")
    out = []
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        if only and name not in only:
            continue
        dev = os.path.realpath(os.path.join(base, name, "device"))
        ports = []
        pdir = os.path.join(base, name, "ports")
        for port in sorted(os.listdir(pdir)) if os.path.isdir(pdir) else []:
            ports.append({"port": int(port) if port.isdigit() else port,
                          "state": _read(os.path.join(pdir, port, "state")),
                          "link_layer": _read(os.path.join(pdir, port, "link_layer"))})
        out.append({"name": name, "pci": os.path.basename(dev), "numa_node": _numa(dev), "ports": ports})
    return out


def _pci_devices(root, vendor, class_prefix):
    base = os.path.join(root, "bus", "pci", "devices")
    found = []
    for addr in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        d = os.path.join(base, addr)
        if _read(os.path.join(d, "vendor")) == vendor and _read(os.path.join(d, "class")).startswith(class_prefix):
            found.append((addr, _numa(d)))
    return found


def _numa_nodes(root):
    text = _read(os.path.join(root, "devices", "system", "node", "online"), "0")
    nodes = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            nodes.extend(range(int(lo), int(hi if hi.isdigit() else lo) + 1))
    return nodes or [0]


def local_topology(device_name=None, root=_SYS):
    """Returns the topology as a dict (see the module docstring)."""
    only = [n for n in (device_name or "").split(",") if n and n != "auto"]
    nics = _nics(root, only)
    devices = [{"location": "cpu:%d" % n, "numa_node": n} for n in _numa_nodes(root)]
    for kind, vendor, cls in (("cuda", "0x10de", ("0x0302", "0x0300")), ("npu", "0x19e5", ("0x12",))):
        found = []
        for c in cls:
            found += _pci_devices(root, vendor, c)
        for i, (addr, numa) in enumerate(sorted(found)):
            devices.append({"location": "%s:%d" % (kind, i), "pci": addr, "numa_node": numa})
    topo = {}
    for d in devices:
        near = [n["name"] for n in nics if n["numa_node"] == d["numa_node"] or n["numa_node"] < 0]
        topo[d["location"]] = [near, [n["name"] for n in nics if n["name"] not in near]]
    topo["nics"] = nics
    topo["devices"] = devices
    return topo


def local_topology_json(device_name=None, root=_SYS):
    return json.dumps(local_topology(device_name, root))
