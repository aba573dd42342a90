"""Builds the `ferry` package: the C extension ferry._ferry on top of libferry.a.

The static library comes from the CMake build: $FERRY_BUILD_DIR/libferry.a
(relative paths are tried against the current directory, then the repository
root), else ../build/libferry.a.  python/build.sh builds it when missing.

    cd python && /usr/bin/python3 setup.py build_ext --inplace    # in place
    /usr/bin/python3 -m pip install --no-build-isolation ./python # offline install
"""
import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def find_library():
    env = os.environ.get("FERRY_BUILD_DIR")
    candidates = []
    if env:
        candidates += [os.path.abspath(env), os.path.join(ROOT, env)]
    candidates.append(os.path.join(ROOT, "build"))
    for d in candidates:
        lib = os.path.join(d, "libferry.a")
        if os.path.isfile(lib):
            return lib
    sys.exit("setup.py: libferry.a not found in %s\n"
             "build it first:  cmake -S %s -B build-py && cmake --build build-py --target ferry_static\n"
             "then set FERRY_BUILD_DIR=build-py  (or run python/build.sh)"
             % (", ".join(candidates), ROOT))


def pkg_config(flag, pkg):
    try:
        out = subprocess.run(["pkg-config", flag, pkg], check=True, capture_output=True, text=True).stdout
        return shlex.split(out)
    except (OSError, subprocess.CalledProcessError):
        return []


def link_dependencies(lib):
    """What libferry.a needs at link time, as CMake linked the shared library
    next to it (CMakeFiles/ferry.dir/link.txt): cJSON, and libcurl / hiredis
    when that build found them.  Falls back to pkg-config."""
    link_txt = os.path.join(os.path.dirname(lib), "CMakeFiles", "ferry.dir", "link.txt")
    deps = []
    if os.path.isfile(link_txt):
        with open(link_txt) as f:
            for tok in shlex.split(f.read()):
                if tok.startswith("-l") or tok == "-pthread" or \
                        (tok.startswith("/") and (".so" in os.path.basename(tok) or tok.endswith(".a"))):
                    deps.append(tok)
    else:
        for pkg in ("libcjson", "libcrypto", "libcurl", "hiredis"):
            deps += pkg_config("--libs", pkg)
        deps = deps or ["-lcjson"]
    deps += ["-lpthread", "-ldl", "-lm"]
    seen = set()
    return [d for d in deps if not (d in seen or seen.add(d))]


def include_dir(lib):
    """ferry.h of the source tree the library was built from (CMakeCache.txt),
    so that the extension and libferry.a agree on struct layouts."""
    cache = os.path.join(os.path.dirname(lib), "CMakeCache.txt")
    if os.path.isfile(cache):
        with open(cache) as f:
            for line in f:
                if line.startswith("CMAKE_HOME_DIRECTORY:"):
                    d = os.path.join(line.split("=", 1)[1].strip(), "include")
                    if os.path.isfile(os.path.join(d, "ferry.h")):
                        return d
    return os.path.join(ROOT, "include")


LIBFERRY = find_library()
INCLUDE = include_dir(LIBFERRY)
SOURCES = ["_ferry.c", "engine.c", "memory.c", "transfer.c", "convert.c", "slab.c"]

extension = Extension(
    "ferry._ferry",
    sources=[os.path.join("ferry", s) for s in SOURCES],
    depends=[os.path.join("ferry", "pyferry.h"), os.path.join(INCLUDE, "ferry.h"), LIBFERRY],
    include_dirs=[INCLUDE],
    extra_objects=[LIBFERRY],
    extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                        "-fvisibility=hidden", "-O2"],
    # ferry's own symbols stay inside the extension: two extensions that each
    # link libferry.a cannot clash.
    extra_link_args=["-Wl,--exclude-libs,ALL"] + link_dependencies(LIBFERRY),
)

os.chdir(HERE)  # sources are relative to python/, wherever pip or setup.py runs from
setup(
    name="ferry",
    version="0.1.0",
    description="Move KV-cache blocks between processes with one-sided WRITE/READ "
                "(drop-in for mooncake.engine.TransferEngine)",
    packages=["ferry"],
    ext_modules=[extension],
    python_requires=">=3.8",
    zip_safe=False,
)
