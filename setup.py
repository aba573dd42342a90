# SPDX-License-Identifier: Apache-2.0
"""`pip install .` from the repository root: the package python/setup.py builds
(libferry with CMake, then the extension).  See python/setup.py."""
import os
import runpy

runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "python", "setup.py"), run_name="__main__")
