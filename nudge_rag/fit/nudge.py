"""NUDGE-M and NUDGE-N: closed-form fine-tuning of the stored embeddings themselves.

Zeighami, Wellmer, Parameswaran, "NUDGE: Lightweight Non-Parametric Fine-Tuning of Embeddings
for Retrieval", ICLR 2025 (arXiv 2409.02343). With ``e_i`` the unit-normalised embedding of
chunk ``i`` and ``g_i = Σ_{q labels i} q`` the sum of the training queries that label it:

- NUDGE-M (bounded step, unnormalised output, inner-product search only):
  ``e_i' = e_i + γ·ĝ_i`` with ``ĝ_i = g_i / ‖g_i‖``. γ is the point covered by the most
  validation intervals, where pair (q, x)'s interval holds the γ for which x is q's top-1.
- NUDGE-N (stays on the unit sphere, works with cosine): maximise ``g_iᵀe'`` subject to
  ``‖e'‖ = 1`` and ``‖e' − e_i‖² ≤ γ``. With ``v = g_iᵀe_i``, ``c = ‖g_i‖²``,
  ``μ = v + sqrt(γ/(4−γ)·(c − v²))`` and ``e' = e_i + γ(g_i − μ e_i) / (2(μ − v))``; when
  ``e_iᵀĝ_i ≥ 1 − γ/2`` the constraint does not bind and ``e' = ĝ_i`` (snap to Ĝ).
  Rows with ``v < 0`` or ``g_i ∥ e_i`` keep their vector. γ is chosen on a grid.

Negatives (beyond the paper). Both closed forms maximise the linear objective
``Σ_i g_iᵀe_i'`` (each training query's score on its positives) under a per-row step
constraint. A chunk ``i`` judged not relevant to queries ``N_i`` should lose score on them, the
linearised pairwise objective ``Σ_q [Σ_{p ∈ P(q)} w⁺ qᵀe_p − λ Σ_{n ∈ N(q)} w⁻ qᵀe_n]``
(``w⁺``, ``w⁻`` the weighting's per-pair weights: 1, or ``grade / sqrt(|P(q)|)`` and
``1 / sqrt(|N(q)|)``). It is still separable per row and linear in ``e_i'``, so the same
closed forms solve it with the label sum ``g_i = Σ_{q ∈ P_i} w⁺ q − λ Σ_{q ∈ N_i} w⁻ q``:
same γ, same norm and step constraints, so changes stay as modest as before. (The NUDGE-N
solution holds for any sign of ``v``; rows that negatives touch are not frozen at ``v < 0``.)
A row with negatives only has ``g_i = −λ h_i``, whose direction does not depend on λ: under
the constraint it would always move a full step. Its budget is therefore ``ρ·γ`` with
``negative_step`` ρ (default 0: such rows stay; measured, pushing them lowers test NDCG@10 on
SciFact). γ is chosen exactly as without negatives (λ = 0); then λ is chosen on validation
at that γ from ``NEGATIVE_WEIGHT_GRID`` and kept only if its paired per-query gain over
λ = 0 is more than ``NEGATIVE_Z`` standard errors (a one-sided paired z-test), so noise on a
small validation set cannot bring it in (benchmarks/DEFAULTS.md, "Negatives").

Only rows that some training query labels can change, so the work is sparse: the other rows'
best validation scores are computed once, streaming the corpus in bounded blocks, and every
candidate γ is scored against the changed rows only. Memory beyond the input is
``O(N_changed·d + block·Q_val)``; no ``Q × N`` label or score matrix is ever built.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import numpy as np
import torch
from torch.nn.functional import normalize

from nudge_rag.errors import BadInputError, NudgeError
from nudge_rag.fit.checks import FLOAT32_MAX, check_float, check_int, check_vectors
from nudge_rag.fit.corpus import Corpus, is_corpus, untouched_topk
from nudge_rag.fit.metrics import MAX_BLOCK_ELEMENTS, Relevance, RelevanceTable, ndcg_at_k

__all__ = [
    "DEFAULT_NEGATIVE_STEP",
    "DEFAULT_NEGATIVE_WEIGHT",
    "DEFAULT_REFIT",
    "DEFAULT_SELECTION",
    "DEFAULT_WEIGHTING",
    "EPS",
    "NEGATIVE_WEIGHT_GRID",
    "NEGATIVE_Z",
    "NUDGE_N_GRID",
    "Method",
    "NudgeResult",
    "Selection",
    "Weighting",
    "check_gamma",
    "finetune_embeddings",
]

NUDGE_N_GRID = tuple(0.02 * x for x in range(25))  # the reference implementation's grid
EPS = 1e-8  # the reference's guard against division by a zero score difference


class Method(str, Enum):
    """Which closed form to use (``Method("NUDGE-M")`` and ``"nudge_m"`` read as NUDGE-M)."""

    NUDGE_M = "nudge-m"
    NUDGE_N = "nudge-n"

    @classmethod
    def _missing_(cls, value: object) -> Method | None:
        key = value.strip().lower().replace("_", "-") if isinstance(value, str) else None
        return next((m for m in cls if m.value == key), None)


class Weighting(str, Enum):
    """How much each (query, positive) pair adds to the positive's label sum ``g``."""

    UNIFORM = "uniform"  # every pair adds its query once (the paper's code)
    SQRT_POSITIVES = "sqrt-positives"  # grade / sqrt(number of the query's positives)


class Selection(str, Enum):
    """How γ is chosen on validation queries."""

    TOP1 = "top1"  # fraction of validation queries whose top-1 is relevant (the paper's code)
    NDCG10 = "ndcg@10"  # mean NDCG@10 with graded relevance


# Defaults, chosen by measurement on the shared datasets (README, "Choosing the defaults").
DEFAULT_SELECTION = Selection.NDCG10
DEFAULT_REFIT = True
DEFAULT_WEIGHTING = Weighting.SQRT_POSITIVES
NEGATIVE_WEIGHT_GRID = (0.05, 0.1)  # λ candidates, chosen on validation at γ
DEFAULT_NEGATIVE_WEIGHT = 0.1  # λ when γ is fixed and no negative_weight is given
NEGATIVE_Z = 1.645  # λ > 0 is kept when its paired validation gain is this many SEs above 0
DEFAULT_NEGATIVE_STEP = 0.0  # ρ: rows with negatives only move up to ρ·γ (0: they stay)


@dataclass
class NudgeResult:
    """The rows NUDGE changed and their new vectors; ``apply`` builds the full matrix."""

    rows: np.ndarray
    vectors: np.ndarray
    gamma: float
    method: Method
    selection: Selection | None
    refit: bool
    weighting: Weighting = Weighting.UNIFORM
    curve: list[tuple[float, float]] = field(default_factory=list)
    negative_weight: float = 0.0  # λ used (0: the negatives were not used)
    negative_step: float = 0.0  # ρ used: rows with negatives only moved up to ρ·γ
    negative_curve: list[tuple[float, float]] = field(default_factory=list)  # (λ, score) at γ

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """A new float32 matrix: ``embeddings`` with the changed rows replaced (input untouched)."""
        out = np.array(embeddings, dtype=np.float32, copy=True)
        out[self.rows] = self.vectors
        return out


# --------------------------------------------------------------------------- validation


_E = TypeVar("_E", bound=Enum)


def _check_matrix(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """A float matrix of finite float32 values, as given (the corpus may be memory-mapped)."""
    return check_vectors(x, what=name, dim=dim, dim_source="the embeddings matrix", dtype=None)


def _check_queries(x: Any, name: str, dim: int) -> np.ndarray:
    x = _check_matrix(x, name, dim)
    zero = np.nonzero(np.linalg.norm(x, axis=1) == 0)[0]
    if len(zero):
        msg = f"{name} row {int(zero[0])} has zero norm; a zero query cannot label anything."
        raise BadInputError(msg)
    return x


def _check_enum(cls: type[_E], value: Any, what: str) -> _E:
    try:
        return cls(value)
    except ValueError:
        options = ", ".join(repr(m.value) for m in cls)  # type: ignore[attr-defined]
        msg = f"{what}: found {value!r}, expected one of {options}."
        raise BadInputError(msg) from None


def check_gamma(gamma: Any, method: Method | str, *, what: str = "gamma") -> float:
    """``gamma`` as a float in NUDGE-N's ``[0, 2]`` or, for NUDGE-M, finite and ≥ 0."""
    method = _check_enum(Method, method, "method")
    if method is Method.NUDGE_N:
        hint = (
            "NUDGE-N's γ bounds the squared step ‖e' − e‖² on the unit sphere "
            "(the paper's grid is 0, 0.02, …, 0.48)"
        )
        return check_float(gamma, what=what, low=0.0, high=2.0, hint=hint)
    hint = "NUDGE-M's γ is the length of each changed row's step, e.g. 0.1"
    return check_float(gamma, what=what, low=0.0, hint=hint)


def _check_gammas(gammas: Any, method: Method) -> list[float]:
    if isinstance(gammas, (str, bytes)) or not isinstance(gammas, Iterable):
        msg = (
            f"gammas: expected a sequence of candidate γ values, found {type(gammas).__name__}; "
            "pass e.g. [0.1, 0.2, 0.3], or None for the default grid."
        )
        raise BadInputError(msg)
    grid = [check_gamma(g, method, what=f"gammas[{i}]") for i, g in enumerate(gammas)]
    if not grid:
        msg = (
            "gammas: found an empty sequence, expected at least one candidate γ; pass e.g. "
            "[0.1, 0.2, 0.3], or None for the default grid."
        )
        raise BadInputError(msg)
    return grid


def _check_per_query(
    value: Any, n_queries: int, name: str, expected: str, fix: str, *, example: str = ""
) -> None:
    """``value`` is a sequence (not a str or mapping) with one entry per query."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        msg = f"{name}: expected {expected}, found {type(value).__name__}{example}."
        raise BadInputError(msg)
    if len(value) != n_queries:
        msg = f"{name} has {len(value)} entries but there are {n_queries} queries; {fix}."
        raise BadInputError(msg)


def _check_positives(
    positives: Any, n_queries: int, n_rows: int, name: str
) -> list[dict[int, float]]:
    _check_per_query(
        positives,
        n_queries,
        name,
        "one list of positive rows (or {row: grade}) per query",
        "give one list per query",
    )
    out: list[dict[int, float]] = []
    for qi, rel in enumerate(positives):
        if isinstance(rel, Mapping):
            items: Iterable[tuple[Any, Any]] = rel.items()
        elif isinstance(rel, Iterable) and not isinstance(rel, (str, bytes)):
            items = ((r, 1.0) for r in rel)
        else:
            msg = (
                f"{name}[{qi}]: found {type(rel).__name__} {rel!r}, expected a list of row "
                "indices or a {row: grade} mapping."
            )
            raise BadInputError(msg)
        labels: dict[int, float] = {}
        for row, grade in items:
            if isinstance(row, bool) or not isinstance(row, (int, np.integer)):
                msg = f"{name}[{qi}] holds {row!r}; positives are integer row indices."
                raise BadInputError(msg)
            if not 0 <= row < n_rows:
                msg = f"{name}[{qi}] holds row {int(row)}, out of range for {n_rows} embeddings."
                raise BadInputError(msg)
            ok = not isinstance(grade, bool) and isinstance(grade, numbers.Real)
            value = float(grade) if ok else math.nan
            if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
                msg = (
                    f"{name}[{qi}] gives row {int(row)} the grade {grade!r}; expected a finite "
                    "number (e.g. 1 relevant, 2 highly relevant; ≤ 0 not relevant)."
                )
                raise BadInputError(msg)
            if value > 0:
                labels[int(row)] = value
        out.append(labels)
    return out


def _check_negatives(
    negatives: Any, positives: list[dict[int, float]], n_rows: int, name: str, pos_name: str
) -> list[list[int]]:
    """One sorted list of distinct row indices per query, none of them a positive of it."""
    _check_per_query(
        negatives,
        len(positives),
        name,
        "one list of row indices judged not relevant per query",
        "give one list per query (an empty list where none is known)",
        example="; pass e.g. [[4, 9], [], ...], or None",
    )
    out: list[list[int]] = []
    for qi, rel in enumerate(negatives):
        if isinstance(rel, (str, bytes, Mapping)) or not isinstance(rel, Iterable):
            msg = (
                f"{name}[{qi}]: found {type(rel).__name__} {rel!r}, expected a list of row indices."
            )
            raise BadInputError(msg)
        rows: set[int] = set()
        for row in rel:
            if isinstance(row, bool) or not isinstance(row, (int, np.integer)):
                msg = f"{name}[{qi}] holds {row!r}; negatives are integer row indices."
                raise BadInputError(msg)
            if not 0 <= row < n_rows:
                msg = (
                    f"{name}[{qi}] (query {qi}) holds row {int(row)}, out of range for "
                    f"{n_rows} embeddings; expected a row index in [0, {n_rows - 1}]."
                )
                raise BadInputError(msg)
            if int(row) in positives[qi]:
                msg = (
                    f"{name}[{qi}] (query {qi}) holds row {int(row)}, which {pos_name}[{qi}] "
                    "lists as relevant; a row is either relevant to a query or not: drop it "
                    "from one of the two lists."
                )
                raise BadInputError(msg)
            rows.add(int(row))
        out.append(sorted(rows))
    return out


def _check_device(device: Any) -> torch.device:
    try:
        return torch.device(device or "cpu")
    except (RuntimeError, TypeError) as e:
        msg = f"device: found {device!r}, expected a torch device such as 'cpu' or 'cuda' ({e})."
        raise BadInputError(msg) from None


def _check_label_sums(rows: np.ndarray, g: torch.Tensor) -> None:
    """Refuse label sums whose squared norm overflows float32 (huge queries or grades)."""
    sq = (g * g).sum(dim=1)
    bad = torch.nonzero(~torch.isfinite(sq)).flatten()
    if len(bad):
        row = int(rows[int(bad[0])])
        msg = (
            f"train_queries/train_positives: the weighted sum of the queries that label row "
            f"{row} overflows float32; expected queries of moderate norm and small grades; "
            "normalise the queries (and use grades such as 1–3)."
        )
        raise BadInputError(msg)


# --------------------------------------------------------------------------- building blocks


def _pairs(positives: list[dict[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Flatten positives into (query index, row) arrays."""
    q = np.fromiter((qi for qi, rel in enumerate(positives) for _ in rel), dtype=np.int64)
    r = np.fromiter((row for rel in positives for row in rel), dtype=np.int64)
    return q, r


def _label_sums(
    queries: torch.Tensor, positives: list[dict[int, float]], weighting: Weighting
) -> tuple[np.ndarray, torch.Tensor]:
    """The labelled rows (sorted) and ``G``: for each, the weighted sum of its queries.

    ``uniform``: ``g_i = Σ_{q labels i} q``. ``sqrt-positives``:
    ``g_i = Σ_{q labels i} grade(q, i) / sqrt(|positives(q)|) · q``, so a query that names
    forty chunks does not pull each of them as hard as a query that names one.
    """
    q_idx, r_idx = _pairs(positives)
    rows, local = np.unique(r_idx, return_inverse=True)
    picked = queries[torch.from_numpy(q_idx).to(queries.device)]
    if weighting is Weighting.SQRT_POSITIVES:
        grades = np.fromiter((gr for rel in positives for gr in rel.values()), dtype=np.float32)
        counts = np.array([len(rel) for rel in positives], dtype=np.float32)
        w = grades / np.sqrt(counts[q_idx])
        picked = picked * torch.from_numpy(w).to(queries.device).unsqueeze(1)
    g = torch.zeros((len(rows), queries.shape[1]), dtype=queries.dtype, device=queries.device)
    g.index_add_(0, torch.from_numpy(local).to(queries.device), picked)
    return rows, g


def _negative_sums(
    queries: torch.Tensor, negatives: list[list[int]], weighting: Weighting
) -> tuple[np.ndarray, torch.Tensor]:
    """The rows some query judged not relevant (sorted) and ``H``: for each, the weighted sum
    of those queries (``uniform``: weight 1; ``sqrt-positives``: ``1 / sqrt(|negatives(q)|)``,
    as a positive's weight, so a query with twenty negatives does not push each as hard as a
    query with one)."""
    q_idx = np.fromiter((qi for qi, rel in enumerate(negatives) for _ in rel), dtype=np.int64)
    r_idx = np.fromiter((row for rel in negatives for row in rel), dtype=np.int64)
    rows, local = np.unique(r_idx, return_inverse=True)
    picked = queries[torch.from_numpy(q_idx).to(queries.device)]
    if weighting is Weighting.SQRT_POSITIVES:
        counts = np.array([max(1, len(rel)) for rel in negatives], dtype=np.float32)
        w = 1.0 / np.sqrt(counts[q_idx])
        picked = picked * torch.from_numpy(w).to(queries.device).unsqueeze(1)
    h = torch.zeros((len(rows), queries.shape[1]), dtype=queries.dtype, device=queries.device)
    h.index_add_(0, torch.from_numpy(local).to(queries.device), picked)
    return rows, h


@dataclass
class _Sums:
    """Label sums over the rows any label touches: ``G`` (positives), ``H`` (negatives)."""

    rows: np.ndarray  # sorted
    g: torch.Tensor
    h: torch.Tensor | None  # None: no negatives (the paper's algorithm)
    pushed_only: torch.Tensor | None  # (n, 1) bool: rows with negatives and no positive

    def at(self, weight: float) -> torch.Tensor:
        """``G − λ·H``."""
        return self.g if self.h is None or weight == 0 else self.g - weight * self.h


def _sums(
    queries: torch.Tensor,
    positives: list[dict[int, float]],
    negatives: list[list[int]] | None,
    weighting: Weighting,
    *,
    pushed_rows: bool,
) -> _Sums:
    """``G`` and ``H`` over the rows that may move: those with positives, and (only when
    ``pushed_rows``, i.e. ρ > 0) those with negatives only; other negatives cannot move a
    row, so they are left out and cost nothing."""
    rows_p, g_p = _label_sums(queries, positives, weighting)
    if negatives is None or not any(negatives):
        return _Sums(rows_p, g_p, None, None)
    rows_n, h_n = _negative_sums(queries, negatives, weighting)
    if not pushed_rows:
        mixed = np.isin(rows_n, rows_p)
        if not mixed.any():
            return _Sums(rows_p, g_p, None, None)
        rows_n, h_n = rows_n[mixed], h_n[torch.from_numpy(mixed).to(h_n.device)]
    rows = np.union1d(rows_p, rows_n)
    dev = queries.device
    g = torch.zeros((len(rows), queries.shape[1]), dtype=queries.dtype, device=dev)
    h = torch.zeros_like(g)
    g[torch.from_numpy(np.searchsorted(rows, rows_p)).to(dev)] = g_p
    h[torch.from_numpy(np.searchsorted(rows, rows_n)).to(dev)] = h_n
    pushed_only = torch.from_numpy(~np.isin(rows, rows_p)).to(dev).unsqueeze(1)
    return _Sums(rows, g, h, pushed_only)


def _float32_block(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """A float32 tensor copy of a (slice of an) array; read-only or memory-mapped input is fine."""
    return torch.from_numpy(np.array(x, dtype=np.float32, copy=True)).to(device)


def _rows_tensor(
    embeddings: np.ndarray | Corpus, rows: np.ndarray, device: torch.device
) -> torch.Tensor:
    return normalize(_float32_block(embeddings[rows], device), dim=1)


@dataclass
class _Untouched:
    """Best validation scores over the rows NUDGE does not change (computed once)."""

    values: torch.Tensor  # (Qv, k) best scores, descending
    indices: torch.Tensor  # (Qv, k) their rows
    pair_scores: torch.Tensor  # (P,) score of each validation pair whose row is untouched


def _untouched_topk(
    embeddings: np.ndarray | Corpus,
    changed: np.ndarray,
    val_q: torch.Tensor,
    pair_q: np.ndarray,
    pair_r: np.ndarray,
    k: int,
    block_rows: int | None,
) -> _Untouched:
    """Stream the corpus once: top-``k`` unchanged rows per validation query, pair scores
    (a :class:`Corpus`, e.g. the store itself, answers with its own search instead)."""
    if not isinstance(embeddings, np.ndarray):
        return _Untouched(*untouched_topk(embeddings, changed, val_q, pair_q, pair_r, k))
    dev = val_q.device
    n = embeddings.shape[0]
    nq = val_q.shape[0]
    block = block_rows or max(1024, MAX_BLOCK_ELEMENTS // max(1, nq))
    best_v = torch.full((nq, 0), -torch.inf, device=dev)
    best_i = torch.zeros((nq, 0), dtype=torch.int64, device=dev)
    pair_scores = torch.full((len(pair_r),), -torch.inf, device=dev)
    order = np.argsort(pair_r, kind="stable")
    sorted_r = pair_r[order]
    for start in range(0, n, block):
        stop = min(n, start + block)
        e = normalize(_float32_block(embeddings[start:stop], dev), dim=1)
        s = val_q @ e.T
        lo, hi = np.searchsorted(changed, [start, stop])
        if hi > lo:
            s[:, torch.from_numpy(changed[lo:hi] - start).to(dev)] = -torch.inf
        a, b = np.searchsorted(sorted_r, [start, stop])
        if b > a:
            sel = order[a:b]
            pair_scores[torch.from_numpy(sel).to(dev)] = s[
                torch.from_numpy(pair_q[sel]).to(dev), torch.from_numpy(pair_r[sel] - start).to(dev)
            ]
        top = torch.topk(s, min(k, s.shape[1]), dim=1)
        cat_v = torch.cat([best_v, top.values], dim=1)
        cat_i = torch.cat([best_i, top.indices + start], dim=1)
        keep = torch.topk(cat_v, min(k, cat_v.shape[1]), dim=1)
        best_v, best_i = keep.values, torch.gather(cat_i, 1, keep.indices)
    return _Untouched(best_v, best_i, pair_scores)


def _nudge_n_update(
    e: torch.Tensor, g: torch.Tensor, sums: _Sums | None = None, step: float = 1.0
) -> Callable[[float], torch.Tensor]:
    """NUDGE-N's closed form for rows ``e`` (unit) with label sums ``g``, as a function of γ.

    The γ-free parts (``v``, ``c − v²``, ``ĝ``, which rows snap) are computed once. With
    negatives (``sums.h``), rows that a negative touches move for ``v < 0`` too (the closed
    form holds for any ``v``; the paper freezes such rows, which a pure push always is), and
    rows with negatives only get the budget ``step·γ``.
    """
    v = (g * e).sum(dim=1, keepdim=True)
    spread = (g * g).sum(dim=1, keepdim=True) - v**2
    frozen = (spread <= 0) | (v < 0)
    scale: torch.Tensor | None = None
    if sums is not None and sums.h is not None and sums.pushed_only is not None:
        touched = (sums.h != 0).any(dim=1, keepdim=True)
        frozen = (spread <= 0) | ((v < 0) & ~touched)
        scale = torch.where(sums.pushed_only, step, 1.0).to(e.dtype)
    g_hat = normalize(g, dim=1)
    alignment = (e * g_hat).sum(dim=1, keepdim=True)
    direction = g - v * e  # the component of g orthogonal to e (times ‖·‖)
    spread = spread.clamp(min=0)

    def at(gamma: float) -> torch.Tensor:
        if gamma == 0:
            return e
        gam: float | torch.Tensor = gamma if scale is None else gamma * scale
        lift = torch.sqrt(gam / (4 - gam) * spread)  # μ − v
        # e + γ(g − μe) / (2(μ − v)), with g − μe = (g − ve) − (μ − v)e
        delta = gam * (direction - lift * e) / (2 * lift)
        out = torch.where(frozen | (lift == 0), e, e + delta)
        return torch.where(alignment >= 1 - gam / 2, g_hat, out)

    return at


def _nudge_m_update(
    e: torch.Tensor, g: torch.Tensor, sums: _Sums | None = None, step: float = 1.0
) -> Callable[[float], torch.Tensor]:
    """NUDGE-M's step for rows ``e`` (unit), ``e + γ·ĝ``, as a function of γ (rows with
    negatives only: ``e + step·γ·ĝ``)."""
    direction = -normalize(-g, dim=1)  # the reference's sign convention, bit for bit
    if sums is not None and sums.pushed_only is not None and step != 1.0:
        direction = torch.where(sums.pushed_only, step * direction, direction)
    return lambda gamma: e + gamma * direction


def _closed_form(method: Method) -> Callable[..., Callable[[float], torch.Tensor]]:
    """The method's update as a function of γ: :func:`_nudge_n_update` or
    :func:`_nudge_m_update`."""
    return _nudge_n_update if method is Method.NUDGE_N else _nudge_m_update


def _val_scores(
    val_q: torch.Tensor, new_rows: torch.Tensor
) -> Iterator[tuple[slice, torch.Tensor]]:
    """The validation queries in blocks of at most ``MAX_BLOCK_ELEMENTS`` scores: each block's
    slice and its queries' scores against the changed rows."""
    step = max(1, MAX_BLOCK_ELEMENTS // max(1, new_rows.shape[0]))
    for a in range(0, val_q.shape[0], step):
        blk = slice(a, a + step)
        yield blk, val_q[blk] @ new_rows.T


def _top1_accuracy(
    val_q: torch.Tensor,
    new_rows: torch.Tensor,
    rows: np.ndarray,
    untouched: _Untouched,
    table: RelevanceTable,
) -> np.ndarray:
    """Per validation query, whether its top-1 row is relevant (1.0 or 0.0)."""
    preds = np.empty(val_q.shape[0], dtype=np.int64)
    rows_t = torch.from_numpy(rows).to(val_q.device)  # once, not per block
    for blk, s in _val_scores(val_q, new_rows):
        best_c, arg_c = s.max(dim=1)
        use_changed = best_c > untouched.values[blk, 0]
        pred = torch.where(use_changed, rows_t[arg_c], untouched.indices[blk, 0])
        preds[blk] = pred.cpu().numpy()
    hits = table.grade(np.arange(len(preds)), preds.reshape(-1, 1))[:, 0] > 0
    return hits.astype(np.float64)


def _ndcg10(
    val_q: torch.Tensor,
    new_rows: torch.Tensor,
    rows: np.ndarray,
    untouched: _Untouched,
    table: RelevanceTable,
) -> np.ndarray:
    """Per validation query, NDCG@10 with the changed rows at ``new_rows``."""
    ranked = np.empty((val_q.shape[0], 10), dtype=np.int64)
    rows_t = torch.from_numpy(rows).to(val_q.device)
    for blk, s in _val_scores(val_q, new_rows):
        top = torch.topk(s, min(10, s.shape[1]), dim=1)
        cat_v = torch.cat([top.values, untouched.values[blk]], dim=1)
        cat_i = torch.cat([rows_t[top.indices], untouched.indices[blk]], dim=1)
        keep = torch.topk(cat_v, min(10, cat_v.shape[1]), dim=1)
        got = torch.gather(cat_i, 1, keep.indices).cpu().numpy()
        ranked[blk, : got.shape[1]] = got
        ranked[blk, got.shape[1] :] = -1
    return ndcg_at_k(ranked, table, 10)


def _significant(diffs: np.ndarray) -> bool:
    """Whether the mean of paired per-query gains is above zero by ``NEGATIVE_Z`` standard
    errors (a one-sided paired z-test): λ > 0 must earn its place, not win on noise."""
    n = len(diffs)
    if n < 2:
        return False
    mean = float(diffs.mean())
    se = float(diffs.std(ddof=1)) / math.sqrt(n)
    return mean > NEGATIVE_Z * se and mean > 0


# --------------------------------------------------------------------------- NUDGE-M's γ sweep


def _nudge_m_intervals(
    val_q: torch.Tensor,
    e: torch.Tensor,
    g_hat: torch.Tensor,
    rows: np.ndarray,
    pair_q: np.ndarray,
    pair_r: np.ndarray,
    untouched: _Untouched,
) -> tuple[np.ndarray, np.ndarray]:
    """For each validation pair (q, x), the γ interval in which x is q's top-1.

    A row j's score moves linearly, ``s_j(γ) = S_j + γ·H_j`` with ``H_j = qᵀĝ_j`` (0 for
    unchanged rows, of which only the best matters). x beats j iff
    ``(S_j − S_x) ≤ γ·(H_x − H_j)``, which bounds γ below or above by the ratio, or, when
    ``H_j = H_x``, holds for every γ or none. The reference writes the same with ``G = −H``.
    """
    dev = val_q.device
    pos_in_rows = np.searchsorted(rows, pair_r)
    pos_in_rows = np.minimum(pos_in_rows, max(0, len(rows) - 1))
    x_changed = (rows[pos_in_rows] == pair_r) if len(rows) else np.zeros(len(pair_r), bool)
    lows, highs = [], []
    step = max(1, MAX_BLOCK_ELEMENTS // max(1, e.shape[0] + 1))
    for a in range(0, len(pair_q), step):
        b = min(len(pair_q), a + step)
        q_idx = torch.from_numpy(pair_q[a:b]).to(dev)
        # Scores once per distinct query of the block (a query has many positives), then
        # one row per pair.
        uq, inv = torch.unique(q_idx, return_inverse=True)
        qv = val_q[uq]
        s = torch.cat([qv @ e.T, untouched.values[uq, :1]], dim=1)[inv]
        gg = torch.cat([-(qv @ g_hat.T), torch.zeros((len(uq), 1), device=dev)], dim=1)[inv]
        xc = torch.from_numpy(x_changed[a:b]).to(dev)
        col = torch.from_numpy(pos_in_rows[a:b]).to(dev)
        s_x = torch.where(xc, s.gather(1, col.unsqueeze(1)).squeeze(1), untouched.pair_scores[a:b])
        g_x = torch.where(xc, gg.gather(1, col.unsqueeze(1)).squeeze(1), torch.zeros_like(s_x))
        s_dif = s.sub_(s_x.unsqueeze(1))
        g_dif = gg.sub_(g_x.unsqueeze(1))
        ratio = s_dif / (g_dif + EPS)
        zero = torch.zeros((), device=dev)
        low = torch.where(g_dif > 0, ratio, zero).amax(dim=1).clamp(min=0)
        high = torch.where(g_dif < 0, ratio, torch.full((), 1 / EPS, device=dev)).amin(dim=1)
        never = ((g_dif == 0) & (s_dif > 0)).any(dim=1)
        ok = ~never & (high >= low)
        lows.append(low[ok].cpu().numpy())
        highs.append(high[ok].cpu().numpy())
    if not lows:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(lows), np.concatenate(highs)


def _most_covered_point(lows: np.ndarray, highs: np.ndarray) -> float:
    """The smallest γ that the most half-open intervals ``[low, high)`` contain (0 if none)."""
    if not len(lows):
        return 0.0
    lo_sorted, hi_sorted = np.sort(lows), np.sort(highs)
    candidates = np.unique(lo_sorted)
    covered = np.searchsorted(lo_sorted, candidates, "right") - np.searchsorted(
        hi_sorted, candidates, "right"
    )
    best = int(np.argmax(covered))
    return float(candidates[best]) if covered[best] > 0 else 0.0


def _nudge_m_candidates(lows: np.ndarray, highs: np.ndarray, top1_gamma: float) -> np.ndarray:
    """γ worth scoring by NDCG@10: 0, the top-1 optimum and quantiles of the interval ends."""
    ends = np.concatenate([lows, highs[highs < 1 / EPS / 2]])
    ends = ends[np.isfinite(ends) & (ends >= 0)]
    qs = np.quantile(ends, np.linspace(0, 1, 41)) if len(ends) else np.zeros(0)
    return np.unique(np.concatenate([[0.0, top1_gamma], qs]).astype(np.float64))


# --------------------------------------------------------------------------- the steps


@dataclass
class _Args:
    """:func:`finetune_embeddings`' arguments, checked (:func:`_validate`)."""

    embeddings: np.ndarray | Corpus
    method: Method
    selection: Selection
    refit: bool
    weighting: Weighting
    device: torch.device
    block_rows: int | None
    gammas: list[float] | None  # the candidate grid given (None: the method's own)
    gamma: float | None  # γ given (None: chosen on validation)
    train_queries: np.ndarray
    train_labels: list[dict[int, float]]
    train_negatives: list[list[int]] | None
    val_queries: np.ndarray  # (0, dim) when none were given
    val_labels: list[dict[int, float]]
    val_negatives: list[list[int]] | None
    negative_weight: float | None  # λ given (None: chosen on validation)
    negative_step: float  # ρ


def _check_options(
    method: Any,
    selection: Any,
    refit: Any,
    weighting: Any,
    device: Any,
    block_rows: Any,
    gammas: Any,
) -> tuple[Method, Selection, bool, Weighting, torch.device, int | None, list[float] | None]:
    """The settings that do not depend on the data, checked, with their defaults."""
    method = _check_enum(Method, method, "method")
    selection = (
        _check_enum(Selection, selection, "selection")
        if selection is not None
        else DEFAULT_SELECTION
    )
    refit = DEFAULT_REFIT if refit is None else bool(refit)
    weighting = (
        _check_enum(Weighting, weighting, "weighting")
        if weighting is not None
        else DEFAULT_WEIGHTING
    )
    dev = _check_device(device)
    if block_rows is not None:
        block_rows = check_int(
            block_rows,
            what="block_rows",
            low=1,
            hint="corpus rows scored per block, e.g. 4096, or None to size blocks by memory",
        )
    grid_override = _check_gammas(gammas, method) if gammas is not None else None
    return method, selection, refit, weighting, dev, block_rows, grid_override


def _check_embeddings(embeddings: Any) -> np.ndarray | Corpus:
    """The corpus (a :class:`~nudge_rag.fit.corpus.MemoryCorpus` as its matrix), not empty."""
    if is_corpus(embeddings) and getattr(embeddings, "matrix", None) is not None:
        embeddings = embeddings.matrix  # MemoryCorpus: its matrix
    if not is_corpus(embeddings):
        embeddings = _check_matrix(embeddings, "embeddings")
    if embeddings.shape[0] == 0:
        msg = "embeddings is empty: there are no chunks to fine-tune."
        raise BadInputError(msg)
    return embeddings


def _check_negative_options(
    negative_weight: Any, negative_step: Any
) -> tuple[float | None, float | None]:
    """λ in [0, 1000] and ρ in [0, 1], each or None."""
    if negative_weight is not None:
        negative_weight = check_float(
            negative_weight,
            what="negative_weight",
            low=0.0,
            high=1e3,
            hint="λ, each negative pair's push relative to a positive pair's pull, e.g. 0.5",
        )
    if negative_step is not None:
        negative_step = check_float(
            negative_step,
            what="negative_step",
            low=0.0,
            high=1.0,
            hint="the share of γ that rows with negatives only may move, e.g. 0.5",
        )
    return negative_weight, negative_step


def _validate(
    embeddings: Any,
    train_queries: Any,
    train_positives: Any,
    val_queries: Any,
    val_positives: Any,
    train_negatives: Any,
    val_negatives: Any,
    *,
    gamma: Any,
    negative_weight: Any,
    negative_step: Any,
    options: tuple[Any, ...],
) -> _Args:
    """Step 1: check every argument (in this order: the first problem is the one named)."""
    method, selection, refit, weighting, dev, block_rows, grid = _check_options(*options)
    embeddings = _check_embeddings(embeddings)
    n, dim = embeddings.shape
    train_queries = _check_queries(train_queries, "train_queries", dim)
    train_labels = _check_positives(train_positives, len(train_queries), n, "train_positives")
    if not any(train_labels):
        msg = (
            "train_positives is empty: NUDGE needs at least one training query with a positive row."
        )
        raise BadInputError(msg)
    if gamma is not None:
        gamma = check_gamma(gamma, method)
    val_labels: list[dict[int, float]] = []
    val_mat = np.zeros((0, dim), dtype=np.float32)
    if val_queries is not None:
        val_mat = _check_queries(val_queries, "val_queries", dim)
        if val_positives is None:
            msg = "val_positives is missing: give one list of positive rows per validation query."
            raise BadInputError(msg)
        val_labels = _check_positives(val_positives, len(val_mat), n, "val_positives")
    train_neg = (
        None
        if train_negatives is None
        else _check_negatives(
            train_negatives, train_labels, n, "train_negatives", "train_positives"
        )
    )
    val_neg = None
    if val_negatives is not None:
        if val_queries is None:
            msg = (
                "val_negatives is given without val_queries; pass the validation queries too, "
                "or drop val_negatives."
            )
            raise BadInputError(msg)
        val_neg = _check_negatives(val_negatives, val_labels, n, "val_negatives", "val_positives")
    negative_weight, negative_step = _check_negative_options(negative_weight, negative_step)
    if gamma is None and not any(val_labels):
        msg = (
            "the validation set is empty: gamma is chosen on validation queries with positives. "
            "Pass val_queries/val_positives, or a fixed gamma=..."
        )
        raise BadInputError(msg)
    return _Args(
        embeddings=embeddings,
        method=method,
        selection=selection,
        refit=refit,
        weighting=weighting,
        device=dev,
        block_rows=block_rows,
        gammas=grid,
        gamma=gamma,
        train_queries=train_queries,
        train_labels=train_labels,
        train_negatives=train_neg,
        val_queries=val_mat,
        val_labels=val_labels,
        val_negatives=val_neg,
        negative_weight=negative_weight,
        negative_step=DEFAULT_NEGATIVE_STEP if negative_step is None else negative_step,
    )


def _checked_sums(
    queries: torch.Tensor,
    positives: list[dict[int, float]],
    negatives: list[list[int]] | None,
    args: _Args,
) -> tuple[_Sums, torch.Tensor]:
    """The label sums (refused if they overflow float32) and the unit rows they touch."""
    sums = _sums(queries, positives, negatives, args.weighting, pushed_rows=args.negative_step > 0)
    _check_label_sums(sums.rows, sums.g)
    if sums.h is not None:
        _check_label_sums(sums.rows, sums.h)
    return sums, _rows_tensor(args.embeddings, sums.rows, args.device)


@dataclass
class _Validation:
    """The validation queries with positives, scored by the selection's per-query metric."""

    queries: torch.Tensor
    table: RelevanceTable
    pair_q: np.ndarray
    pair_r: np.ndarray
    untouched: _Untouched  # the best scores among the rows the fit does not change
    per_query: Callable[..., np.ndarray]  # _top1_accuracy or _ndcg10

    def scores(self, new_rows: torch.Tensor, rows: np.ndarray) -> np.ndarray:
        """Per validation query, the metric with the changed ``rows`` at ``new_rows``."""
        return self.per_query(self.queries, new_rows, rows, self.untouched, self.table)


def _validation(args: _Args, rows: np.ndarray) -> _Validation:
    """The validation queries with positives, and the untouched rows' best scores for them
    (the corpus is streamed once)."""
    keep = [i for i, rel in enumerate(args.val_labels) if rel]
    val_q = _float32_block(args.val_queries[keep], args.device)
    labels = [args.val_labels[i] for i in keep]
    table = RelevanceTable(labels)
    pair_q, pair_r = _pairs(labels)
    k = 1 if args.selection is Selection.TOP1 else 10
    untouched = _untouched_topk(args.embeddings, rows, val_q, pair_q, pair_r, k, args.block_rows)
    per_query = _top1_accuracy if args.selection is Selection.TOP1 else _ndcg10
    return _Validation(val_q, table, pair_q, pair_r, untouched, per_query)


def _select_gamma(
    args: _Args,
    val: _Validation,
    e: torch.Tensor,
    sums: _Sums,
    update: Callable[[float], torch.Tensor],
) -> tuple[float | None, float, list[tuple[float, float]]]:
    """Step 2, the paper's: γ for the positives alone (λ = 0; rows with negatives only have
    ``g = 0`` and stay put), the best-scoring candidate on validation (the first of equals).

    Candidates: NUDGE-N's grid; for NUDGE-M, the point the most top-1 intervals cover (alone
    with ``top1`` selection, with quantiles of the interval ends for ``ndcg@10``); ``gammas``
    when given. Returns (γ, its score, the curve of (γ, score)).
    """
    gamma: float | None = None
    rows = sums.rows
    if args.method is Method.NUDGE_M:
        g_hat = normalize(-sums.g, dim=1)
        lows, highs = _nudge_m_intervals(
            val.queries, e, -g_hat, rows, val.pair_q, val.pair_r, val.untouched
        )
        gamma = _most_covered_point(lows, highs)
        grid: Sequence[float] | np.ndarray = (
            [gamma] if args.selection is Selection.TOP1 else _nudge_m_candidates(lows, highs, gamma)
        )
    else:
        grid = NUDGE_N_GRID
    if args.gammas is not None:
        grid = args.gammas
    best = -1.0
    curve: list[tuple[float, float]] = []
    for cand in grid:
        value = float(val.scores(update(float(cand)), rows).mean())
        curve.append((float(cand), value))
        if value > best:
            best, gamma = value, float(cand)
    return gamma, best, curve


def _select_negative_weight(
    args: _Args,
    val: _Validation,
    e: torch.Tensor,
    sums: _Sums,
    update: Callable[[float], torch.Tensor],
    gamma: float,
    best: float,
) -> tuple[float, float, list[tuple[float, float]]]:
    """Step 3: at the chosen γ, the negatives' weight λ (the given one, else each of
    ``NEGATIVE_WEIGHT_GRID``) and with it the pushed rows' share ρ; only a strictly better
    validation score whose paired gain over λ = 0 is significant moves away from λ = 0.

    Returns (λ, ρ, the curve of (λ, score), λ = 0 first).
    """
    make_update = _closed_form(args.method)
    weights = list(NEGATIVE_WEIGHT_GRID) if args.negative_weight is None else [args.negative_weight]
    chosen_weight, chosen_step = 0.0, 0.0
    at_zero = val.scores(update(float(gamma)), sums.rows)
    negative_curve = [(0.0, best)]
    for weight in weights:
        if weight == 0:
            continue
        moved = make_update(e, sums.at(weight), sums, args.negative_step)(float(gamma))
        values = val.scores(moved, sums.rows)
        value = float(values.mean())
        negative_curve.append((float(weight), value))
        if value > best and _significant(values - at_zero):
            best, chosen_weight, chosen_step = value, weight, args.negative_step
    return chosen_weight, chosen_step, negative_curve


@dataclass
class _Choice:
    """γ, and λ and ρ for the negatives: chosen on validation or given."""

    gamma: float
    selection: Selection | None = None  # None: γ was given
    curve: list[tuple[float, float]] = field(default_factory=list)  # (γ, score)
    weight: float = 0.0  # λ (0: the negatives are not used)
    step: float = 0.0  # ρ
    negative_curve: list[tuple[float, float]] = field(default_factory=list)  # (λ, score) at γ


def _given(gamma: float, args: _Args, sums: _Sums) -> _Choice:
    """Steps 2 and 3 when γ is given: nothing to choose on, so λ is the given one or
    ``DEFAULT_NEGATIVE_WEIGHT`` (when there are negatives)."""
    if sums.h is None:
        return _Choice(gamma)
    weight = DEFAULT_NEGATIVE_WEIGHT if args.negative_weight is None else args.negative_weight
    return _Choice(gamma, weight=weight, step=args.negative_step)


def _choose(args: _Args, sums: _Sums, e: torch.Tensor) -> _Choice:
    """Steps 2 and 3 on the validation queries: γ, then λ at that γ."""
    val = _validation(args, sums.rows)
    update = _closed_form(args.method)(e, sums.g)
    gamma, best, curve = _select_gamma(args, val, e, sums, update)
    if gamma is None:  # pragma: no cover - every grid value scores ≥ 0 > -1
        gamma = 0.0
    choice = _Choice(gamma, args.selection, curve)
    if sums.h is not None and gamma:
        choice.weight, choice.step, choice.negative_curve = _select_negative_weight(
            args, val, e, sums, update, gamma, best
        )
    return choice


def _refit(
    args: _Args, fit_q: torch.Tensor, sums: _Sums, e: torch.Tensor
) -> tuple[_Sums, torch.Tensor]:
    """Step 4: with ``refit`` (and validation labels), the label sums again from train +
    validation queries, for the final update at the chosen γ and λ; else those of training."""
    if not (args.refit and any(args.val_labels)):
        return sums, e
    all_q = torch.cat([fit_q, _float32_block(args.val_queries, args.device)])
    all_neg = None
    if args.train_negatives is not None or args.val_negatives is not None:
        all_neg = (args.train_negatives or [[] for _ in args.train_labels]) + (
            args.val_negatives or [[] for _ in args.val_labels]
        )
    return _checked_sums(all_q, args.train_labels + args.val_labels, all_neg, args)


def _fitted_rows(
    args: _Args, sums: _Sums, e: torch.Tensor, gamma: float, weight: float, step: float
) -> tuple[np.ndarray, np.ndarray]:
    """The final update at γ, λ = ``weight``, ρ = ``step``: the rows it moved and their new
    vectors (refused if they do not fit float32)."""
    make_update = _closed_form(args.method)
    update = make_update(e, sums.at(weight), sums, step) if weight else make_update(e, sums.g)
    new = update(float(gamma)).cpu().numpy()
    try:  # never NaN or inf out (a last guard: the inputs were checked above)
        check_vectors(new, what="the fitted vectors")
    except NudgeError as err:
        msg = (
            f"gamma={gamma}: the {args.method.value} update does not fit float32 ({err}); "
            "pass a smaller gamma."
        )
        raise BadInputError(msg) from None
    # A row changed when the update moved it off its (normalised) starting point; a row the
    # update leaves alone keeps its stored vector, rounding included.
    changed = np.any(new != e.cpu().numpy(), axis=1)
    return sums.rows[changed].astype(np.int64), np.ascontiguousarray(new[changed], dtype=np.float32)


# --------------------------------------------------------------------------- public API


def finetune_embeddings(
    embeddings: np.ndarray | Corpus,
    train_queries: np.ndarray,
    train_positives: Sequence[Relevance],
    val_queries: np.ndarray | None = None,
    val_positives: Sequence[Relevance] | None = None,
    *,
    method: Method | str = Method.NUDGE_N,
    gamma: float | None = None,
    selection: Selection | str | None = None,
    refit: bool | None = None,
    weighting: Weighting | str | None = None,
    gammas: Sequence[float] | None = None,
    device: torch.device | str | None = None,
    block_rows: int | None = None,
    train_negatives: Sequence[Sequence[int]] | None = None,
    val_negatives: Sequence[Sequence[int]] | None = None,
    negative_weight: float | None = None,
    negative_step: float | None = None,
) -> NudgeResult:
    """Fine-tune the chunk ``embeddings`` toward the training queries that label them.

    ``train_positives[i]`` lists the rows that answer ``train_queries[i]`` (a list of row
    indices, or a ``{row: grade}`` mapping). γ is chosen on the validation queries by
    ``selection`` (``"top1"``, as the paper's code, or ``"ndcg@10"``) unless ``gamma`` is given;
    with ``refit`` the update is then recomputed from train + validation labels at that γ.
    ``weighting`` sets each pair's pull (``"uniform"`` as the paper, or the default
    ``"sqrt-positives"``); the paper's algorithm exactly is
    ``refit=False, selection="top1", weighting="uniform"``. ``gammas`` overrides the
    candidate grid (NUDGE-N: the paper's 0, 0.02, …, 0.48).

    ``train_negatives[i]`` / ``val_negatives[i]`` list rows judged *not* relevant to that
    query (e.g. what a judge graded 0 among its top candidates); a row cannot be both. Each
    such pair pushes the row's label sum away from the query with weight ``negative_weight``
    (λ; None: chosen on validation at the chosen γ, kept only when it beats λ = 0); rows with
    negatives only move up to ``negative_step·γ`` (ρ, default 0: they stay). The derivation
    is in the module docstring. ``train_negatives=None`` (or λ = 0) is the update without
    negatives, the paper's exactly under the settings above.
    ``result.negative_weight`` / ``result.negative_step`` say what was used.
    Rows are unit-normalised before the update, as in the paper. The input is never mutated.

    ``embeddings`` may be a :class:`~nudge_rag.fit.corpus.Corpus` instead of a matrix: the
    untouched rows' best validation scores then come from its ``topk_excluding`` (e.g. the
    wrapped store's own search, :class:`~nudge_rag.fit.corpus.StoreCorpus`) and only the rows
    labels touch are read; a :class:`~nudge_rag.fit.corpus.MemoryCorpus` is its matrix.
    """
    args = _validate(
        embeddings,
        train_queries,
        train_positives,
        val_queries,
        val_positives,
        train_negatives,
        val_negatives,
        gamma=gamma,
        negative_weight=negative_weight,
        negative_step=negative_step,
        options=(method, selection, refit, weighting, device, block_rows, gammas),
    )
    fit_q = _float32_block(args.train_queries, args.device)
    sums, e = _checked_sums(fit_q, args.train_labels, args.train_negatives, args)
    choice = _given(args.gamma, args, sums) if args.gamma is not None else _choose(args, sums, e)
    sums, e = _refit(args, fit_q, sums, e)
    rows, vectors = _fitted_rows(args, sums, e, choice.gamma, choice.weight, choice.step)
    return NudgeResult(
        rows=rows,
        vectors=vectors,
        gamma=float(choice.gamma),
        method=args.method,
        selection=choice.selection,
        refit=args.refit,
        weighting=args.weighting,
        curve=choice.curve,
        negative_weight=float(choice.weight),
        negative_step=float(choice.step),
        negative_curve=choice.negative_curve,
    )
