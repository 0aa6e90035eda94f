#!/usr/bin/env python3
"""Looks at the generated API reference as a reader would: headless Chromium renders
the start page and the Pool page; each screenshot must show a rendered page (not a
blank or error page), and the Pool page must list map and imap among its members.

  check_render.py --chromium /usr/bin/chromium --html build/docs/html --out dir
"""
import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

WIDTH, HEIGHT = 1280, 1400
# The pages to look at, and what each must say (regexes over the rendered DOM).
PAGES = {
    "start": ("index.html", [r"Python's\s+<code>multiprocessing</code>|Python's multiprocessing",
                             r"<h[12][^>]*>(<a [^>]*></a>)?\s*Quick start"]),
    "pool": ("classmproc_1_1basic__pool.html", [r">map</a>", r">imap</a>", r">imap_unordered</a>",
                                                 r">apply_async</a>"]),
}


def chromium(exe, args, timeout):
    profile = tempfile.mkdtemp(prefix="mproc-docs-chromium-")
    try:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
               "--virtual-time-budget=5000", f"--window-size={WIDTH},{HEIGHT}"] + args
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def read_png(path):
    """Width, height and rows of RGB(A) tuples of an 8-bit, non-interlaced PNG."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, color, _, _, interlace = header
    channels = {2: 3, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"{path}: unsupported PNG (depth {depth}, color type {color})")
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, channels, rows


def check_screenshot(path):
    """A rendered page: full size, mostly background, with plenty of text and colour."""
    width, height, channels, rows = read_png(path)
    problems = []
    if (width, height) != (WIDTH, HEIGHT):
        problems.append(f"size {width}x{height}, expected {WIDTH}x{HEIGHT}")
    counts = {}
    for row in rows[::2]:
        for x in range(0, width * channels, channels * 2):
            px = row[x:x + 3]
            counts[px] = counts.get(px, 0) + 1
    total = sum(counts.values())
    background, bg_count = max(counts.items(), key=lambda kv: kv[1])
    ink = 1 - bg_count / total
    dark = sum(n for px, n in counts.items() if sum(px) < 200) / total
    print(f"{os.path.basename(path)}: {width}x{height}, {len(counts)} colours, "
          f"background {tuple(background)}, {ink:.1%} non-background, {dark:.2%} dark (text)")
    if len(counts) < 64:
        problems.append(f"only {len(counts)} distinct colours: blank or flat page")
    if not 0.03 <= ink <= 0.9:
        problems.append(f"{ink:.1%} of the page differs from the background")
    if dark < 0.002:
        problems.append("almost no dark pixels: no text rendered")
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chromium", required=True)
    ap.add_argument("--html", required=True, help="the generated html directory")
    ap.add_argument("--out", required=True, help="where the screenshots go")
    ap.add_argument("--timeout", type=int, default=90)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    failures = []
    for name, (page, must_say) in PAGES.items():
        path = os.path.abspath(os.path.join(args.html, page))
        if not os.path.exists(path):
            failures.append(f"{name}: {path} was not generated")
            continue
        url = "file://" + path
        shot = os.path.join(args.out, f"{name}.png")
        if os.path.exists(shot):
            os.remove(shot)
        r = chromium(args.chromium, [f"--screenshot={shot}", url], args.timeout)
        if not os.path.exists(shot):
            failures.append(f"{name}: chromium wrote no screenshot (exit {r.returncode}):\n"
                            + r.stderr.decode(errors="replace")[-2000:])
            continue
        failures += [f"{name}: {p}" for p in check_screenshot(shot)]
        r = chromium(args.chromium, ["--dump-dom", url], args.timeout)
        dom = r.stdout.decode(errors="replace")
        with open(os.path.join(args.out, f"{name}.html"), "w") as f:
            f.write(dom)
        for pattern in must_say:
            if not re.search(pattern, dom):
                failures.append(f"{name}: the rendered page does not match {pattern!r}")
        print(f"{name}: {page} rendered; screenshot {shot}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("docs render check ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
