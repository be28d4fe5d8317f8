"""Training throughput of the tiny BLIP LoRA on this machine: the kit's data-loading and precision settings vs plain ones.

Prints samples/s for each setting and their ratio. "plain" is what a hand-written Trainer call gets: one process
loading data, torch's default thread count, fp32. "kit" is `abovqa.finetune`: `loader_settings` (worker processes,
pinned memory on a GPU), `precision_settings` (fp16/bf16 AMP on a GPU) and, for tiny models on a CPU, one intra-op
thread. On a GPU machine the same script measures AMP + pinned memory against fp32 + pageable memory.

    python benchmarks/train.py [--steps 150] [--repeats 2]
"""
import argparse
import tempfile
import time
from pathlib import Path


def measure(work, kit: bool, steps: int, seed: int = 0) -> float:
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback
    from abovqa.core import detect_hardware, seed_everything
    from abovqa.finetune import (VqaCollator, VqaDataset, load_lora_model, load_split, loader_settings, precision_settings,
                                 resolve_config, torch_threads)
    from abovqa.infer import images_root
    from abovqa.models import get_adapter

    seed_everything(seed)
    profile = detect_hardware()
    adapter = get_adapter("blip-vqa-base", "tiny")
    cfg = resolve_config("blip-lora", "demo")
    model, processor = load_lora_model(adapter, cfg, profile)
    data = VqaDataset(load_split(work, "train"), images_root(work), adapter.spec.prompt)
    if kit:
        settings = precision_settings(profile) | loader_settings(profile)
    else:
        settings = {"use_cpu": not profile.n_gpus, "dataloader_num_workers": 0, "dataloader_pin_memory": False}
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=cfg.batch_size,
                                 learning_rate=cfg.learning_rate, save_strategy="no", eval_strategy="no", report_to="none",
                                 logging_steps=10_000, disable_tqdm=True, remove_unused_columns=False, seed=seed, **settings)
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=VqaCollator(processor))
        trainer.remove_callback(PrinterCallback)
        with torch_threads(1 if kit and not profile.n_gpus else None):
            metrics = trainer.train().metrics
    return steps * cfg.batch_size / metrics["train_runtime"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2)
    opts = parser.parse_args()

    import torch
    from abovqa.core import detect_hardware
    from abovqa.curate import curate
    from abovqa.finetune import loader_settings, precision_settings
    from abovqa.qagen import generate
    from abovqa.sample import sample_root

    profile = detect_hardware()
    print(f"machine: {profile.name}, {profile.cpu_count} CPUs, torch threads by default: {torch.get_num_threads()}")
    print(f"kit settings: {precision_settings(profile) | loader_settings(profile)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        curate(sample_root(), work)
        generate(work)
        results = {"plain": [], "kit": []}
        for _ in range(opts.repeats):  # interleaved, so a load change on a shared machine hits both alike
            for name in results:
                results[name].append(measure(work, name == "kit", opts.steps))
    best = {name: max(values) for name, values in results.items()}
    for name, values in results.items():
        print(f"{name:>5}: {best[name]:8.1f} samples/s (best of {len(values)}: {', '.join(f'{v:.1f}' for v in values)})")
    print(f"ratio kit/plain: {best['kit'] / best['plain']:.2f}x  ({opts.steps} steps of batch 8, tiny BLIP LoRA 'demo')")


if __name__ == "__main__":
    main()
