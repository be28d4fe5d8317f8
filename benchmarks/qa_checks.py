"""What checking generated questions against the listings finds, and what it costs.

On the embedded sample (171 curated images) three generators write questions:
- `template`: answers from the metadata (they must all agree);
- `gemini stand-in`: the real google-genai SDK against the loopback `GeminiStandIn`, which answers from the prompt's metadata;
- `noisy eye`: looks at each picture (abovqa.sample's dominant_color / count_parts), asks colour, count and a colour yes/no,
  and lies on a seeded 20% of the answers (another colour, another count, the other yes/no) — a generator whose mistakes are
  known, so the checks' recall (lies caught) and false alarms (truths rejected) can be measured.
Prints the verification shares per type for each, then the time the checks add per 10,000 questions: `check_pairs` alone,
and `compile_qa` of a ~10,000-question study with and without the checks.

    python benchmarks/qa_checks.py
"""
import json
import math
import os
import random
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

import abovqa.qagen as qagen
from abovqa.curate import curate, load_curated
from abovqa.gen import QALog
from abovqa.qagen import check_pairs, compile_qa, generate
from abovqa.sample import COLORS, count_parts, dominant_color, sample_root
from abovqa.testing import GeminiStandIn

LIE_RATE = 0.2


class NoisyEye:
    "Answers what the picture shows, and lies on a seeded share of its answers (each lie recorded in `lies`)."
    name, model, prompt_version = "noisy-eye", "pixels", "v1"

    def __init__(self):
        self.images_root, self.lies = None, set()

    def bind(self, root):
        self.images_root = Path(root)

    def __call__(self, request):
        from PIL import Image
        with Image.open(self.images_root / request.image_path) as image:
            color, n = dominant_color(image), count_parts(image)
        rng = random.Random(request.image_id)
        color = {"grey": "gray"}.get(color, color) if color else "white"
        other = rng.choice([c for c in COLORS if c not in (color, "grey" if color == "gray" else color)])
        pairs = [("What color is this product?", color, "color", other),
                 ("How many items are shown?", str(n), "count", str(n + rng.choice([1, 2]))),
                 (f"Is this product {color}?", "yes", "yesno", "no")]
        out = []
        for question, truth, qtype, lie in pairs:
            lying = rng.random() < LIE_RATE
            if lying:
                self.lies.add((request.image_id, question))
            out.append({"question": question, "answer": lie if lying else truth, "type": qtype})
        return json.dumps(out)


def shares(work, title):
    qa = pd.read_parquet(work / "qa" / "qa.parquet")
    rejected = pd.read_parquet(work / "qa" / "rejected.parquet")
    checked = pd.concat([qa.assign(reason=None), rejected[rejected["reason"].isin(["contradicts_metadata", "near_duplicate"])]])
    table = checked.groupby("qtype")["verified"].value_counts(normalize=True).unstack(fill_value=0).reindex(
        columns=["agrees", "contradicts", "unknown"], fill_value=0.0)
    table.insert(0, "pairs", checked.groupby("qtype").size())
    table["near_dup_removed"] = checked.groupby("qtype")["reason"].apply(lambda r: int((r == "near_duplicate").sum()))
    print(f"\n{title}: {len(checked):,} pairs checked, {len(qa):,} kept")
    print(table.to_string(float_format=lambda x: f"{100 * x:5.1f}%"))
    return checked


def main():
    root = Path(tempfile.mkdtemp(prefix="bench-qa-checks-"))
    curate(sample_root(), root / "curated-once", image_check=True)

    def fresh(name):
        work = root / name
        shutil.copytree(root / "curated-once" / "curated", work / "curated")
        return work

    work = fresh("template")
    generate(work, verbose=False)
    shares(work, "template backend")

    os.environ["GEMINI_API_KEY"] = "bench-" + secrets.token_hex(8)  # a throwaway key for the loopback server
    work = fresh("gemini")
    with GeminiStandIn([os.environ["GEMINI_API_KEY"]]) as server:
        generate(work, backend="gemini", base_url=server.url, workers=4, rpm=60000, verbose=False)
    shares(work, "gemini stand-in (kit-v1 prompt, answers from the metadata it is sent)")

    work, eye = fresh("noisy"), NoisyEye()
    generate(work, backend=eye, verbose=False)
    checked = shares(work, f"noisy eye (answers from the pixels, {LIE_RATE:.0%} of them lies)")
    lied = [(i, q) in eye.lies for i, q in zip(checked["image_id"], checked["question"])]
    checked = checked.assign(lied=lied, caught=checked["verified"] == "contradicts")
    for qtype, g in checked.groupby("qtype"):
        lies, truths = g[g["lied"]], g[~g["lied"]]
        print(f"  {qtype:6s} lies caught {lies['caught'].sum():3d}/{len(lies):3d} ({lies['caught'].mean():.0%}), "
              f"truths flagged {truths['caught'].sum():3d}/{len(truths):3d}, unknown {(g['verified'] == 'unknown').mean():.0%}")

    # cost: check_pairs alone over 10,000 pairs, then compile_qa of a ~10,000-question study with and without the checks
    big = root / "big"
    shutil.copytree(root / "curated-once" / "curated", big / "curated")
    listings, _ = load_curated(big)
    copies = math.ceil(1400 / listings["image_id"].nunique())
    listings = pd.concat([listings.assign(image_id=listings["image_id"] + f"-{k}", item_id=listings["item_id"] + f"-{k}")
                          for k in range(copies)], ignore_index=True)
    listings.to_parquet(big / "curated" / "listings.parquet", index=False)
    generate(big, verbose=False)
    records = QALog(big / "qa" / "qa.log.jsonl").records()
    listing_of = {(r["image_id"], r["item_id"]): r for r in listings.to_dict("records")}
    n_pairs = sum(len(r["pairs"]) for r in records)
    started = time.perf_counter()
    for r in records:
        check_pairs(r["pairs"], listing_of[(r["image_id"], r["item_id"])])
    alone = time.perf_counter() - started
    timings = {}
    for label, patched in (("with checks", None), ("without", lambda pairs, listing, keep=False: ([{**p, "verified": "unknown"} for p in pairs], []))):
        original = qagen.check_pairs
        if patched:
            qagen.check_pairs = patched
        try:
            best = min(_timed(compile_qa, big, listings=listings) for _ in range(3))
        finally:
            qagen.check_pairs = original
        timings[label] = best
    n_qa = len(pd.read_parquet(big / "qa" / "qa.parquet"))
    print(f"\ncheck_pairs alone: {n_pairs:,} pairs in {alone:.3f} s = {alone / n_pairs * 1e4:.3f} s per 10,000 questions")
    print(f"compile_qa of {n_qa:,} questions: {timings['with checks']:.3f} s with the checks, {timings['without']:.3f} s without "
          f"-> the checks add {(timings['with checks'] - timings['without']) / n_qa * 1e4:.3f} s per 10,000 questions")
    shutil.rmtree(root)


def _timed(fn, *args, **kw) -> float:
    started = time.perf_counter()
    fn(*args, **kw)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
