"""Topological feature entropy: birth-time kernel, reference path and entropy (pure functions).

This module implements the "Feature entropy (topological)" criterion of ``docs/CRITERIA.md``
(Zhao & Zhang, ICLR 2022) as pure functions on tensors; criteria and callbacks wrap them.

For one unit map ``U`` (``m x m``) the weighted graph on ``m`` vertices has edge weights
``W[i, j] = max(U[i, j], U[j, i])`` (``i != j``); the filtration by *decreasing* threshold ``a``
takes the clique (flag) complex of the graph of all edges with weight ``>= a``. The birth time is
the first threshold at which the first Betti number ``beta_1`` is non-zero, reported as the
1-based index ``v = 1 + #{entries of U strictly greater than a}`` (all ``m * m`` entries, diagonal
included, so tied entries share the first index of their tie), or ``-1`` when ``beta_1`` stays 0.

Algorithm of :func:`birth_times` (``method="torch"``), vectorised over every unit of a chunk
----------------------------------------------------------------------------------------------
Sort the ``E = m (m - 1) / 2`` edges of every unit by decreasing weight (ties in a fixed but
arbitrary order); ``r(e)`` is an edge's position in that *refined* order and ``R`` the ``m x m``
matrix of positions. CRITERIA.md step 4 says: while ``beta_1`` has been 0, adding ``e = (a, b)``
makes ``beta_1`` non-zero iff ``a`` and ``b`` are already connected and have no common neighbour
among the edges already added. Both parts are *static* properties of ``e`` in the refined order:

* connected before ``e``  <=>  ``e`` is not an edge of the minimum spanning tree of the ranks
  (Kruskal: the tree edges are exactly the edges that join two components when they arrive).
  The tree comes from Prim's algorithm, ``m - 1`` vectorised steps over the whole chunk.
* no common neighbour before ``e``  <=>  ``T2(a, b) = min_c max(R[a, c], R[b, c]) > r(e)``.

Call an edge satisfying both a *trigger*. The kernel scans the refined order in windows (all
units at once, window length doubling each round, early exit per unit) for the first trigger.

Ties (exact treatment). Edges of equal weight enter the filtration together, so what counts is
``beta_1`` after a whole tie group. Let group ``G`` start with ``beta_1 = 0`` (true for every
group before the birth). If no edge of ``G`` is a trigger, ``beta_1`` is still 0 after ``G``
(step 4 applied edge by edge). If the first trigger of ``G`` is its last edge (in particular if
``G`` is a single edge), ``beta_1 = 1`` after ``G``: birth. Otherwise later edges of ``G`` may
fill the new cycle, and ``beta_1`` after ``G`` is decided exactly by homology of the pair
``(K1, K0)`` (``K0`` / ``K1``: clique complexes before / after ``G``). Since ``H1(K0) = 0``, the
long exact sequence ``0 -> H1(K1) -> H1(K1, K0) -> H0(K0) -> H0(K1) -> 0`` gives::

    beta_1(K1) = dim H1(K1, K0) - (C0 - C1) = (k - rank_GF2(B)) - (#tree edges in G)

with ``k = |G|``; relative 1-chains are the ``k`` new edges (all relative cycles, every vertex
is already in ``K0``), ``B`` is the matrix whose rows are the new triangles (triangles of ``K1``
with at least one edge in ``G``) restricted to the columns of ``G``, and ``C0 - C1`` (components
merged by ``G``) is the number of spanning-tree edges in ``G``. So
``beta_1(K1) = #(non-tree edges in G) - rank_GF2(B)``, computed exactly for the (rare) units
whose first trigger sits inside a tie group (a loop over those units only; ``B`` has at most 3
ones per row: rows of weight <= 2 are peeled off as graph edges with connected components, the
rest goes through a bitset Gaussian elimination). If
``beta_1(K1) = 0`` the scan resumes after ``G`` (the complex again has ``beta_1 = 0``, so the
static trigger test stays valid for the later edges).

Cone cut-off: once some vertex is joined to all others (threshold
``w_cone = max_c min_{j != c} W[c, j]``) the complex is a cone, hence contractible, and every
later edge has that vertex as a common neighbour: no birth is possible in the group of
``w_cone`` or after it, so each unit scans only the edges with weight ``> w_cone``. The last
group (which completes the graph) is always beyond that cut-off.

Partial ordering: births usually come within the first ``m`` edges, so a first pass orders only
the ``4 m`` heaviest edges of each unit (``torch.topk``; edges outside get rank ``E``, i.e. "not
yet present", which leaves every answer about the exactly ordered prefix unchanged) and the units
it cannot decide within that prefix are recomputed with a full sort.

Compiled CPU kernel (``method="numba"``, the default for CPU tensors)
---------------------------------------------------------------------
:mod:`lightprune._birth_numba` applies the same rule unit by unit (numba, one unit per thread):
the heaviest edges are taken incrementally (blocks of edges above thresholds drawn from the row
maxima, each block sorted only as far as the scan goes), connectivity by union-find, the
common-neighbour test on bitset rows of the adjacency, the same cone cut-off, exit at the first
group that leaves ``beta_1 > 0``, and the same exact GF(2) count for a first trigger inside a tie
group. See that module's docstring.

The ``"giotto"`` path (:func:`giotto_birth_times`) computes the same index from giotto-ph
persistence and is the reference both kernels are tested against.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from .errors import ConfigError, check_choice, check_fraction

__all__ = [
    "BIRTH_METHODS",
    "BETTI_KINDS",
    "BETTI_AXES",
    "GIOTTO_DISTANCES",
    "birth_times",
    "giotto_birth_times",
    "feature_entropy",
    "feature_entropy_score",
    "betti_curves",
    "betti_curve_features",
]

BIRTH_METHODS: tuple[str, ...] = ("auto", "numba", "torch", "giotto")
BETTI_KINDS: tuple[str, ...] = ("max", "integral")
BETTI_AXES: tuple[str, ...] = ("index", "weight")
GIOTTO_DISTANCES: tuple[str, ...] = ("weights", "ranks")

# Element budgets that bound the memory of one chunk (about 40 bytes per element) and of one
# window gather (2 int32 tensors of this many elements).
_CHUNK_ELEMENTS = 1 << 21
_WINDOW_ELEMENTS = 1 << 22
# Largest m of the compiled kernel (edge ids pack two vertex numbers into an int32).
_NUMBA_MAX_M = 32767
# Integer views of float32 / float64 maps: (bit width - 1, mask of the non-sign bits, key of +inf).
_NUMBA_KEYS32 = (np.int32(31), np.int32(0x7FFFFFFF), np.int32(0x7F800000))
_NUMBA_KEYS64 = (np.int64(63), np.int64(0x7FFFFFFFFFFFFFFF), np.int64(0x7FF0000000000000))
_NAN_MESSAGE = "{argument} contains NaN; birth times need totally ordered values"
# float32 represents every integer below 2**24 exactly (used by the rank distances).
_FLOAT32_EXACT_INT = 1 << 24


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _check_maps(maps: object, argument: str = "maps", *, nan: bool = True) -> torch.Tensor:
    if isinstance(maps, np.ndarray):
        maps = torch.from_numpy(maps)
    if not isinstance(maps, torch.Tensor):
        raise ConfigError(
            f"{argument} must be a torch.Tensor of shape (..., m, m), got {type(maps).__name__}"
        )
    if maps.ndim < 2:
        raise ConfigError(
            f"{argument} must have shape (..., m, m) with at least 2 dimensions, got shape {tuple(maps.shape)}"
        )
    if maps.shape[-1] != maps.shape[-2]:
        raise ConfigError(
            f"{argument} must be square in its last two dimensions, got shape {tuple(maps.shape)}"
        )
    if not maps.is_floating_point():
        raise ConfigError(
            f"{argument} must have a floating dtype (float16, bfloat16, float32, float64), got {maps.dtype}"
        )
    if nan and maps.numel() and bool(torch.isnan(maps).any()):
        raise ConfigError(_NAN_MESSAGE.format(argument=argument))
    return maps.detach()


def _check_chunk_size(chunk_size: object) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(
            f"chunk_size={chunk_size!r} is not allowed; use None (automatic) or an integer >= 1"
        )
    return chunk_size


def _check_births(births: object) -> torch.Tensor:
    if not isinstance(births, torch.Tensor):
        raise ConfigError(
            f"births must be a torch.Tensor of shape (N_images, U), got {type(births).__name__}"
        )
    if births.ndim != 2:
        raise ConfigError(f"births must have shape (N_images, U), got shape {tuple(births.shape)}")
    if births.is_floating_point() or births.is_complex() or births.dtype == torch.bool:
        raise ConfigError(
            f"births must have an integer dtype (as returned by birth_times), got {births.dtype}"
        )
    if births.shape[0] < 1:
        raise ConfigError(
            f"births must hold at least one image (N_images >= 1), got shape {tuple(births.shape)}"
        )
    if births.numel() and bool(((births < 1) & (births != -1)).any()):
        bad = births[(births < 1) & (births != -1)][0].item()
        raise ConfigError(f"births must hold 1-based birth indices or -1 (no birth), found {bad}")
    return births


def _check_p(p: object) -> float:
    return check_fraction("p", p, low_open=False, high_open=False)


# --------------------------------------------------------------------------------------------
# birth times: torch kernel
# --------------------------------------------------------------------------------------------
def birth_times(
    maps: torch.Tensor,
    *,
    method: Literal["auto", "numba", "torch", "giotto"] = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Birth index of the first 1-cycle of every unit map (CRITERIA.md, feature entropy, steps 1-4).

    Args:
        maps: float tensor of shape ``(..., m, m)`` (float16, bfloat16, float32 or float64; CPU or
            CUDA). The values are ranked in their own dtype (no lossy cast). NaN is rejected.
        method: ``"auto"`` (default): ``"numba"`` for CPU tensors, ``"torch"`` for CUDA tensors.
            ``"numba"``: the compiled CPU kernel (:mod:`lightprune._birth_numba`: one unit per
            thread, partial selection of the heaviest edges, union-find and bitset adjacency,
            early exit); it runs on ``torch.get_num_threads()`` threads (at most numba's
            ``NUMBA_NUM_THREADS``); CUDA tensors are copied to the CPU and back. ``"torch"``: the
            exact vectorised kernel described in the module docstring, run on the maps' device.
            ``"giotto"``: the giotto-ph reference (:func:`giotto_birth_times`, CPU, one unit at a
            time); units where float32 cannot separate two distinct edge weights are recomputed
            on exact rank distances, so the result is exact for every unit. All methods return
            the same indices.
        chunk_size: number of units processed together; ``None`` (default) picks it so that a
            chunk holds about ``2**21`` map entries (``"torch"``; ``"numba"``: only float16 and
            bfloat16 maps are chunked, each chunk up-cast to float32, float32 and float64 maps
            are read in place). Results do not depend on it. Ignored by ``"giotto"``.

    Returns:
        ``torch.int64`` tensor of shape ``maps.shape[:-2]`` on the maps' device: the 1-based index
        ``v`` of the birth threshold in the descending order of all ``m * m`` entries of the map
        (``1 +`` the number of entries strictly greater than it), or ``-1`` where ``beta_1`` never
        becomes non-zero (always ``-1`` when ``m < 3``).

    Raises:
        ConfigError: ``maps`` is not a tensor, has fewer than 2 dimensions, is not square, has a
            non-floating dtype or contains NaN; ``method`` is unknown; ``chunk_size`` is not a
            positive integer.

    Example::

        >>> import torch
        >>> # a 4-cycle 0-1-2-3-0 enters first (weight 5), the chords later (weight 1)
        >>> U = torch.tensor([[0., 5., 1., 5.],
        ...                   [5., 0., 5., 1.],
        ...                   [1., 5., 0., 5.],
        ...                   [5., 1., 5., 0.]])
        >>> birth_times(U)    # the cycle closes at threshold 5: 8 entries are >= 5, none > 5
        tensor(1)
        >>> birth_times(torch.ones(2, 3, 3)).tolist()   # constant maps never hold a cycle
        [-1, -1]
    """
    check_choice("method", method, BIRTH_METHODS)
    if method == "auto":
        on_cuda = isinstance(maps, torch.Tensor) and maps.device.type == "cuda"
        too_big = hasattr(maps, "shape") and len(maps.shape) >= 2 and maps.shape[-1] > _NUMBA_MAX_M
        method = "torch" if on_cuda or too_big else "numba"
    # the compiled kernel finds NaN itself, in the pass over the maps it makes anyway
    maps = _check_maps(maps, nan=method != "numba")
    chunk_size = _check_chunk_size(chunk_size)
    if method == "numba":
        return _births_numba(maps, chunk_size)
    if method == "giotto":
        births, ambiguous = giotto_birth_times(maps, distances="weights")
        if bool(ambiguous.any()):
            exact, _ = giotto_birth_times(maps[ambiguous], distances="ranks")
            births[ambiguous] = exact
        return births

    lead, m = maps.shape[:-2], maps.shape[-1]
    flat = maps.reshape(math.prod(lead), m, m)
    out = torch.full((flat.shape[0],), -1, dtype=torch.int64, device=maps.device)
    if m < 3 or flat.shape[0] == 0:
        return out.reshape(lead)
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // (m * m))
    for start in range(0, flat.shape[0], chunk_size):
        out[start : start + chunk_size] = _births_chunk(flat[start : start + chunk_size])
    return out.reshape(lead)


def _births_numba(maps: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    """``method="numba"``: the compiled kernel of :mod:`lightprune._birth_numba`.

    ``maps`` is checked except for NaN, which the kernel detects (in the pass it makes anyway)."""
    lead, m = maps.shape[:-2], maps.shape[-1]
    if m > _NUMBA_MAX_M:
        raise ConfigError(f"method='numba' supports maps up to {_NUMBA_MAX_M} x {_NUMBA_MAX_M}, got m={m}")
    n = math.prod(lead)
    if m < 3 or not n:  # no cycle on fewer than 3 vertices
        return torch.full(lead, -1, dtype=torch.int64, device=maps.device)
    out = np.empty(n, dtype=np.int64)  # the kernel writes every entry
    import numba

    from . import _birth_numba

    flat = maps.reshape(n, m, m)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    torch_threads = torch.get_num_threads()
    threads = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
        # numba's OpenMP layer and torch's own OpenMP runtime share symbols: the first
        # numba.set_num_threads of a process can reset torch's thread count (set to 1 before numba
        # was loaded, it reads 2 afterwards), and the next call would then run the kernel on 2
        # threads. torch's count is put back at once: the kernel and the caller's torch keep the
        # caller's count.
        _restore_torch_threads(torch_threads)
    # blocks of units handed out dynamically (one thread: nothing to balance)
    old_chunk = numba.set_parallel_chunksize(1) if threads > 1 else None
    nan_units = 0
    try:
        if flat.dtype in (torch.float32, torch.float64):
            steps = [(0, n)]
        else:  # float16 / bfloat16: up-cast (exact) one chunk at a time
            size = chunk_size or max(1, _CHUNK_ELEMENTS // (m * m))
            steps = [(s, min(n, s + size)) for s in range(0, n, size)]
        for start, stop in steps:
            part = flat[start:stop]
            if part.dtype not in (torch.float32, torch.float64):
                part = part.float()
            arr = part.contiguous().numpy()
            if arr.dtype == np.float32:
                keys, consts = arr.view(np.int32), _NUMBA_KEYS32
            else:
                keys, consts = arr.view(np.int64), _NUMBA_KEYS64
            block = max(1, min(256, (stop - start) // (16 * threads)))
            nan_units += _birth_numba.births(keys, *consts, out[start:stop], block)
    finally:
        if old_chunk is not None:
            numba.set_parallel_chunksize(old_chunk)
        _restore_torch_threads(torch_threads)
    if nan_units:
        raise ConfigError(_NAN_MESSAGE.format(argument="maps"))
    births = torch.from_numpy(out)
    if len(lead) != 1:
        births = births.reshape(lead)
    return births if maps.device.type == "cpu" else births.to(maps.device)


def _restore_torch_threads(threads: int) -> None:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _births_chunk(U: torch.Tensor) -> torch.Tensor:
    """Birth indices of a chunk ``U`` of shape (B, m, m), m >= 3, no NaN. See the module docstring.

    Two passes: most births come early in the filtration (within the first ``m`` edges for typical
    activation maps), so the first pass orders only the top ``4 m`` edges of every unit
    (``torch.topk``) and the units it cannot decide are run again with a full sort.
    """
    m = U.shape[-1]
    E = m * (m - 1) // 2
    top = 4 * m
    if top >= E // 2:
        return _births_pass(U, top=None)[0]
    births, unresolved = _births_pass(U, top=top)
    if bool(unresolved.any()):
        idx = unresolved.nonzero().squeeze(1)
        births.index_copy_(0, idx, _births_pass(U.index_select(0, idx), top=None)[0])
    return births


def _births_pass(U: torch.Tensor, top: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the kernel over (B, m, m) maps, ordering only the ``top`` largest edges if given.

    With ``top``, only the edges strictly heavier than the ``top``-th largest weight get exact
    positions (``n_exact``); all others count as "not yet present" (rank ``E``), which is exact for
    every question the scan asks about positions ``< n_exact`` (the spanning-tree edges among them
    are the same for every minimum spanning tree, whatever the ties at rank ``E``). Units that
    reach ``n_exact`` undecided are returned as unresolved.

    Only ``gather`` / ``take`` / ``index_select`` / ``index_copy_`` / ``scatter_`` are used for
    indexing: on CPU, PyTorch's advanced indexing parallelises even tiny gathers, which costs
    milliseconds per call when the cores are shared.

    Returns:
        (births, unresolved): int64 (B,) births (-1 also where unresolved) and bool (B,).
    """
    dev = U.device
    B, m = U.shape[0], U.shape[-1]
    if U.dtype in (torch.float16, torch.bfloat16) and dev.type == "cpu":
        # Up-casting is exact (order and ties unchanged); it only avoids slow half kernels on CPU.
        U = U.float()
    iu, ju = torch.triu_indices(m, m, offset=1, device=dev)
    E = iu.numel()
    Uf = U.reshape(B, m * m)
    flat_ij, flat_ji = iu * m + ju, ju * m + iu

    Wfull = torch.maximum(U, U.transpose(1, 2))  # symmetrised map
    W = Wfull.reshape(B, m * m).index_select(1, flat_ij)  # (B, E) edge weights, canonical order
    if top is None:
        w_sorted, order = torch.sort(W, dim=1, descending=True, stable=True)  # the refined order
        n_exact = torch.full((B,), E, dtype=torch.int64, device=dev)
    else:
        w_sorted, order = torch.topk(W, top, dim=1, sorted=True)
        n_exact = (W > w_sorted[:, -1:]).sum(dim=1)  # every such edge is inside the top-k
    n_pos = order.shape[1]

    # R[b, i, j] = position of edge {i, j} in the refined order; diagonal and edges without an
    # exact position = E ("not present").
    positions = torch.arange(n_pos, device=dev).expand(B, n_pos)
    rank = torch.where(positions < n_exact[:, None], positions, E).to(torch.int32)
    R = torch.full((B, m * m), E, dtype=torch.int32, device=dev)
    R.scatter_(1, flat_ij.take(order), rank)
    R.scatter_(1, flat_ji.take(order), rank)
    R_rows = R.view(B * m, m)  # row (b, i) of R at index b * m + i
    del rank, positions

    # Cone cut-off: no birth at weights <= w_cone; only the first `limit` positions are scanned.
    Wfull.diagonal(dim1=1, dim2=2).fill_(math.inf)
    w_cone = Wfull.amin(dim=2).amax(dim=1)
    limit = (W > w_cone[:, None]).sum(dim=1)
    scan_end = torch.minimum(limit, n_exact)
    del Wfull, W

    # Minimum spanning tree of the ranks (Prim), marked by position in the refined order.
    is_tree = torch.zeros((B, E + 1), dtype=torch.bool, device=dev)
    in_tree = torch.zeros((B, m), dtype=torch.bool, device=dev)
    in_tree[:, 0] = True
    key = R[:, :m].clone()  # ranks of the edges from vertex 0
    row_base = torch.arange(B, device=dev) * m
    for _ in range(m - 1):
        v = key.masked_fill(in_tree, E + 1).argmin(dim=1, keepdim=True)  # (int32 .min(dim) is slow on CPU)
        is_tree.scatter_(1, key.gather(1, v).long(), True)
        in_tree.scatter_(1, v, True)
        torch.minimum(key, R_rows.index_select(0, row_base + v.squeeze(1)), out=key)
    del key, in_tree
    is_tree_flat = is_tree.view(-1)
    order_flat = order.reshape(-1)
    w_flat = w_sorted.reshape(-1)

    birth_pos = torch.full((B,), -1, dtype=torch.int64, device=dev)
    pos = torch.zeros((B,), dtype=torch.int64, device=dev)
    window = max(16, m)
    while True:
        act = (pos < scan_end).nonzero().squeeze(1)
        A = act.numel()
        if A == 0:
            break
        K = max(1, min(window, _WINDOW_ELEMENTS // (A * m)))
        p = pos.index_select(0, act)
        qs = p[:, None] + torch.arange(K, device=dev)  # (A, K) positions in the refined order
        valid = qs < scan_end.index_select(0, act)[:, None]
        qc = qs.clamp(max=n_pos - 1)
        e = order_flat.take(act[:, None] * n_pos + qc)
        base = (act * m)[:, None]
        Ra = R_rows.index_select(0, (base + iu.take(e)).view(-1))
        Rb = R_rows.index_select(0, (base + ju.take(e)).view(-1))
        t2 = torch.maximum(Ra, Rb).amin(dim=1).view(A, K)  # min_c max(R[a, c], R[b, c])
        tree = is_tree_flat.take(act[:, None] * (E + 1) + qc)
        trig = valid & ~tree & (t2 > qc)
        has = trig.any(dim=1)
        first = trig.to(torch.uint8).argmax(dim=1)
        pos.index_copy_(0, act, p + K)  # units with a trigger are overwritten below
        hit = has.nonzero().squeeze(1)
        if hit.numel():
            ut = act.index_select(0, hit)
            q = p.index_select(0, hit) + first.index_select(0, hit)
            wq = w_flat.take(ut * n_pos + q)
            ws = w_sorted.index_select(0, ut)
            group_end = (ws >= wq[:, None]).sum(dim=1) - 1  # inside the exact prefix (q < n_exact)
            single = group_end == q
            birth_pos.index_copy_(0, ut, torch.where(single, q, -1))
            pos.index_copy_(0, ut, torch.full_like(q, E))
            tie = (~single).nonzero().squeeze(1)
            if tie.numel():
                ut_t, q_t, ge_t = (
                    ut.index_select(0, tie),
                    q.index_select(0, tie),
                    group_end.index_select(0, tie),
                )
                gs_t = (ws.index_select(0, tie) > wq.index_select(0, tie)[:, None]).sum(dim=1)
                born = _tie_groups_have_cycle(
                    R.index_select(0, ut_t).view(-1, m, m),
                    order.index_select(0, ut_t),
                    is_tree.index_select(0, ut_t),
                    gs_t,
                    ge_t,
                    iu,
                    ju,
                )
                born_t = torch.as_tensor(born, dtype=torch.bool, device=dev)
                birth_pos.index_copy_(0, ut_t, torch.where(born_t, q_t, -1))
                pos.index_copy_(0, ut_t, torch.where(born_t, E, ge_t + 1))
        window = min(2 * window, E)

    found = birth_pos >= 0
    unresolved = ~found & (limit > n_exact)
    thr = w_sorted.gather(1, birth_pos.clamp(min=0)[:, None])
    return torch.where(found, 1 + (Uf > thr).sum(dim=1), -1), unresolved


def _tie_groups_have_cycle(
    R: torch.Tensor,
    order: torch.Tensor,
    is_tree: torch.Tensor,
    group_start: torch.Tensor,
    group_end: torch.Tensor,
    iu: torch.Tensor,
    ju: torch.Tensor,
) -> list[bool]:
    """For each unit: is beta_1 > 0 after its tie group [start, end] (beta_1 = 0 before it)?

    Uses ``beta_1 = #(non-tree edges of the group) - rank_GF2(new triangles x group edges)``
    (module docstring). Loops over the given units only; everything inside is numpy.
    """
    R_np = R.cpu().numpy()
    order_np = order.cpu().numpy()
    tree_np = is_tree.cpu().numpy()
    gs_np = group_start.cpu().numpy()
    ge_np = group_end.cpu().numpy()
    iu_np, ju_np = iu.cpu().numpy(), ju.cpu().numpy()
    out = []
    for u in range(R_np.shape[0]):
        gs, ge = int(gs_np[u]), int(ge_np[u])
        edges = order_np[u, gs : ge + 1]
        out.append(_group_beta1(R_np[u], iu_np[edges], ju_np[edges], tree_np[u, gs : ge + 1], gs, ge) > 0)
    return out


def _group_beta1(R: np.ndarray, a: np.ndarray, b: np.ndarray, tree: np.ndarray, gs: int, ge: int) -> int:
    """beta_1 after adding the tie group of positions gs..ge (edges a[s]-b[s]) to a complex with beta_1 = 0."""
    k = ge - gs + 1
    n_cycles = k - int(tree.sum())
    if n_cycles == 0:
        return 0
    present = R <= ge  # edges of K1 (the diagonal holds E > ge)
    s_idx, c = np.nonzero(present[a] & present[b])
    if s_idx.size == 0:
        return n_cycles
    # each triangle is found once per group edge it holds: deduplicate on a scalar key
    m = R.shape[0]
    tri = np.sort(np.stack([a[s_idx], b[s_idx], c], axis=1).astype(np.int64), axis=1)
    key = np.unique((tri[:, 0] * m + tri[:, 1]) * m + tri[:, 2])
    x, y, z = key // (m * m), (key // m) % m, key % m
    cols = np.stack([R[x, y], R[x, z], R[y, z]], axis=1).astype(np.int64) - gs  # < 0: edge of K0
    # beta_1 >= 0, so rank(B) <= n_cycles: the rank computation may stop once it gets there
    return n_cycles - _gf2_rank(cols, k, stop_at=n_cycles)


def _gf2_rank(cols: np.ndarray, n_cols: int, stop_at: int | None = None) -> int:
    """GF(2) rank of sparse rows; ``cols`` (n_rows, 3) lists each row's columns, negative = absent.

    With ``stop_at``, returns ``min(rank, stop_at)`` and stops as soon as that value is reached.

    Peeling, vectorised: columns are grouped into classes (the quotient of GF(2)^n by the rows
    absorbed so far) plus a "zero" class. Each pass reduces every row modulo the current classes
    (equal classes cancel in pairs, the zero class vanishes); rows of weight 0 are dependent, rows
    of weight 1 or 2 are edges ``class - zero`` / ``class - class`` of a graph whose span has
    dimension ``#nodes - #components`` (incidence vectors over GF(2)), and merging each component
    into one class gives the next quotient. When no row of weight <= 2 is left, the remaining rows
    (weight 3) are eliminated exactly with Python-int bitsets.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    zero = n_cols
    stop_at = n_cols if stop_at is None else min(stop_at, n_cols)
    rows = np.where(cols >= 0, cols, zero).astype(np.int64)
    rank = 0
    while rows.shape[0] and rank < stop_at:
        rows = _cancel_pairs(rows, zero)
        weight = (rows != zero).sum(axis=1)
        small = (weight == 1) | (weight == 2)
        if not small.any():
            break
        pairs = rows[small][:, :2]  # a weight-1 row is (class, zero, zero)
        graph = coo_matrix((np.ones(pairs.shape[0]), (pairs[:, 0], pairs[:, 1])), shape=(zero + 1, zero + 1))
        n_comp, comp = connected_components(graph, directed=False)
        rank += zero + 1 - n_comp
        if rank >= stop_at:
            return stop_at
        _, rep = np.unique(comp, return_index=True)  # smallest node of each component ...
        rep[comp[zero]] = zero  # ... except that the zero component stays "zero"
        rows = rep[comp[rows[weight == 3]]]
    pivots: dict[int, int] = {}
    for start in range(0, rows.shape[0], 4096):  # converted in blocks: the loop may stop early
        for row in rows[start : start + 4096].tolist():
            if rank >= stop_at:
                return rank
            bits = 0
            for c in row:
                if c != zero:
                    bits ^= 1 << c
            while bits:
                top = bits.bit_length() - 1
                if top in pivots:
                    bits ^= pivots[top]
                else:
                    pivots[top] = bits
                    rank += 1
                    break
    return rank


def _cancel_pairs(rows: np.ndarray, zero: int) -> np.ndarray:
    """Reduce rows of 3 class labels over GF(2): equal labels cancel in pairs, ``zero`` is 0.

    Returns rows sorted so that the surviving labels come first and ``zero`` pads the rest.
    """
    rows = np.sort(rows, axis=1)
    a, b, c = rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].copy()
    ab = a == b  # a == b (== c or not): a and b cancel, c survives
    bc = (b == c) & ~ab  # b and c cancel, a survives
    a[ab], b[ab] = zero, zero
    b[bc], c[bc] = zero, zero
    return np.sort(np.stack([a, b, c], axis=1), axis=1)


# --------------------------------------------------------------------------------------------
# birth times: giotto-ph reference
# --------------------------------------------------------------------------------------------
def giotto_birth_times(
    maps: torch.Tensor,
    *,
    distances: Literal["weights", "ranks"] = "weights",
    n_threads: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference birth indices from giotto-ph persistence, with a float32-ambiguity flag.

    For each unit: ``W = max(U, U^T)``, ``D = max(W) - W`` with zero diagonal (computed in
    float64, exact for float16/float32 inputs up to one rounding), and
    ``gph.ripser_parallel(D, metric="precomputed", maxdim=1)``. The birth is the smallest birth
    distance ``d`` among H1 bars of positive persistence; its threshold is the weight of the edges
    whose float32 distance equals ``d``, and ``v = 1 + #{entries of U > threshold}``.

    giotto-ph computes in float32. A unit is flagged *ambiguous* when two distinct edge weights
    get the same float32 distance: persistence is then computed for a coarser filtration (merged
    ties) and may differ from the exact answer. ``distances="ranks"`` removes the issue: ``D`` is
    replaced by the dense rank of each edge weight (0 for the largest), an order- and
    tie-preserving relabelling of the same filtration, so the persistence pairs are the same and
    the ranks (integers below ``2**24``) are exact in float32.

    Args:
        maps: float tensor of shape ``(..., m, m)``; any float dtype and device (copied to CPU).
        distances: ``"weights"`` (default): ``D = max(W) - W`` as in CRITERIA.md; ``"ranks"``:
            dense ranks of the weights.
        n_threads: threads for each ``ripser_parallel`` call, default 1.

    Returns:
        ``(births, ambiguous)``: int64 and bool tensors of shape ``maps.shape[:-2]`` on the maps'
        device. ``births`` is ``-1`` where no bar exists (and for ``m < 3``). With ``"ranks"``
        ``ambiguous`` is all False.

    Raises:
        ConfigError: bad ``maps`` (see :func:`birth_times`; with ``distances="weights"`` also
            infinite values), unknown ``distances`` or bad ``n_threads``.

    Example::

        >>> import torch
        >>> U = torch.tensor([[0., 5., 1., 5.], [5., 0., 5., 1.], [1., 5., 0., 5.], [5., 1., 5., 0.]])
        >>> giotto_birth_times(U)
        (tensor(1), tensor(False))
        >>> V = U.double()
        >>> V[0, 2] += 1e-12   # distances 4 and 4 - 1e-12 are equal in float32
        >>> giotto_birth_times(V)
        (tensor(1), tensor(True))
    """
    check_choice("distances", distances, GIOTTO_DISTANCES)
    maps = _check_maps(maps)
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise ConfigError(f"n_threads={n_threads!r} is not allowed; it must be an integer >= 1")
    if distances == "weights" and maps.numel() and not bool(torch.isfinite(maps).all()):
        raise ConfigError("maps contains +-inf: max(W) - W is undefined; use distances='ranks'")
    from gph import ripser_parallel

    lead, m = maps.shape[:-2], maps.shape[-1]
    flat = maps.reshape(math.prod(lead), m, m).cpu().to(torch.float64).numpy()
    n = flat.shape[0]
    births = np.full(n, -1, dtype=np.int64)
    ambiguous = np.zeros(n, dtype=bool)
    if m >= 3:
        iu, ju = np.triu_indices(m, k=1)
        for u in range(n):
            U = flat[u]
            W = np.maximum(U, U.T)
            w_edges = W[iu, ju]
            distinct = np.unique(w_edges)[::-1]  # descending distinct weights (float64, exact)
            if distances == "weights":
                d_distinct = (distinct[0] - distinct).astype(np.float32)
                ambiguous[u] = bool(np.any(d_distinct[1:] == d_distinct[:-1]))
            else:
                if distinct.size >= _FLOAT32_EXACT_INT:
                    raise ConfigError(f"maps with m={m} have too many distinct weights for float32 ranks")
                d_distinct = np.arange(distinct.size, dtype=np.float32)
            # D of each edge via its distinct weight (identical float32 values for tied weights)
            idx = np.searchsorted(-distinct, -w_edges)
            D = np.zeros((m, m), dtype=np.float32)
            D[iu, ju] = d_distinct[idx]
            D[ju, iu] = d_distinct[idx]
            bars = ripser_parallel(D, metric="precomputed", maxdim=1, n_threads=n_threads)["dgms"][1]
            bars = bars[bars[:, 1] > bars[:, 0]]
            if bars.shape[0] == 0:
                continue
            d = bars[:, 0].min()
            thr = distinct[d_distinct == np.float32(d)].max()  # several values only if ambiguous
            births[u] = 1 + int(np.count_nonzero(U > thr))
    dev = maps.device
    return (
        torch.from_numpy(births).reshape(lead).to(dev),
        torch.from_numpy(ambiguous).reshape(lead).to(dev),
    )


# --------------------------------------------------------------------------------------------
# feature entropy
# --------------------------------------------------------------------------------------------
def feature_entropy(births: torch.Tensor, *, p: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature entropy and selective rate of every unit (CRITERIA.md, feature entropy, step 5).

    For unit ``j`` over the ``N`` images: ``P(x) = #(images with birth x) / #(images with a
    birth)``, ``H = -sum_x P(x) log P(x)`` (natural log), ``eps = #(images with a birth) / N``; if
    ``eps < p`` then ``H := (1 - eps) log N``. With ``p = 0`` and no image with a birth, ``H = 0``.

    Args:
        births: integer tensor of shape ``(N_images, U)`` as returned by :func:`birth_times`
            (1-based indices, ``-1`` = no birth), ``N_images >= 1``.
        p: selective-rate threshold in ``[0, 1]``, default 0.1 (the paper's value).

    Returns:
        ``(entropy, selective_rate)``: two float64 tensors of shape ``(U,)`` on the births' device.

    Raises:
        ConfigError: ``births`` is not a 2-D integer tensor with at least one row, holds values
            other than ``-1`` and positive integers, or ``p`` is not a number in ``[0, 1]``.

    Example::

        >>> import torch
        >>> births = torch.tensor([[3, -1], [3, 5], [4, -1], [4, -1]])   # 4 images, 2 units
        >>> H, eps = feature_entropy(births, p=0.3)
        >>> [round(h, 4) for h in H.tolist()], eps.tolist()   # H_0 = log 2; unit 1: eps < p
        ([0.6931, 1.0397], [1.0, 0.25])
    """
    births = _check_births(births)
    p = _check_p(p)
    n, units = births.shape
    dev = births.device
    b = births.to(torch.int64)
    has = b > 0
    n_with = has.sum(dim=0)  # (U,)
    entropy = torch.zeros(units, dtype=torch.float64, device=dev)
    if bool(has.any()):
        col = torch.arange(units, device=dev).expand(n, units)[has]
        key = col * (int(b.max()) + 1) + b[has]
        uniq, counts = torch.unique(key, return_counts=True)
        unit_of = uniq // (int(b.max()) + 1)
        prob = counts.to(torch.float64) / n_with[unit_of].to(torch.float64)
        entropy.index_add_(0, unit_of, -prob * torch.log(prob))
    eps = n_with.to(torch.float64) / n
    low = eps < p
    entropy = torch.where(low, (1.0 - eps) * math.log(n), entropy)
    return entropy, eps


def feature_entropy_score(births: torch.Tensor, *, p: float = 0.1) -> torch.Tensor:
    """Per-class pruning score ``H / max(eps, 1/N)`` of every unit (CRITERIA.md step 6).

    High = ineffective = prune first (the criterion's importance is minus the class mean).

    Args:
        births: integer tensor of shape ``(N_images, U)`` for the images of one class (see
            :func:`feature_entropy`).
        p: selective-rate threshold in ``[0, 1]``, default 0.1.

    Returns:
        float64 tensor of shape ``(U,)``.

    Raises:
        ConfigError: as :func:`feature_entropy`.

    Example::

        >>> import torch
        >>> feature_entropy_score(torch.tensor([[3, -1], [3, 5], [4, -1], [4, -1]]), p=0.3)
        tensor([0.6931, 4.1589], dtype=torch.float64)
    """
    entropy, eps = feature_entropy(births, p=p)
    return entropy / eps.clamp(min=1.0 / births.shape[0])


# --------------------------------------------------------------------------------------------
# Betti-curve variants (paper appendix)
# --------------------------------------------------------------------------------------------
def _edge_indices(U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(W, V)`` of one map: ``W = max(U, U^T)`` and ``V[i, j] = 1 + #{entries of U > W[i, j]}``
    (the index of the step at which edge ``(i, j)`` enters; zero diagonal)."""
    m = U.shape[0]
    W = np.maximum(U, U.T)
    ascending = np.sort(U, axis=None)
    V = 1 + m * m - np.searchsorted(ascending, W, side="right")
    np.fill_diagonal(V, 0)
    return W, V


def _index_bars(flat: np.ndarray, n_threads: int) -> list[np.ndarray]:
    """H1 bars ``[birth, death)`` on the index axis of every map of ``flat`` (n, m, m), float64
    arrays of integers (giotto-ph on the index distance, exact in float32 below ``2**24``)."""
    from gph import ripser_parallel

    m = flat.shape[-1]
    if m * m >= _FLOAT32_EXACT_INT:
        raise ConfigError(f"maps with m={m} have more than 2**24 entries; the index axis needs m*m < 2**24")
    out = []
    for U in flat:
        _, V = _edge_indices(U)
        bars = ripser_parallel(V.astype(np.float32), metric="precomputed", maxdim=1, n_threads=n_threads)
        bars = bars["dgms"][1].astype(np.float64)
        out.append(bars[bars[:, 1] > bars[:, 0]])
    return out


def _check_threads(n_threads: object) -> int:
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise ConfigError(f"n_threads={n_threads!r} is not allowed; it must be an integer >= 1")
    return n_threads


def betti_curves(maps: torch.Tensor, *, n_threads: int = 1) -> torch.Tensor:
    """The beta_1 curve of every unit map on the paper's index axis (CRITERIA.md step 7).

    ``curve[..., v - 1] = beta_1`` of the clique complex of the edges with weight ``>= a_v``, where
    ``a_v`` is the ``v``-th largest of the ``m * m`` entries of the map (``v = 1 .. m * m``; the
    axis of :func:`birth_times`, so the first ``v`` with a non-zero value is the birth index).
    Exact: giotto-ph persistence of the Vietoris-Rips filtration on the distance
    ``D[i, j] = 1 + #{entries > max(U[i, j], U[j, i])}`` (the step at which the edge enters;
    integers, exact in giotto's float32), ``beta_1(v) = #{H1 bars with birth <= v < death}``.

    Args:
        maps: float tensor of shape ``(..., m, m)`` (NaN rejected, +-inf allowed).
        n_threads: threads of each giotto-ph call, default 1.

    Returns:
        int64 tensor of shape ``maps.shape[:-2] + (m * m,)`` on the maps' device (all zero for
        ``m < 3``).

    Example::

        >>> import torch
        >>> U = torch.tensor([[0., 5., 1., 5.], [5., 0., 5., 1.], [1., 5., 0., 5.], [5., 1., 5., 0.]])
        >>> betti_curves(U).tolist()   # the square is born at v = 1, filled when the chords enter (v = 9)
        [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    """
    maps = _check_maps(maps)
    n_threads = _check_threads(n_threads)
    lead, m = maps.shape[:-2], maps.shape[-1]
    flat = maps.reshape(math.prod(lead), m, m).cpu().to(torch.float64).numpy()
    curves = np.zeros((flat.shape[0], m * m), dtype=np.int64)
    if m >= 3 and flat.shape[0]:
        v = np.arange(1, m * m + 1, dtype=np.float64)
        for u, bars in enumerate(_index_bars(flat, n_threads)):
            if bars.size:
                curves[u] = ((bars[:, :1] <= v) & (v < bars[:, 1:])).sum(axis=0)
    return torch.from_numpy(curves).reshape(*lead, m * m).to(maps.device)


def betti_curve_features(
    maps: torch.Tensor,
    *,
    kind: Literal["max", "integral"] = "max",
    axis: Literal["index", "weight"] = "index",
    n_bins: int | None = None,
    n_jobs: int | None = None,
) -> torch.Tensor:
    """Maximum or integral of the beta_1 curve of every unit map (CRITERIA.md step 7).

    ``axis="index"`` (default; the paper's parameter): the curve of :func:`betti_curves`,
    ``beta_1(v)`` for ``v = 1 .. m * m`` (the ``v``-th step lowers the threshold to the ``v``-th
    largest entry of the map, the axis of the birth index). ``"max"`` is ``max_v beta_1(v)``,
    ``"integral"`` is ``sum_v beta_1(v)`` (unit steps) ``= sum over H1 bars of (death - birth)``,
    an integer. Exact (giotto-ph persistence on integer step indices). Invariant to any strictly
    increasing transform of the map's values.

    ``axis="weight"`` (the earlier convention, kept as an option): the filtration is parametrised
    by the normalised distance ``t = (max W - W) / (max W - min W)`` in ``[0, 1]`` (``W`` over the
    off-diagonal edges), so the features do not change when a map is scaled by a positive
    constant or shifted. Persistence comes from ``gtda.homology.VietorisRipsPersistence(
    metric="precomputed", homology_dimensions=(1,))`` on that distance (giotto computes in
    float32). The beta_1 curve at ``t`` counts the bars with ``birth <= t < death``.

    * ``n_bins=None`` (default): the curve is taken exactly at the filtration values: ``"max"`` is
      its maximum, ``"integral"`` is ``int_0^1 beta_1(t) dt = sum of (death - birth)``.
    * ``n_bins=int`` (``axis="weight"`` only): the curve is sampled by ``gtda.diagrams.BettiCurve``
      at ``n_bins`` evenly spaced values of ``[0, 1]``; ``"max"`` is the sampled maximum,
      ``"integral"`` the trapezoidal integral over ``[0, 1]``.

    Maps with ``m < 3`` (and, on the weight axis, a constant off-diagonal) give 0.

    Args:
        maps: float tensor of shape ``(..., m, m)``.
        kind: ``"max"`` (default) or ``"integral"``.
        axis: ``"index"`` (default) or ``"weight"``.
        n_bins: ``None`` (exact, default) or, with ``axis="weight"``, number of samples ``>= 2``.
        n_jobs: parallel jobs for giotto-tda (``axis="weight"``; ``None`` = 1) or threads of each
            giotto-ph call (``axis="index"``).

    Returns:
        float64 tensor of shape ``maps.shape[:-2]`` on the maps' device.

    Raises:
        ConfigError: bad ``maps`` (see :func:`birth_times`), unknown ``kind`` or ``axis``, bad
            ``n_bins`` or ``n_bins`` with ``axis="index"``.

    Example::

        >>> import torch
        >>> U = torch.tensor([[0., 5., 1., 5.], [5., 0., 5., 1.], [1., 5., 0., 5.], [5., 1., 5., 0.]])
        >>> betti_curve_features(U, kind="max").item()   # one 1-cycle, alive for v = 1 .. 8
        1.0
        >>> betti_curve_features(U, kind="integral").item()
        8.0
        >>> betti_curve_features(U, kind="integral", axis="weight").item()   # born at t=0, dead at t=1
        1.0
    """
    check_choice("kind", kind, BETTI_KINDS)
    check_choice("axis", axis, BETTI_AXES)
    maps = _check_maps(maps)
    if n_bins is not None and (isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2):
        raise ConfigError(f"n_bins={n_bins!r} is not allowed; use None (exact) or an integer >= 2")
    if n_bins is not None and axis == "index":
        raise ConfigError(
            f"n_bins={n_bins!r} is not allowed with axis='index' (the index curve is exact, one value per step); "
            "use n_bins=None, or axis='weight' for the sampled curve"
        )
    lead, m = maps.shape[:-2], maps.shape[-1]
    flat = maps.reshape(math.prod(lead), m, m).cpu().to(torch.float64).numpy()
    n = flat.shape[0]
    out = np.zeros(n, dtype=np.float64)
    if m >= 3 and n and axis == "index":
        for u, bars in enumerate(_index_bars(flat, _check_threads(n_jobs or 1))):
            if bars.size:
                births, deaths = bars[None, :, 0], bars[None, :, 1]
                out[u] = _betti_from_diagrams(np.stack([births, deaths], axis=2), kind, None)[0]
    elif m >= 3 and n:
        from gtda.homology import VietorisRipsPersistence

        iu, ju = np.triu_indices(m, k=1)
        W = np.maximum(flat, flat.transpose(0, 2, 1))
        w_max = W[:, iu, ju].max(axis=1)
        w_min = W[:, iu, ju].min(axis=1)
        span = w_max - w_min
        keep = span > 0
        if keep.any():
            Wk = W[keep]
            D = (w_max[keep, None, None] - Wk) / span[keep, None, None]
            D[:, np.arange(m), np.arange(m)] = 0.0
            vr = VietorisRipsPersistence(metric="precomputed", homology_dimensions=(1,), n_jobs=n_jobs)
            diagrams = vr.fit_transform(D)  # (n_keep, n_points, 3); padding has birth == death
            out[keep] = _betti_from_diagrams(diagrams, kind, n_bins)
    return torch.from_numpy(out).reshape(lead).to(maps.device)


def _betti_from_diagrams(diagrams: np.ndarray, kind: str, n_bins: int | None) -> np.ndarray:
    births, deaths = diagrams[:, :, 0], diagrams[:, :, 1]
    if n_bins is not None:
        from gtda.diagrams import BettiCurve

        curve = BettiCurve(n_bins=n_bins)
        curve.fit(np.array([[[0.0, 1.0, 1.0]]]))  # fixes the sampling to linspace(0, 1, n_bins)
        values = curve.transform(diagrams)[:, 0, :].astype(np.float64)
        if kind == "max":
            return values.max(axis=1)
        grid = np.linspace(0.0, 1.0, n_bins)
        return np.trapz(values, grid, axis=1)
    if kind == "integral":
        return np.clip(deaths - births, 0.0, None).sum(axis=1)
    # exact maximum: beta_1 is right-continuous and only jumps up at births, so it is enough to
    # evaluate it at every birth value
    alive = (births[:, None, :] <= births[:, :, None]) & (births[:, :, None] < deaths[:, None, :])
    return alive.sum(axis=2).max(axis=1, initial=0).astype(np.float64)
