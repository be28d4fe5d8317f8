"""Training throughput of the tiny BLIP LoRA on this machine: the kit's data-loading and precision settings vs plain ones.

Prints samples/s for each setting and their ratio. "plain" is what a hand-written Trainer call gets: one process
loading data, torch's default thread count, fp32. "kit" is `abovqa.finetune`: `loader_settings` (worker processes,
pinned memory on a GPU), `precision_settings` (fp16/bf16 AMP on a GPU) and, for tiny models on a CPU, one intra-op
thread. On a GPU machine the same script measures AMP + pinned memory against fp32 + pageable memory.

    python benchmarks/train.py [--steps 150] [--repeats 2]

GPU mode (`--gpu`): full-size random-weight checkpoints (benchmarks/full_size.py, real dimensions, no hub) trained
through the kit's own loaders: BLIP-VQA-base + LoRA (`load_lora_model`, fp32 master weights, fp16 AMP, pinned memory,
the seed's T4 figure was 13 -> 28 samples/s) in samples/s, and a 7B VLM in 4-bit nf4 + LoRA (`load_qlora_model`,
bitsandbytes + PEFT, gradient checkpointing) in seconds per optimizer step; both with torch.cuda.max_memory_allocated.

    python benchmarks/train.py --gpu                          # on a CUDA machine (Qwen2.5-VL-7B for the QLoRA step)
    python benchmarks/train.py --gpu --qlora-model llava-1.5-7b
    python benchmarks/train.py --gpu --device cpu --steps 2 --batch-size 2 --max-layers 1 --qlora-model llava-1.5-7b
                                    # a CPU check of both code paths at one layer each (~10 min on 2 cores: 4-bit on a CPU is slow)
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
                                 resolve_config)
    from abovqa.core import Study
    from abovqa.models import get_adapter, torch_threads

    seed_everything(seed)
    profile = detect_hardware()
    adapter = get_adapter("blip-vqa-base", "tiny")
    cfg = resolve_config("blip-lora", "demo")
    model, processor = load_lora_model(adapter, cfg, profile)
    data = VqaDataset(load_split(work, "train"), Study(work).images_root(), adapter.spec.prompt)
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


class StepTimer:
    "Wall time of each optimizer step after the first `skip` (cuDNN autotuning, allocator warm-up)."

    def __init__(self, cuda: bool, skip: int = 2):
        self.cuda, self.skip, self.times = cuda, skip, []

    def tick(self):
        import torch
        if self.cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def seconds_per_step(self) -> float:
        times = self.times[self.skip:] if len(self.times) > self.skip + 1 else self.times
        return (times[-1] - times[0]) / max(1, len(times) - 1)


def peak_memory(cuda: bool) -> str:
    import resource
    import torch
    if cuda:
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB peak (torch.cuda.max_memory_allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB peak RSS"


def blip_lora_full_size(path, device: str, steps: int, batch_size: int | None, config: str):
    "samples/s of Trainer steps of full-size BLIP-VQA-base + LoRA with the kit's settings (fp16 AMP and pinned memory on a GPU)."
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback
    from abovqa.core import detect_hardware, seed_everything
    from abovqa.finetune import VqaCollator, load_lora_model, loader_settings, resolve_config
    from abovqa.models import get_adapter
    from full_size import synthetic_items
    cuda = device.startswith("cuda")
    profile = detect_hardware()
    seed_everything(0)
    cfg = resolve_config("blip-lora", config, size="full", **({"batch_size": batch_size} if batch_size else {}))
    adapter = get_adapter("blip-vqa-base", "full", path=path, device=device)
    model, processor = load_lora_model(adapter, cfg, profile)
    items = [dict(it, prompt=it["question"], answer="red") for it in synthetic_items(max(64, cfg.batch_size * 4))]
    timer = StepTimer(cuda)

    class Tick(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            timer.tick()

    # the T4 setting everywhere (fp16 AMP, never bf16), so the figure compares with the seed's T4 runs
    precision = {"fp16": True, "bf16": False, "use_cpu": False} if cuda else {"use_cpu": True}
    loader = loader_settings(profile) if cuda else {"dataloader_num_workers": 0}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=cfg.batch_size,
                                 gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
                                 save_strategy="no", eval_strategy="no", report_to="none", logging_steps=10_000, disable_tqdm=True,
                                 remove_unused_columns=False, seed=0, **precision, **loader)
        trainer = Trainer(model=model, args=args, train_dataset=items, data_collator=VqaCollator(processor), callbacks=[Tick()])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    per_step = timer.seconds_per_step()
    samples = cfg.batch_size * cfg.gradient_accumulation_steps
    print(f"  BLIP-VQA-base LoRA '{cfg.name}' ({cfg.source}): batch {cfg.batch_size} x {cfg.gradient_accumulation_steps}, "
          f"{'fp16 AMP' if cuda else 'fp32'}: {samples / per_step:.2f} samples/s ({per_step:.3f} s/step), {peak_memory(cuda)}")


def vlm_qlora_full_size(name: str, path, device: str, steps: int, batch_size: int | None, config: str):
    "Seconds per optimizer step of a 4-bit VLM + LoRA (the kit's bitsandbytes + PEFT loader) and its peak memory."
    import torch
    from abovqa.core import detect_hardware, seed_everything
    from abovqa.finetune import load_qlora_model, resolve_config
    from abovqa.models import get_adapter
    from full_size import parameters, synthetic_items
    cuda = device.startswith("cuda")
    profile = detect_hardware()
    seed_everything(0)
    cfg = resolve_config("vlm-qlora", config, size="full", backend="transformers",
                         **({"batch_size": batch_size} if batch_size else {}))
    adapter = get_adapter(name, "full", path=path, device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model, processor, backend = load_qlora_model(adapter, cfg, profile)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate)
    items = synthetic_items(cfg.batch_size * cfg.gradient_accumulation_steps)
    processor.tokenizer.padding_side = "right"
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": it["question"]}]},
                                            {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]) for it in items]
    device_of = next(model.parameters()).device
    timer = StepTimer(cuda, skip=1)
    for _ in range(steps):
        for i in range(0, len(items), cfg.batch_size):  # gradient accumulation over micro-batches
            batch = processor(images=[it["image"] for it in items[i:i + cfg.batch_size]], text=texts[i:i + cfg.batch_size],
                              return_tensors="pt", padding=True)
            batch.pop("token_type_ids", None)
            batch = {k: v.to(device_of) for k, v in batch.items()}
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # every real token: a timing, not a recipe
            loss = model(**batch, labels=labels).loss / cfg.gradient_accumulation_steps
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} in the QLoRA step")
            loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer.tick()
    per_step = timer.seconds_per_step()
    print(f"  {name} QLoRA '{cfg.name}' ({parameters(path) / 1e9:.2f}B params, nf4 + double quant, LoRA r {cfg.r} {cfg.target_modules}, "
          f"{backend}, gradient checkpointing {cfg.gradient_checkpointing}): batch {cfg.batch_size} x {cfg.gradient_accumulation_steps}, "
          f"{per_step:.2f} s/optimizer step = {len(items) / per_step:.2f} samples/s, {peak_memory(cuda)}")


def full_size(opts):
    "--gpu: the full-size training steps."
    import shutil
    import torch
    from full_size import build_device, random_checkpoint
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    root = Path(opts.checkpoints or tempfile.mkdtemp(prefix="abovqa-full-"))
    print(f"full-size random-weight models on {torch.cuda.get_device_name(0) if cuda else 'CPU'}, {opts.steps} steps each"
          + (f", layers capped at {opts.max_layers}" if opts.max_layers else ""))
    try:
        path = random_checkpoint("blip-vqa-base", root, opts.max_layers, build_device("blip-vqa-base", opts.max_layers) if cuda else "cpu")
        blip_lora_full_size(path, device, opts.steps, opts.batch_size, opts.blip_config)
        if not cuda and not opts.max_layers:
            print(f"  {opts.qlora_model} QLoRA skipped: 4-bit bitsandbytes on a 7B model needs CUDA (--max-layers 1 checks the path on a CPU)")
            return
        if not cuda and opts.qlora_model == "qwen2.5-vl-7b":
            print("  note: on a CPU, bitsandbytes refuses Linears with out_features % 32 (Qwen2.5-VL's vision MLP, 3420) that the"
                  " kit's qlora_skip_modules keeps; check the path with --qlora-model llava-1.5-7b there")
        path = random_checkpoint(opts.qlora_model, root, opts.max_layers, build_device(opts.qlora_model, opts.max_layers) if cuda else "cpu")
        vlm_qlora_full_size(opts.qlora_model, path, device, opts.steps, opts.batch_size, opts.qlora_config)
    finally:
        if not opts.checkpoints:
            shutil.rmtree(root, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="default 150 (tiny), 20 (--gpu)")
    parser.add_argument("--repeats", type=int, default=2)
    gpu = parser.add_argument_group("--gpu: full-size random-weight models")
    gpu.add_argument("--gpu", action="store_true", help="train full-size random-weight models instead of the tiny BLIP")
    gpu.add_argument("--device", default=None, help="cuda (default when available) or cpu, to check the code paths")
    gpu.add_argument("--batch-size", type=int, default=None, help="override the recipe config's batch size")
    gpu.add_argument("--blip-config", default="seed000", help="blip-lora config (seed000: LoRA on query/value, batch 8)")
    gpu.add_argument("--qlora-model", default="qwen2.5-vl-7b", choices=["qwen2.5-vl-7b", "llava-1.5-7b"])
    gpu.add_argument("--qlora-config", default="seed003", help="vlm-qlora config (seed003: r 16 all-linear, batch 3 x 6)")
    gpu.add_argument("--max-layers", type=int, default=None, help="cap every layer count (widths stay real): a quick check")
    gpu.add_argument("--checkpoints", default=None, help="keep the random checkpoints here and reuse them (default: a temp dir)")
    opts = parser.parse_args()
    if opts.gpu:
        opts.steps = opts.steps or 20
        return full_size(opts)
    opts.steps = opts.steps or 150

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
