"""The ``tandem`` command line. Each command parses, builds settings and calls the library.

Heavy modules (torch, transformers, faiss) are imported inside the commands so that
``tandem --help`` stays instant.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from tandem.errors import ConfigError, TandemError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="tandem: train a dense retriever and a re-ranker together (RocketQAv2) and search with them.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect and validate datasets.")
app.add_typer(data_app, name="data")

log = logging.getLogger("tandem")


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


@app.callback()
def _global_options(precision: Precision = typer.Option(
        None, "--precision", envvar="TANDEM_PRECISION", show_default="auto",
        help="Precision of PyTorch inference and training: auto (bf16 where the hardware computes bf16 "
             "natively: a CUDA GPU, or a CPU with AVX-512 BF16 / AMX; else fp32), fp32 or bf16. A training "
             "config's `precision: fp32|bf16` wins for training.")) -> None:
    """tandem: train a dense retriever and a re-ranker together (RocketQAv2) and search with them."""
    if precision is not None:
        os.environ["TANDEM_PRECISION"] = precision.value


class IndexType(str, Enum):
    flat = "flat"
    hnsw = "hnsw"
    ivfpq = "ivfpq"
    ivf = "ivf"


class Store(str, Enum):
    faiss = "faiss"
    milvus = "milvus"


class Backend(str, Enum):
    torch = "torch"
    onnx = "onnx"
    onnx_int8 = "onnx-int8"
    auto = "auto"


def _auto_backend_help() -> str:
    """What ``--backend auto`` picks on this machine, for the option's help (no model is loaded)."""
    try:
        from tandem.utils import resolve_backend

        gpu = bool(os.environ.get("TANDEM_DEVICE", "").startswith("cuda")) or os.path.isdir("/proc/driver/nvidia/gpus")
        picked, why = resolve_backend("auto", gpu=gpu)  # without importing torch: help stays fast
        return f" auto: the fastest measured here, which on this machine is {picked} ({why})."
    except Exception:  # noqa: BLE001 - help text must never fail
        return ""


BackendOpt = typer.Option(Backend.torch, "--backend", help="Inference runtime of the encoder: torch, onnx (ONNX "
                                                           "Runtime, fp32), onnx-int8 (dynamic int8 quantisation) or "
                                                           "auto." + _auto_backend_help())


class Pooling(str, Enum):
    mean = "mean"
    cls = "cls"


class EmbDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"
    none = "none"


DataOpt = typer.Option(..., "--data", help="BEIR-layout dataset directory, or a dataset name resolved in "
                                           "$TANDEM_DATA, then the user cache, then downloaded.")
ProgressOpt = typer.Option(True, "--progress/--no-progress",
                           help="Show progress bars (TANDEM_NO_PROGRESS=1 hides them).")


def _echo_err(msg: str) -> None:
    typer.echo(msg, err=True)


def _load_split(data: str, split: str):
    from tandem.data import load_beir, resolve_dataset

    directory = resolve_dataset(data)
    return directory, load_beir(directory, split)


@data_app.command("dpr-lists")
def data_dpr_lists(train_json: Path = typer.Argument(..., help="DPR training file (nq-train.json), streamed."),
                   out: Path = typer.Option(..., "--out", help="Training lists to write (JSON lines)."),
                   corpus: Optional[Path] = typer.Option(None, "--corpus", help="psgs_w100.tsv: drop contexts whose "
                                                                                "passage id it lacks "
                                                                                "(counted).")) -> None:
    """Convert DPR training examples (positive and hard-negative contexts) into tandem training lists."""
    from tandem.data.dataset import load_any_corpus
    from tandem.data.dpr import iter_dpr_training
    from tandem.io import atomic_open

    known = load_any_corpus(corpus) if corpus is not None else None
    n = dropped = no_pos = 0
    with atomic_open(out) as f:
        for rec in iter_dpr_training(train_json):
            if known is not None:
                keep = lambda es: [e for e in es if e["pid"] in known]  # noqa: E731
                before = len(rec["positives"]) + len(rec["negatives"])
                rec["positives"], rec["negatives"] = keep(rec["positives"]), keep(rec["negatives"])
                dropped += before - len(rec["positives"]) - len(rec["negatives"])
            if not rec["positives"] or not rec["negatives"]:
                no_pos += 1
                continue
            rec.pop("answers", None)
            f.write(json.dumps(rec) + "\n")
            n += 1
    _echo_err(f"dpr-lists: {n} lists -> {out}; {no_pos} examples without a positive or a negative left out"
              + (f"; {dropped} contexts not in the corpus dropped" if corpus is not None else ""))


@data_app.command("msmarco-lists")
def data_msmarco_lists(triples: Path = typer.Argument(..., help="MS MARCO qidpidtriples.train.full.tsv[.gz] "
                                                                 "(qid, positive pid, negative pid), streamed."),
                       out: Path = typer.Option(..., "--out", help="Training lists to write (JSON lines)."),
                       max_negatives: int = typer.Option(32, "--max-negatives", min=1,
                                                         help="Distinct negatives kept per query (file order)."),
                       corpus: Optional[Path] = typer.Option(None, "--corpus", help="collection.tsv: drop triples "
                                                                                    "whose ids it lacks "
                                                                                    "(counted).")) -> None:
    """Convert MS MARCO's official id triples (BM25 hard negatives) into tandem training lists."""
    from tandem.data.dataset import load_any_corpus
    from tandem.data.msmarco import triples_to_lists

    c = triples_to_lists(triples, out, max_negatives, load_any_corpus(corpus) if corpus is not None else None)
    _echo_err(f"msmarco-lists: {c['lists']} lists from {c['triples']} triples -> {out}; {c['negatives_capped']} "
              f"negatives over the cap of {max_negatives}" + (f"; {c['unknown']} triples with ids not in the corpus "
                                                               "dropped" if corpus is not None else ""))


@data_app.command("msmarco-run")
def data_msmarco_run(top1000: Path = typer.Argument(..., help="MS MARCO top1000.<split>[.tsv][.gz] (qid, pid, query, "
                                                               "passage), streamed."),
                     out: Path = typer.Option(..., "--out", help="TREC run to write (rank = order in the file)."),
                     queries_out: Optional[Path] = typer.Option(None, "--queries-out",
                                                                help="Also write the queries as "
                                                                     "qid<TAB>text.")) -> None:
    """Convert MS MARCO's official top-1000 re-ranking candidates into a TREC run (for tandem rerank)."""
    from tandem.data.msmarco import top1000_to_trec

    nq, lines = top1000_to_trec(top1000, out, queries_out)
    _echo_err(f"msmarco-run: {nq} queries, {lines} candidates -> {out}"
              + (f"; queries -> {queries_out}" if queries_out else ""))


@data_app.command("check")
def data_check(directory: str = typer.Argument(..., help="Dataset directory or name."),
               as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON.")) -> None:
    """Validate every file of a dataset (first bad line is reported) and print its statistics."""
    from tandem.data import check_dataset, resolve_dataset

    stats = check_dataset(resolve_dataset(directory))
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        return
    typer.echo(f"{stats['directory']}: OK")
    typer.echo(f"  passages  {stats['passages']:>10,}  (mean {stats['passage_words_mean']:.0f} words, "
               f"p95 {stats['passage_words_p95']:.0f})")
    typer.echo(f"  queries   {stats['queries']:>10,}  (mean {stats['query_words_mean']:.1f} words)")
    for split, s in stats["splits"].items():
        line = f"  {s['file']}: {s['queries']:,} queries, {s['judgments']:,} judgments ({s['relevant']:,} relevant)"
        if s["unknown_query_judgments"] or s["unknown_passage_judgments"]:
            line += (f"; WARNING {s['unknown_query_judgments']} name unknown queries, "
                     f"{s['unknown_passage_judgments']} unknown passages")
        typer.echo(line)


@app.command()
def bm25(data: str = DataOpt,
         split: str = typer.Option("test", help="Qrels split whose queries are searched."),
         out: Path = typer.Option(..., "--out", help="TREC run file to write."),
         k: int = typer.Option(1000, "--k", min=1, help="Passages per query."),
         k1: float = typer.Option(1.5, help="BM25 k1."),
         b: float = typer.Option(0.75, help="BM25 b."),
         stemmer: str = typer.Option("english", help="Snowball stemmer name (PyStemmer), or none for no stemming."),
         progress: bool = ProgressOpt) -> None:
    """BM25 (bm25s, Lucene scoring, English stopwords, English stemming) over the corpus; writes a TREC run."""
    from tandem.data import write_run
    from tandem.index.bm25 import BM25, BM25Settings
    from tandem.io import manifest, write_json

    t0 = time.perf_counter()
    directory, ds = _load_split(data, split)
    settings = BM25Settings(k1=k1, b=b, stemmer=stemmer)
    queries = ds.split_queries()
    run = BM25(ds.corpus, settings, progress).search(queries, k, progress)
    write_run(out, run, tag="bm25")
    write_json(Path(str(out) + ".json"), manifest("run", retriever="bm25", settings=settings.__dict__,
                                                   data=str(directory), split=split, k=k))
    _echo_err(f"bm25: {len(run)} queries -> {out} ({time.perf_counter() - t0:.1f}s)")


@app.command()
def index(data: str = DataOpt,
          out: Path = typer.Option(..., "--out", help="Index directory to write (replaced atomically)."),
          model: Optional[str] = typer.Option(None, help="Hugging Face id or local directory; default: the embedded "
                                                         "all-MiniLM-L6-v2."),
          max_length: int = typer.Option(256, "--max-length", min=2, help="Max tokens per passage."),
          batch_size: int = typer.Option(32, "--batch-size", min=1, help="Passages per forward pass."),
          pooling: Optional[Pooling] = typer.Option(None, help="Override the model's pooling."),
          normalize: Optional[bool] = typer.Option(None, "--normalize/--no-normalize",
                                                   help="Override the model's L2 normalisation."),
          index_type: IndexType = typer.Option(IndexType.flat, "--index-type",
                                               help="flat (exact), hnsw, ivfpq (FAISS) or ivf (IVF_FLAT, Milvus)."),
          store: Store = typer.Option(Store.faiss, "--store", help="Where the vectors live: a FAISS file (default) or "
                                                                    "a Milvus collection (Milvus Lite inside --out, or "
                                                                    "the server at --milvus-uri)."),
          milvus_uri: Optional[str] = typer.Option(None, "--milvus-uri", help="A Milvus server "
                                                   "(http://host:19530; token from $TANDEM_MILVUS_TOKEN); default: "
                                                   "Milvus Lite inside --out."),
          milvus_collection: Optional[str] = typer.Option(None, "--milvus-collection",
                                                          help="The collection's alias (default: tandem_ and the "
                                                               "--out directory's name)."),
          append: bool = typer.Option(False, "--append", help="Add --data's passages to the existing Milvus-store "
                                                              "index at --out, encoded with its model (no rebuild; "
                                                              "a server picks them up on reload)."),
          embeddings: EmbDtype = typer.Option(EmbDtype.float32, help="Also save embeddings.npy in this dtype."),
          shard_size: int = typer.Option(50_000, "--shard-size", min=1, help="Passages encoded per resumable shard "
                                                                             "(a killed build continues from its "
                                                                             "shards)."),
          backend: Backend = BackendOpt,
          progress: bool = ProgressOpt) -> None:
    """Encode the corpus and build a FAISS index or a Milvus collection (with ids and manifest.json); resumable
    shard by shard. ``--append`` adds passages to a Milvus-store index.

    Under ``torchrun --nproc_per_node N`` the shards are spread over N processes (one GPU each)."""
    from tandem.data import resolve_dataset
    from tandem.data.dataset import corpus_file as corpus_file_of
    from tandem.index.dense import build_index
    from tandem.io import sha256_file
    from tandem.models.encoder import Encoder

    t0 = time.perf_counter()
    directory = resolve_dataset(data)
    corpus_file = corpus_file_of(directory)
    if append:
        from tandem.data.dataset import iter_any_corpus
        from tandem.index.dense import append_to_index

        n = append_to_index(out, iter_any_corpus(corpus_file), batch_size=batch_size, progress=progress)
        _echo_err(f"index: appended {n:,} passages from {corpus_file} -> {out} ({time.perf_counter() - t0:.1f}s)")
        return
    encoder = Encoder.from_pretrained(model, max_length=max_length, pooling=pooling.value if pooling else None,
                                      normalize=normalize, backend=backend.value)
    # the passages are streamed from the file, a shard at a time: memory does not grow with the corpus
    idx = build_index(corpus_file, out, encoder, corpus_hash=sha256_file(corpus_file), corpus_file=str(corpus_file),
                      index_type=index_type.value,
                      batch_size=batch_size, embeddings_dtype=None if embeddings == EmbDtype.none else embeddings.value,
                      progress=progress, shard_size=shard_size, distributed=True, store=store.value,
                      milvus_uri=milvus_uri, milvus_collection=milvus_collection)
    dt = time.perf_counter() - t0
    if idx is None:  # under torchrun: this process encoded its shards; rank 0 builds the index
        _echo_err(f"index: this process's shards encoded ({dt:.1f}s); rank 0 writes {out}")
        return
    where = f"Milvus collection {idx.collection}" if store == Store.milvus else "FAISS"
    idx.close()
    _echo_err(f"index: {len(idx):,} passages, dim {idx.dim}, {index_type.value} ({where}) -> {out} "
              f"({dt:.1f}s, {len(idx) / dt:.1f} passages/s)")


@app.command()
def search(index_dir: Path = typer.Option(..., "--index", help="Index directory from tandem index."),
           data: Optional[str] = typer.Option(None, "--data", help="Dataset whose split queries are searched."),
           split: str = typer.Option("test", help="Qrels split whose queries are searched."),
           query: Optional[str] = typer.Option(None, "--query", help="Search one free-text query and print results."),
           queries_file: Optional[Path] = typer.Option(None, "--queries",
                                                       help="Search a query file: BEIR queries.jsonl or a TSV of "
                                                            "id<TAB>text."),
           k: int = typer.Option(100, "--k", min=1, help="Passages per query."),
           out: Optional[Path] = typer.Option(None, "--out", help="TREC run file to write."),
           model: Optional[str] = typer.Option(None, help="Query encoder; must be the model the index was built with "
                                                          "(default: read from the index manifest)."),
           batch_size: int = typer.Option(64, "--batch-size", min=1),
           hybrid: bool = typer.Option(False, "--hybrid", help="Fuse the dense ranking with BM25's over the same "
                                                              "corpus (reciprocal rank fusion, each stage's top "
                                                              "max(k, 100))."),
           backend: Backend = BackendOpt,
           progress: bool = ProgressOpt) -> None:
    """Retrieve top-k passages for a dataset's queries (TREC run) or for one query string."""
    from tandem.data import write_run
    from tandem.index.dense import dense_search, load_index_and_encoder
    from tandem.index.fusion import HYBRID_DEPTH

    if query is None and data is None and queries_file is None:
        raise UsageError("give --data DIR (searches the split's queries), --queries FILE or --query TEXT")
    if query is not None and not query.strip():
        raise UsageError("--query is empty")
    t0 = time.perf_counter()
    idx, encoder = load_index_and_encoder(index_dir, model)
    encoder.set_backend(backend.value)
    if query is not None:
        from tandem.data import ranked

        corpus = _index_corpus(idx, data) if hybrid or data is not None else None
        run = dense_search(idx, encoder, {"q": query}, max(k, HYBRID_DEPTH) if hybrid else k)
        if hybrid:
            run = _fuse_with_bm25(run, {"q": query}, corpus, k)
        for rank, (pid, score) in enumerate(ranked(run["q"]), start=1):
            snippet = f"  {corpus.text(pid)[:100]}" if data is not None else ""
            typer.echo(f"{rank:>3}  {score:8.4f}  {pid}{snippet}")
        if out:
            write_run(out, run, tag="tandem-dense")
        return
    if queries_file is not None:
        from tandem.data import load_queries, load_queries_tsv

        is_jsonl = queries_file.name.endswith((".jsonl", ".jsonl.gz"))
        if queries_file.name.removesuffix(".gz").endswith(".qa.csv"):  # DPR questions: ids are line numbers
            from tandem.data.dpr import load_qas

            queries = load_qas(queries_file)[0]
        else:
            queries = load_queries(queries_file) if is_jsonl else load_queries_tsv(queries_file)
    else:
        _, ds = _load_split(data, split)
        queries = ds.split_queries()
    if out is None:
        raise UsageError("--out RUN.trec is required with --data or --queries")
    t1 = time.perf_counter()
    run = dense_search(idx, encoder, queries, max(k, HYBRID_DEPTH) if hybrid else k, batch_size=batch_size,
                       progress=progress)
    if hybrid:
        run = _fuse_with_bm25(run, queries, _index_corpus(idx, data), k)
    dt = time.perf_counter() - t1
    write_run(out, run, tag="tandem-hybrid" if hybrid else "tandem-dense")
    _echo_err(f"search: {len(run)} queries -> {out} ({dt:.1f}s search, {len(run) / dt:.1f} queries/s; "
              f"{time.perf_counter() - t0:.1f}s total)")


def _index_corpus(idx, data: Optional[str]):
    """The passages of an index: ``--data``'s corpus, else the corpus file the index recorded (checked against
    the index's corpus hash), with any passages appended since."""
    from tandem.index.dense import index_corpus

    corpus, _ = index_corpus(idx, data)
    if corpus is None:
        raise UsageError("--hybrid needs the passage texts for BM25: pass --data (the indexed dataset)")
    return corpus


def _fuse_with_bm25(run: dict, queries: dict, corpus, k: int) -> dict:
    """The dense ``run`` fused with BM25 over ``corpus`` by reciprocal rank fusion, top ``k`` kept."""
    from tandem.index.bm25 import BM25
    from tandem.index.fusion import HYBRID_DEPTH, fuse_runs

    lexical = BM25(corpus).search(queries, max(k, HYBRID_DEPTH))
    return fuse_runs([run, lexical], top=k)


@app.command("rerank")
def rerank_cmd(run: Path = typer.Option(..., "--run", help="First-stage TREC run."),
               data: str = DataOpt,
               split: str = typer.Option("test", help="Qrels split (only its queries' texts are needed)."),
               reranker: Optional[str] = typer.Option(None, "--reranker", help="Cross-encoder id or directory."),
               k: int = typer.Option(20, "--k", min=1, help="Candidates per query to re-score."),
               out: Path = typer.Option(..., "--out", help="TREC run file to write."),
               batch_size: int = typer.Option(32, "--batch-size", min=1),
               keep_tail: bool = typer.Option(True, "--keep-tail/--drop-tail",
                                              help="Keep the first stage's passages below rank k after the re-ranked "
                                                   "ones."),
               backend: Backend = typer.Option(Backend.torch, "--backend", help="Runtime of a plain cross-encoder: "
                                                                                "torch, onnx or onnx-int8."),
               progress: bool = ProgressOpt) -> None:
    """Re-score the top-k of a run with a cross-encoder; writes a TREC run."""
    from tandem.data import read_run, write_run
    from tandem.models.reranker import Reranker
    from tandem.rerank import rerank

    t0 = time.perf_counter()
    _, ds = _load_split(data, split)
    model = Reranker.from_pretrained(reranker).set_backend(backend.value)
    if not model.settings.trained:
        log.warning("re-ranker %s has an untrained head: its scores are noise", model.name)
    result = rerank(read_run(run), ds.queries, ds.corpus, model, k, batch_size, progress, keep_tail)
    write_run(out, result, tag="tandem-rerank")
    pairs = sum(min(k, len(v)) for v in result.values())
    dt = time.perf_counter() - t0
    _echo_err(f"rerank: {pairs} pairs over {len(result)} queries -> {out} ({dt:.1f}s, {pairs / dt:.1f} pairs/s)")


@app.command()
def fuse(runs: List[Path] = typer.Argument(..., help="TREC run files to fuse (e.g. a BM25 run and a dense run)."),
         out: Path = typer.Option(..., "--out", help="TREC run file to write."),
         k: int = typer.Option(60, "--rrf-k", min=0, help="The RRF constant: each run adds weight / (k + rank)."),
         weights: Optional[str] = typer.Option(None, "--weights", help="Comma-separated weight per run (default 1)."),
         depth: int = typer.Option(1000, "--depth", min=1, help="Ranks of each run that count."),
         top: int = typer.Option(1000, "--top", min=1, help="Passages written per query.")) -> None:
    """Hybrid first stage: reciprocal rank fusion of several runs; writes a TREC run."""
    from tandem.data import read_run, write_run
    from tandem.index.fusion import fuse_runs

    if len(runs) < 2:
        raise UsageError("fuse needs at least two runs")
    w = None
    if weights is not None:
        try:
            w = [float(x) for x in weights.split(",")]
        except ValueError:
            raise UsageError(f"--weights: expected comma-separated numbers, got {weights!r}") from None
    fused = fuse_runs([read_run(r) for r in runs], k=k, weights=w, depth=depth, top=top)
    write_run(out, fused, tag="tandem-rrf")
    _echo_err(f"fuse: {len(runs)} runs, {len(fused)} queries -> {out}")


@app.command()
def evaluate(runs: List[Path] = typer.Argument(..., help="TREC run files."),
             qrels: Optional[Path] = typer.Option(None, "--qrels", help="Qrels file (BEIR TSV or TREC)."),
             answers: Optional[Path] = typer.Option(None, "--answers", help="Or/also: questions with answer strings "
                                                                            "(DPR *.qa.csv): top-k answer accuracy."),
             corpus: Optional[Path] = typer.Option(None, "--corpus", help="With --answers: the passages (DPR "
                                                                          "psgs_w100.tsv, BEIR corpus.jsonl, or "
                                                                          "MS MARCO collection.tsv)."),
             ks: List[int] = typer.Option([5, 20, 100], "--k", help="With --answers: accuracy depths."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON: measure -> value (one run) or "
                                                                "run path -> measure -> value (several)."),
             measures: List[str] = typer.Option(["nDCG@10", "RR@10", "R@100", "R@1000"], "--measure",
                                                help="ir_measures names; repeat the option for several.")) -> None:
    """Score runs against qrels (nDCG@10, RR@10, R@100, R@1000) and/or answers (DPR's Acc@k), side by side."""
    from tandem.data import load_qrels, read_run
    from tandem.eval.metrics import evaluate as _evaluate, format_table

    if qrels is None and answers is None:
        raise UsageError("give --qrels, or --answers with --corpus")
    results: dict[str, dict[str, float]] = {str(r): {} for r in runs}
    names = list(measures) if qrels is not None else []
    loaded = {str(r): read_run(r) for r in runs}
    if qrels is not None:
        judged = load_qrels(qrels)
        for r, run in loaded.items():
            results[r].update(_evaluate(run, judged, measures))
    if answers is not None:
        from tandem.data.dataset import load_any_corpus
        from tandem.data.dpr import load_qas
        from tandem.eval.answers import answer_accuracy

        if corpus is None:
            raise UsageError("--answers needs --corpus (the passages whose text is searched for the answers)")
        _, ans = load_qas(answers)
        passages = load_any_corpus(corpus)
        for r, run in loaded.items():
            results[r].update(answer_accuracy(run, ans, passages, sorted(set(ks))))
        names += [f"Acc@{k}" for k in sorted(set(ks))]
    if as_json:
        typer.echo(json.dumps(next(iter(results.values())) if len(runs) == 1 else results, indent=2))
    else:
        typer.echo(format_table(results, names))


class Mode(str, Enum):
    joint = "joint"
    static = "static"
    retriever = "retriever"
    reranker = "reranker"


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context,
          data: str = DataOpt,
          out: Path = typer.Option(..., "--out", help="Output directory: retriever/, reranker/, config.json, "
                                                      "metrics.jsonl, checkpoints/."),
          lists: Optional[Path] = typer.Option(None, "--lists",
                                               help="Training lists (JSON lines: qid, positives, negatives; README)."),
          run: Optional[Path] = typer.Option(None, "--run", help="Or: a TREC run whose top-n (minus positives) "
                                                                 "become the negatives."),
          top_n: int = typer.Option(50, "--top-n", min=1, help="With --run: candidates per query."),
          split: str = typer.Option("train", help="Qrels split of the training queries."),
          mode: Optional[Mode] = typer.Option(None, "--mode", help="joint (default), static, retriever, reranker."),
          retriever: Optional[str] = typer.Option(None, "--retriever", help="Retriever to start from (id or dir)."),
          reranker: Optional[str] = typer.Option(None, "--reranker", help="Re-ranker to start from (id or dir)."),
          config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON settings file."),
          resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoints/latest."),
          progress: bool = ProgressOpt) -> None:
    """Train jointly (dynamic listwise distillation) or one model alone.

    Any setting can be overridden after the options as key=value (e.g. list_size=16 lr_retriever=3e-5);
    `tandem train-settings` lists them all.
    """
    from tandem.train import train as _train

    overrides = list(ctx.args)
    if mode is not None:
        overrides.append(f"mode={mode.value}")
    result = _train(data, out, lists=lists, run=run, top_n=top_n, split=split, retriever=retriever,
                    reranker=reranker, config=config, overrides=overrides, resume=resume, progress=progress)
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.final_losses.items())
    _echo_err(f"train: {result.steps} steps in {result.seconds:.0f}s ({result.sequences_per_s:.1f} sequences/s); "
              f"last losses: {losses}")
    for model, metrics in result.heldout.items():
        _echo_err(f"  held-out lists, {model}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    _echo_err(f"  models and logs -> {out}")


class DenoiseBy(str, Enum):
    prob = "prob"
    rank = "rank"


class Calibration(str, Enum):
    platt = "platt"
    sigmoid = "sigmoid"


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def mine(ctx: typer.Context,
         data: str = DataOpt,
         out: Path = typer.Option(..., "--out", help="Training lists to write (JSON lines); the report "
                                                     "(.report.md/.report.json) and work files (.mine/) go beside it."),
         retriever: Optional[str] = typer.Option(None, "--retriever", help="Dense retriever (id or dir; default: the "
                                                                           "embedded MiniLM)."),
         index: Optional[Path] = typer.Option(None, "--index", help="A built tandem index to mine from instead "
                                                                    "(its model encodes the queries)."),
         bm25: bool = typer.Option(False, "--bm25", help="Mine with BM25 too (merged with dense by reciprocal rank "
                                                         "fusion), or alone with --no-dense."),
         dense: bool = typer.Option(True, "--dense/--no-dense", help="Mine with the dense retriever."),
         top_n: int = typer.Option(50, "--top-n", min=1, help="Candidates per training query."),
         split: str = typer.Option("train", help="Qrels split of the training queries."),
         reranker: Optional[str] = typer.Option(None, "--reranker",
                                                help="Trained re-ranker (id or dir) to denoise with."),
         warmup_reranker: bool = typer.Option(False, "--warmup-reranker",
                                              help="Train a re-ranker on the undenoised lists first and denoise with "
                                                   "it."),
         warmup_steps: int = typer.Option(60, "--warmup-steps", min=1, help="Steps of the re-ranker warm-up."),
         low: float = typer.Option(0.1, "--low", help="Probability below which a candidate is a denoised negative."),
         high: float = typer.Option(0.9, "--high", help="Probability above which a candidate becomes a pseudo-positive "
                                                        "(> 1: none)."),
         low_from_positives: float = typer.Option(0.0, "--low-from-positives", min=0.0, max=0.99,
                                                  help="Set --low to this quantile of the held-out labelled positives' "
                                                       "probabilities (e.g. 0.1)."),
         denoise_by: DenoiseBy = typer.Option(DenoiseBy.prob, "--denoise-by", help="prob thresholds, or rank cuts "
                                                                                    "(--low-rank/--high-rank)."),
         low_rank: int = typer.Option(10, "--low-rank",
                                      help="rank mode: re-ranker ranks below this are denoised negatives."),
         high_rank: int = typer.Option(0, "--high-rank",
                                       help="rank mode: the re-ranker's top-k become pseudo-positives."),
         calibration: Calibration = typer.Option(Calibration.platt, "--calibration",
                                                 help="platt: fit sigmoid(a*logit+b) on held-out labelled pairs; "
                                                      "sigmoid: the raw logit's sigmoid."),
         denoise_top: int = typer.Option(0, "--denoise-top", min=0, help="Score only each query's first k candidates "
                                                                         "(0: all)."),
         max_pseudo: int = typer.Option(3, "--max-pseudo", min=0, help="Pseudo-positives per query at most."),
         denoise_queries: int = typer.Option(0, "--denoise-queries", min=0,
                                             help="Denoise only this many training queries (held-out ones first, the "
                                                  "rest by a hash of the id) and write their lists alone (0: all)."),
         restart: bool = typer.Option(False, "--restart", help="Discard the work files of an earlier run."),
         mine_set: list[str] = typer.Option([], "--set", help="Any mining setting as KEY=VALUE (repeatable; "
                                                              "tandem mine-settings lists them), over the options "
                                                              "above."),
         backend: Backend = BackendOpt,
         progress: bool = ProgressOpt) -> None:
    """Mine hard negatives, denoise them with a re-ranker and write training lists with a report.

    A killed run continues where it stopped when run again. Settings of the warm-up training can follow
    as key=value (e.g. lr_reranker=3e-5 reranker_max_length=160).
    """
    from tandem.mining import MineSettings, mine as _mine
    from tandem.settings import load_settings, parse_overrides

    options = dict(top_n=top_n, dense=dense, bm25=bm25, split=split, denoise_by=denoise_by.value, low=low, high=high,
                   low_from_positives=low_from_positives, low_rank=low_rank, high_rank=high_rank,
                   calibration=calibration.value, denoise_top=denoise_top, max_pseudo=max_pseudo,
                   denoise_queries=denoise_queries)
    settings = load_settings(MineSettings, overrides={**options, **parse_overrides(mine_set)})
    if reranker and warmup_reranker:
        raise ConfigError("give a trained re-ranker (--reranker) or ask for a warm-up (--warmup-reranker), not both")
    first = dict(data=data, out=out, retriever=retriever, index=index, settings=settings, progress=progress,
                 backend=backend.value)
    if warmup_reranker:  # the undenoised lists, a re-ranker warmed up on them, then the same candidates denoised
        from tandem.mining.run import work_dir
        from tandem.train.api import warmup_reranker as warm_up

        _mine(**first, restart=restart)
        reranker = str(warm_up(data, out, work_dir(out) / "warmup", warmup_steps, list(ctx.args),
                               settings.calibration_fraction, progress, settings.heldout_salt))
        restart = False
    result = _mine(**first, reranker=reranker, restart=restart, warmed_up=warmup_reranker)
    r = result.report
    _echo_err(f"mine: {r['lists']} lists -> {out} ({r['total_seconds']:.0f}s); mean "
              f"{r['candidates_per_query']['mean']:.1f} "
              f"candidates per query, a labelled positive retrieved for {100 * r['positives_retrieved_share']:.1f}% of "
              "queries")
    d = r.get("denoising")
    if d:
        _echo_err(f"  denoised: {d['denoised_negatives']} clean negatives, {d['flagged_as_likely_false_negatives']} "
                  f"flagged as likely false negatives ({100 * d['flagged_share']:.1f}% of scored), "
                  f"{d['pseudo_positives']} pseudo-positives")
    stem = str(out).removesuffix(".jsonl")
    _echo_err(f"  report -> {stem}.report.md")


@app.command()
def serve(index: Path = typer.Argument(..., help="Index directory (tandem index); its model encodes the queries."),
          reranker: Optional[str] = typer.Option(None, "--reranker", help="Re-ranker (id or dir) for the candidates."),
          data: Optional[str] = typer.Option(None, "--data", help="Dataset of the indexed corpus (default: the corpus "
                                                                 "file recorded in the index)."),
          host: str = typer.Option("127.0.0.1", help="Interface to bind (127.0.0.1: this machine only)."),
          port: int = typer.Option(8000, help="TCP port."),
          api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TANDEM_API_KEY",
                                                help="Require this X-API-Key header on /search, /info, /reload, "
                                                     "/passages."),
          allow_reload: bool = typer.Option(False, "--allow-reload",
                                            help="Enable POST /reload (SIGHUP always reloads)."),
          allow_append: bool = typer.Option(False, "--allow-append", help="Enable POST /passages: add passages to a "
                                                                          "Milvus-store index without a rebuild."),
          max_batch: int = typer.Option(32, "--max-batch", min=1, help="Queries per model batch."),
          max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", min=0,
                                            help="How long a batch waits for more requests."),
          max_queries: int = typer.Option(32, "--max-queries", min=1, help="Queries per request at most."),
          max_k: int = typer.Option(100, "--max-k", min=1),
          max_candidates: int = typer.Option(1000, "--max-candidates", min=1),
          allow_untrained_reranker: bool = typer.Option(False, "--allow-untrained-reranker",
                                                        help="Serve a re-ranker with a new head (its scores are "
                                                             "noise)."),
          hybrid: bool = typer.Option(False, "--hybrid", help="First stage = BM25 and the dense index fused by "
                                                             "reciprocal rank fusion (BM25 is built at start)."),
          backend: Backend = BackendOpt) -> None:
    """Serve retrieval + re-ranking over HTTP: POST /search, GET /health, /info, /docs, and a search page at /."""
    from tandem.serve import ServeSettings, serve as _serve

    settings = ServeSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queries=max_queries, max_k=max_k,
                             max_candidates=max_candidates, api_key=api_key or None, allow_reload=allow_reload,
                             allow_append=allow_append)
    _serve(index, reranker=reranker, data=data, host=host, port=port, settings=settings,
           allow_untrained_reranker=allow_untrained_reranker, backend=backend.value, hybrid=hybrid)


@app.command("mine-settings")
def mine_settings() -> None:
    """List every mining and denoising setting with its default and meaning (tandem mine --set KEY=VALUE, or a
    recipe's mine: mapping)."""
    from tandem.mining import MineSettings
    from tandem.settings import describe

    typer.echo(describe(MineSettings))


@app.command("train-settings")
def train_settings() -> None:
    """List every training setting with its default and meaning."""
    from tandem.train.config import describe

    typer.echo(describe())


def _print_report(report: dict, out: Path) -> None:
    from tandem.eval.metrics import format_table

    typer.echo(format_table(report["systems"], ["nDCG@10", "RR@10", "R@100", "seconds"]))
    systems = report["systems"]
    head = report.get("headline") or "joint-retriever+reranker"
    sel = report.get("selected") or {}
    _echo_err(f"done in {report['wall_seconds']:.0f}s (pipeline {report['total_seconds']:.0f}s). Selected on "
              f"validation: {head} nDCG@10 {systems[head]['nDCG@10']:.4f} on {report['split']} (BM25 "
              f"{systems['bm25']['nDCG@10']:.4f}, zero-shot {systems['zero-shot']['nDCG@10']:.4f}, hybrid-zero-shot "
              f"{systems['hybrid-zero-shot']['nDCG@10']:.4f}).")
    if sel.get("note"):
        _echo_err(sel["note"])
    for line in report.get("decisions", []):
        _echo_err(f"  {line}")
    if report.get("training_paid"):
        _echo_err(report["training_paid"]["summary"])
    m = report["models"]
    _echo_err(f"report: {out / 'report.md'}, {out / 'report.json'}, plots {out}/*.png; models used: "
              f"{m['retriever']}, {m['reranker'] or 'no re-ranker (not adopted)'}")


def _recipe(config: Path, out: Path, overrides: list[str], dry_run: bool, progress: bool) -> None:
    from tandem.recipe import load_recipe, run_recipe

    cfg = load_recipe(config, overrides)
    result = run_recipe(cfg, out, progress=progress, dry_run=dry_run)
    if dry_run:
        mem = result["plan_memory_bytes"]
        for stage, secs in result["plan_seconds"].items():
            peak = f"   peak ~{mem[stage] / 2**30:6.2f} GiB" if stage in mem else ""
            typer.echo(f"{stage:<22} ~{secs:8.0f} s{peak}")
        sz = result["sizing"]
        typer.echo(f"evaluated on: {result['eval_split']}; validation: {result['validation']}")
        typer.echo(f"training for {sz['training_lists']} training lists: "
                   + ", ".join(f"{k} {v} ({sz['epochs'][k]} epochs)" for k, v in sz["steps"].items())
                   + (f"; budget {sz['budget_seconds']:.0f} s: steps x {sz['factor']}" if sz["budget_seconds"] else "")
                   + ("; evaluation shrunk to fit: "
                      f"{', '.join(sz['evaluation_shrunk'])}" if sz["evaluation_shrunk"] else "")
                   + (" (still over budget at min_steps)" if sz["over_budget"] else "")
                   + f"; {sz['denoised_queries']} queries denoised")
        where = result["rates_note"] + ("" if result["rates_source"] == "measured" else f" {result['rates']}")
        typer.echo(f"{'total':<22} ~{result['total_seconds']:8.0f} s  ({result['total_seconds'] / 3600:.1f} h; "
                   f"estimates from {where}, on {result['devices']} device(s); memory per device)")
        return
    if result:  # under torchrun, rank 0 alone returns the report
        _print_report(result, out)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def recipe(ctx: typer.Context,
           config: Path = typer.Argument(..., help="Recipe YAML (see tandem/configs/)."),
           out: Path = typer.Option(Path("runs/recipe"), "--out", help="Output directory (stages resume from it)."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Print the stages and estimated times; run nothing."),
           progress: bool = ProgressOpt) -> None:
    """Run the whole pipeline as resumable stages; key=value after the options overrides the config."""
    _recipe(config, out, list(ctx.args), dry_run, progress)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def demo(ctx: typer.Context,
         data: str = typer.Option("scifact", "--data", help="Dataset name or directory."),
         out: Path = typer.Option(Path("runs/demo"), "--out", help="Output directory (stages resume from it)."),
         dry_run: bool = typer.Option(False, "--dry-run", help="Print the stages and estimated times; run nothing."),
         progress: bool = ProgressOpt) -> None:
    """The shipped demo recipe (about 15 minutes on a 2-core CPU): baselines, warm-up, joint training, report."""
    from tandem.recipe import shipped_config

    _recipe(shipped_config("demo"), out, [f"data={data}", *ctx.args], dry_run, progress)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "faiss", "bm25s", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: a :class:`TandemError` becomes a one-line message and exit status 2."""
    _setup_logging()
    try:
        app(args=argv, standalone_mode=True)
    except TandemError as e:
        _echo_err(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        _echo_err("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
