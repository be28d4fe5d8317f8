"""Inference throughput of every registered tiny adapter (all of REGISTRY): batched vs one row at a time, and CLIP's text-embedding cache.

Prints samples/s for each model at batch 32 and at batch 1 (a per-row loop) in the same process and on the
same questions, and their ratio; then CLIP's `all` regime with its text embeddings cached vs re-encoded for
every question. Real files: the embedded sample, curated, with template questions.
Run: .venv/bin/python benchmarks/infer.py [--n 128] [--batch-size 32]
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from abovqa.curate import curate
from abovqa.infer import images_root, load_image, load_questions
from abovqa.models import REGISTRY, get_adapter
from abovqa.qagen import generate
from abovqa.sample import sample_root


def rate(adapter, items, batch_size):
    "samples/s of adapter.predict over items in chunks of batch_size (after one warm-up pass over them all)."
    for i in range(0, len(items), batch_size):  # loads the model, and fills CLIP's text cache for both timings alike
        adapter.predict(items[i:i + batch_size])
    start = time.perf_counter()
    for i in range(0, len(items), batch_size):
        adapter.predict(items[i:i + batch_size])
    return len(items) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="questions per measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp()) / "work"
    curate(sample_root(), work)
    generate(work, verbose=False)
    qa, root = load_questions(work), images_root(work)
    rows = qa.sample(n=min(args.n, len(qa)), random_state=0)
    items = [{"image": load_image(root / p), "question": q, "options": o} for p, q, o in zip(rows.image_path, rows.question, rows.options)]
    print(f"{len(items)} questions from the embedded sample; batch {args.batch_size} vs a per-row loop (batch 1)\n")
    width = max(map(len, REGISTRY))  # every registered adapter, the newer long names included
    print(f"{'model':<{width}} {'batched/s':>10} {'per-row/s':>10} {'ratio':>7}")
    for name in REGISTRY:
        adapter = get_adapter(name, "tiny")
        if name.startswith("clip"):
            adapter.prepare(qa)
        batched, per_row = rate(adapter, items, args.batch_size), rate(adapter, items, 1)
        print(f"{name:<{width}} {batched:>10.1f} {per_row:>10.1f} {batched / per_row:>6.1f}x")

    if "clip-vit-b32" in REGISTRY:
        print("\nCLIP 'all' regime: candidate text embeddings cached per question vs re-encoded for every question")
        for cache_text in (True, False):
            clip = get_adapter("clip-vit-b32", "tiny", regime="all", cache_text=cache_text).prepare(qa)
            speed = rate(clip, items, args.batch_size)
            print(f"  cache_text={cache_text!s:<5}  {speed:8.1f} samples/s  ({len(clip.candidates)} candidates, "
                  f"{clip.text_encodings} texts encoded)")


if __name__ == "__main__":
    main()
