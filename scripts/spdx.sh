#!/usr/bin/env bash
# spdx.sh [--check] — puts "SPDX-License-Identifier: Apache-2.0" at the top of
# every source file: C and CUDA (.c .h .cu), CMake (CMakeLists.txt, .cmake,
# .cmake.in), shell (.sh, or a #!…sh first line) and Python (.py, or a
# #!…python first line).  Files are those git knows (tracked, or untracked and
# not ignored); a file that has the line in its first 5 lines is left alone, so
# running it again changes nothing.  The line goes first, after a #! line (and a
# Python coding line) where there is one.
# --check: changes nothing; lists the source files without the line, exit 1 if any.
set -euo pipefail
cd "$(dirname "$0")/.."
ID="SPDX-License-Identifier: Apache-2.0"
check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: scripts/spdx.sh [--check]" >&2; exit 2 ;;
esac

# kind FILE -> c | hash | "" (not a source file)
kind() {
  case "${1##*/}" in
    *.c|*.h|*.cu) echo c; return ;;
    CMakeLists.txt|*.cmake|*.cmake.in|*.sh|*.py) echo hash; return ;;
    *.*) return ;;
  esac
  head -c 2 "$1" 2>/dev/null | grep -q '^#!' && head -n 1 "$1" | grep -Eq '(sh|bash|python[0-9.]*)( |$)' && echo hash
  return 0
}

files() {
  if git rev-parse --git-dir >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard
  else
    find . -type f -not -path './.git/*' -not -path './build*' -printf '%P\0'
  fi
}

missing=0
while IFS= read -r -d '' f; do
  [ -f "$f" ] || continue   # deleted but still in the index
  k=$(kind "$f")
  [ -n "$k" ] || continue
  head -n 5 "$f" | grep -q "SPDX-License-Identifier:" && continue
  if [ $check = 1 ]; then
    echo "no SPDX-License-Identifier line: $f"
    missing=$((missing + 1))
    continue
  fi
  if [ "$k" = c ]; then
    line="/* $ID */"
  else
    line="# $ID"
  fi
  # after a #! line, and after a Python "coding" line that must stay in the first two
  skip=0
  head -n 1 "$f" | grep -q '^#!' && skip=1
  [ $skip = 1 ] && sed -n 2p "$f" | grep -Eq '^#.*coding[:=]' && skip=2
  tmp=$(mktemp "$f.spdx.XXXXXX")
  { head -n "$skip" "$f"; echo "$line"; tail -n +"$((skip + 1))" "$f"; } > "$tmp"
  chmod --reference="$f" "$tmp"
  mv "$tmp" "$f"
  echo "spdx: $f"
done < <(files)

if [ $check = 1 ] && [ $missing -gt 0 ]; then
  echo "spdx: $missing source file(s) lack the line; run scripts/spdx.sh"
  exit 1
fi
exit 0
