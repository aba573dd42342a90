#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Regenerates the README's configuration table from the code's one table
# (tests/unit/test_config.c fails when they differ).
set -euo pipefail
cd "$(dirname "$0")/.."
table=$(./build/ferry-bench --help-env-markdown)
/usr/bin/python3 - "$table" <<'PY'
import sys, re
table = sys.argv[1]
s = open("README.md").read()
s = re.sub(r"(<!-- config-table -->\n).*?(<!-- /config-table -->)", lambda m: m.group(1) + table + "\n" + m.group(2), s, flags=re.S)
open("README.md", "w").write(s)
PY
