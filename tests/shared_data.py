"""Access to the shared BEIR datasets; tests that need them skip with a clear message."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from nudge_rag.eval.data import BeirDataset, load_beir, shared_data_dir


@cache
def _load(name: str) -> BeirDataset | None:
    root = shared_data_dir()
    if root is None or not (root / name).is_dir():
        return None
    return load_beir(root / name, load_text=False)


def dataset(name: str) -> BeirDataset:
    """The shared dataset ``name`` (embeddings, qrels; no text), or skip the test."""
    ds = _load(name)
    if ds is None:
        pytest.skip(f"../shared/data/{name} not found (set NUDGE_RAG_DATA to the data folder)")
    return ds


def scifact_lookup(
    corpus: tuple[list[str], Any], queries: tuple[list[str], Any], n_queries: int
) -> tuple[list[str], Any, list[str]]:
    """SciFact as a LangChain store sees it, with nothing re-encoded: the doc ids, a
    ``LookupEmbeddings`` of the precomputed vectors of texts ``"doc <id>"`` and ``"query <id>"``,
    and ``n_queries`` query texts picked at random (seed 0)."""
    import numpy as np

    from nudge_rag.langchain.embeddings import LookupEmbeddings

    doc_ids, docs = corpus
    q_ids, q_vecs = queries
    table = {f"doc {i}": v for i, v in zip(doc_ids, docs, strict=True)}
    picked = np.random.default_rng(0).choice(len(q_ids), n_queries, replace=False)
    qtexts = [f"query {q_ids[j]}" for j in picked]
    table.update({t: q_vecs[j] for t, j in zip(qtexts, picked, strict=True)})
    table["dummy_text"] = docs[0]  # langchain-qdrant embeds this once to learn the dimension
    return doc_ids, LookupEmbeddings(table), qtexts


# a tiny help-center corpus for pipeline tests (id -> text), embedded by the real model
HELP_CENTER = {
    "refund": "Refunds are issued to the original payment method within 5 business days.",
    "cancel": "You can cancel a subscription at any time from Settings > Billing.",
    "invoice": "Invoices are emailed monthly and can be downloaded as PDF from Billing.",
    "password": "Reset a forgotten password from the sign-in page with the 'Forgot?' link.",
    "2fa": "Two-factor authentication can be enabled with any TOTP authenticator app.",
    "export": "Export all your data as CSV or JSON from Settings > Data.",
}
