"""DPR-format NQ: passages, questions with answers, streamed training JSON, answer-hit accuracy."""

from __future__ import annotations

import json

import pytest

from tandem.data.dpr import iter_dpr_training, iter_json_array, load_psgs, load_qas
from tandem.data.types import Corpus
from tandem.errors import DataFormatError
from tandem.eval.answers import answer_accuracy, answer_tokens, has_answer
from tests.conftest import tandem


@pytest.mark.parametrize("text, answers, hit", [
    ("The Eiffel Tower is in Paris.", ["paris"], True),
    ("The Eiffel Tower is in Paris.", ["Pari"], False),  # tokens, not substrings
    ("The Eiffel Tower is in Paris.", ["eiffel  TOWER"], True),
    ("She moved to Zürich in 1990.", ["Zu\u0308rich"], True),  # NFD: composed and decomposed forms agree
    ("the U.S. army", ["U.S."], True),
    ("over 1,000 people", ["1,000"], True),
    ("over 1,000 people", ["1000"], False),
    ("nothing here", ["", "absent"], False),
])
def test_has_answer_hand_worked(text, answers, hit):
    assert has_answer(text, answers) is hit


def test_answer_tokens():
    assert answer_tokens("Don't stop, U.S.!") == ["don", "'", "t", "stop", ",", "u", ".", "s", ".", "!"]


def test_answer_accuracy_counts_first_hit_depth():
    corpus = Corpus.from_records([(f"p{i}", f"Title {i}", f"filler text {i}") for i in range(40)]
                                 + [("hitA", "Paris", "the capital is Paris"), ("hitB", "x", "born in 1879 in Ulm"),
                                    ("titleonly", "Einstein", "no answer in the body")])
    def run(hit, depth):
        docs = {f"p{i}": 100.0 - i for i in range(depth - 1)}
        docs[hit] = 100.0 - depth + 1  # at rank `depth`
        return docs
    runs = {"q1": run("hitA", 3), "q2": run("hitB", 30), "q3": run("titleonly", 1)}
    answers = {"q1": ["Paris"], "q2": ["1879"], "q3": ["Einstein"], "q4": ["nobody"]}  # q4: not in the run
    acc = answer_accuracy(runs, answers, corpus, ks=(5, 20, 100))
    assert acc == {"Acc@5": 0.25, "Acc@20": 0.25, "Acc@100": 0.5}  # the title does not count (as in DPR)


def test_streamed_json_array_equals_json_load(tmp_path):
    items = [{"question": f"q {i}", "answers": [str(i)], "positive_ctxs": [{"passage_id": str(i), "text": "x" * i}],
              "hard_negative_ctxs": [{"psg_id": str(i + 1)}], "negative_ctxs": []} for i in range(25)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(items, indent=2))
    streamed = [obj for _, obj in iter_json_array(path, chunk=7)]
    assert streamed == items
    lines = [line for line, _ in iter_json_array(path, chunk=7)]
    text = path.read_text().splitlines()
    assert all(text[l - 1].strip() == "{" for l in lines)  # each item's first line
    recs = list(iter_dpr_training(path))
    assert recs[3]["positives"] == [{"pid": "3"}] and recs[3]["negatives"] == [{"pid": "4", "source": "bm25"}]
    bad = tmp_path / "bad.json"
    bad.write_text('[\n{"question": "a"},\n{"question": \n]')
    with pytest.raises(DataFormatError, match=r"bad.json:4: invalid JSON"):
        list(iter_json_array(bad))


def test_psgs_and_qas(tmp_path):
    psgs = tmp_path / "psgs_w100.tsv"
    psgs.write_text('id\ttext\ttitle\n1\t"He said ""hi"" to Paris"\tParis\n2\tAlbert Einstein was born in '
                    '1879\tEinstein\n')
    corpus = load_psgs(psgs)
    assert corpus.text("1") == 'Paris He said "hi" to Paris'
    assert corpus.body(corpus.index["1"]) == 'He said "hi" to Paris'
    (tmp_path / "bad.tsv").write_text("id\ttext\ttitle\n1\tonly two\n")
    with pytest.raises(DataFormatError, match=r"bad.tsv:2: expected 3"):
        load_psgs(tmp_path / "bad.tsv")
    qas = tmp_path / "nq-test.qa.csv"
    qas.write_text("who said hi\t['Paris']\nwhen was einstein born\t[\"1879\", 'March 1879']\n")
    queries, answers = load_qas(qas)
    assert queries == {"0": "who said hi", "1": "when was einstein born"} and answers["1"] == ["1879", "March 1879"]
    (tmp_path / "bad.csv").write_text("q\t['a']\nq2\tnot a list\n")
    with pytest.raises(DataFormatError, match=r"bad.csv:2"):
        load_qas(tmp_path / "bad.csv")
    run = tmp_path / "run.trec"
    run.write_text("0 Q0 1 1 2.0 x\n0 Q0 2 2 1.0 x\n1 Q0 1 1 2.0 x\n1 Q0 2 2 1.0 x\n")
    out = tandem("evaluate", str(run), "--answers", str(qas), "--corpus", str(psgs), "--k", "1", "--k", "2", "--json")
    assert json.loads(out.stdout) == {"Acc@1": 0.5, "Acc@2": 1.0}


def test_dpr_lists_train_and_answer_accuracy_end_to_end(tmp_path, tiny_model_dir):
    """NQ in DPR's files: convert the training JSON, train on it, search the qa.csv questions, score Acc@k."""
    from tests.conftest import WORDS

    words = WORDS
    psgs = ["id\ttext\ttitle"] + [f"{i}\t{' '.join(words[(i * 3 + j) % len(words)] for j in range(10))}\tT{i}"
                                  for i in range(1, 41)]
    (tmp_path / "psgs_w100.tsv").write_text("\n".join(psgs) + "\n")
    train = [{"question": " ".join(words[(i * 3 + j) % len(words)] for j in (1, 4, 7)), "answers": ["x"],
              "positive_ctxs": [{"title": f"T{i}", "text": "...", "passage_id": str(i)}],
              "hard_negative_ctxs": [{"passage_id": str(i % 40 + 1)}, {"passage_id": str((i + 7) % 40 + 1)},
                                     {"passage_id": "999"}], "negative_ctxs": []} for i in range(1, 21)]
    (tmp_path / "nq-train.json").write_text(json.dumps(train))
    lists = tmp_path / "lists.jsonl"
    r = tandem("data", "dpr-lists", str(tmp_path / "nq-train.json"), "--out", str(lists), "--corpus",
               str(tmp_path / "psgs_w100.tsv"))
    assert "20 lists" in r.stderr and "20 contexts not in the corpus dropped" in r.stderr
    first = json.loads(lists.read_text().splitlines()[0])
    assert first["query"] == train[0]["question"] and first["negatives"][0]["source"] == "bm25"
    # a dataset directory in DPR's layout is not needed: lists carry their questions; the corpus is psgs_w100
    qa = tmp_path / "nq-test.qa.csv"
    question = lambda i: " ".join(words[(i * 3 + j) % len(words)] for j in (2, 5))  # noqa: E731
    qa.write_text("".join(f"{question(i)}\t['{words[(i * 3 + 8) % len(words)]}']\n" for i in range(1, 11)))
    tandem("index", "--data", str(tmp_path / "nqdir"), "--out", str(tmp_path / "idx"), "--model", str(tiny_model_dir),
           "--max-length", "32", "--no-progress", check=False)  # no dataset dir: refused cleanly
    (tmp_path / "nqdir").mkdir()
    (tmp_path / "nqdir" / "collection.tsv").write_text("".join(f"{l.split(chr(9))[0]}\t{l.split(chr(9))[1]}\n"
                                                               for l in psgs[1:]))
    tandem("index", "--data", str(tmp_path / "nqdir"), "--out", str(tmp_path / "idx"), "--model", str(tiny_model_dir),
           "--max-length", "32", "--no-progress")
    tandem("train", "--data", str(tmp_path / "nqdir"), "--lists", str(lists), "--out", str(tmp_path / "t"), "--mode",
           "retriever", "--retriever", str(tiny_model_dir), "max_steps=2", "batch_size=4", "list_size=3",
           "query_max_length=16", "passage_max_length=32", "--no-progress")
    run = tmp_path / "run.trec"
    tandem("search", "--index", str(tmp_path / "idx"), "--queries", str(qa), "--k", "40", "--out", str(run))
    acc = json.loads(tandem("evaluate", str(run), "--answers", str(qa), "--corpus", str(tmp_path / "psgs_w100.tsv"),
                            "--k", "1", "--k", "40", "--json").stdout)
    assert acc["Acc@40"] == 1.0 and 0.0 <= acc["Acc@1"] <= 1.0  # every answer word is in some passage
