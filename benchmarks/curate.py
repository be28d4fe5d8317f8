"""Curation at ABO scale: 147,702 listings in 16 gzip JSON-lines files and 398,212 images.csv rows.

Prints, for each pass, the wall time, the CPU time and the peak resident memory of a fresh process
and everything it starts (sampled over the process tree every 20 ms, and at least the process's own
VmHWM), as a table with ratios against the naive parser measured in the same run:

- `naive parser`: the straightforward seed-000 parser (json.loads per line into dicts, pandas,
  the same filters, cap and sort);
- `ours cold`: `abovqa curate --preset seed000 --no-image-check` with an empty cache (parse in
  worker processes, write the listings cache);
- `ours cached`: the same again, reading the cache; `ours cached balanced`: another preset on it;
- `metadata pass`: load_listings alone (cold), for reference;
- `image checks`: check_images on 6,000 real 256-px JPEGs, threads vs processes, images per second.

Targets: ours cold no slower than the naive parser (wall), at most 1 GB peak; cached in seconds.
On a shared machine CPU time is the fairer figure. The synthetic tree is built once under
cache_dir()/bench (about a minute) and reused.

    python benchmarks/curate.py [--listings N] [--repeat R]
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
    listings = load_listings(files, lists="arrow")
    images = read_images_csv(files.images_csv)
    return len(listings) + 0 * len(images)


def curate_preset(root: Path, preset: str) -> int:
    from abovqa.curate import curate
    with tempfile.TemporaryDirectory() as work:
        return curate(root, work, preset=preset, image_check=False)["kept"]


def image_checks(n: int = 6000) -> int:
    from PIL import Image
    from abovqa.curate import check_images
    with tempfile.TemporaryDirectory() as d:
        paths = []
        noise = Image.effect_noise((256, 256), 40).convert("RGB")
        for i in range(n):
            p = Path(d) / f"{i:05d}.jpg"
            noise.rotate(i % 360).save(p, quality=90)
            paths.append(p)
        out = {}
        for how in ("threads", "processes"):
            t0 = time.time()
            ok = sum(r is None for r, _ in check_images(paths, how=how, progress=False))
            out[f"{how}_per_s"] = n / (time.time() - t0)
        print(json.dumps(out), flush=True)
        return ok


PASSES = {
    "naive parser": lambda root: naive_seed000(root),
    "ours cold": lambda root: curate_preset(root, "seed000"),
    "ours cached": lambda root: curate_preset(root, "seed000"),
    "ours cached balanced": lambda root: curate_preset(root, "balanced"),
    "metadata pass (cold)": lambda root: metadata_pass(root),
    "image checks (6,000 JPEGs)": lambda root: image_checks(),
}
COLD = {"ours cold", "metadata pass (cold)"}  # run with an empty cache


def _tree_rss(proc) -> int:
    "Resident bytes of a process and all its descendants."
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_info().rss
        except Exception:  # gone between listing and reading
            pass
    return total


def measure(name: str, root: Path, cache: Path) -> dict:
    "Run one pass in a fresh interpreter: wall and CPU time (its children included) and the peak RSS of its process tree."
    import psutil
    if name in COLD:
        import shutil
        shutil.rmtree(cache / "listings", ignore_errors=True)
    env = dict(os.environ, ABOVQA_CACHE=str(cache), MPLBACKEND="Agg")
    t0 = time.time()
    popen = subprocess.Popen([sys.executable, __file__, "--one", name, "--root", str(root)], stdout=subprocess.PIPE, text=True, env=env)
    proc, peak = psutil.Process(popen.pid), 0
    while popen.poll() is None:
        try:
            peak = max(peak, _tree_rss(proc))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    out = popen.stdout.read()
    wall = time.time() - t0
    if popen.wait() != 0:
        raise SystemExit(f"{name} failed ({popen.returncode}):\n{out}")
    result = {"wall": wall}
    for line in out.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    result["peak_mb"] = max(peak / 2**20, result.get("own_peak_mb", 0))
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listings", type=int, default=N_LISTINGS)
    ap.add_argument("--images", type=int, default=N_IMAGES)
    ap.add_argument("--repeat", type=int, default=2, help="rounds of every pass; the table shows each pass's best round")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        import resource
        t0 = time.time()
        n = PASSES[a.one](Path(a.root))
        seconds = time.time() - t0
        hwm = next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
        cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for f in ("ru_utime", "ru_stime"))
        print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "rows": n, "own_peak_mb": hwm / 1024}), flush=True)
        return 0
    from abovqa.core import cache_dir
    root = build_tree(cache_dir() / "bench" / f"abo-{a.listings}-{a.images}", a.listings, a.images)
    cache = Path(tempfile.mkdtemp(prefix="abovqa-bench-cache-"))
    print(f"tree: {root} ({a.listings:,} listings, {a.images:,} images rows); {os.cpu_count()} cores", flush=True)
    rounds: dict[str, list] = {name: [] for name in PASSES}
    for r in range(a.repeat):
        for name in PASSES:
            rounds[name].append(res := measure(name, root, cache))
            extra = (f"  threads {res['threads_per_s']:,.0f}/s, processes {res['processes_per_s']:,.0f}/s"
                     if "threads_per_s" in res else "")
            print(f"round {r + 1}: {name:<28} wall {res['seconds']:6.2f} s  cpu {res['cpu_seconds']:6.2f} s  "
                  f"peak {res['peak_mb']:6.0f} MB  rows {res['rows']:>8,}{extra}", flush=True)
    best = {name: min(rs, key=lambda x: x["seconds"]) for name, rs in rounds.items()}
    naive = best["naive parser"]
    print(f"\nbest of {a.repeat} rounds, {a.listings:,} listings (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n")
    print(f"| {'pass':<28} | wall s | cpu s | peak MB | wall vs naive | cpu vs naive |")
    print(f"|{'-' * 30}|-------:|------:|--------:|--------------:|-------------:|")
    for name, res in best.items():
        if name.startswith("image"):
            continue
        print(f"| {name:<28} | {res['seconds']:6.2f} | {res['cpu_seconds']:5.1f} | {res['peak_mb']:7.0f} | "
              f"{res['seconds'] / naive['seconds']:12.2f}x | {res['cpu_seconds'] / naive['cpu_seconds']:11.2f}x |")
    img = best["image checks (6,000 JPEGs)"]
    print(f"\nimage checks: threads {img['threads_per_s']:,.0f} images/s, processes {img['processes_per_s']:,.0f} images/s")
    cold, cached = best["ours cold"], best["ours cached"]
    print(f"targets: cold not slower than naive: {cold['seconds'] <= naive['seconds']}, "
          f"cold peak <= 1 GB: {cold['peak_mb'] <= 1024}, cached peak <= 1 GB: {cached['peak_mb'] <= 1024}, "
          f"cached {naive['seconds'] / cached['seconds']:.1f}x faster than naive")
    return 0


if __name__ == "__main__":
    sys.exit(main())
