#!/usr/bin/env python3
"""Doxygen INPUT_FILTER for the public headers: hides the library's internals.

Every top-level `namespace detail` block becomes a \\cond block, so its names are
neither listed nor reported as undocumented, unless it defines a base class whose
members a public class inherits (Lock's release(), Value's value(), ...): those
blocks stay visible, so the inherited members appear on the public class's page.
Protected sections are hidden too: they are what the library's own derived classes
use, not what a program calls. Line numbers are kept, so warnings and source links
point at the real lines.
"""
import re
import sys

# Bases of public classes: their members are part of the public classes' API.
PUBLIC_BASES = ("basic_value", "basic_array", "basic_lock", "lockable_api", "basic_semaphore")

OPEN = re.compile(r"^namespace (mproc::)?detail(::\w+)? \{\s*$")
CLOSE = re.compile(r"^\}\s*// namespace (mproc::)?detail(::\w+)?\s*$")
PROTECTED = re.compile(r"^(\s*)protected:\s*$")
DEFINES_BASE = re.compile(r"^\s*(class|struct)\s+(%s)\b[^;]*$" % "|".join(PUBLIC_BASES))


def main() -> None:
    lines = open(sys.argv[1], encoding="utf-8").read().split("\n")
    out = list(lines)
    i = 0
    while i < len(lines):
        if OPEN.match(lines[i]):
            j = i + 1
            while j < len(lines) and not CLOSE.match(lines[j]):
                j += 1
            if j == len(lines):
                break  # unbalanced: leave the rest as it is
            block = lines[i + 1:j]
            if not any(DEFINES_BASE.match(l) for l in block):
                # On the braces' own lines, so line numbers stay as they are.
                out[i] = "/** \\cond MPROC_INTERNAL */ " + lines[i]
                out[j] = "} /** \\endcond */" + lines[j][1:]
            i = j + 1
        else:
            i += 1
    hide_protected(out)
    sys.stdout.write("\n".join(out))


def hide_protected(lines: list) -> None:
    """From each `protected:` to the next access specifier or end of its class."""
    i = 0
    while i < len(lines):
        m = PROTECTED.match(lines[i])
        if not m:
            i += 1
            continue
        indent = m.group(1)
        end = re.compile(r"^%s(public:|private:|protected:)|^%s\}" % (indent, indent[:-1] if indent else ""))
        j = i + 1
        while j < len(lines) and not end.match(lines[j]):
            j += 1
        if j == len(lines):
            return
        lines[i] = "/** \\cond MPROC_INTERNAL */" + lines[i]
        lines[j] = "/** \\endcond */" + lines[j]
        i = j


if __name__ == "__main__":
    main()
