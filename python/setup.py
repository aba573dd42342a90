# SPDX-License-Identifier: Apache-2.0
"""Builds the `ferry` package: the C extension ferry._ferry on top of libferry.a.

    /usr/bin/python3 -m pip install --no-build-isolation ./python   # from a checkout, offline
    /usr/bin/python3 -m pip install --no-build-isolation .          # the same, from the root

libferry.a is built here with CMake (target ferry_static, Release, no tests)
under the build directory of setuptools, so a clean checkout needs nothing but
cmake, a C compiler and libcjson-dev (scripts/deps.sh installs them).  With
FERRY_BUILD_DIR set to an existing CMake build (relative paths are tried
against the current directory, then the repository root) its libferry.a is
used instead; python/build.sh does that for in-place development builds.

The setup.py at the repository root runs this file; paths are therefore
relative to the directory setuptools runs in.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.realpath(__file__))
ROOT = os.path.dirname(HERE)
REL = os.path.relpath(HERE)   # "." from python/, "python" from the root
SOURCES = ["_ferry.c", "engine.c", "memory.c", "transfer.c", "batches.c", "convert.c", "slab.c"]


def header_version():
    """MAJOR.MINOR.PATCH from include/ferry.h, the one place it is written."""
    with open(os.path.join(ROOT, "include", "ferry.h")) as f:
        text = f.read()
    parts = [re.search(r"#define FERRY_VERSION_%s (\d+)" % p, text) for p in ("MAJOR", "MINOR", "PATCH")]
    if not all(parts):
        sys.exit("setup.py: no FERRY_VERSION_* in %s/include/ferry.h" % ROOT)
    return ".".join(m.group(1) for m in parts)


def given_library():
    """libferry.a of the CMake build FERRY_BUILD_DIR names, or None."""
    env = os.environ.get("FERRY_BUILD_DIR")
    if not env:
        return None
    for d in (os.path.abspath(env), os.path.join(ROOT, env)):
        lib = os.path.join(d, "libferry.a")
        if os.path.isfile(lib):
            return lib
    sys.exit("setup.py: FERRY_BUILD_DIR=%s has no libferry.a (build it: cmake --build %s --target ferry_static)"
             % (env, env))


def cmake_library(build_temp):
    """Configures and builds libferry.a with CMake under build_temp."""
    cmake = shutil.which("cmake")
    if not cmake or not os.path.isfile(os.path.join(ROOT, "CMakeLists.txt")):
        sys.exit("setup.py: building libferry needs cmake and ferry's source tree at %s "
                 "(apt-get install cmake pkg-config libcjson-dev; or set FERRY_BUILD_DIR)" % ROOT)
    bdir = os.path.join(os.path.abspath(build_temp), "libferry")
    if source_of(bdir) not in (None, ROOT):
        shutil.rmtree(bdir)   # configured from another checkout (moved or copied): start over
    if source_of(bdir) is None:
        subprocess.check_call([cmake, "-S", ROOT, "-B", bdir, "-DCMAKE_BUILD_TYPE=Release",
                               "-DFERRY_BUILD_TESTS=OFF", "-DFERRY_WERROR=OFF"])
    subprocess.check_call([cmake, "--build", bdir, "--target", "ferry_static",
                           "-j%d" % int(os.environ.get("JOBS", os.cpu_count() or 2))])
    return os.path.join(bdir, "libferry.a")


def source_of(build_dir):
    """The source directory a CMake build directory was configured from, or None."""
    cache = os.path.join(build_dir, "CMakeCache.txt")
    if os.path.isfile(cache):
        with open(cache) as f:
            for line in f:
                if line.startswith("CMAKE_HOME_DIRECTORY:"):
                    return os.path.realpath(line.split("=", 1)[1].strip())
    return None


def pkg_config(flag, pkg):
    try:
        out = subprocess.run(["pkg-config", flag, pkg], check=True, capture_output=True, text=True).stdout
        return shlex.split(out)
    except (OSError, subprocess.CalledProcessError):
        return []


def link_dependencies(lib):
    """What libferry.a needs at link time: the Requires.private of the ferry.pc
    its build wrote (cJSON, and libcurl / hiredis / libibverbs where that build
    found them), through pkg-config."""
    deps = []
    pc = os.path.join(os.path.dirname(lib), "ferry.pc")
    modules = ["libcjson"]
    if os.path.isfile(pc):
        with open(pc) as f:
            for line in f:
                if line.startswith("Requires.private:"):
                    modules = line.split(":", 1)[1].split()
    for m in modules:
        deps += pkg_config("--libs", m) or ["-l" + m[3:] if m.startswith("lib") else "-l" + m]
    deps += ["-lpthread", "-ldl", "-lm"]
    seen = set()
    return [d for d in deps if not (d in seen or seen.add(d))]


def include_dir(lib):
    """ferry.h of the source tree the library was built from (CMakeCache.txt),
    so that the extension and libferry.a agree on struct layouts."""
    src = source_of(os.path.dirname(lib))
    if src and os.path.isfile(os.path.join(src, "include", "ferry.h")):
        return os.path.join(src, "include")
    return os.path.join(ROOT, "include")


class build_ext_with_libferry(build_ext):
    """build_ext that first finds or builds libferry.a and links it in."""

    def run(self):
        lib = given_library() or cmake_library(self.build_temp)
        inc = include_dir(lib)
        for ext in self.extensions:
            ext.include_dirs.append(inc)
            ext.extra_objects.append(lib)
            ext.depends += [os.path.join(inc, "ferry.h"), lib]
            # ferry's own symbols stay inside the extension: two extensions
            # that each link libferry.a cannot clash.
            ext.extra_link_args += ["-Wl,--exclude-libs,ALL"] + link_dependencies(lib)
        super().run()


extension = Extension(
    "ferry._ferry",
    sources=[os.path.join(REL, "ferry", s) for s in SOURCES],
    depends=[os.path.join(REL, "ferry", "pyferry.h")],
    extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                        "-fvisibility=hidden", "-O2"],
)

setup(
    name="ferry",
    version=header_version(),
    description="Move KV-cache blocks between processes with one-sided WRITE/READ "
                "(drop-in for mooncake.engine.TransferEngine)",
    license="Apache-2.0",
    packages=["ferry"],
    package_dir={"ferry": os.path.join(REL, "ferry")},
    package_data={"ferry": ["alias/mooncake/*.py"]},   # the opt-in mooncake.engine stand-in
    ext_modules=[extension],
    cmdclass={"build_ext": build_ext_with_libferry},
    python_requires=">=3.8",
    zip_safe=False,
    # from the root, keep setuptools' files out of CMake's build/
    options={"build": {"build_base": os.path.join(REL, "build")}},
)
