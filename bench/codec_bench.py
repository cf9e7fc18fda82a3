#!/usr/bin/env python3
"""Microbenchmark of the blob codec (encode = compress + pad + encrypt, decode = the reverse
plus the ID check) on the blob shapes a backup makes: 1 MiB chunks of random and of
compressible data, and 4 KiB bundles.

    python bench/codec_bench.py                      # the code in src/
    python bench/codec_bench.py --src /tmp/old/src   # another checkout's code, for before/after

Prints MiB/s (of plaintext) for encode and decode, the best of --repeat runs, and the stored
size. Run it on an idle machine and compare runs made back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def compressible(n: int, seed: int) -> bytes:
    """Source-like text: random words from a small vocabulary (zstd -1 gets about 3x)."""
    rng = random.Random(seed)
    words = [f"{w}_{i}" for i, w in enumerate(["int", "struct", "return", "kernel", "if"] * 60)]
    out = bytearray()
    while len(out) < n:
        out += (" ".join(rng.choice(words) for _ in range(12)) + ";\n").encode()
    return bytes(out[:n])


def best_of(repeat: int, fn: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(src: Path | None, repeat: int, total: int) -> dict[str, Any]:
    if src is not None:
        sys.path.insert(0, str(src))
    from strongroom.blobs import BlobCodec
    from strongroom.keys import RepoKeys

    keys = RepoKeys.generate()
    codec = BlobCodec(keys.aead(), keys.hasher())
    rng = random.Random(1)
    cases = {
        "1 MiB random": [rng.randbytes(MIB) for _ in range(4)],
        "1 MiB compressible": [compressible(MIB, s) for s in range(4)],
        "4 KiB random": [rng.randbytes(4096) for _ in range(256)],
        "4 KiB compressible": [compressible(4096, s) for s in range(256)],
    }
    results: dict[str, Any] = {}
    for name, blobs in cases.items():
        ids = [codec.hash(b) for b in blobs]
        rounds = max(1, total // sum(len(b) for b in blobs))
        stored = [codec.encode(i, b) for i, b in zip(ids, blobs, strict=True)]
        for i, s, b in zip(ids, stored, blobs, strict=True):
            assert codec.decode(i, s) == b

        def enc(ids: list[bytes] = ids, blobs: list[bytes] = blobs, rounds: int = rounds) -> None:
            for _ in range(rounds):
                for i, b in zip(ids, blobs, strict=True):
                    codec.encode(i, b)

        def dec(ids: list[bytes] = ids, stored: list[bytes] = stored, rounds: int = rounds) -> None:
            for _ in range(rounds):
                for i, s in zip(ids, stored, strict=True):
                    codec.decode(i, s)

        plain = rounds * sum(len(b) for b in blobs)
        results[name] = {
            "encode_mib_s": plain / MIB / best_of(repeat, enc),
            "decode_mib_s": plain / MIB / best_of(repeat, dec),
            "stored_ratio": sum(map(len, stored)) / sum(map(len, blobs)),
        }
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, help="import strongroom from this folder")
    ap.add_argument("--repeat", type=int, default=7, help="runs per case; the best one counts")
    ap.add_argument("--mib", type=int, default=32, help="plaintext MiB per run and case")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    results = run(args.src, args.repeat, args.mib * MIB)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{'case':<20} {'encode MiB/s':>13} {'decode MiB/s':>13} {'stored/plain':>13}")
    for name, r in results.items():
        print(
            f"{name:<20} {r['encode_mib_s']:>13.0f} {r['decode_mib_s']:>13.0f}"
            f" {r['stored_ratio']:>13.4f}"
        )
    print(f"(best of {args.repeat}, {args.mib} MiB per run, pid {os.getpid()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
