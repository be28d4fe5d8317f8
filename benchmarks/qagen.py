"""Question generation against a rate-limited generateContent server: the kit's paced workers vs the seeds' sleep loop.

A local `GeminiStandIn` enforces R requests a minute (sliding 60 s window, 429 + Retry-After beyond it) and answers in
100-300 ms. The kit (`generate(backend="gemini")`, real google-genai SDK, W workers, the store written as it goes) runs for
`--seconds` against one server; at the same time the seeds' loop (one request, then sleep 60/R s, as seed 000 did at 15
requests a minute with a 4 s sleep) runs against another. Prints the achieved rates and the 429s each one caused.

    python benchmarks/qagen.py [--seconds 120] [--rpm 600] [--workers 8]
"""
import argparse
import math
import os
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

from abovqa.core import TimeBudget
from abovqa.curate import curate, load_curated
from abovqa.gen import QALog
from abovqa.qagen import PROMPTS, generate
from abovqa.sample import sample_root
from abovqa.testing import GeminiStandIn


def study(n_images: int) -> Path:
    "A work directory whose curated listings repeat the sample's images under distinct ids, enough for the whole run."
    work = Path(tempfile.mkdtemp(prefix="bench-qagen-")) / "work"
    curate(sample_root(), work, image_check=False)
    listings, _ = load_curated(work)
    copies = math.ceil(n_images / len(listings))
    big = pd.concat([listings.assign(image_id=listings["image_id"] + f"-{k}", item_id=listings["item_id"] + f"-{k}")
                     for k in range(copies)], ignore_index=True)
    big.to_parquet(work / "curated" / "listings.parquet", index=False)
    return work


def rate(log: list[dict], status=200) -> tuple[int, float]:
    "(requests with that status, their rate per minute from the first to the last request)."
    times = [e["t"] for e in log if e["status"] == status]
    span = (max(times) - min(times)) if len(times) > 1 else float("nan")
    return len(times), (len(times) - 1) / span * 60 if len(times) > 1 else float("nan")


def naive_loop(url: str, key: str, images: list[Path], rpm: float, seconds: float, model: str = "gemini-2.5-flash") -> None:
    "The seeds' loop: one request, then sleep 60/rpm seconds."
    from google import genai
    from google.genai import types
    client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=url, api_version="v1beta", timeout=60_000,
                                                                      retry_options=types.HttpRetryOptions(attempts=1)))
    stop = time.monotonic() + seconds
    for i in range(10**9):
        if time.monotonic() >= stop:
            return
        image = types.Part.from_bytes(data=images[i % len(images)].read_bytes(), mime_type="image/jpeg")
        try:
            client.models.generate_content(model=model, contents=[image, "- Color: red\n- Type: chair"])
        except Exception:
            pass
        time.sleep(60.0 / rpm)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--rpm", type=float, default=600)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--latency", type=float, nargs=2, default=(0.1, 0.3))
    args = parser.parse_args()

    key = f"bench-{secrets.token_hex(8)}"  # never a real key: the benchmark talks only to 127.0.0.1
    os.environ["GEMINI_API_KEY"] = key
    os.environ.pop("GOOGLE_API_KEY", None)
    work = study(int(args.rpm / 60 * args.seconds * 1.3) + 50)
    _, images_root = load_curated(work)
    images = sorted(images_root.rglob("*.jpg"))[:50]

    with GeminiStandIn([key], rpm=args.rpm, latency=tuple(args.latency)) as kit_server, \
            GeminiStandIn([key], rpm=args.rpm, latency=tuple(args.latency)) as naive_server:
        naive = threading.Thread(target=naive_loop, args=(naive_server.url, key, images, args.rpm, args.seconds))
        naive.start()
        started = time.perf_counter()
        generate(work, backend="gemini", base_url=kit_server.url, workers=args.workers, rpm=args.rpm, verbose=False,
                 budget=TimeBudget(hours=args.seconds / 3600, margin_minutes=0))
        kit_seconds = time.perf_counter() - started
        naive.join()

    n_ok, kit_rate = rate(kit_server.log)
    n_429, _ = rate(kit_server.log, 429)
    naive_ok, naive_rate = rate(naive_server.log)
    naive_429, _ = rate(naive_server.log, 429)
    records = QALog(work / "qa" / "qa.log.jsonl").records()
    mean_latency = sum(args.latency) / 2
    print(f"quota R = {args.rpm:g} requests/minute (sliding 60 s window), latency {args.latency[0]:g}-{args.latency[1]:g} s, "
          f"{args.seconds:g} s per run, prompt {PROMPTS['kit-v1'].id}")
    print(f"kit   ({args.workers} workers, token bucket): {n_ok} requests answered in {kit_seconds:.1f} s -> "
          f"{kit_rate:.1f} requests/minute = {kit_rate / args.rpm:.1%} of R; 429s: {n_429}; "
          f"{len(records)} records in the store ({sum(r['ok'] for r in records)} ok)")
    print(f"seeds (1 request, then sleep 60/R):   {naive_ok} requests -> {naive_rate:.1f} requests/minute = "
          f"{naive_rate / args.rpm:.1%} of R; 429s: {naive_429} "
          f"(expected about 60 / (60/R + latency) = {60 / (60 / args.rpm + mean_latency):.0f}/minute)")
    print(f"speed-up: {kit_rate / naive_rate:.2f}x")
    shutil.rmtree(work.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
