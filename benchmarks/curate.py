"""Curation at ABO scale: 147,702 listings in 16 gzip JSON-lines files and 398,212 images.csv rows.

Prints, for each measured pass, the wall time and the peak resident memory (VmHWM) of a fresh
process (imports included):

- `metadata pass`: abovqa.abo.load_listings + read_images_csv (orjson, one zlib stream per file);
- `naive seed-000 parser`: the straightforward json.loads + pandas version of seed 000's parser.py
  (English name/type/colour/keywords, problem ids, non-ASCII, nulls, at most 5,000 per type);
- `curate balanced` / `curate seed000`: the whole stage, image checks off (the tree has no images);
- `image checks`: check_images on 2,000 real 256-px JPEGs, in images per second.

Targets on 2 cores: metadata pass <= 10 s and <= 2 GB, and no slower than the naive parser.
The synthetic tree is built once under cache_dir()/bench/abo-full (about a minute) and reused.

    python benchmarks/curate.py [--listings N]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

N_LISTINGS = 147_702
N_IMAGES = 398_212
DOMAINS = [("amazon.com", "en_US", 0.30), ("amazon.in", "en_IN", 0.30), ("amazon.co.uk", "en_GB", 0.08), ("amazon.ae", "en_AE", 0.07),
           ("amazon.com.au", "en_AU", 0.04), ("amazon.ca", "en_CA", 0.04), ("amazon.sg", "en_SG", 0.02), ("amazon.de", "de_DE", 0.06),
           ("amazon.fr", "fr_FR", 0.03), ("amazon.it", "it_IT", 0.02), ("amazon.es", "es_ES", 0.02), ("amazon.co.jp", "ja_JP", 0.02)]
WORDS = ("black white grey red blue green round square wood metal plastic cotton leather modern classic soft durable portable "
         "kitchen home office outdoor chair table lamp shoe case phone sofa rug pillow bottle vase basket bed desk shelf").split()
COLORS = ["Black", "White", "Grey", "Red", "Blue", "Green", "Brown", "Beige", "Pink", "Multicolor", "Silver", "Gold"]
GENERIC = ["518Dk4F0zZL", "719hoe+0vIL", "71Qbh8wmhnL"]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _tagged(tag, *values):
    return [{"language_tag": tag, "value": v} for v in values]


def _records(args):
    "The listings of one file (a fixed slice of the catalog), deterministic for its index."
    index, n_files, n_listings, n_images = args
    rng = random.Random(index)
    ids = range(index, n_listings, n_files)
    types = [f"TYPE_{i:03d}" for i in range(576)]
    weights = [1 / (i + 1) ** 1.1 for i in range(576)]
    type_of = rng.choices(types, weights, k=len(ids))
    doms = rng.choices(DOMAINS, [d[2] for d in DOMAINS], k=len(ids))
    per_listing = n_images / n_listings
    out = []
    for j, (i, ptype, (domain, tag, _)) in enumerate(zip(ids, type_of, doms)):
        # ~40% of listings repeat an item of another marketplace: same item id, same images
        base = i - (i % 3) if i % 5 < 2 else i
        first_image = int(base * per_listing)
        images = [f"{(first_image + k) % n_images:011d}" for k in range(1 + rng.randint(0, 3))]
        lang = tag if rng.random() < 0.9 else "en_US"
        rec = {
            "item_id": f"B{base:09d}", "domain_name": domain, "marketplace": "Amazon", "country": domain.split(".")[-1].upper(),
            "item_name": _tagged(lang, _text(rng, 8)) + (_tagged("en_US", _text(rng, 8)) if rng.random() < 0.1 else []),
            "brand": _tagged(lang, rng.choice(["AmazonBasics", "Amazon Brand - Solimo", "Rivet", "Stone & Beam", "Pinzon"])),
            "product_type": [{"value": ptype}],
            "item_keywords": _tagged(lang, *(_text(rng, 2) for _ in range(rng.randint(0, 25)))),
            "bullet_point": _tagged(lang, *(_text(rng, 14) for _ in range(rng.randint(0, 5)))),
            "model_number": [{"value": f"M{rng.randint(0, 10**6)}"}],
            "node": [{"node_id": rng.randint(0, 10**7), "node_name": f"/Categories/{ptype.title()}"}],
            "item_weight": [{"normalized_value": {"unit": "pounds", "value": 1.5}, "unit": "pounds", "value": 1.5}],
            "main_image_id": images[0], "other_image_id": images[1:],
        }
        if rng.random() < 0.8:
            c = rng.choice(COLORS)
            rec["color"] = [{"language_tag": lang, "value": c, "standardized_values": [c]}]
        for key in ("material", "item_shape", "pattern", "style", "fabric_type", "finish_type"):
            if rng.random() < 0.35:
                rec[key] = _tagged(lang, _text(rng, 1).title())
        if rng.random() < 0.3:
            rec["product_description"] = _tagged(lang, _text(rng, 40))
        if rng.random() < 0.004:  # ~575 listings without a main image
            del rec["main_image_id"]
        for k, g in enumerate(GENERIC):  # three generic images on ~33k listings each
            if (i * 7 + k) % 9 < 2:
                rec["other_image_id"] = rec["other_image_id"] + [g]
        out.append(rec)
    return index, out


def build_tree(root: Path, n_listings: int, n_images: int) -> Path:
    "The ABO-scale listings-only tree (built once; a marker file says it is complete)."
    from abovqa.abo import write_images_csv, write_listings
    done = root / ".complete"
    if done.exists():
        return root
    t0 = time.time()
    with Pool(min(2, os.cpu_count() or 1)) as pool:
        for index, records in pool.imap_unordered(_records, [(i, 16, n_listings, n_images) for i in range(16)]):
            write_listings(records, root / "listings" / "metadata" / f"listings_{index:x}.json.gz", compresslevel=1)
    import pandas as pd
    ids = [f"{k:011d}" for k in range(n_images)] + GENERIC
    write_images_csv(pd.DataFrame({"image_id": ids, "height": 1000, "width": 1000, "path": [f"{i[-2:]}/{i}.jpg" for i in ids]}),
                     root / "images" / "metadata" / "images.csv.gz")
    done.write_text("ok")
    print(f"built {root} in {time.time() - t0:.0f} s", flush=True)
    return root


# ---- the measured passes (each runs in a fresh process) -------------------------------------------------

def naive_seed000(root: Path) -> int:
    "Seed 000's parser.py, straightforwardly: json.loads per line, dicts, then pandas."
    import gzip
    import pandas as pd
    images = pd.read_csv(next(root.rglob("images.csv*")), dtype={"image_id": str, "path": str})
    path_of = dict(zip(images.image_id, images.path))

    def english(values):
        for v in values or []:
            tag = v.get("language_tag", "")
            if tag == "en" or tag.startswith("en_"):
                return v.get("value")
        return None

    def keywords(values):
        seen = []
        for v in values or []:
            tag = v.get("language_tag", "")
            if (tag == "en" or tag.startswith("en_")) and v.get("value") not in seen:
                seen.append(v.get("value"))
        return ", ".join(seen) if seen else None

    rows = {}
    for path in sorted(root.rglob("listings_*.json.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    continue
                image_id = item.get("main_image_id")
                if image_id in path_of:
                    rows[image_id] = {"path": path_of[image_id], "name": english(item.get("item_name")),
                                      "product_type": (item.get("product_type") or [{}])[0].get("value"),
                                      "color": english(item.get("color")), "keywords": keywords(item.get("item_keywords"))}
    df = pd.DataFrame.from_dict(rows, orient="index")
    df = df[~df.index.isin(GENERIC)].dropna()
    df = df[df.apply(lambda r: all(str(v).isascii() for v in r), axis=1)]
    df = df.groupby("product_type", group_keys=False).apply(lambda g: g.sample(min(len(g), 5000), random_state=42))
    return len(df.sort_values("path"))


def metadata_pass(root: Path) -> int:
    from abovqa.abo import find_abo_files, load_listings, read_images_csv
    files = find_abo_files(root)
    listings = load_listings(files)
    images = read_images_csv(files.images_csv)
    return len(listings) + 0 * len(images)


def curate_preset(root: Path, preset: str) -> int:
    from abovqa.curate import curate
    with tempfile.TemporaryDirectory() as work:
        return curate(root, work, preset=preset, image_check=False)["kept"]


def image_checks(n: int = 2000) -> int:
    from PIL import Image
    from abovqa.curate import check_images
    with tempfile.TemporaryDirectory() as d:
        paths = []
        noise = Image.effect_noise((256, 256), 40).convert("RGB")
        for i in range(n):
            p = Path(d) / f"{i:05d}.jpg"
            noise.rotate(i % 360).save(p, quality=90)
            paths.append(p)
        t0 = time.time()
        ok = sum(r is None for r, _ in check_images(paths))
        print(json.dumps({"check_seconds": time.time() - t0}), flush=True)
        return ok


PASSES = {
    "metadata pass": lambda root: metadata_pass(root),
    "naive seed-000 parser": lambda root: naive_seed000(root),
    "curate balanced": lambda root: curate_preset(root, "balanced"),
    "curate seed000": lambda root: curate_preset(root, "seed000"),
    "image checks (2,000 JPEGs)": lambda root: image_checks(),
}


def measure(name: str, root: Path) -> dict:
    "Run one pass in a fresh interpreter; its wall time and peak RSS (from wait4, so imports count too)."
    run = subprocess.run([sys.executable, __file__, "--one", name, "--root", str(root)], stdout=subprocess.PIPE, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{name} failed ({run.returncode}):\n{run.stdout}")
    result = {}
    for line in run.stdout.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listings", type=int, default=N_LISTINGS)
    ap.add_argument("--images", type=int, default=N_IMAGES)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        t0 = time.time()
        n = PASSES[a.one](Path(a.root))
        seconds = time.time() - t0
        # VmHWM is this process's own peak (ru_maxrss would include what the parent had at fork)
        hwm = next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
        import resource
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "rows": n, "peak_rss_gb": hwm / 2**20}), flush=True)
        return 0
    from abovqa.core import cache_dir
    root = build_tree(cache_dir() / "bench" / f"abo-{a.listings}-{a.images}", a.listings, a.images)
    print(f"tree: {root} ({a.listings:,} listings, {a.images:,} images rows); {os.cpu_count()} cores", flush=True)
    results = {}
    for name in PASSES:
        results[name] = r = measure(name, root)
        extra = f"  ({2000 / r['check_seconds']:,.0f} images/s)" if "check_seconds" in r else ""
        print(f"{name:<28} wall {r['seconds']:6.2f} s  cpu {r['cpu_seconds']:6.2f} s  peak {r['peak_rss_gb']:5.2f} GB  "
              f"rows {r['rows']:>8,}{extra}", flush=True)
    meta, naive = results["metadata pass"], results["naive seed-000 parser"]
    load = os.getloadavg()[0]
    print(f"metadata pass vs naive parser: {naive['seconds'] / meta['seconds']:.2f}x faster by wall time, "
          f"{naive['cpu_seconds'] / meta['cpu_seconds']:.2f}x by CPU time (load average {load:.1f} on {os.cpu_count()} cores: "
          f"on a shared machine CPU time is the fairer figure)")
    print(f"targets: metadata pass <= 10 s wall: {meta['seconds'] <= 10} (cpu {meta['cpu_seconds']:.1f} s), "
          f"<= 2 GB: {meta['peak_rss_gb'] <= 2}, not slower than naive: {meta['seconds'] <= naive['seconds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
