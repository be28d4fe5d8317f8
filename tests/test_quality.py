"""Generated questions you can trust: answers checked against the listings through the real google-genai SDK and a loopback
generateContent server, near-duplicates collapsed, a review sheet that a real headless Chromium renders with its images, and
imported verdicts that reach the dataset card with their Wilson interval."""
import base64
import html
import io
import json
import math
import re
import secrets
import shutil
import subprocess

import pandas as pd
import pytest

from conftest import BIN, fresh_work
from abovqa.qagen import generate
from abovqa.testing import GeminiStandIn

FAST = dict(timeout=1.0, initial_delay=0.1, max_delay=1.0)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PARAPHRASES = ["What color is this product?", "What is the main colour of the item shown?", "Which colour is this item mostly?"]


class OneColour(GeminiStandIn):
    "A Gemini that sees red everywhere, and asks about it three times in other words."

    @staticmethod
    def answer(prompt: str) -> str:
        pairs = [{"question": q, "answer": "Red", "type": "color"} for q in PARAPHRASES]
        return "Sure! Here they are:\n```json\n" + json.dumps(pairs) + "\n```"


@pytest.fixture
def work(curated_work):
    return curated_work


@pytest.fixture
def keys(monkeypatch):
    keys = [f"AIzaTEST{secrets.token_hex(12)}"]
    monkeypatch.setenv("GEMINI_API_KEY", ",".join(keys))
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    return keys


def listing_colours(work) -> dict:
    "image_id -> the listing's standardized colour, lower case ('' when the listing has none)."
    listings = pd.read_parquet(work / "curated" / "listings.parquet").drop_duplicates("image_id")
    return dict(zip(listings["image_id"], listings["color_standardized"].fillna("").str.lower()))


def test_one_colour_for_every_image_is_rejected_where_the_listing_says_otherwise(work, keys, tmp_path):
    with OneColour(keys) as server:
        qa = generate(work, backend="gemini", base_url=server.url, workers=4, rpm=6000, **FAST)
        other = tmp_path / "kept"
        shutil.copytree(work / "curated", other / "curated")
        from abovqa.cli import main
        assert main(["qagen", "--work", str(other), "--backend", "gemini", "--base-url", server.url, "--rpm", "6000",
                     "--keep-contradicting"]) == 0
    rejected = pd.read_parquet(work / "qa" / "rejected.parquet")
    colours = listing_colours(work)
    red = {i for i, c in colours.items() if c == "red"}
    other_colour = {i for i, c in colours.items() if c not in ("red", "")}
    uncoloured = {i for i, c in colours.items() if c == ""}
    assert red and other_colour, "the sample must hold red and other-coloured products for this test to mean anything"

    # kept: one colour question per image whose listing is red (agrees) or has no colour (unknown), none for the others
    assert set(qa["image_id"]) == red | uncoloured and qa["image_id"].is_unique
    assert all(v == ("agrees" if i in red else "unknown") for i, v in zip(qa["image_id"], qa["verified"]))
    assert (qa["answer"] == "red").all() and set(qa["question"]) <= {PARAPHRASES[0]}
    # rejected: all three paraphrases of every other-coloured image, with the listing's value; two paraphrases of the rest
    contradicting = rejected[rejected["reason"] == "contradicts_metadata"]
    assert sorted(contradicting["image_id"]) == sorted(i for i in other_colour for _ in range(3))
    assert all(colours[i] in v.lower() for i, v in zip(contradicting["image_id"], contradicting["metadata_value"]))
    assert set(contradicting["metadata_field"]) == {"color_standardized"} and (contradicting["verified"] == "contradicts").all()
    duplicates = rejected[rejected["reason"] == "near_duplicate"]
    assert sorted(duplicates["image_id"]) == sorted(i for i in red | uncoloured for _ in range(2))
    assert set(duplicates["duplicate_of"]) == {PARAPHRASES[0]}

    # --keep-contradicting keeps them, flagged, still one question per image
    kept = pd.read_parquet(other / "qa" / "qa.parquet")
    assert kept["image_id"].is_unique and set(kept["image_id"]) == set(colours)
    assert {i for i, v in zip(kept["image_id"], kept["verified"]) if v == "contradicts"} == other_colour
    assert not (pd.read_parquet(other / "qa" / "rejected.parquet")["reason"] == "contradicts_metadata").any()

    from abovqa.quality import quality_table
    table = quality_table(work).set_index("qtype")
    n = len(colours) * 3
    assert table.loc["color", "checked"] == n and table.loc["color", "contradicting_rejected"] == 3 * len(other_colour)
    assert math.isclose(table.loc["color", "contradicts"], 3 * len(other_colour) / n)


def test_the_template_backend_agrees_by_construction(tmp_path):
    "On the embedded sample and on a larger one with another seed: every template answer agrees with its listing."
    from abovqa.curate import curate
    from abovqa.sample import sample_root
    for n, seed in ((300, 0), (600, 3)):
        work = tmp_path / f"w{seed}"
        curate(sample_root(n_listings=n, seed=seed), work, image_check=False)
        qa = generate(work, verbose=False)
        rejected = pd.read_parquet(work / "qa" / "rejected.parquet")
        assert len(qa) > 1000 * n / 300 * 0.9 and (qa["verified"] == "agrees").all(), qa["verified"].value_counts()
        assert not rejected["reason"].isin(["contradicts_metadata", "near_duplicate"]).any()


PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({src: i.src.slice(0, 30), w: i.naturalWidth, h: i.naturalHeight}));
  document.body.setAttribute("data-images", JSON.stringify(images));
  const rows = [...document.querySelectorAll("tr[data-qa-id]")];
  rows.forEach((tr, k) => tr.querySelector(`input[value=${k < 3 ? "wrong" : k < 10 ? "correct" : "x"}]`)?.click());
  const out = document.createElement("pre");
  out.id = "verdicts";
  out.textContent = verdictsCsv();
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make chromium)")
def test_review_sheet_opens_in_chromium_with_images_and_its_verdicts_reach_the_card(study, tmp_path):
    from PIL import Image
    work = fresh_work(study, tmp_path)
    run = lambda *args: subprocess.run([str(BIN / "abovqa"), *args], capture_output=True, text=True, timeout=300)
    done = run("review", "--work", str(work), "--n", "40")
    assert done.returncode == 0, done.stderr
    page = (work / "qa" / "review_sheet.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 40 and "http" not in "".join(re.findall(r'(?:src|href)="([^"]+)"', page)).replace("data:", "")
    for src in sources:  # each is an inline JPEG that decodes
        assert src.startswith("data:image/jpeg;base64,")
        assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size[0] > 0
    assert run("export", "--work", str(work), "--formats", "parquet").returncode == 0
    assert "none recorded yet" in (work / "export" / "README.md").read_text()

    # the page in a real browser: every image decoded (naturalWidth > 0), the verdict buttons produce the CSV to import
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                          "--window-size=1280,900", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    images = json.loads(html.unescape(re.search(r'data-images="([^"]*)"', dom).group(1)))
    assert len(images) == 40 and all(i["w"] > 0 and i["h"] > 0 and i["src"].startswith("data:image/jpeg") for i in images)
    verdicts = html.unescape(re.search(r'<pre id="verdicts">(.*?)</pre>', dom, re.S).group(1))
    (tmp_path / "verdicts.csv").write_text(verdicts)
    table = pd.read_csv(tmp_path / "verdicts.csv", dtype=str, keep_default_na=False)
    assert len(table) == 40 and list(table["verdict"][:10]) == ["wrong"] * 3 + ["correct"] * 7 and (table["verdict"][10:] == "").all()

    done = run("review", "--work", str(work), "--import", str(tmp_path / "verdicts.csv"))
    assert done.returncode == 0 and "3 wrong of 10 reviewed" in done.stdout, done.stdout + done.stderr
    assert run("export", "--work", str(work), "--formats", "parquet").returncode == 0
    card = (work / "export" / "README.md").read_text()
    z, p, n = 1.959964, 0.3, 10  # Wilson by hand, independently of the library
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert f"3 wrong of 10 reviewed questions, an error rate of 30.0% (95% Wilson interval {100 * (centre - half):.1f}% – " \
           f"{100 * (centre + half):.1f}%)" in card
    assert "none recorded yet" not in card
    assert len(pd.read_parquet(work / "qa" / "review.parquet")) == 10


def test_a_bad_sheet_is_refused_and_unknown_questions_are_recorded_skips(study, tmp_path):
    from abovqa.quality import import_review, review_summary
    work = fresh_work(study, tmp_path)
    qa = pd.read_parquet(work / "qa" / "qa.parquet")
    pd.DataFrame({"qa_id": qa["qa_id"][:3], "verdict": ["correct", "probably", "wrong"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"line 3: 'probably'"):
        import_review(work, tmp_path / "bad.csv")
    pd.DataFrame({"question": ["Q?"]}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(ValueError, match="lacks the column"):
        import_review(work, tmp_path / "other.csv")
    pd.DataFrame({"qa_id": ["0" * 16], "verdict": ["wrong"]}).to_csv(tmp_path / "stranger.csv", index=False)
    with pytest.raises(ValueError, match="none of its 1 qa_ids"):
        import_review(work, tmp_path / "stranger.csv")
    pd.DataFrame({"qa_id": list(qa["qa_id"][:2]) + ["f" * 16], "verdict": ["wrong", "OK", "wrong"]}).to_csv(tmp_path / "mixed.csv", index=False)
    result = import_review(work, tmp_path / "mixed.csv")
    assert (result["recorded"], result["skipped"], result["wrong"], result["reviewed"]) == (2, 1, 1, 2)
    assert list(pd.read_csv(work / "qa" / "review_skipped.csv")["qa_id"]) == ["f" * 16]
    pd.DataFrame({"qa_id": qa["qa_id"][:1], "verdict": ["correct"]}).to_csv(tmp_path / "again.csv", index=False)
    import_review(work, tmp_path / "again.csv")  # a later verdict on the same question replaces the earlier one
    assert review_summary(work)["wrong"] == 0


def test_difficulty_empirical_counts_zero_shot_runs_only(study, tmp_path):
    from abovqa.quality import difficulty_empirical
    work = fresh_work(study, tmp_path)
    qa = pd.read_parquet(work / "qa" / "qa.parquet").head(4)
    (work / "predictions").mkdir()
    runs = {"blip-vqa-base-full": list(qa["answer"][:3]) + ["x"], "vilt-b32-vqa-full": list(qa["answer"][:1]) + ["x"] * 3,
            "clip-full": ["x"] * 4, "blip-vqa-base-tiny-lora": list(qa["answer"])}   # the last one is fine-tuned
    for run, answers in runs.items():
        pd.DataFrame({"qa_id": qa["qa_id"], "answer": [f" {a.title()}!" for a in answers], "ok": [True, True, True, run != "clip-full"]}
                     ).to_parquet(work / "predictions" / f"{run}.parquet")
    (work / "adapters" / "blip-vqa-base-tiny-lora").mkdir(parents=True)
    out = difficulty_empirical(work).set_index("qa_id").loc[qa["qa_id"]]
    assert out["n_models"].tolist() == [3] * 4 and out["n_correct"].tolist() == [2, 1, 1, 0]
    assert out["difficulty_empirical"].tolist() == ["easy", "medium", "medium", "hard"]
    assert pd.read_csv(work / "qa" / "difficulty_empirical.csv")["qa_id"].is_unique
    with pytest.raises(FileNotFoundError, match="run the baselines first"):
        difficulty_empirical(fresh_work(study, tmp_path, "empty"))
