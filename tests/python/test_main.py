# SPDX-License-Identifier: Apache-2.0
"""python -m ferry --version: what it reports is what this host has (a device
kind is counted by the indexes the device layer accepts; a transport is
available only if it starts by itself, not through the tcp fallback)."""
import os
import subprocess
import sys


def version_report(**env):
    run = subprocess.run([sys.executable, "-m", "ferry", "--version"], capture_output=True, text=True,
                         env=dict(os.environ, **env), timeout=120)
    assert run.returncode == 0, run.stderr
    return {" ".join(line.split()[:2]): " ".join(line.split()[2:]) for line in run.stdout.splitlines()[1:]}


def test_counts_the_devices_there_are():
    report = version_report(FERRY_SIM_DEVICES="3")
    assert report["device sim"] == "3 devices"
    assert report["device cpu"] == "host memory"
    assert report["transport tcp"] == "available"


def test_absent_devices_and_transports_say_why():
    report = version_report(FERRY_ASCEND_LIBRARY="/nonexistent/libascendcl.so")
    assert report["device npu"].startswith("none (") and "nonexistent" in report["device npu"]
    rdma = report["transport rdma"]
    assert rdma == "available" or rdma.startswith("unavailable (")
