#!/usr/bin/env python3
"""Fails when a locked crates.io package version is yanked.

cargo-deny's yanked check needs the RustSec advisory database, which this network
cannot fetch; the crates.io sparse index can be reached, so every registry package of
Cargo.lock is looked up there (one request per package, eight at a time). Exit 0: none
yanked; 1: some yanked (listed); 2: the index could not be read (the error is printed).
"""

import concurrent.futures
import json
import sys
import tomllib
import urllib.request

INDEX = "https://index.crates.io"


def index_path(name: str) -> str:
    n = name.lower()
    if len(n) <= 2:
        return f"{len(n)}/{n}"
    if len(n) == 3:
        return f"3/{n[0]}/{n}"
    return f"{n[:2]}/{n[2:4]}/{n}"


def yanked(package: tuple[str, str]) -> tuple[str, str, bool]:
    name, version = package
    with urllib.request.urlopen(f"{INDEX}/{index_path(name)}", timeout=30) as reply:
        for line in reply.read().decode().splitlines():
            entry = json.loads(line)
            if entry.get("vers") == version:
                return name, version, bool(entry.get("yanked"))
    raise LookupError(f"{name} {version} is not in the index")


def main() -> int:
    with open(sys.argv[1] if len(sys.argv) > 1 else "Cargo.lock", "rb") as f:
        lock = tomllib.load(f)
    packages = sorted(
        {
            (p["name"], p["version"])
            for p in lock.get("package", [])
            if p.get("source", "").startswith("registry+https://github.com/rust-lang/crates.io-index")
        }
    )
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(yanked, packages))
    except Exception as e:  # noqa: BLE001 - any failure to read the index is reported
        print(f"yanked check: the crates.io index could not be read: {e}")
        return 2
    bad = [(n, v) for n, v, y in results if y]
    for name, version in bad:
        print(f"YANKED: {name} {version}")
    print(f"yanked check: {len(results)} locked crates.io packages, {len(bad)} yanked")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
