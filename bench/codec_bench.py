#!/usr/bin/env python3
"""Microbenchmark of the blob codec (encode = compress + pad + encrypt, decode = the reverse
plus the ID check) on the blob shapes a backup makes: 1 MiB chunks of random and of
compressible data, and 4 KiB blobs (small bundles, trees).

    python bench/codec_bench.py                        # the code in src/
    python bench/codec_bench.py --compare /tmp/old/src # and another checkout's, interleaved

With --compare both versions run in one process, alternately, round after round, so that a
machine whose load changes during the run slows both alike. Prints MiB/s of plaintext for
encode and decode (the best of --repeat rounds), minor page faults per MiB (encode + decode: a
high figure means the allocator keeps returning and re-faulting memory) and stored bytes per
plaintext byte.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

MIB = 1024 * 1024
PACK = 8 * MIB  # what the pack writer holds before writing (store/packstore.py)
HERE = Path(__file__).resolve().parent.parent / "src"


def compressible(n: int, seed: int) -> bytes:
    """Source-like text: random words from a small vocabulary (zstd -1 gets about 4x)."""
    rng = random.Random(seed)
    words = [f"{w}_{i}" for i, w in enumerate(["int", "struct", "return", "kernel", "if"] * 60)]
    out = bytearray()
    while len(out) < n:
        out += (" ".join(rng.choice(words) for _ in range(12)) + ";\n").encode()
    return bytes(out[:n])


def load(src: Path, name: str) -> ModuleType:
    """Import the strongroom package found in src under another top-level name."""
    pkg = src / "strongroom"
    spec = importlib.util.spec_from_file_location(
        name, pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def codec_of(package: str, data_key: bytes, id_key: bytes) -> Any:
    blobs = importlib.import_module(f"{package}.blobs")
    keys = importlib.import_module(f"{package}.keys")
    k = keys.RepoKeys(data_key, id_key, 1)
    return blobs.BlobCodec(k.aead(), k.hasher())


def timed(fn: Callable[[], None]) -> tuple[float, int]:
    """Wall time and minor page faults of one call."""
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    return elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0


def run(sources: dict[str, Path], repeat: int, total: int) -> dict[str, dict[str, Any]]:
    data_key, id_key = os.urandom(32), os.urandom(32)
    codecs = {}
    for i, (label, src) in enumerate(sources.items()):
        codecs[label] = codec_of(load(src, f"strongroom_bench{i}").__name__, data_key, id_key)
    rng = random.Random(1)
    cases = {
        "1 MiB random": [rng.randbytes(MIB) for _ in range(4)],
        "1 MiB compressible": [compressible(MIB, s) for s in range(4)],
        "4 KiB random": [rng.randbytes(4096) for _ in range(256)],
        "4 KiB compressible": [compressible(4096, s) for s in range(256)],
    }
    results: dict[str, dict[str, Any]] = {label: {} for label in sources}
    for name, blobs in cases.items():
        plain = sum(map(len, blobs))
        rounds = max(1, total // plain)
        ids = [next(iter(codecs.values())).hash(b) for b in blobs]
        jobs: list[tuple[str, str, Callable[[], None]]] = []
        for label, codec in codecs.items():
            stored = [codec.encode(i, b) for i, b in zip(ids, blobs, strict=True)]
            assert all(codec.decode(i, s) == b for i, s, b in zip(ids, stored, blobs, strict=True))
            results[label][name] = {"stored_ratio": sum(map(len, stored)) / plain}
            jobs.append((label, "encode", partial(encode_all, codec, ids, blobs, rounds)))
            jobs.append((label, "decode", partial(decode_all, codec, ids, stored, rounds)))
        best: dict[tuple[str, str], float] = {}
        faults: dict[tuple[str, str], int] = {}
        for _ in range(repeat):  # interleaved: every version sees the same machine
            for label, op, fn in jobs:
                elapsed, flt = timed(fn)
                best[label, op] = min(best.get((label, op), float("inf")), elapsed)
                faults[label, op] = faults.get((label, op), 0) + flt
        for label, op, _fn in jobs:
            mib = rounds * plain / MIB
            results[label][name][f"{op}_mib_s"] = mib / best[label, op]
            results[label][name][f"{op}_faults_per_mib"] = faults[label, op] / (repeat * mib)
    return results


def encode_all(codec: Any, ids: list[bytes], blobs: list[bytes], rounds: int) -> None:
    # Results are kept until 8 MiB are held, as the pack writer keeps them: freeing each one
    # at once would give glibc's heap trimming an allocation pattern that no backup has.
    pack: list[bytes] = []
    held = 0
    for _ in range(rounds):
        for i, b in zip(ids, blobs, strict=True):
            pack.append(codec.encode(i, b))
            held += len(pack[-1])
            if held >= PACK:
                pack.clear()
                held = 0


def decode_all(codec: Any, ids: list[bytes], stored: list[bytes], rounds: int) -> None:
    for _ in range(rounds):
        for i, s in zip(ids, stored, strict=True):
            codec.decode(i, s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", type=Path, help="another checkout's src/ to measure alongside")
    ap.add_argument("--repeat", type=int, default=15, help="rounds per case; the best one counts")
    ap.add_argument("--mib", type=int, default=16, help="plaintext MiB per round and case")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    sources = {"this": HERE}
    if args.compare:
        sources["other"] = args.compare.resolve()
    results = run(sources, args.repeat, args.mib * MIB)
    if args.json:
        print(json.dumps(results))
        return 0
    cols = ("case", "version", "encode MiB/s", "decode MiB/s", "faults/MiB", "stored/plain")
    print(f"{cols[0]:<20} {cols[1]:<7} {cols[2]:>13} {cols[3]:>13} {cols[4]:>11} {cols[5]:>13}")
    for name in results["this"]:
        for label, per_case in results.items():
            r = per_case[name]
            print(
                f"{name:<20} {label:<7} {r['encode_mib_s']:>13.0f} {r['decode_mib_s']:>13.0f}"
                f" {r['encode_faults_per_mib'] + r['decode_faults_per_mib']:>11.0f}"
                f" {r['stored_ratio']:>13.4f}"
            )
    print(f"(best of {args.repeat} interleaved rounds of {args.mib} MiB; 'this' = {HERE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
