"""Full-size random-weight checkpoints of the kit's models, for the `--gpu` modes of benchmarks/infer.py and train.py.

No hub is reachable where the kit is built, but speed and memory depend on the architecture's dimensions, not on
trained weights. So each builder here writes a checkpoint whose config has the *real* dimensions of the published
model (BLIP-VQA-base, ViLT-b32, CLIP ViT-B/32, LLaVA-1.5-7B, Qwen2.5-VL-7B-Instruct: hidden sizes, layer counts,
heads, vocabulary sizes, image sizes, patch sizes) with random weights, plus a processor with the real image
settings and the kit's tiny offline tokenizer (token ids stay below the real vocabulary size, so the embedding
tables keep their real shapes). The benchmarks then load it through the kit's own adapters and `from_pretrained`,
exactly as a downloaded checkpoint, e.g. in 4-bit nf4 with double quantization.

`max_layers` caps every layer count (widths stay real): that is how the 7B code paths are checked on a CPU.
This module is a helper, not a benchmark.
"""
import contextlib
import json
import shutil
from pathlib import Path

# name -> parameters (billions) at full depth: whether a machine can hold it is decided from this
FULL_SIZE_PARAMS = {"blip-vqa-base": 0.36, "vilt-b32-vqa": 0.12, "clip-vit-b32": 0.15, "llava-1.5-7b": 7.06,
                    "qwen2.5-vl-7b": 8.29}
LARGE = ("llava-1.5-7b", "qwen2.5-vl-7b")  # loaded in 4-bit nf4 (double quantization), as the kit does on a T4


def _layers(n: int, max_layers: int | None) -> int:
    return n if not max_layers else min(n, max_layers)


@contextlib.contextmanager
def _default_dtype(dtype):
    "Build parameters directly in `dtype`: a 7B model in fp32 would need 28 GB of RAM before it is cast."
    import torch
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _blip(max_layers):
    from transformers import BlipConfig, BlipForQuestionAnswering, BlipImageProcessorPil, BlipProcessor
    from abovqa.models import tiny_tokenizer
    tok = tiny_tokenizer()
    vocab = tok.get_vocab()
    config = BlipConfig(  # Salesforce/blip-vqa-base
        text_config=dict(vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=_layers(12, max_layers),
                         num_attention_heads=12, max_position_embeddings=512, encoder_hidden_size=768, pad_token_id=vocab["[PAD]"],
                         bos_token_id=vocab["[DEC]"], sep_token_id=vocab["[SEP]"], eos_token_id=vocab["[SEP]"]),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=_layers(12, max_layers), num_attention_heads=12,
                           image_size=384, patch_size=16),
        projection_dim=512)
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 384, "width": 384}), tokenizer=tok)
    return BlipForQuestionAnswering, config, processor


def _vilt(max_layers):
    from transformers import ViltConfig, ViltForQuestionAnswering, ViltImageProcessorPil, ViltProcessor
    from abovqa.models import COMMON_ANSWERS, tiny_tokenizer
    labels = (COMMON_ANSWERS + [f"answer {i}" for i in range(3129)])[:3129]  # VQAv2's 3,129 answers
    config = ViltConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=_layers(12, max_layers), num_attention_heads=12,
                        intermediate_size=3072, image_size=384, patch_size=32, max_position_embeddings=40, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    processor = ViltProcessor(image_processor=ViltImageProcessorPil(size={"shortest_edge": 384}, size_divisor=32), tokenizer=tiny_tokenizer())
    return ViltForQuestionAnswering, config, processor


def _clip(max_layers):
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor
    from abovqa.models import tiny_tokenizer
    tok = tiny_tokenizer()
    vocab = tok.get_vocab()
    config = CLIPConfig(  # openai/clip-vit-base-patch32
        text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=_layers(12, max_layers),
                         num_attention_heads=8, max_position_embeddings=77, pad_token_id=vocab["[PAD]"], bos_token_id=vocab["[CLS]"],
                         eos_token_id=vocab["[SEP]"]),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=_layers(12, max_layers), num_attention_heads=12,
                           image_size=224, patch_size=32),
        projection_dim=512)
    processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
                              tokenizer=tok)
    return CLIPModel, config, processor


def _llava(max_layers):
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from abovqa.models import LLAVA_TINY_CHAT_TEMPLATE, _tiny_tokenizer_with
    tok = _tiny_tokenizer_with("<image>", max_length=4096)
    vocab = tok.get_vocab()
    config = LlavaConfig(  # llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 + Vicuna-7B
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=_layers(24, max_layers), num_attention_heads=16, image_size=336, patch_size=14,
                           projection_dim=768),
        text_config=dict(model_type="llama", vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                         num_hidden_layers=_layers(32, max_layers), num_attention_heads=32, num_key_value_heads=32,
                         max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=vocab["[PAD]"], bos_token_id=vocab["[CLS]"],
                         eos_token_id=vocab["[SEP]"]),
        image_token_index=vocab["<image>"], vision_feature_layer=-2 if not max_layers or max_layers >= 2 else -1,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", image_seq_length=576)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=LLAVA_TINY_CHAT_TEMPLATE)
    return LlavaForConditionalGeneration, config, processor


def _qwen(max_layers):
    from transformers import AddedToken, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil
    from abovqa.models import QWEN_TINY_CHAT_TEMPLATE, QWEN_TINY_SPECIAL_TOKENS, _tiny_qwen_processor_class, tiny_tokenizer
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in QWEN_TINY_SPECIAL_TOKENS]})
    tok.model_max_length = 32768
    vocab = tok.get_vocab()
    depth = _layers(32, max_layers)
    config = Qwen2_5_VLConfig(  # Qwen/Qwen2.5-VL-7B-Instruct
        vision_config=dict(depth=depth, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, out_hidden_size=3584, window_size=112, tokens_per_second=2,
                           fullatt_block_indexes=[i for i in (7, 15, 23, 31) if i < depth] or [depth - 1]),
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=_layers(28, max_layers),
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
                         tie_word_embeddings=False, pad_token_id=vocab["[PAD]"], bos_token_id=vocab["[CLS]"],
                         eos_token_id=vocab["<|im_end|>"]),
        tie_word_embeddings=False, image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"])
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14, merge_size=2,
                                               temporal_patch_size=2)
    processor = _tiny_qwen_processor_class()(image_processor=image_processor, tokenizer=tok, chat_template=QWEN_TINY_CHAT_TEMPLATE)
    return Qwen2_5_VLForConditionalGeneration, config, processor


BUILDERS = {"blip-vqa-base": _blip, "vilt-b32-vqa": _vilt, "clip-vit-b32": _clip, "llava-1.5-7b": _llava, "qwen2.5-vl-7b": _qwen}


def random_checkpoint(name: str, root, max_layers: int | None = None, device: str = "cpu") -> Path:
    """The directory of a random-weight checkpoint of `name` at its real dimensions (layer counts capped at `max_layers`).

    Reused when already complete under `root`; built in fp16 on `device` (a GPU with room builds a 7B model in seconds,
    a CPU in minutes) and saved in 2 GB safetensors shards, then freed: the benchmark loads it like a downloaded one."""
    import torch
    from abovqa.models import quiet_transformers
    quiet_transformers()  # no shard-writing bars in the benchmark's table
    target = Path(root) / f"{name}-layers{max_layers or 'all'}"
    marker = target / "abovqa_full_random.json"
    if marker.exists():
        return target
    model_class, config, processor = BUILDERS[name](max_layers)
    shutil.rmtree(target, ignore_errors=True)
    with torch.random.fork_rng(devices=[]), _default_dtype(torch.float16), torch.device(device):
        torch.manual_seed(0)
        model = model_class(config)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(target, max_shard_size="2GB")
    processor.save_pretrained(target)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    marker.write_text(json.dumps({"name": name, "max_layers": max_layers, "parameters": n_params}))
    return target


def parameters(path) -> int:
    "Parameter count recorded when the checkpoint was built."
    return json.loads((Path(path) / "abovqa_full_random.json").read_text())["parameters"]


def build_device(name: str, max_layers: int | None = None) -> str:
    "Where to build: the GPU when it has room for the fp16 weights twice over (building is then fast), else the CPU."
    import torch
    if not torch.cuda.is_available():
        return "cpu"
    free, _ = torch.cuda.mem_get_info()
    need = FULL_SIZE_PARAMS[name] * 1e9 * 2 * 2 * (1 if not max_layers else 0.2)
    return "cuda" if free > need else "cpu"


def cpu_4bit_skip_modules(model_class: str, source) -> list[str]:
    """Linears that bitsandbytes' CPU 4-bit kernels refuse (in_features % 64 or out_features % 32, e.g. Qwen2.5-VL's vision
    MLP of 3420), plus the LM head; found on an empty model. Only for checking the 7B code paths on a CPU."""
    import torch
    import transformers
    from accelerate import init_empty_weights
    config = transformers.AutoConfig.from_pretrained(source)
    with init_empty_weights():
        model = getattr(transformers, model_class)._from_config(config)
    return [name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and (m.in_features % 64 or m.out_features % 32)] + ["lm_head"]


def synthetic_items(n: int, size: int = 256, seed: int = 0) -> list[dict]:
    "n product-like test items: a `size` px image (a coloured shape on white, some noise) and a template question."
    import numpy as np
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    questions = ["What color is this product?", "What shape is this item?", "How many items are shown?",
                 "What is this product made of?", "Which pattern is on this item?", "What kind of product is this?"]
    colours = ["red", "blue", "green", "black", "orange", "purple", "brown", "grey"]
    items = []
    for i in range(n):
        pixels = np.clip(235 + rng.normal(0, 12, (size, size, 3)), 0, 255).astype("uint8")
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        x0, y0 = rng.integers(10, size // 3, 2)
        draw.ellipse([int(x0), int(y0), int(x0) + size // 2, int(y0) + size // 2], fill=colours[i % len(colours)])
        items.append({"image": image, "question": questions[i % len(questions)], "options": None})
    return items
