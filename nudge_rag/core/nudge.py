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

Only rows that some training query labels can change, so the work is sparse: the other rows'
best validation scores are computed once, streaming the corpus in bounded blocks, and every
candidate γ is scored against the changed rows only. Memory beyond the input is
``O(N_changed·d + block·Q_val)``; no ``Q × N`` label or score matrix is ever built.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import numpy as np
import torch
from torch.nn.functional import normalize

from nudge_rag.core.checks import FLOAT32_MAX, check_float, check_int, check_vectors
from nudge_rag.core.errors import NudgeError
from nudge_rag.core.metrics import MAX_BLOCK_ELEMENTS, Relevance, RelevanceTable, ndcg_at_k

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
        raise NudgeError(msg)
    return x


def _check_enum(cls: type[_E], value: Any, what: str) -> _E:
    try:
        return cls(value)
    except ValueError:
        options = ", ".join(repr(m.value) for m in cls)  # type: ignore[attr-defined]
        msg = f"{what}: found {value!r}, expected one of {options}."
        raise NudgeError(msg) from None


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
        raise NudgeError(msg)
    grid = [check_gamma(g, method, what=f"gammas[{i}]") for i, g in enumerate(gammas)]
    if not grid:
        msg = (
            "gammas: found an empty sequence, expected at least one candidate γ; pass e.g. "
            "[0.1, 0.2, 0.3], or None for the default grid."
        )
        raise NudgeError(msg)
    return grid


def _check_positives(
    positives: Any, n_queries: int, n_rows: int, name: str
) -> list[dict[int, float]]:
    if isinstance(positives, (str, bytes, Mapping)) or not isinstance(positives, Sequence):
        msg = (
            f"{name}: expected one list of positive rows (or {{row: grade}}) per query, found "
            f"{type(positives).__name__}."
        )
        raise NudgeError(msg)
    if len(positives) != n_queries:
        msg = (
            f"{name} has {len(positives)} entries but there are {n_queries} queries; "
            "give one list per query."
        )
        raise NudgeError(msg)
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
            raise NudgeError(msg)
        labels: dict[int, float] = {}
        for row, grade in items:
            if isinstance(row, bool) or not isinstance(row, (int, np.integer)):
                msg = f"{name}[{qi}] holds {row!r}; positives are integer row indices."
                raise NudgeError(msg)
            if not 0 <= row < n_rows:
                msg = f"{name}[{qi}] holds row {int(row)}, out of range for {n_rows} embeddings."
                raise NudgeError(msg)
            ok = not isinstance(grade, bool) and isinstance(grade, numbers.Real)
            value = float(grade) if ok else math.nan
            if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
                msg = (
                    f"{name}[{qi}] gives row {int(row)} the grade {grade!r}; expected a finite "
                    "number (e.g. 1 relevant, 2 highly relevant; ≤ 0 not relevant)."
                )
                raise NudgeError(msg)
            if value > 0:
                labels[int(row)] = value
        out.append(labels)
    return out


def _check_device(device: Any) -> torch.device:
    try:
        return torch.device(device or "cpu")
    except (RuntimeError, TypeError) as e:
        msg = f"device: found {device!r}, expected a torch device such as 'cpu' or 'cuda' ({e})."
        raise NudgeError(msg) from None


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
        raise NudgeError(msg)


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


def _float32_block(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """A float32 tensor copy of a (slice of an) array; read-only or memory-mapped input is fine."""
    return torch.from_numpy(np.array(x, dtype=np.float32, copy=True)).to(device)


def _rows_tensor(embeddings: np.ndarray, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    return normalize(_float32_block(embeddings[rows], device), dim=1)


@dataclass
class _Untouched:
    """Best validation scores over the rows NUDGE does not change (computed once)."""

    values: torch.Tensor  # (Qv, k) best scores, descending
    indices: torch.Tensor  # (Qv, k) their rows
    pair_scores: torch.Tensor  # (P,) score of each validation pair whose row is untouched


def _untouched_topk(
    embeddings: np.ndarray,
    changed: np.ndarray,
    val_q: torch.Tensor,
    pair_q: np.ndarray,
    pair_r: np.ndarray,
    k: int,
    block_rows: int | None,
) -> _Untouched:
    """Stream the corpus once: top-``k`` unchanged rows per validation query, pair scores."""
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


def _nudge_n_update(e: torch.Tensor, g: torch.Tensor) -> Callable[[float], torch.Tensor]:
    """NUDGE-N's closed form for rows ``e`` (unit) with label sums ``g``, as a function of γ.

    The γ-free parts (``v``, ``c − v²``, ``ĝ``, which rows snap) are computed once.
    """
    v = (g * e).sum(dim=1, keepdim=True)
    spread = (g * g).sum(dim=1, keepdim=True) - v**2
    frozen = (spread == 0) | (v < 0)
    g_hat = normalize(g, dim=1)
    alignment = (e * g_hat).sum(dim=1, keepdim=True)
    direction = g - v * e  # the component of g orthogonal to e (times ‖·‖)

    def at(gamma: float) -> torch.Tensor:
        if gamma == 0:
            return e
        lift = torch.sqrt(gamma / (4 - gamma) * spread)  # μ − v
        # e + γ(g − μe) / (2(μ − v)), with g − μe = (g − ve) − (μ − v)e
        delta = gamma * (direction - lift * e) / (2 * lift)
        out = torch.where(frozen, e, e + delta)
        return torch.where(alignment >= 1 - gamma / 2, g_hat, out)

    return at


def _nudge_m_update(e: torch.Tensor, g: torch.Tensor) -> Callable[[float], torch.Tensor]:
    """NUDGE-M's step for rows ``e`` (unit), ``e + γ·ĝ``, as a function of γ."""
    step = -normalize(-g, dim=1)  # the reference's sign convention, bit for bit
    return lambda gamma: e + gamma * step


def _val_blocks(n_val: int, n_cols: int) -> range:
    step = max(1, MAX_BLOCK_ELEMENTS // max(1, n_cols))
    return range(0, n_val, step)


def _top1_accuracy(
    val_q: torch.Tensor,
    new_rows: torch.Tensor,
    rows: np.ndarray,
    untouched: _Untouched,
    table: RelevanceTable,
) -> float:
    """Fraction of validation queries whose top-1 row is relevant."""
    preds = np.empty(val_q.shape[0], dtype=np.int64)
    for a in _val_blocks(val_q.shape[0], new_rows.shape[0]):
        b = a + max(1, MAX_BLOCK_ELEMENTS // max(1, new_rows.shape[0]))
        s = val_q[a:b] @ new_rows.T
        best_c, arg_c = s.max(dim=1)
        use_changed = best_c > untouched.values[a:b, 0]
        pred = torch.where(
            use_changed, torch.from_numpy(rows).to(s.device)[arg_c], untouched.indices[a:b, 0]
        )
        preds[a:b] = pred.cpu().numpy()
    hits = table.grade(np.arange(len(preds)), preds.reshape(-1, 1))[:, 0] > 0
    return float(hits.mean())


def _ndcg10(
    val_q: torch.Tensor,
    new_rows: torch.Tensor,
    rows: np.ndarray,
    untouched: _Untouched,
    table: RelevanceTable,
) -> float:
    """Mean validation NDCG@10 with the changed rows at ``new_rows``."""
    ranked = np.empty((val_q.shape[0], 10), dtype=np.int64)
    rows_t = torch.from_numpy(rows).to(val_q.device)
    for a in _val_blocks(val_q.shape[0], new_rows.shape[0]):
        b = a + max(1, MAX_BLOCK_ELEMENTS // max(1, new_rows.shape[0]))
        s = val_q[a:b] @ new_rows.T
        top = torch.topk(s, min(10, s.shape[1]), dim=1)
        cat_v = torch.cat([top.values, untouched.values[a:b]], dim=1)
        cat_i = torch.cat([rows_t[top.indices], untouched.indices[a:b]], dim=1)
        keep = torch.topk(cat_v, min(10, cat_v.shape[1]), dim=1)
        got = torch.gather(cat_i, 1, keep.indices).cpu().numpy()
        ranked[a:b, : got.shape[1]] = got
        ranked[a:b, got.shape[1] :] = -1
    return float(ndcg_at_k(ranked, table, 10).mean())


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


# --------------------------------------------------------------------------- public API


def finetune_embeddings(
    embeddings: np.ndarray,
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
    Rows are unit-normalised before the update, as in the paper. The input is never mutated.
    """
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

    embeddings = _check_matrix(embeddings, "embeddings")
    n, dim = embeddings.shape
    if n == 0:
        msg = "embeddings is empty: there are no chunks to fine-tune."
        raise NudgeError(msg)
    train_queries = _check_queries(train_queries, "train_queries", dim)
    train_labels = _check_positives(train_positives, len(train_queries), n, "train_positives")
    if not any(train_labels):
        msg = (
            "train_positives is empty: NUDGE needs at least one training query with a positive row."
        )
        raise NudgeError(msg)
    if gamma is not None:
        gamma = check_gamma(gamma, method)
    val_labels: list[dict[int, float]] = []
    val_mat = np.zeros((0, dim), dtype=np.float32)
    if val_queries is not None:
        val_mat = _check_queries(val_queries, "val_queries", dim)
        if val_positives is None:
            msg = "val_positives is missing: give one list of positive rows per validation query."
            raise NudgeError(msg)
        val_labels = _check_positives(val_positives, len(val_mat), n, "val_positives")
    if gamma is None and not any(val_labels):
        msg = (
            "the validation set is empty: gamma is chosen on validation queries with positives. "
            "Pass val_queries/val_positives, or a fixed gamma=..."
        )
        raise NudgeError(msg)

    fit_q = _float32_block(train_queries, dev)
    rows, g = _label_sums(fit_q, train_labels, weighting)
    _check_label_sums(rows, g)
    e = _rows_tensor(embeddings, rows, dev)
    make_update = _nudge_n_update if method is Method.NUDGE_N else _nudge_m_update
    update = make_update(e, g)

    curve: list[tuple[float, float]] = []
    chosen_selection: Selection | None = None
    if gamma is None:
        chosen_selection = selection
        keep = [i for i, rel in enumerate(val_labels) if rel]
        val_q = _float32_block(val_mat[keep], dev)
        labels = [val_labels[i] for i in keep]
        table = RelevanceTable(labels)
        pair_q, pair_r = _pairs(labels)
        k = 1 if selection is Selection.TOP1 else 10
        untouched = _untouched_topk(embeddings, rows, val_q, pair_q, pair_r, k, block_rows)
        score = _top1_accuracy if selection is Selection.TOP1 else _ndcg10
        if method is Method.NUDGE_M:
            g_hat = normalize(-g, dim=1)
            lows, highs = _nudge_m_intervals(val_q, e, -g_hat, rows, pair_q, pair_r, untouched)
            gamma = _most_covered_point(lows, highs)
            grid: Sequence[float] | np.ndarray = (
                [gamma] if selection is Selection.TOP1 else _nudge_m_candidates(lows, highs, gamma)
            )
        else:
            grid = NUDGE_N_GRID
        if grid_override is not None:
            grid = grid_override
        best = -1.0
        for cand in grid:
            value = score(val_q, update(float(cand)), rows, untouched, table)
            curve.append((float(cand), value))
            if value > best:
                best, gamma = value, float(cand)

    if refit and any(val_labels):
        all_q = torch.cat([fit_q, _float32_block(val_mat, dev)])
        rows, g = _label_sums(all_q, train_labels + val_labels, weighting)
        _check_label_sums(rows, g)
        e = _rows_tensor(embeddings, rows, dev)
        update = make_update(e, g)

    if gamma is None:  # pragma: no cover - every grid value scores ≥ 0 > -1
        gamma = 0.0
    new = update(float(gamma)).cpu().numpy()
    try:  # never NaN or inf out (a last guard: the inputs were checked above)
        check_vectors(new, what="the fitted vectors")
    except NudgeError as err:
        msg = (
            f"gamma={gamma}: the {method.value} update does not fit float32 ({err}); "
            "pass a smaller gamma."
        )
        raise NudgeError(msg) from None
    # A row changed when the update moved it off its (normalised) starting point; a row the
    # update leaves alone keeps its stored vector, rounding included.
    changed = np.any(new != e.cpu().numpy(), axis=1)
    return NudgeResult(
        rows=rows[changed].astype(np.int64),
        vectors=np.ascontiguousarray(new[changed], dtype=np.float32),
        gamma=float(gamma),
        method=method,
        selection=chosen_selection,
        refit=refit,
        weighting=weighting,
        curve=curve,
    )
