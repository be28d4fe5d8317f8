"""Content fingerprints of curate's outputs, to prove a faster implementation changes nothing.

`python tests/curate_fingerprint.py > tests/data/curate_reference.json` recomputes the reference
(it was computed from the implementation before the speed-up, commit 34c132e). Rows are read with
pyarrow and hashed as sorted canonical JSON records, so the fingerprint does not depend on row
order, the pandas version or parquet metadata; stats.json is compared whole, minus the absolute
paths of the machine that ran it.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path

# (name, curate keyword arguments): every preset as shipped, image checks on and off, and the knobs
CASES = [(f"{p}", {"preset": p}) for p in ("balanced", "seed000", "seed001", "seed002", "seed003")] + [
    (f"{p}-nocheck-100", {"preset": p, "image_check": False, "target_size": 100})
    for p in ("balanced", "seed000", "seed001", "seed002", "seed003")] + [
    ("seed000-cap5-seed7", {"preset": "seed000", "max_per_type": 5, "seed": 7, "image_check": False}),
    ("seed001-cap3", {"preset": "seed001", "max_per_type": 3, "image_check": False}),
    ("balanced-en_GB", {"preset": "balanced", "prefer": ("en_GB", "en_*"), "image_check": False}),
    ("seed003-de", {"preset": "seed003", "prefer": ("de_*",), "target_size": 40, "image_check": False}),
]


def _plain(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def table_digest(path: Path) -> dict:
    "Columns, row count and a hash of the rows as sorted canonical JSON records."
    import pyarrow.parquet as pq
    t = pq.read_table(path)
    rows = sorted(json.dumps({k: _plain(v) for k, v in r.items()}, sort_keys=True, ensure_ascii=False, default=str)
                  for r in t.to_pylist())
    return {"columns": t.column_names, "rows": len(rows),
            "sha256": hashlib.sha256("\n".join(rows).encode()).hexdigest()}


def stats_view(stats: dict) -> dict:
    "stats.json without what depends on the machine (absolute paths) or the clock."
    s = {k: v for k, v in stats.items() if k not in ("abo_root", "images_root", "timings")}
    errors = dict(s.get("read_errors", {}))
    errors["truncated_files"] = [Path(p).name for p in errors.get("truncated_files", [])]
    s["read_errors"] = errors
    return json.loads(json.dumps(s, default=str))


def fingerprint(work: Path) -> dict:
    cur = Path(work) / "curated"
    return {"listings": table_digest(cur / "listings.parquet"), "dropped": table_digest(cur / "dropped.parquet"),
            "stats": stats_view(json.loads((cur / "stats.json").read_text()))}


def damaged_copy(sample: Path, out: Path) -> Path:
    "The sample with a download cut short, a file of garbage lines and an uncompressed file: read errors to record."
    import gzip
    import shutil
    shutil.copytree(sample, out)
    meta = out / "listings" / "metadata"
    cut = meta / "listings_2.json.gz"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    plain = meta / "listings_5.json.gz"
    (meta / "listings_5.json").write_bytes(gzip.decompress(plain.read_bytes()) + b'{"item_id": "cut\n[1]\n\n"str"\n')
    plain.unlink()
    return out


DAMAGED = [("damaged-balanced", {"preset": "balanced", "image_check": False}),
           ("damaged-seed002", {"preset": "seed002"})]


def run_case(root, work, kwargs) -> dict:
    from abovqa.curate import curate
    curate(root, work, **kwargs)
    return fingerprint(work)


def main():
    from abovqa.sample import sample_root
    root = sample_root()
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for name, kwargs in CASES:
            out[name] = run_case(root, Path(d) / name, kwargs)
        damaged = damaged_copy(root, Path(d) / "damaged")
        for name, kwargs in DAMAGED:
            out[name] = run_case(damaged, Path(d) / name, kwargs)
    json.dump(out, sys.stdout, indent=1, sort_keys=True, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
