#!/usr/bin/env python3
"""Offline bundle figures: build time (whole and per part), size and file count, and verify time.

    PY=/opt/hipchat/venv/bin/python
    $PY bench/bundle.py                 # build this checkout's version into a scratch directory, then remove it
    $PY bench/bundle.py --keep          # keep the bundle (prints its path)

Builds with the real `appliance.bundle.build` (pip, apt, Maven and npm reach the registries)
and a throwaway signing key, then verifies the result once. Prints JSON. The build time
depends on the registries' caches: pip, Maven and npm keep theirs between runs (the first run
on a fresh machine is slower), apt downloads every package each time. The load average is
printed: run it on a quiet machine, or say how busy it was.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_DIR)

from appliance.bundle.build import build_bundle, tree_version  # noqa: E402
from appliance.bundle.manifest import generate_key_pair, verify_bundle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the bundle and print its path")
    parser.add_argument("--opensearch-tarball", help="carry this official tarball instead of the Maven jars")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-bundle-", dir="/var/tmp")
    try:
        key, pub = generate_key_pair(os.path.join(work, "keys"), key_id="bench")
        report = build_bundle(source_dir=REPO_DIR, version=tree_version(REPO_DIR), signing_key=key,
                              out_dir=os.path.join(work, "out"), opensearch_tarball=args.opensearch_tarball,
                              progress=lambda m: print(f"==> {m}", file=sys.stderr))
        started = time.monotonic()
        verify_bundle(report.path, [os.path.dirname(pub)])
        figures = {
            **report.to_dict(),
            "mib": round(report.bytes / 2**20, 1),
            "verify_seconds": round(time.monotonic() - started, 1),
            "load_average": os.getloadavg(),
            "cpus": os.cpu_count(),
        }
        if not args.keep:
            figures["path"] = None
        print(json.dumps(figures, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
