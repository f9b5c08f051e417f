"""Compiled CPU kernel (numba) for the birth times of :func:`lightprune.topology.birth_times`.

Imported lazily by :mod:`lightprune.topology` (``method="numba"`` / ``"auto"`` on CPU), so that
``import lightprune`` does not pay for importing numba. Exact by the rule of CRITERIA.md (feature
entropy, step 4); the notation follows the docstring of :mod:`lightprune.topology`.

Per unit map ``U`` (``m x m``), one thread, no allocation in the common case:

1. One pass over the upper triangle: edge weights ``w = max(U[i, j], U[j, i])`` and the row minima
   of the symmetrised map, hence the cone cut-off ``w_cone = max_c min_{j != c} W[c, j]``: only
   the ``n`` *candidate* edges with ``w > w_cone`` can hold a birth (after the group of ``w_cone``
   some vertex is a cone point, the complex is contractible and stays so).
2. Partial selection: the candidates are emitted in decreasing weight one at a time by an
   incremental quicksort (3-way partitions, so that each tie group comes out as one block; small
   segments finished by insertion sort). The first partition uses a pivot from a sample, chosen so
   that about ``2 m`` edges lie above it (births usually come within the first ``m`` to ``2 m``
   edges); emitting the first ``k`` edges costs ``O(n + k log k)``, not a full sort.
3. Scan, one tie group at a time: edge ``(a, b)`` is a *trigger* iff ``a`` and ``b`` are already
   connected (union-find) and have no common neighbour (AND of two rows of a bitset adjacency,
   ``ceil(m / 64)`` ``uint64`` words per vertex) among the edges already added. Early exit at the
   first group that leaves ``beta_1 > 0``: a group whose first trigger is its last edge, or a
   larger group for which the exact GF(2) count (:func:`_group_beta1`) gives ``beta_1 > 0``.
4. Index: ``v = 1 + #{entries of U > w_birth}``, counted over the diagonal and the two entries of
   every edge emitted before the birth group (no other entry can exceed ``w_birth``).

Tie groups (exact, :func:`_group_beta1`): with ``beta_1 = 0`` before group ``G`` (``k`` edges),
``beta_1`` after ``G`` is ``#(non-tree edges of G) - rank_GF2(B)`` where ``B`` holds one row per
new triangle (triangles of the complex after ``G`` with at least one edge in ``G``) restricted to
the columns of ``G`` (see the module docstring of :mod:`lightprune.topology` for the proof). The
rank is computed as by the numpy path (``topology._gf2_rank``): rows reduced modulo the classes of
the columns absorbed so far (union-find over the columns plus a "zero" node: a row of weight 1 or
2 merges two classes and adds 1 to the rank), repeated while that absorbs rows, then the rows left
(weight 3) by bitset Gaussian elimination over the classes. Stops as soon as the rank reaches the
number of non-tree edges (``beta_1`` is then 0).

Memory: per thread, ``E = m (m - 1) / 2`` weights and edge ids, ``m (ceil(m / 64) + 3)`` words of
union-find, bitsets and row minima, and a stack of at most ``E + 1`` ints (for ``m = 224``:
about 0.4 MB); the tie-group step allocates ``O(m^2 + k * #triangles / 64)`` only when called.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# ctz of a power of two via a de Bruijn sequence (numba has no public count-trailing-zeros)
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_DEBRUIJN_TABLE = np.array(
    [
        0, 1, 48, 2, 57, 49, 28, 3, 61, 58, 50, 42, 38, 29, 17, 4,
        62, 55, 59, 36, 53, 51, 43, 22, 45, 39, 33, 30, 24, 18, 12, 5,
        63, 47, 56, 27, 60, 41, 37, 16, 54, 35, 52, 21, 44, 32, 23, 11,
        46, 26, 40, 15, 34, 20, 31, 10, 25, 14, 19, 9, 13, 8, 7, 6,
    ],
    dtype=np.int64,
)  # fmt: skip

_SMALL = 16  # segments up to this length are finished by insertion sort
_RANK_SORT = 32  # blocks up to this size are sorted at once by rank counting
_SHIFT = 16  # edge id = (i << 16) | j


@njit(cache=True, _nrt=False)
def _lowest_bit_index(word):
    """Index of the lowest set bit of a non-zero uint64."""
    low = word & (~word + np.uint64(1))
    return _DEBRUIJN_TABLE[(low * _DEBRUIJN) >> np.uint64(58)]


@njit(cache=True, _nrt=False)
def _find(parent, x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@njit(cache=True, _nrt=False)
def _swap(w, ids, i, j):
    tw = w[i]
    w[i] = w[j]
    w[j] = tw
    ti = ids[i]
    ids[i] = ids[j]
    ids[j] = ti


@njit(cache=True, _nrt=False)
def _insertion_sort_desc(w, ids, lo, hi):
    for i in range(lo + 1, hi):
        x = w[i]
        e = ids[i]
        j = i - 1
        while j >= lo and w[j] < x:
            w[j + 1] = w[j]
            ids[j + 1] = ids[j]
            j -= 1
        w[j + 1] = x
        ids[j + 1] = e


@njit(cache=True, _nrt=False)
def _partition3(w, ids, lo, hi, pivot):
    """3-way partition of [lo, hi): [lo, lt) > pivot, [lt, gt) == pivot, [gt, hi) < pivot."""
    lt = lo
    i = lo
    gt = hi
    while i < gt:
        x = w[i]
        if x > pivot:
            _swap(w, ids, i, lt)
            lt += 1
            i += 1
        elif x < pivot:
            gt -= 1
            _swap(w, ids, i, gt)
        else:
            i += 1
    return lt, gt


@njit(cache=True, _nrt=False)
def _median3(a, b, c):
    if a < b:
        if b < c:
            return b
        return c if a < c else a
    if a < c:
        return a
    return c if b < c else b


@njit(cache=True, _nrt=False)
def _ensure(w, ids, pos, state, stack):
    """Make position ``pos`` of the incremental quicksort final (positions < pos already are).

    ``state[0]``: end of the final prefix; ``state[1]``: stack height. ``stack[0 .. height)``
    holds segment ends (decreasing): every element before a stored end is >= every element after it.
    """
    if pos < state[0]:
        return
    top = state[1]
    while True:
        end = stack[top - 1]
        while end <= pos:  # boundaries already passed
            top -= 1
            end = stack[top - 1]
        lo = pos
        if end - lo <= _SMALL:
            _insertion_sort_desc(w, ids, lo, end)
            state[0] = end
            top -= 1
            break
        pivot = _median3(w[lo], w[(lo + end) // 2], w[end - 1])
        lt, gt = _partition3(w, ids, lo, end, pivot)
        if gt < end:
            stack[top] = gt
            top += 1
        if lt == lo:  # the block equal to the pivot comes first: final
            state[0] = gt
            break
        stack[top] = lt
        top += 1
    state[1] = top


@njit(cache=True, _nrt=True)
def _group_beta1(ids, gs, ge, adj, m, words, n_cycles):
    """beta_1 after the tie group ids[gs .. ge] (all its edges already in ``adj``), beta_1 = 0 before.

    ``n_cycles`` = number of non-tree edges of the group; returns ``n_cycles - rank_GF2(B)``.
    """
    k = ge - gs + 1
    mask = np.uint64(0xFFFF)
    col = np.full(m * m, -1, dtype=np.int32)  # column of each group edge, -1 elsewhere
    for c in range(k):
        e = np.uint64(ids[gs + c])
        a = np.int64(e >> np.uint64(_SHIFT))
        b = np.int64(e & mask)
        col[a * m + b] = c
        col[b * m + a] = c
    zero = k
    cls = np.arange(k + 1, dtype=np.int32)  # classes of columns; node k = the zero class
    rank = 0
    cap = 4 * k + 16
    rows = np.empty((cap, 3), dtype=np.int32)  # deferred rows (weight 3 modulo the classes)
    n_rows = 0
    r3 = np.empty(3, dtype=np.int64)
    for c in range(k):
        e = np.uint64(ids[gs + c])
        a = np.int64(e >> np.uint64(_SHIFT))
        b = np.int64(e & mask)
        for wd in range(words):
            common = adj[a, wd] & adj[b, wd]
            while common:
                x = wd * 64 + _lowest_bit_index(common)
                common &= common - np.uint64(1)
                ca = col[a * m + x]
                cb = col[b * m + x]
                # each triangle once: from its group edge of smallest column
                if (ca >= 0 and ca < c) or (cb >= 0 and cb < c):
                    continue
                r3[0] = c
                r3[1] = ca if ca >= 0 else zero
                r3[2] = cb if cb >= 0 else zero
                wgt = _reduce_row(r3, cls, zero)
                if wgt == 0:
                    continue
                if wgt == 3:
                    if n_rows == cap:
                        bigger = np.empty((2 * cap, 3), dtype=np.int32)
                        bigger[:cap] = rows
                        rows = bigger
                        cap *= 2
                    rows[n_rows, 0] = c
                    rows[n_rows, 1] = ca if ca >= 0 else zero
                    rows[n_rows, 2] = cb if cb >= 0 else zero
                    n_rows += 1
                    continue
                # weight 1 or 2: merge the two classes (weight 1: with the zero class)
                cls[r3[0]] = r3[1] if wgt == 2 else _find(cls, zero)
                rank += 1
                if rank >= n_cycles:
                    return 0
    # peel again while some deferred row has become a weight-1/2 row
    changed = True
    while changed and n_rows > 0:
        changed = False
        i = 0
        while i < n_rows:
            r3[0] = rows[i, 0]
            r3[1] = rows[i, 1]
            r3[2] = rows[i, 2]
            wgt = _reduce_row(r3, cls, zero)
            if wgt == 3:
                i += 1
                continue
            if wgt > 0:
                cls[r3[0]] = r3[1] if wgt == 2 else _find(cls, zero)
                rank += 1
                changed = True
                if rank >= n_cycles:
                    return 0
            n_rows -= 1  # remove row i (swap with the last one)
            rows[i, 0] = rows[n_rows, 0]
            rows[i, 1] = rows[n_rows, 1]
            rows[i, 2] = rows[n_rows, 2]
    if n_rows == 0:
        return n_cycles - rank
    # Gaussian elimination over the classes (bit = class representative), pivot = lowest bit
    nw = (k + 1 + 63) // 64
    room = n_cycles - rank  # the elimination stops before storing more pivots than this
    piv_rows = np.zeros((room, nw), dtype=np.uint64)
    piv_of = np.full(k + 1, -1, dtype=np.int32)
    row = np.zeros(nw, dtype=np.uint64)
    n_piv = 0
    for i in range(n_rows):
        r3[0] = rows[i, 0]
        r3[1] = rows[i, 1]
        r3[2] = rows[i, 2]
        if _reduce_row(r3, cls, zero) == 0:
            continue
        row[:] = 0
        for t in range(3):
            row[r3[t] // 64] ^= np.uint64(1) << np.uint64(r3[t] % 64)
        while True:
            lead = -1
            for wd in range(nw):
                if row[wd]:
                    lead = wd * 64 + _lowest_bit_index(row[wd])
                    break
            if lead < 0:
                break
            p = piv_of[lead]
            if p < 0:
                piv_rows[n_piv, :] = row
                piv_of[lead] = n_piv
                n_piv += 1
                rank += 1
                if rank >= n_cycles:
                    return 0
                break
            for wd in range(nw):
                row[wd] ^= piv_rows[p, wd]
    return n_cycles - rank


@njit(cache=True, _nrt=False)
def _reduce_row(r3, cls, zero):
    """Map a row of 3 columns to class representatives, drop the zero class, cancel equal pairs.

    Leaves the surviving classes first in ``r3`` and returns how many survive (0 to 3).
    """
    z = _find(cls, zero)
    x = _find(cls, r3[0])
    y = _find(cls, r3[1])
    t = _find(cls, r3[2])
    if x == y:
        x = z
        y = z
    elif x == t:
        x = z
        t = z
    elif y == t:
        y = z
        t = z
    n = 0
    if x != z:
        r3[n] = x
        n += 1
    if y != z:
        r3[n] = y
        n += 1
    if t != z:
        r3[n] = t
        n += 1
    return n


@njit(cache=True, _nrt=False)
def _row_candidates(K, u, i, j0, length, lo, hi, sh, msk, tmp, k):
    """Append to tmp (from k) the ids (i << 16 | j) of the entries of row i, columns
    j0 .. j0 + length - 1, whose key lies in (lo, hi]."""
    bits = np.uint64(0)
    for t in range(length):  # a compare per entry, gathered into a bit mask (vectorised)
        x = _key(K[u, i, j0 + t], sh, msk)
        bits |= np.uint64((x > lo) & (x <= hi)) << np.uint64(t)
    base = (i << _SHIFT) | j0
    while bits:
        tmp[k] = base + _lowest_bit_index(bits)
        bits &= bits - np.uint64(1)
        k += 1
    return k


@njit(cache=True, _nrt=False)
def _rank_sort(cw, cid, n, sw, sid):
    """Sort cw[:n] / cid[:n] by decreasing weight in place (rank counting: branch-free, for small n)."""
    for i in range(n):
        x = cw[i]
        c = 0
        for j in range(n):
            y = cw[j]
            c += (y > x) | ((y == x) & (j < i))
        sw[c] = x
        sid[c] = cid[i]
    for i in range(n):
        cw[i] = sw[i]
        cid[i] = sid[i]


@njit(cache=True, _nrt=False)
def _select_desc(a, n, k):
    """The k-th largest (0-based) of a[:n] (quickselect; reorders a)."""
    lo = 0
    hi = n
    while hi - lo > 1:
        pivot = _median3(a[lo], a[(lo + hi) // 2], a[hi - 1])
        # 3-way partition: [lo, lt) > pivot, [lt, gt) == pivot, [gt, hi) < pivot
        lt = lo
        i = lo
        gt = hi
        while i < gt:
            x = a[i]
            if x > pivot:
                a[i] = a[lt]
                a[lt] = x
                lt += 1
                i += 1
            elif x < pivot:
                gt -= 1
                a[i] = a[gt]
                a[gt] = x
            else:
                i += 1
        if k < lt:
            hi = lt
        elif k >= gt:
            lo = gt
        else:
            return pivot
    return a[lo]


@njit(cache=True, _nrt=False, inline="always")
def _key(b, sh, msk):
    """Order key of a float's bits: integer order = float order, -0.0 and +0.0 share a key."""
    k = b ^ ((b >> sh) & msk)
    return k + (k == -1)


@njit(cache=True, _nrt=False)
def _row_keys(K, u, m, sh, msk, rkey):
    """rkey[i] = max_j key(U[i, j]) (diagonal included). Returns (max_i min_j key, min key, max key)."""
    glob_min = _key(K[u, 0, 0], sh, msk)
    glob_max = glob_min
    best_min = glob_min
    for i in range(m):
        kmax = _key(K[u, i, 0], sh, msk)
        kmin = kmax
        for j in range(1, m):  # integer max / min: vectorised
            k = _key(K[u, i, j], sh, msk)
            kmax = k if k > kmax else kmax
            kmin = k if k < kmin else kmin
        rkey[i] = kmax
        best_min = kmin if kmin > best_min or i == 0 else best_min
        glob_min = kmin if kmin < glob_min else glob_min
        glob_max = kmax if kmax > glob_max else glob_max
    return best_min, glob_min, glob_max


@njit(cache=True, _nrt=False)
def _collect(U, K, u, m, lo, hi, sh, msk, rkey, cw, cid, deg, tmp):
    """Edges whose weight has its key in (lo, hi] into cw / cid (each edge once, from its larger
    entry), and their degrees.

    Rows are streamed (rows whose largest key is <= lo skipped); the entries in range are found
    through 64-bit masks, and only those are paired with their transposed entry.
    """
    k = 0
    for i in range(m):
        if rkey[i] <= lo:
            continue
        j0 = 0
        while j0 + 64 <= m:
            k = _row_candidates(K, u, i, j0, 64, lo, hi, sh, msk, tmp, k)
            j0 += 64
        if j0 < m:
            k = _row_candidates(K, u, i, j0, m - j0, lo, hi, sh, msk, tmp, k)
    n = 0
    mask = np.int64(0xFFFF)
    for c in range(k):  # branch-free: keep the entry that carries the edge's weight
        e = np.int64(tmp[c])
        i = e >> _SHIFT
        j = e & mask
        x = U[i, j]
        y = U[j, i]
        keep = (i != j) & ((x > y) | ((x == y) & (i < j)))
        cw[n] = x
        cid[n] = e
        n += keep
        deg[i] += keep
        deg[j] += keep
    return n


# Per-unit state between calls: ``ist`` (int64), ``kst`` (keys: block bounds), ``fst`` (floats).
_FINAL, _HEIGHT, _POS, _N, _NEXT, _LAST, _GS, _GE, _UNIONS, _NTHR = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
_HI, _LO, _THR = 0, 1, 2  # kst[_THR + t]: lower bound (key) of block t
_WG = 0
_NEED_GF2 = -2  # returned by _unit_start / _unit_resume: the pending tie group needs _group_beta1
_NAN = -3  # returned for a map that holds a NaN


@njit(cache=True, _nrt=False)
def _new_block(U, K, u, m, sh, msk, rkey, cw, cid, deg, stack, ist, kst, tmp, sw, sid):
    """Collect the next block of edges, apply the cone cut-off to it, sort it if small."""
    t = ist[_NEXT]
    ist[_NEXT] = t + 1
    lo = kst[_THR + t]
    kst[_LO] = lo
    n = _collect(U, K, u, m, lo, kst[_HI], sh, msk, rkey, cw, cid, deg, tmp)
    last = t + 1 == ist[_NTHR]
    # cone cut-off: w_cone > lo iff some vertex is joined to all others by edges > lo
    w_cone = -np.inf
    for c in range(m):
        if deg[c] == m - 1:
            rmin = np.inf
            for j in range(m):
                if j != c:
                    x = max(U[c, j], U[j, c])
                    rmin = x if x < rmin else rmin
            w_cone = rmin if rmin > w_cone else w_cone
    if w_cone > -np.inf:
        last = True
        kept = 0
        for q in range(n):  # keep the edges heavier than w_cone (branch-free)
            x = cw[q]
            e = cid[q]
            cw[kept] = x
            cid[kept] = e
            kept += x > w_cone
        n = kept
    ist[_N] = n
    ist[_LAST] = last
    ist[_POS] = 0
    if n <= _RANK_SORT:
        _rank_sort(cw, cid, n, sw, sid)
        ist[_FINAL] = n
    else:  # incremental quicksort: sorted only as far as the scan goes
        ist[_FINAL] = 0
        ist[_HEIGHT] = 1
        stack[0] = n


@njit(cache=True, _nrt=False)
def _index(U, K, u, m, sh, msk, rkey, e):
    """1 + number of entries of U greater than the weight of edge ``e`` (its larger entry)."""
    i = e >> _SHIFT
    j = e & 0xFFFF
    thr = U[i, j]
    tkey = _key(K[u, i, j], sh, msk)
    count = 1
    for r in range(m):
        if rkey[r] > tkey:
            for c in range(m):
                count += U[r, c] > thr
    return count


@njit(cache=True, _nrt=False)
def _run(U, K, u, m, words, sh, msk, rkey, cw, cid, deg, parent, adj, stack, ist, kst, tmp, sw, sid):
    """Scan from the saved position, block after block. Returns the index, -1 or _NEED_GF2."""
    mask = np.int64(0xFFFF)
    while True:
        n = ist[_N]
        q = ist[_POS]
        while q < n:
            if q >= ist[_FINAL]:
                _ensure(cw, cid, q, ist, stack)
            wg = cw[q]
            gs = q
            trig = -1
            unions = 0
            while True:  # one tie group
                e = np.int64(cid[q])
                a = e >> _SHIFT
                b = e & mask
                ra = _find(parent, a)
                rb = _find(parent, b)
                if ra == rb:
                    if trig < 0:
                        common = False
                        for wd in range(words):
                            if adj[a, wd] & adj[b, wd]:
                                common = True
                                break
                        if not common:
                            trig = q
                else:
                    parent[ra] = rb
                    unions += 1
                adj[a, b >> 6] |= np.uint64(1) << np.uint64(b & 63)
                adj[b, a >> 6] |= np.uint64(1) << np.uint64(a & 63)
                q += 1
                if q >= n:
                    break
                if q >= ist[_FINAL]:
                    _ensure(cw, cid, q, ist, stack)
                if cw[q] != wg:
                    break
            if trig >= 0:
                if trig == q - 1:  # the first trigger is the group's last edge: born
                    return _index(U, K, u, m, sh, msk, rkey, np.int64(cid[gs]))
                ist[_GS] = gs
                ist[_GE] = q - 1
                ist[_UNIONS] = unions
                ist[_POS] = q
                return _NEED_GF2
        if ist[_LAST]:
            return -1
        kst[_HI] = kst[_LO]
        _new_block(U, K, u, m, sh, msk, rkey, cw, cid, deg, stack, ist, kst, tmp, sw, sid)


@njit(cache=True, _nrt=False)
def _unit_start(
    maps, K, u, m, words, sh, msk, kinf, rkey, rsel, cw, cid, deg, parent, adj, stack, ist, kst, tmp, sw, sid
):
    """Start unit ``u``: block bounds, first block, then the scan (see :func:`_run`)."""
    U = maps[u]
    lo_final, glob_min, glob_max = _row_keys(K, u, m, sh, msk, rkey)
    if glob_max > kinf or glob_min < -kinf - 1:
        return _NAN  # a NaN's key lies beyond the keys of +-inf
    if glob_min == glob_max:
        return -1  # constant map: a single tie group, which completes the graph
    # Block bounds (keys). No edge below lo_final = max_i min_j U[i, j] <= w_cone is ever needed.
    # Block 1: edges above the (3m/4)-th largest row maximum (about m edges on random maps);
    # block 2: above the smallest row maximum; block 3: the rest down to lo_final.
    for i in range(m):
        rsel[i] = rkey[i]
    t1 = _select_desc(rsel, m, (3 * m) // 4)
    t2 = rkey[0]
    for i in range(1, m):
        t2 = rkey[i] if rkey[i] < t2 else t2
    nt = 0
    if t1 > lo_final:
        kst[_THR] = t1
        nt = 1
    if t2 > lo_final and (nt == 0 or t2 < kst[_THR]):
        kst[_THR + nt] = t2
        nt += 1
    kst[_THR + nt] = lo_final
    ist[_NTHR] = nt + 1
    ist[_NEXT] = 0
    kst[_HI] = glob_max
    for i in range(m):
        parent[i] = i
        deg[i] = 0
        for wd in range(words):
            adj[i, wd] = 0
    _new_block(U, K, u, m, sh, msk, rkey, cw, cid, deg, stack, ist, kst, tmp, sw, sid)
    return _run(U, K, u, m, words, sh, msk, rkey, cw, cid, deg, parent, adj, stack, ist, kst, tmp, sw, sid)


@njit(cache=True, _nrt=False)
def _unit_resume(
    maps, K, u, m, words, sh, msk, rkey, cw, cid, deg, parent, adj, stack, ist, kst, tmp, sw, sid, born
):
    """Continue unit ``u`` after _group_beta1 decided its pending tie group."""
    U = maps[u]
    if born:
        return _index(U, K, u, m, sh, msk, rkey, np.int64(cid[ist[_GS]]))
    return _run(U, K, u, m, words, sh, msk, rkey, cw, cid, deg, parent, adj, stack, ist, kst, tmp, sw, sid)


@njit(parallel=True, cache=True, _nrt=True)
def births(maps, keys, sh, msk, kinf, out, block):
    """Birth index of every map of ``maps`` (n, m, m), float32 or float64, C-contiguous.

    ``keys`` is the same memory viewed as int32 / int64 (``sh``, ``msk``: bit width - 1 and the
    mask of the non-sign bits, in that integer type; ``kinf``: the key of +inf). Writes ``out[u]``
    (int64): the 1-based index, -1 (no birth) or -3 (the map holds a NaN). Units are processed in
    blocks of ``block`` by a ``prange`` loop (scratch memory allocated once per block). The
    per-unit functions are compiled without reference counting (``_nrt=False``): they allocate
    nothing, and the atomic reference-count updates of their array arguments would otherwise cost
    more than the whole scan of a small map.
    """
    n = maps.shape[0]
    m = maps.shape[1]
    E = m * (m - 1) // 2
    words = (m + 63) // 64
    n_blocks = (n + block - 1) // block
    for blk in prange(n_blocks):
        rkey = np.empty(m, dtype=keys.dtype)
        rsel = np.empty(m, dtype=keys.dtype)
        cw = np.empty(E, dtype=maps.dtype)
        cid = np.empty(E, dtype=np.int32)
        deg = np.empty(m, dtype=np.int64)
        parent = np.empty(m, dtype=np.int64)
        adj = np.empty((m, words), dtype=np.uint64)
        stack = np.empty(E + 1, dtype=np.int64)
        ist = np.zeros(16, dtype=np.int64)
        kst = np.zeros(8, dtype=keys.dtype)
        tmp = np.empty(m * m, dtype=np.int32)
        sw = np.empty(_RANK_SORT, dtype=maps.dtype)
        sid = np.empty(_RANK_SORT, dtype=np.int32)
        stop = min(n, (blk + 1) * block)
        for u in range(blk * block, stop):
            res = _unit_start(
                maps,
                keys,
                u,
                m,
                words,
                sh,
                msk,
                kinf,
                rkey,
                rsel,
                cw,
                cid,
                deg,
                parent,
                adj,
                stack,
                ist,
                kst,
                tmp,
                sw,
                sid,
            )
            while res == _NEED_GF2:
                gs = ist[_GS]
                ge = ist[_GE]
                beta1 = _group_beta1(cid, gs, ge, adj, m, words, (ge - gs + 1) - ist[_UNIONS])
                res = _unit_resume(
                    maps,
                    keys,
                    u,
                    m,
                    words,
                    sh,
                    msk,
                    rkey,
                    cw,
                    cid,
                    deg,
                    parent,
                    adj,
                    stack,
                    ist,
                    kst,
                    tmp,
                    sw,
                    sid,
                    beta1 > 0,
                )
            out[u] = res
