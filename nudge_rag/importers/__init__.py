"""Readers that turn an observability tool's history into records for ``store.import_traces``.

One small module per tool, each with a ``read(...)`` returning its
:class:`~nudge_rag.state.records.TraceRecord` items as lazy
:class:`~nudge_rag.state.records.Records`
(a file export is decoded one record at a time as ``import_traces`` consumes it, so memory does
not grow with the export); the tools' SDKs are optional (their objects are read by attribute or
as the JSON their APIs return, nothing imported here):

- :mod:`~nudge_rag.importers.langsmith`: ``read(runs, feedback=())``, retriever runs and their
  feedback;
- :mod:`~nudge_rag.importers.langfuse`: ``read(observations, scores=())``, retriever
  observations and their scores;
- :mod:`~nudge_rag.importers.phoenix`: ``read(spans_df, annotations_df=None)``, RETRIEVER spans
  (the Phoenix client's spans dataframe or OTLP/JSON) and their document annotations;
  ``pull(endpoint, project)`` reads both from a running Phoenix server;
- :mod:`~nudge_rag.importers.jsonl`: ``read(path)``, nudge-rag's plain JSONL schema (also what
  ``TraceLog.export_jsonl`` writes).

Documents a tool kept without a chunk id are resolved by :mod:`~nudge_rag.importers.resolve`
(pass ``store=`` and, if a metadata key names the chunk, ``id_key=``): by metadata, else by
their text; the import report names the records left unresolved.

Example:
    .. code-block:: python

        from nudge_rag.importers import langsmith

        runs = client.list_runs(project_name="my-rag", run_type="retriever")
        feedback = client.list_feedback(run_ids=[r.id for r in runs])
        print(store.import_traces(langsmith.read(runs, feedback)))
"""

from nudge_rag.state.records import FeedbackRecord, ImportReport, Records, TraceRecord, Unreadable

__all__ = ["FeedbackRecord", "ImportReport", "Records", "TraceRecord", "Unreadable"]
