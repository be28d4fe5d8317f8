"""`abovqa export`: the question set as HF datasets / parquet / VLMEvalKit TSV; a broken image is skipped with its reason."""
import json
import subprocess

import pandas as pd
from datasets import load_from_disk

from abovqa.curate import curate
from abovqa.qagen import generate
from abovqa.sample import sample_root
from conftest import BIN


def test_export_through_the_cli_survives_a_broken_image(tmp_path):
    work = tmp_path / "work"
    curate(sample_root(), work, image_check=False)
    qa = generate(work, backend="template", max_images=30)
    images_root = json.loads((work / "curated" / "stats.json").read_text())["images_root"]
    # break one image after curation: the export must skip it, say why, and export the rest
    broken = qa["image_path"].iloc[0]
    copy = tmp_path / "images"
    subprocess.run(["cp", "-r", images_root, str(copy)], check=True)
    (copy / broken).write_bytes(b"\xff\xd8\xff not really a jpeg")
    stats = json.loads((work / "curated" / "stats.json").read_text())
    (work / "curated" / "stats.json").write_text(json.dumps(dict(stats, images_root=str(copy))))

    run = subprocess.run([str(BIN / "abovqa"), "export", "--work", str(work)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    out = work / "export"
    skipped = json.loads((out / "skipped.json").read_text())
    assert list(skipped["images_skipped"]) == [broken] and skipped["questions_skipped"] == int((qa["image_path"] == broken).sum())
    expected = len(qa) - skipped["questions_skipped"]
    ds = load_from_disk(str(out / "hf"))
    assert sum(len(split) for split in ds.values()) == expected
    assert len(pd.read_parquet(out / "abovqa.parquet")) == expected
    vqa = pd.read_csv(out / "abovqa_vqa.tsv", sep="\t")
    assert len(vqa) == expected and vqa["index"].tolist() == list(range(expected))
    mcq = pd.read_csv(out / "abovqa_mcq.tsv", sep="\t", dtype=str)
    truth = qa.set_index("qa_id")["answer"]
    assert all(row[row["answer"]] == truth[row["qa_id"]] for _, row in mcq.iterrows())
    card = (out / "README.md").read_text()
    assert f"{expected:,} single-word-answer questions" in card and (out / "answer_distribution.png").stat().st_size > 0
