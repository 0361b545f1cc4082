"""Shared fixtures: a tiny random BERT (built offline from a config) and a small generated corpus."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("TANDEM_NO_PROGRESS", "1")
# exact comparisons (against sentence-transformers, across runs) in fp32; tests/test_precision.py covers bf16
os.environ.setdefault("TANDEM_PRECISION", "fp32")
# never the user's cache: a `tandem demo --dry-run` here measures this machine's rates while the suite loads the CPU,
# and a cached probe from a busy machine would size the user's next demo to a fraction of its budget
os.environ["TANDEM_CACHE"] = __import__("tempfile").mkdtemp(prefix="tandem-test-cache-")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCIFACT = SHARED / "scifact"

WORDS = ("protein cell gene cancer virus immune drug brain heart blood therapy risk patient study trial dose "
         "mouse human tumor signal receptor pathway mutation vaccine infection model effect response level "
         "increase decrease sleep diet exercise obesity insulin glucose liver kidney lung bone muscle").split()


def make_tokenizer_dir(path: Path) -> Path:
    """A WordPiece tokenizer whose vocab holds the special tokens, the test words and the letters."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + list(".,;:!?-()'\"")
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(str(path / "vocab.txt"), do_lower_case=True)  # vocab_file (v4) or vocab (v5)
    tok.save_pretrained(path)
    return path


def make_tiny_bert(path: Path, seed: int = 0, dropout: float = 0.1) -> Path:
    """A random 2-layer BERT (hidden 32) saved with its tokenizer: a model directory like any other."""
    import torch
    from transformers import BertConfig, BertModel

    make_tokenizer_dir(path)
    vocab_size = len((path / "vocab.txt").read_text().split("\n")) - 1
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def _tiny_encoder(tiny_model_dir):
    from tandem.models.encoder import Encoder

    return Encoder.from_pretrained(str(tiny_model_dir), max_length=64)


@pytest.fixture
def tiny_encoder(_tiny_encoder):
    """A fresh copy per test, so tests may train or modify it."""
    return copy.deepcopy(_tiny_encoder)


def write_beir(path: Path, corpus: dict, queries: dict, qrels: dict[str, dict], crlf: bool = True) -> Path:
    """Write a BEIR-layout dataset (qrels with CRLF line endings, as in the original distribution)."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "corpus.jsonl", "w") as f:
        for pid, (title, text) in corpus.items():
            f.write(json.dumps({"_id": pid, "title": title, "text": text, "metadata": {}}) + "\n")
    with open(path / "queries.jsonl", "w") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text, "metadata": {}}) + "\n")
    (path / "qrels").mkdir(exist_ok=True)
    nl = "\r\n" if crlf else "\n"
    for split, rows in qrels.items():
        with open(path / "qrels" / f"{split}.tsv", "w", newline="") as f:
            f.write(f"query-id\tcorpus-id\tscore{nl}")
            for qid, docs in rows.items():
                for pid, rel in docs.items():
                    f.write(f"{qid}\t{pid}\t{rel}{nl}")
    return path


def generate_dataset(n_passages: int = 60, n_queries: int = 20, seed: int = 0):
    """Passages of random topic words; each query repeats words of its one relevant passage."""
    rng = random.Random(seed)
    corpus = {}
    for i in range(n_passages):
        words = rng.sample(WORDS, 12)
        corpus[f"d{i}"] = (" ".join(words[:2]), " ".join(words[2:]) + ".")
    queries, train, test = {}, {}, {}
    for j in range(n_queries):
        pid = f"d{rng.randrange(n_passages)}"
        words = (corpus[pid][0] + " " + corpus[pid][1]).rstrip(".").split()
        queries[f"q{j}"] = " ".join(rng.sample(words, 4))
        (train if j < n_queries // 2 else test)[f"q{j}"] = {pid: 1}
    return corpus, queries, {"train": train, "test": test}


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    corpus, queries, qrels = generate_dataset()
    return write_beir(tmp_path / "tiny", corpus, queries, qrels)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


# ---- running tandem as a user does: a subprocess, the CLI in process, a real server ------------------------

def tandem(*args, check=True, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "tandem", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "TANDEM_NO_PROGRESS": "1", **(env or {})}, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"tandem {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def run_cli(args, capsys) -> tuple[int, str]:
    from tandem.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out + out.err


KEY = "s3cret"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body=None, key: str | None = KEY, method: str | None = None, raw: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("X-API-Key", key)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class Server:
    def __init__(self, *args: str, env: dict | None = None):
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"tandem-serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "tandem", "serve", *args, "--port", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "TANDEM_NO_PROGRESS": "1", **(env or {})})
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                if call(self.url + "/health", key=None)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server did not start: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        return self.proc.returncode
