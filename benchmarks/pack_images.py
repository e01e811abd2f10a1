"""Pack an image folder into one file, and unpack it elsewhere (e.g. on a GPU machine).

A tar of CIFAR-10's 60,000 JPEGs (55 MB of bytes) would be ~90 MB: every member pays a 512-byte
header and pads to 512 bytes. This pack stores the bytes back to back plus an index, so it is
the JPEG bytes and about 1 MB more, small enough to travel with the code under a 64 MiB limit.

Format: an uncompressed .npz (numpy, loaded with allow_pickle=False: no code is unpickled) with
`blob` (uint8, all files concatenated), `offsets` (int64, n + 1) and `paths` (uint8, the
relative paths joined by newlines, UTF-8).

    python benchmarks/pack_images.py pack ../shared/data/cifar10-jpeg cifar10-jpeg.npz
    python benchmarks/pack_images.py unpack cifar10-jpeg.npz /tmp/cifar10-jpeg
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def pack(src: Path, dest: Path) -> int:
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise SystemExit(f"error: {src} holds no files")
    data = [p.read_bytes() for p in files]
    offsets = np.cumsum([0] + [len(d) for d in data]).astype(np.int64)
    paths = "\n".join(p.relative_to(src).as_posix() for p in files).encode()
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, blob=np.frombuffer(b"".join(data), dtype=np.uint8), offsets=offsets,
                 paths=np.frombuffer(paths, dtype=np.uint8))
    tmp.replace(dest)
    return len(files)


def unpack(src: Path, dest: Path) -> int:
    with np.load(src, allow_pickle=False) as z:
        blob, offsets, paths = z["blob"], z["offsets"], bytes(z["paths"]).decode().split("\n")
    if len(offsets) != len(paths) + 1 or offsets[-1] != len(blob):
        raise SystemExit(f"error: {src} is damaged (index does not match the data)")
    root = dest.resolve()
    for i, rel in enumerate(paths):
        out = (root / rel).resolve()
        if root not in out.parents:  # never write outside dest, whatever the pack says
            raise SystemExit(f"error: {src} names a path outside the target: {rel}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(blob[offsets[i]:offsets[i + 1]].tobytes())
    return len(paths)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["pack", "unpack"])
    ap.add_argument("src", type=Path)
    ap.add_argument("dest", type=Path)
    args = ap.parse_args(argv)
    if not args.src.exists():
        raise SystemExit(f"error: {args.src} does not exist")
    n = (pack if args.action == "pack" else unpack)(args.src, args.dest)
    print(f"{args.action}ed {n} files: {args.src} -> {args.dest}", file=sys.stderr)


if __name__ == "__main__":
    main()
