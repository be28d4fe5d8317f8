"""Inference throughput of every registered tiny adapter (every VQA model, then the captioners with task="caption"): batched vs one row at a time, and CLIP's text-embedding cache.

Prints samples/s for each model at batch 32 and at batch 1 (a per-row loop) in the same process and on the
same questions, and their ratio; then CLIP's `all` regime on 500 candidates with its text embeddings cached vs
re-encoded for every question (the seed's way). Real files: the embedded sample, curated, with template questions.

What limits the batching ratio: a tiny model's forward pass costs almost nothing, so a batch saves the per-call
overheads (processor call, model call, Python) and what is left is per-image work that batching cannot share —
decoding, resizing and normalising each image in the processor. Generative models gain most (a batch shares
every decoding step); ViLT and CLIP answer in a single forward pass, so their ratio is bounded by the share of
that per-image preprocessing (2-4x here on a shared 2-core CPU, run to run), not by the kit.

    python benchmarks/infer.py [--n 128] [--batch-size 32] [--models NAME ...] [--candidates 500]

GPU mode: full-size random-weight architectures (benchmarks/full_size.py: BLIP-VQA-base, ViLT-b32, CLIP ViT-B/32
with their real dimensions, LLaVA-1.5-7B and Qwen2.5-VL-7B in 4-bit nf4 with double quantization) through the
kit's adapters, fp16 batched inference on synthetic 256 px images; samples/s and torch.cuda.max_memory_allocated:

    python benchmarks/infer.py --gpu                                  # on a CUDA machine
    python benchmarks/infer.py --gpu --device cpu --images 2 --batch-size 2 --full-models blip-vqa-base
    python benchmarks/infer.py --gpu --device cpu --images 2 --batch-size 2 --max-layers 1   # every code path, 1 layer each

On a CPU the 7B models are skipped unless --max-layers caps their depth (4-bit then runs with fp32 compute).
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from abovqa.core import Study
from abovqa.curate import curate
from abovqa.infer import load_image, load_questions
from abovqa.models import COMMON_ANSWERS, REGISTRY, get_adapter, models_for
from abovqa.qagen import generate
from abovqa.sample import sample_root


def rate(adapter, items, batch_size, warm_up=True):
    "samples/s of adapter.predict over items in chunks of batch_size (after one warm-up pass over them all, or one batch)."
    warm = items if warm_up else items[:batch_size]  # the full pass loads the model and fills CLIP's text cache
    for i in range(0, len(warm), batch_size):
        adapter.predict(warm[i:i + batch_size])
    start = time.perf_counter()
    for i in range(0, len(items), batch_size):
        adapter.predict(items[i:i + batch_size])
    return len(items) / (time.perf_counter() - start)


def clip_candidates(qa, n: int) -> tuple[list, str]:
    "n candidate answers: the sample's distinct reference answers, then COMMON_ANSWERS, then two-word answers of them."
    answers = sorted({str(a) for a in qa["answer"].dropna()})
    pool = list(dict.fromkeys(answers + COMMON_ANSWERS))
    base = len(pool)
    pool += [f"{a} {b}" for a in COMMON_ANSWERS for b in COMMON_ANSWERS if a != b][:max(0, n - base)]  # 'dark wood', 'red metal'
    pool = pool[:n]
    return pool, (f"{len(pool)} candidates = {len(answers)} distinct reference answers + {min(base, n) - len(answers)} "
                  f"COMMON_ANSWERS + {max(0, len(pool) - base)} two-word answers")


def clip_all_regime(qa, items, batch_size, n_candidates, root):
    "CLIP's `all` regime on n_candidates: cached text embeddings (warm, and cold over the whole table) vs the seed's re-encoding."
    candidates, described = clip_candidates(qa, n_candidates)
    print(f"\nCLIP 'all' regime, {described}")
    print(f"{len(items)} questions ({len({it['question'] for it in items})} distinct), batch {batch_size}")
    cached = get_adapter("clip-vit-b32", "tiny", regime="all", candidates=candidates)
    naive = get_adapter("clip-vit-b32", "tiny", regime="all", candidates=candidates, cache_text=False)
    cached.load()
    start = time.perf_counter()
    for i in range(0, len(items), batch_size):  # the first pass fills the cache
        cached.predict(items[i:i + batch_size])
    cold = len(items) / (time.perf_counter() - start)
    warm = rate(cached, items, batch_size, warm_up=False)
    seed_way = rate(naive, items, batch_size, warm_up=False)
    assert all(cached.predict(items[i:i + batch_size]) == naive.predict(items[i:i + batch_size]) for i in range(0, len(items), batch_size))
    print(f"  {'cached, warm':<34} {warm:8.1f} samples/s  ({cached.text_encodings} texts encoded, once)")
    print(f"  {'cached, first pass (fills cache)':<34} {cold:8.1f} samples/s")
    print(f"  {'re-encoded per question (seed)':<34} {seed_way:8.1f} samples/s  ({n_candidates} texts per question)")
    print(f"  ratio cached/re-encoded: {warm / seed_way:.1f}x warm, {cold / seed_way:.1f}x on the first pass")
    # the cache fill amortised over a real table: every question of the sample once, cold start included
    everything = [{"image": load_image(root / p), "question": q, "options": o} for p, q, o in zip(qa.image_path, qa.question, qa.options)]
    fresh = get_adapter("clip-vit-b32", "tiny", regime="all", candidates=candidates).load()
    start = time.perf_counter()
    for i in range(0, len(everything), batch_size):
        fresh.predict(everything[i:i + batch_size])
    whole = len(everything) / (time.perf_counter() - start)
    print(f"  whole qa table, cold cache: {len(everything)} questions ({qa.question.nunique()} distinct) at {whole:.1f} samples/s"
          f" = {whole / seed_way:.1f}x the seed's way")


def cpu_4bit_skips(adapter):
    "Keep the Linears bitsandbytes' CPU 4-bit kernels refuse unquantized (a CPU check only; CUDA quantizes them all)."
    from full_size import cpu_4bit_skip_modules
    model_kwargs = adapter.model_kwargs

    def with_skips():
        kw = model_kwargs()
        kw["quantization_config"].llm_int8_skip_modules = cpu_4bit_skip_modules(adapter.model_class, adapter.source)
        return kw

    adapter.model_kwargs = with_skips


def full_size(args):
    "--gpu: each full-size random-weight model through its kit adapter; samples/s and peak memory."
    import shutil
    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    root = Path(args.checkpoints or tempfile.mkdtemp(prefix="abovqa-full-"))
    try:
        measure_full_size(args, root, device)
    finally:
        if not args.checkpoints:
            shutil.rmtree(root, ignore_errors=True)  # 15 GB per 7B checkpoint: not kept unless asked for


def measure_full_size(args, root, device):
    "One row per model: build (or reuse) its checkpoint, load it through the kit's adapter, time batched predict."
    import resource
    import shutil
    import torch
    from full_size import FULL_SIZE_PARAMS, LARGE, build_device, parameters, random_checkpoint, synthetic_items
    cuda = device.startswith("cuda")
    dtype = "float16" if cuda else "float32"  # fp16 is the T4's precision; half precision on a CPU is slow and lossy
    items = synthetic_items(args.images)
    where = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"full-size random-weight models on {where} ({dtype}), {len(items)} synthetic 256 px images, checkpoints in {root}"
          + (f", layers capped at {args.max_layers}" if args.max_layers else ""))
    print(f"{'model':<15} {'params':>8} {'quant':>6} {'batch':>5} {'samples/s':>10} {'peak memory':>12}")
    for name in args.full_models:
        batch_size = args.batch_size or (16 if name in LARGE else 64)
        quantization = "4bit" if name in LARGE else None
        if name in LARGE and not cuda and not args.max_layers:
            print(f"{name:<15} skipped: {FULL_SIZE_PARAMS[name]:.1f}B parameters need CUDA for 4-bit bitsandbytes at full depth "
                  "(use --max-layers 1 to check the code path on a CPU)")
            continue
        path = random_checkpoint(name, root, args.max_layers, build_device(name, args.max_layers) if cuda else "cpu")
        extra = {}
        if name.startswith("clip"):  # the 'all' regime's scale: 500 candidates, text embeddings cached per question
            extra = dict(regime="all", candidates=(COMMON_ANSWERS + [f"answer {i}" for i in range(500)])[:500])
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        adapter = get_adapter(name, "full", path=path, device=device, dtype=dtype, quantization=quantization or "none", **extra)
        if quantization and not cuda:
            cpu_4bit_skips(adapter)
        adapter.load()
        adapter.predict(items[:batch_size])  # warm-up: kernels, allocator, CLIP's text cache
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, len(items), batch_size):
            adapter.predict(items[i:i + batch_size])
        if cuda:
            torch.cuda.synchronize()
        speed = len(items) / (time.perf_counter() - start)
        peak = (f"{torch.cuda.max_memory_allocated() / 2**30:8.2f} GiB" if cuda
                else f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:6.2f} GiB RSS")
        precision = "nf4" if quantization else "fp" + dtype[-2:]
        print(f"{name:<15} {parameters(path) / 1e9:7.2f}B {precision:>6} {batch_size:>5} {speed:>10.2f} {peak:>12}")
        adapter.unload()
        if not args.checkpoints:
            shutil.rmtree(path, ignore_errors=True)  # one 7B checkpoint on disk at a time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="questions per measurement")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 (tiny); --gpu: 64, 16 for the 7B models")
    parser.add_argument("--models", nargs="*", default=None, help="registered names to measure (default: all)")
    parser.add_argument("--candidates", type=int, default=500, help="CLIP 'all' regime candidates (0: skip that section)")
    gpu = parser.add_argument_group("--gpu: full-size random-weight models")
    gpu.add_argument("--gpu", action="store_true", help="measure full-size random-weight models instead of the tiny presets")
    gpu.add_argument("--device", default=None, help="cuda (default when available) or cpu, to check the code path")
    gpu.add_argument("--images", type=int, default=256, help="synthetic 256 px images per model")
    gpu.add_argument("--full-models", nargs="*", default=["blip-vqa-base", "vilt-b32-vqa", "clip-vit-b32", "llava-1.5-7b", "qwen2.5-vl-7b"])
    gpu.add_argument("--max-layers", type=int, default=None, help="cap every layer count (widths stay real): a quick check")
    gpu.add_argument("--checkpoints", default=None, help="keep the random checkpoints here and reuse them (default: a temp dir)")
    args = parser.parse_args()
    if args.gpu:
        return full_size(args)

    args.batch_size = args.batch_size or 32
    work = Path(tempfile.mkdtemp()) / "work"
    curate(sample_root(), work)
    generate(work, verbose=False)
    qa, root = load_questions(work), Study(work).images_root()
    rows = qa.sample(n=min(args.n, len(qa)), random_state=0)
    items = [{"image": load_image(root / p), "question": q, "options": o} for p, q, o in zip(rows.image_path, rows.question, rows.options)]
    names = models_for("vqa") + [f"{m}:caption" for m in models_for("caption")] if args.models is None else args.models
    if names:
        print(f"{len(items)} questions from the embedded sample; batch {args.batch_size} vs a per-row loop (batch 1)\n")
        width = max(map(len, names))  # every registered adapter, the newer long names included
        print(f"{'model':<{width}} {'batched/s':>10} {'per-row/s':>10} {'ratio':>7}")
        for name in names:
            model, _, task = name.partition(":")  # "florence-2:caption": the captioning task (60 new tokens, not 8)
            adapter = get_adapter(model, "tiny", task=task or "vqa")
            if name.startswith("clip"):
                adapter.prepare(qa)
            batched, per_row = rate(adapter, items, args.batch_size), rate(adapter, items, 1)
            print(f"{name:<{width}} {batched:>10.1f} {per_row:>10.1f} {batched / per_row:>6.1f}x")
    if args.candidates and "clip-vit-b32" in REGISTRY:
        clip_all_regime(qa, items, args.batch_size, args.candidates, root)


if __name__ == "__main__":
    main()
