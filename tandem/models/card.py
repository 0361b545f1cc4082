"""Model cards (README.md) for the model directories tandem writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tandem.models.architectures import ARCHITECTURES


def write_card(path: str | Path, kind: str, base: str, settings: dict[str, Any],
               metrics: dict[str, Any] | None = None, architecture: str = "cross") -> None:
    """Write ``path/README.md``: what the model is, how it was trained, how to load it."""
    path = Path(path)
    if kind == "retriever":
        load = ("```python\nfrom tandem.models.retriever import Retriever\nr = Retriever.from_pretrained(\"DIR\")\n"
                "q = r.query_tower().encode([\"a query\"]); p = r.passage_tower().encode([\"a passage\"])\n```\n\n"
                "With shared towers the directory is also a sentence-transformers model:\n\n"
                "```python\nfrom sentence_transformers import SentenceTransformer\n"
                "SentenceTransformer(\"DIR\").encode([\"a passage\"])\n```\n")
    elif not ARCHITECTURES[architecture].plain_classifier:
        load = ("This is tandem's gated cross-encoder (see `tandem/models/gated.py`): its score mixes the\n"
                "bi-encoder cosine, a word-piece BM25 term and an interaction head over gated cross-attention,\n"
                "so it is not a plain sequence classifier: its transformer body sits in `body/`, and\n"
                "sentence-transformers' CrossEncoder and AutoModelForSequenceClassification refuse the directory\n"
                "(no config.json at its top) rather than load it with a random classifier.\n"
                "Load it with tandem (`tandem rerank --reranker DIR`, `tandem train --reranker DIR`, or):\n\n"
                "```python\nfrom tandem.models.reranker import Reranker\n"
                "ce = Reranker.from_pretrained(\"DIR\")\nce.predict([(\"a query\", \"a passage\")])\n```\n")
    else:
        load = ("```python\nfrom tandem.models.reranker import Reranker\n"
                "Reranker.from_pretrained(\"DIR\").predict([(\"a query\", \"a passage\")])\n\n"
                "from sentence_transformers import CrossEncoder  # the same logits\n"
                "CrossEncoder(\"DIR\").predict([(\"a query\", \"a passage\")], "
                "activation_fn=torch.nn.Identity())\n```\n")
    text = [f"# tandem {kind}", "", f"- base model: `{base}`", f"- architecture: {architecture}",
            "- trained with tandem (RocketQAv2-style listwise training)", "", "## Training settings", "",
            "```json", json.dumps(settings, indent=2), "```", ""]
    if metrics:
        text += ["## Measured", "", "```json", json.dumps(metrics, indent=2), "```", ""]
    text += ["## Load", "", load.replace("DIR", f"OUT/{kind}")]
    (path / "README.md").write_text("\n".join(text))
