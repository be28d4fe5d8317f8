"""The added adapters (InstructBLIP, LLaVA-Gemma, LLaVA-NeXT Mistral, Florence-2): their tiny presets through the real
inference stage on the curated sample, and the settings of their full checkpoints."""
import pandas as pd
import pytest

from abovqa.core import profile_for
from abovqa.infer import PREDICTION_COLUMNS, predict
from abovqa.models import REGISTRY, get_adapter

NEW = {  # name -> (hub id of the full checkpoint, transformers class of both sizes)
    "instructblip": ("Salesforce/instructblip-flan-t5-xl", "InstructBlipForConditionalGeneration"),
    "llava-gemma-2b": ("Intel/llava-gemma-2b", "LlavaForConditionalGeneration"),
    "llava-v1.6-mistral-7b": ("llava-hf/llava-v1.6-mistral-7b-hf", "LlavaNextForConditionalGeneration"),
    "florence-2": ("florence-community/Florence-2-large", "Florence2ForConditionalGeneration"),
}
T4X2 = profile_for([("Tesla T4", (7, 5), 15.0)] * 2, platform="kaggle")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    "The embedded sample, curated, with template questions (the pipeline's own files)."
    from abovqa.curate import curate
    from abovqa.qagen import generate
    from abovqa.sample import sample_root
    work = tmp_path_factory.mktemp("models_more") / "work"
    curate(sample_root(), work)
    generate(work)
    return work


@pytest.mark.parametrize("name", list(NEW))
def test_tiny_adapter_answers_through_predict(work, name):
    preds = predict(work, name, size="tiny", frac=0.5, batch_size=8, progress=False)
    on_disk = pd.read_parquet(work / "predictions" / f"{name}-tiny-50pct.parquet")  # a fraction is its own run
    qa = pd.read_parquet(work / "qa" / "qa.parquet")
    assert list(on_disk.columns) == PREDICTION_COLUMNS and len(on_disk) > 0
    assert set(on_disk.qa_id) <= set(qa[qa.split == "test"].qa_id)
    assert on_disk.ok.all(), on_disk.error.dropna().unique()[:3]
    assert on_disk.answer.map(lambda a: isinstance(a, str) and a != "" and a == a.strip().lower()).all()
    assert (on_disk.run == f"{name}-tiny-50pct").all() and (on_disk.model == name).all()
    adapter = get_adapter(name)
    assert (on_disk.prompt_version == adapter.prompt_version).all() and adapter.spec.postprocess in adapter.prompt_version
    assert on_disk.answer.tolist() == [adapter.postprocess(r) for r in on_disk.raw], "answers are the post-processed raw outputs"
    pd.testing.assert_frame_equal(preds, on_disk)
    adapter.load()
    assert type(adapter.model).__name__ == NEW[name][1]


@pytest.mark.parametrize("name", list(NEW))
def test_full_checkpoint_settings(name):
    full = get_adapter(name, size="full", profile=T4X2)
    assert full.hub_id == full.source == NEW[name][0] and full.model is None, "nothing is downloaded until used"
    assert full.model_kwargs()["attn_implementation"] == "sdpa" and full.dtype == "float16", "SDPA, fp16 on a T4"
    assert "trust_remote_code" not in full.model_kwargs()
    assert get_adapter(name, size="full", profile=T4X2, quantization="8bit").quantization == "8bit"
    assert name in REGISTRY


def test_seed_settings():
    assert get_adapter("llava-gemma-2b", size="full", profile=T4X2).quantization == "4bit", "seed 003 ran it in 4-bit nf4"
    sampling = get_adapter("llava-v1.6-mistral-7b").generation_settings
    assert sampling["do_sample"] is True and (sampling["temperature"], sampling["top_p"], sampling["top_k"]) == (0.7, 0.9, 50)
    assert sampling["repetition_penalty"] == 1.1
    assert get_adapter("instructblip", size="full", variant="vicuna-7b").hub_id == "Salesforce/instructblip-vicuna-7b"
    remote = get_adapter("florence-2", size="full", trust_remote_code=True)
    assert remote.hub_id == "microsoft/Florence-2-large" and remote.model_kwargs()["trust_remote_code"] is True
    with pytest.raises(ValueError, match="tiny preset"):
        get_adapter("florence-2", trust_remote_code=True)
    with pytest.raises(ValueError, match="vicuna-7b"):
        get_adapter("instructblip", variant="opt")


# seed 001's post-processing rules on the seeds' own examples (a right answer must not become "a")
GOLDEN = [("first_word", "a dolphin", "dolphin"), ("first_word", "Bird flying", "bird"), ("first_word", "A red chair.", "red"),
          ("strip_answer", "Answer: A dolphin", "dolphin"), ("strip_answer", "dolphin!", "dolphin"),
          ("strip_answer", "ASSISTANT: 2", "2"), ("dedupe_first", "Blue blue BLUE.", "blue"), ("dedupe_first", "!!", "unknown"),
          ("last_word", "The colour is Red.", "red")]


@pytest.mark.parametrize("rule, raw, answer", GOLDEN)
def test_golden_post_processing(rule, raw, answer):
    from abovqa.text import vqa_normalize
    from abovqa.models import POSTPROCESSORS
    assert POSTPROCESSORS[rule](raw) == answer
    assert vqa_normalize(POSTPROCESSORS[rule](raw)) == answer, "the answer survives the scorer's normalization"


def test_each_model_defaults_to_its_seeds_rule():
    assert {n: REGISTRY[n].postprocess for n in ("blip-vqa-base", "llava-1.5-7b", "qwen2.5-vl-7b", "qwen2.5-vl-3b")} == {
        "blip-vqa-base": "first_word", "llava-1.5-7b": "strip_answer", "qwen2.5-vl-7b": "dedupe_first", "qwen2.5-vl-3b": "dedupe_first"}
    assert get_adapter("blip-vqa-base", postprocess="last_word").postprocess("a red chair") == "chair"
