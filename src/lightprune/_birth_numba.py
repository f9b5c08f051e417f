"""Compiled CPU kernel (numba) for the birth times of :func:`lightprune.topology.birth_times`.

Imported lazily by :mod:`lightprune.topology` (``method="numba"``, and ``"auto"`` on CPU), so that
``import lightprune`` does not pay for numba. Exact by the rule of CRITERIA.md (feature entropy,
step 4); notation as in the docstring of :mod:`lightprune.topology` (edge weights
``W[i, j] = max(U[i, j], U[j, i])``, filtration by decreasing weight, ``w_cone``).

The kernel never compares floats: it reads the maps through an integer view of their bits and
compares *keys* (``_key``: the integer order of the keys is the order of the floats, and -0.0 and
+0.0 share a key, so equal floats have equal keys). A NaN has a key beyond those of +-inf, which is
how NaN is detected, in the one pass that reads the whole map anyway.

Per unit map (``m x m``), one thread, no allocation except in the rare exact tie-group count. The
passes over the rows of a map (and the rank counts) are explicit SIMD (:mod:`lightprune._simd`):

1. Row pass (integer max / min): the largest key of every row; ``lo_final = max_i
   min_j U[i, j]``, a lower bound of ``w_cone`` (``W[c, j] >= U[c, j]``): no edge of weight
   ``<= lo_final`` can matter; a constant map has no birth. It reads the raw integers first, which
   are the keys when no entry has its sign bit set (post-ReLU maps; the smallest tells), else the
   keys.
2. Blocks of edges, heaviest first: from m = 24 on, block 0 = the edges above the (m/3)-th
   largest row maximum (real post-ReLU maps usually have their birth there: about 10 % faster on
   them, 5-10 % slower on random maps, whose births come later); block 1 = the edges above the
   (3m/4)-th largest row maximum (about m edges on random maps), block 2 = those above the
   smallest row maximum, block 3 = the rest down to ``lo_final`` (a bound is skipped when it is
   not below the previous one; small maps: one block, see step 4; for 48 <= m <= 64 block 0 ends
   at the (m/6)-th largest row maximum and the (m/3)-th and (m/2)-th follow; from m = 24 on,
   the bounds after block 0 are selected only once block 0 is used up; above m = 16 the order
   statistics are those of 16 evenly spaced row maxima, 1.05-1.13x at m >= 40). A block is
   gathered in one pass over the rows (rows whose largest key is below the block skipped; up to
   m = 32 one SIMD step per row with the column entries gathered, larger maps the entries in
   range found through 64-bit masks) and each edge is kept once, from its larger entry. For
   float32 maps with 24 <= m <= 64 a block of up to 256 entries is gathered as entries instead,
   without reading the columns (:func:`lightprune._simd.pack_row_entries`: 64-bit
   ``key << 32 | min(i, j) << 16 | max(i, j)``, compress-stored), sorted by a bitonic network that
   drops repeats (:func:`lightprune._simd.sort_packed`: the two entries of an edge with equal
   keys); an edge whose other entry is heavier comes again later, and the scan skips it (it is in
   already); 1.06-1.16x on m = 32 to 56 (256 rather than 128 entries: 1.05x more at m = 56). Cone cut-off: ``w_cone > lo`` iff some vertex is joined
   to all others by edges above the block's lower bound ``lo`` (a vertex whose count of edges
   above lo, which blocks of entries count from its row only, can reach m - 1); then ``w_cone`` is
   exact from that vertex's row and column, the block keeps the edges above it and is the last
   one.
3. Sorting, only as far as the scan goes (partial selection, no sort of all m (m - 1) / 2 edges):
   blocks of entries at once (above); blocks of up to 64 edges by rank counting
   (:func:`lightprune._simd.rank_desc`), up to 256 one edge at a time as the scan reaches it (the
   largest of the rest, :func:`_take`), larger ones by an LSD radix sort of the keys.
4. Scan, one tie group at a time with ``beta_1 = 0`` before it (see :func:`_run`): union-find for
   "already connected", bitset rows of the adjacency (``ceil(m / 64)`` uint64 words per vertex)
   for "a common neighbour"; triggers inside a group are set aside and retried after the rest of
   the group, and the rare groups that still hold two or more triggers are decided by the exact
   GF(2) count of :func:`_group_beta1` (the same formula as the numpy step
   ``topology._group_beta1``). Early exit at the first group that leaves ``beta_1 > 0``. Whenever
   the number of edges added has doubled, a check that every edge that can still come has a common
   neighbour already (then ``beta_1`` stays 0: no birth) ends the scan of units without a birth.
   For 24 <= m <= 64 the pairs that can still come are known exactly before the last block: the
   entries above the exact ``w_cone``, as one 64-bit mask per row, made once at the first check
   (:func:`_future_pairs`), checked whenever the edges added have grown by an eighth (a check costs
   a few hundred cycles, some ten edges' worth; by an eighth rather than by half: 1.02-1.04x at
   m = 28 to 64). On real maps at
   m = 56 this ends the units without a birth after about half the edges the cone cut-off needs.
   Small maps (m <= 16) skip steps 1-3: every edge above the exact ``w_cone`` in one sorted block.
   For float32 maps it is made in SIMD registers, a row per vector
   (:func:`lightprune._simd.sorted_edges16`, m = 5 to 16: transpose by shuffles, the edges
   compress-stored as 64-bit ``key << 32 | id`` and sorted by a bitonic network;
   :func:`lightprune._simd.eight_sorted_edges` for m = 8, the whole map one 64-lane vector).
   Where more than 32 edges lie above ``w_cone``, sorted_edges16 sorts only those above one of
   the smallest row maxima (at most 32 where such a bound exists) and keeps the rows of W; the
   rest is sorted (:func:`lightprune._simd.sorted_rest16`) only if the scan gets through the
   first part without an end. The scan usually ends there (random 14 x 14 maps: some 67 edges
   above w_cone, the birth among the first 16 in 98 % of them), and a 32-lane network costs a
   fraction of a 128-lane one (about a sixth with AVX2). Alternated, outputs equal, random / real
   maps: 1.35x / 1.13x at m = 14 and 1.51x / 1.22x at m = 16 on an AMD Zen 4; compiled there for
   Zen 3 (AVX2, ``NUMBA_CPU_NAME=znver3``) 1.53x / 1.20x and 1.67x / 1.27x. Float64 maps with
   m (m - 1) / 2 <= 64 use :func:`_small_block`, larger ones the general path.
   The block is scanned with one bit mask per vertex for its neighbours and one for its component
   (:func:`_tiny_scan`) until a tie group of two or more edges, which sends the unit to the
   general scan. Against the blocks of steps 2-3 (numba alternated, outputs equal): 2.2x on the
   8 x 8 and 1.8x on the 16 x 16 maps of ``cifar_vgg16`` scoring, 1.2-1.7x on random and real
   maps at m = 7, 10, 14. m = 4 has a closed form (:func:`_four`: beta_1 > 0 on 4 vertices only
   for a 4-cycle without chords), 2.7x.
5. Index: ``1 + #{entries > w_birth}`` (rows whose largest key is below skipped; maps of up to 64
   entries counted in one pass).

Prefetch: from m = 40 on, for maps of up to 16 KiB, the next unit's map is prefetched a line or
two at a time while this unit computes (per vertex of the cone cut-off and the future pairs, per row
of a block of entries, per edge scanned), so that its row pass, otherwise bound by memory (about a
fifth of the time of a real 56 x 56 map), reads it from the cache: 1.09x at m = 56. Units that end
early leave part of the next map (a real 56 x 56 map: about 40 % on average; all of it after a
constant map): that part is prefetched at once when the unit ends, 1.03-1.06x at m = 48 to 64.

Memory per thread (allocated once per block of units by :func:`births`): about
``4 m^2 + 2 E (itemsize + 4) + 8 m + 19 KiB`` bytes (``E = m (m - 1) / 2``; 0.6 MB at m = 224 in
float32); no (m*m)^2 structure. :func:`_group_beta1` allocates ``O(m^2 + rows)`` more while it runs;
the small-map paths use up to 1 KiB of stack.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lightprune._simd import (
    PACKED,
    ROWS16,
    SIMD_UNSUPPORTED,
    argmax_from,
    collect_row_keys,
    count_above_keys,
    eight_sorted_edges,
    kth_desc16,
    load_flat,
    lowest_bit,
    pack_row_entries,
    prefetch_flat,
    rank_desc,
    row_bits_keys,
    row_max_min_keys,
    row_max_min_raw,
    sort_packed,
    sorted_edges16,
    sorted_rest16,
)

# Hot functions are compiled with _nrt=False: they allocate nothing, and the atomic reference-count
# updates numba otherwise makes on every array argument cost more than the scan of a small map.
# Those called once per unit or per edge are inlined (inline="always"): passing some twenty array
# arguments per call costs a fifth of the time of a 4 x 4 or 8 x 8 map.

# prefetch of the next unit's map (m >= 40, up to 16 KiB): entries per vertex visited (cone cut-off, future
# pairs, rows of a block of entries) and per edge scanned; 1.07-1.10x at m = 56 (alternated,
# 12 runs each, outputs equal), the rest of the 12.5 KiB map would stream in the next row pass
_PF_MIN_M = 40
_FUT_LOOP = 48  # last block: above this many edges left, the check uses the future-pair masks
_PF_VERTEX = 16
_PF_EDGE = 32
_SHIFT = 16  # edge id = (i << 16) | j, with U[i, j] the entry that carries the edge's weight
_RANK_SORT = 64  # blocks up to this size are sorted at once by rank counting (SIMD)
_RADIX_SORT = 256  # blocks above this size are sorted at once by a radix sort
# the block bounds are order statistics of this many evenly spaced row maxima (all of them for smaller m)
_SAMPLES = 16
_GATHER_M = 32  # up to this m, a block is gathered with the column entries read by SIMD gathers
# from this m on, a first block of the edges above the (m/3)-th largest row maximum (smaller maps:
# the extra pass over the rows costs more than the edges it saves)
_SMALL_FIRST_BLOCK_M = 24
# from this m to 64 (float32), a block of up to PACKED entries is gathered as entries, not edges, and
# sorted by a bitonic network (:func:`lightprune._simd.pack_row_entries`, :func:`sort_packed`)
_PACKED_M = 24
# from this m to 64, block 0 holds the edges above the (m/6)-th largest row maximum, and the
# (m/3)-th and (m/2)-th are the next bounds: real maps have their births among the first edges,
# and the rows of larger maps hold more entries above a row maximum (1.04-1.17x on real maps at
# m = 48 to 64, 0.94x on random ones at m = 56, which meet their target with room)
_NARROW_FIRST_BLOCK_M = 48

# Per-unit state between calls: ``ist`` (int64) and ``kst`` (keys).
_FINAL, _POS, _N, _NEXT, _LAST, _GS, _GE, _UNIONS, _NTHR, _ADDED, _CHECK, _LAZY, _FUT, _ENTRIES, _PF, _PFEND = range(16)
_HI, _LO, _THR = 0, 1, 2  # kst[_THR + t]: lower bound of block t
_NEED_GF2 = -2  # returned by _run: the pending group needs _group_beta1 (then _units resumes)
_NAN = -3  # returned for a map that holds a NaN
_TIE = -4  # returned by _tiny_scan: a tie group of two or more edges, left to the general scan
_SCAN = -6  # returned by _unit_start: the scan (_run) decides


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False, inline="always")
def _key(b, sh, msk):
    """Order key of a float's bits: integer order = float order, -0.0 and +0.0 share a key."""
    k = b ^ ((b >> sh) & msk)
    return k + (k == -1)


@njit(cache=True, _nrt=False, inline="always")
def _find(parent, x):
    """Root of x (path halving). Indices as uint64: numba adds no negative-index wraparound."""
    x = np.uint64(x)
    while np.uint64(parent[x]) != x:
        g = parent[np.uint64(parent[x])]
        parent[x] = g
        x = np.uint64(g)
    return np.int64(x)


@njit(cache=True, _nrt=False, inline="always")
def _has_common(adj, a, b, words):
    a = np.uint64(a)
    b = np.uint64(b)
    for wd in range(np.uint64(words)):
        if adj[a, wd] & adj[b, wd]:
            return True
    return False


@njit(cache=True, _nrt=False, inline="always")
def _is_edge(adj, a, b):
    a = np.uint64(a)
    b = np.uint64(b)
    return (adj[a, b >> np.uint64(6)] >> (b & np.uint64(63))) & np.uint64(1) != 0


@njit(cache=True, _nrt=False, inline="always")
def _add_edge(adj, a, b):
    a = np.uint64(a)
    b = np.uint64(b)
    adj[a, b >> np.uint64(6)] |= np.uint64(1) << (b & np.uint64(63))
    adj[b, a >> np.uint64(6)] |= np.uint64(1) << (a & np.uint64(63))


# ------------------------------------------------------------------------------------------------
# sorting (decreasing keys, edge ids alongside)
# ------------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False, inline="always")
def _take(w, ids, q, state):
    """Make position q final: move the largest of w[q:n] (and its id) there."""
    t = argmax_from(w, q, state[_N])
    x = w[t]
    w[t] = w[q]
    w[q] = x
    e = ids[t]
    ids[t] = ids[q]
    ids[q] = e
    state[_FINAL] = q + 1


@njit(cache=True, _nrt=False, inline="always")
def _rank_sort(w, ids, n, sw, sid):
    """Sort w[:n] / ids[:n] by decreasing key in place: rank counting, branch-free (small n)."""
    for i in range(n):
        c = rank_desc(w, n, i)
        sw[c] = w[i]
        sid[c] = ids[i]
    for i in range(n):
        w[i] = sw[i]
        ids[i] = sid[i]


@njit(cache=True, _nrt=False)
def _radix_sort(w, ids, n, w2, ids2, hist, msk):
    """Sort w[:n] / ids[:n] by decreasing key in place: LSD radix sort, one byte per pass (passes
    where every key has the same byte are skipped). ``k ^ msk`` read as unsigned orders the keys
    the other way round, so ascending passes give decreasing keys."""
    passes = w.itemsize
    for p in range(passes):
        for d in range(256):
            hist[p, d] = 0
    for i in range(n):
        t = w[i] ^ msk
        for p in range(passes):
            hist[p, (t >> (8 * p)) & 255] += 1
    in_w2 = False
    for p in range(passes):
        skip = False
        for d in range(256):
            if hist[p, d] == n:
                skip = True
            if hist[p, d] != 0:
                break
        if skip:
            continue
        total = 0
        for d in range(256):
            c = hist[p, d]
            hist[p, d] = total
            total += c
        if in_w2:
            for i in range(n):
                x = w2[i]
                d = ((x ^ msk) >> (8 * p)) & 255
                q = hist[p, d]
                hist[p, d] = q + 1
                w[q] = x
                ids[q] = ids2[i]
        else:
            for i in range(n):
                x = w[i]
                d = ((x ^ msk) >> (8 * p)) & 255
                q = hist[p, d]
                hist[p, d] = q + 1
                w2[q] = x
                ids2[q] = ids[i]
        in_w2 = not in_w2
    if in_w2:
        for i in range(n):
            w[i] = w2[i]
            ids[i] = ids2[i]


# ------------------------------------------------------------------------------------------------
# reading the map
# ------------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False, inline="always")
def _prefetch_next(K, ist, n):
    """Prefetch the next ``n`` entries of the next unit's map (cursor ``ist[_PF]``), a few lines at a
    time while this unit computes, so that its row pass finds them in the cache."""
    p = ist[_PF]
    if p < ist[_PFEND]:
        prefetch_flat(K, p, n)
        ist[_PF] = p + n


@njit(cache=True, _nrt=False, inline="always")
def _row_keys(K, u, m, sh, msk, rkey):
    """rkey[i] = max_j key(U[i, j]) (diagonal included). Returns (max_i min_j key, min key, max key).
    The raw integers first: they are the keys when no entry has its sign bit set (every post-ReLU
    map without -0.0), which the smallest of them tells; else again with the keys."""
    res = _row_extremes(K, u, m, sh, msk, rkey, False)
    if res[1] >= 0:
        return res
    return _row_extremes(K, u, m, sh, msk, rkey, True)


@njit(cache=True, _nrt=False, inline="always")
def _row_extremes(K, u, m, sh, msk, rkey, keyed):
    """_row_keys over the keys (``keyed``) or over the raw integers."""
    glob_min = _key(K[u, 0, 0], sh, msk) if keyed else K[u, 0, 0]
    glob_max = glob_min
    best_min = glob_min
    base = u * m * m
    for i in range(m):
        if keyed:
            kmax, kmin = row_max_min_keys(K, base + i * m, m, sh, msk)
        else:
            kmax, kmin = row_max_min_raw(K, base + i * m, m, sh, msk)
        rkey[i] = kmax
        best_min = kmin if kmin > best_min or i == 0 else best_min
        glob_min = kmin if kmin < glob_min else glob_min
        glob_max = kmax if kmax > glob_max else glob_max
    return best_min, glob_min, glob_max


@njit(cache=True, _nrt=False, inline="always")
def _row_candidates(K, u, m, i, j0, length, lo, hi, sh, msk, tmp, k):
    """Append to tmp (from k) the ids (i << 16 | j) of the entries of row i, columns
    j0 .. j0 + length - 1, whose key lies in (lo, hi]."""
    bits = row_bits_keys(K, (u * m + i) * m + j0, length, lo, hi, sh, msk)
    base = (i << _SHIFT) | j0
    while bits:
        tmp[k] = base + lowest_bit(bits)
        bits &= bits - np.uint64(1)
        k += 1
    return k


@njit(cache=True, _nrt=False, inline="always")
def _collect(K, u, m, lo, hi, sh, msk, rkey, cw, cid, deg, tmp):
    """The edges whose weight's key lies in (lo, hi] into cw (keys) / cid (ids), each edge once,
    from its larger entry (ties: from i < j); degrees counted in ``deg``. Returns their number.
    Up to m = _GATHER_M in one SIMD step per row (:func:`lightprune._simd.collect_row_keys`, which
    gathers the column entries); larger maps list the row entries in range first (``tmp``) and
    read their column entries one by one (cheaper when a row of 64 holds few)."""
    if m <= _GATHER_M:
        n = 0
        for i in range(m):
            if rkey[i] > lo:
                n = collect_row_keys(K, u, m, i, lo, hi, sh, msk, cw, cid, n, deg)
        return n
    k = 0
    for i in range(m):
        if rkey[i] <= lo:
            continue
        j0 = 0
        while j0 + 64 <= m:
            k = _row_candidates(K, u, m, i, j0, 64, lo, hi, sh, msk, tmp, k)
            j0 += 64
        if j0 < m:
            k = _row_candidates(K, u, m, i, j0, m - j0, lo, hi, sh, msk, tmp, k)
    n = 0
    mask = np.int64(0xFFFF)
    for c in range(k):  # branch-free: keep the entry that carries the edge's weight
        e = np.int64(tmp[c])
        i = e >> _SHIFT
        j = e & mask
        x = _key(K[u, i, j], sh, msk)
        y = _key(K[u, j, i], sh, msk)
        keep = (i != j) & ((x > y) | ((x == y) & (i < j)))
        cw[n] = x
        cid[n] = e
        n += keep
        deg[i] += keep
        deg[j] += keep
    return n


@njit(cache=True, _nrt=False)  # not inlined: its sorting networks are compiled once, not per caller
def _collect_entries(K, u, m, lo, hi, sh, msk, rkey, cw, cid, deg, pbuf, ist):
    """_PACKED_M <= m <= 64, float32: the entries (not edges) whose key lies in (lo, hi], j != i, as
    a sorted block: keys to cw, ids ``min(i, j) << 16 | max(i, j)`` to cid, by decreasing key (the
    two entries of an edge with equal keys once; an edge whose other entry is heavier comes again,
    which the scan skips: it is in already). deg[i] counts row i's entries. Returns (n, number of
    rows read), or n = -1 when there are more than PACKED of them or the keys are int64 (then
    :func:`_collect` gathers the edges)."""
    if m < _PACKED_M or m > 64:
        return -1, 0
    n = 0
    rows = 0
    for i in range(m):
        if rkey[i] > lo:
            _prefetch_next(K, ist, _PF_VERTEX)
            rows += 1
            n0 = n
            n = pack_row_entries(K, (u * m + i) * m, m, i, lo, hi, sh, msk, pbuf, n)
            if n < 0 or n > PACKED:
                return -1, rows
            deg[i] += n - n0
    return sort_packed(pbuf, n, cw, cid), rows


@njit(cache=True, _nrt=False, inline="always")
def _weight_min(K, u, m, c, sh, msk, floor):
    """min over j != c of the key of W[c, j] = max(U[c, j], U[j, c]) (vertex c's lightest edge); the
    scan stops early, with a value <= floor, once the minimum is known to be <= floor."""
    j0 = 1 if c == 0 else 0
    row = np.uint64((u * m + c) * m)  # flat offsets, unsigned: no negative-index wraparound
    col = np.uint64(u * m * m + c)
    mu = np.uint64(m)
    cu = np.uint64(c)
    x = _key(load_flat(K, row + np.uint64(j0)), sh, msk)
    y = _key(load_flat(K, col + np.uint64(j0) * mu), sh, msk)
    rmin = x if x > y else y
    for j in range(np.uint64(j0 + 1), mu):
        if rmin <= floor:
            break
        if j != cu:
            x = _key(load_flat(K, row + j), sh, msk)
            y = _key(load_flat(K, col + j * mu), sh, msk)
            x = x if x > y else y
            rmin = x if x < rmin else rmin
    return rmin


@njit(cache=True, _nrt=False, inline="always")
def _index(K, u, m, sh, msk, rkey, thr):
    """1 + number of entries whose key is above ``thr``."""
    if m * m <= 64:  # small maps: one count over the whole map
        return 1 + count_above_keys(K, u * m * m, m * m, thr, sh, msk)
    count = 1
    for r in range(m):
        if rkey[r] > thr:
            count += count_above_keys(K, (u * m + r) * m, m, thr, sh, msk)
    return count


# ------------------------------------------------------------------------------------------------
# exact tie groups: GF(2) count
# ------------------------------------------------------------------------------------------------
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
                x = wd * 64 + lowest_bit(common)
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
                    lead = wd * 64 + lowest_bit(row[wd])
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


# ------------------------------------------------------------------------------------------------
# early end of units without a birth
# ------------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False)
def _diameter_at_most_2(adj, m, words):
    """True iff every two non-adjacent vertices have a common neighbour (``adj`` has a spare row m).
    Stops at the first vertex that does not reach all others in two steps."""
    full_last = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 * words - m)
    for a in range(m):
        for wd in range(words):
            adj[m, wd] = adj[a, wd]
        adj[m, a >> 6] |= np.uint64(1) << np.uint64(a & 63)
        for wd in range(words):
            bits = adj[a, wd]
            while bits:
                b = wd * 64 + lowest_bit(bits)
                bits &= bits - np.uint64(1)
                for w2 in range(words):
                    adj[m, w2] |= adj[b, w2]
        for wd in range(words - 1):
            if adj[m, wd] != np.uint64(0xFFFFFFFFFFFFFFFF):
                return False
        if adj[m, words - 1] != full_last:
            return False
    return True


@njit(cache=True, _nrt=False)
def _future_pairs(K, u, m, sh, msk, lo_final, fut, ist):
    """m <= 64: w_cone (exact: the largest lightest edge of a vertex; lo_final is a lower bound of
    it) and fut[a] = bit mask of the columns b != a with key(U[a, b]) > w_cone. Every edge that can
    still matter (weight above w_cone: from w_cone on some vertex is joined to all others, and
    beta_1 stays 0) is then a bit of fut[a] or of fut[b].

    The masks above lo_final come first; a vertex c with a pair (c, j) below them both ways (bit j
    of row c and bit c of row j clear: W[c, j] <= lo_final) cannot raise w_cone, and only the
    others are read (:func:`_weight_min`, column entries one by one): most vertices of a real map
    (1.02x over the whole kernel on real 56 x 56 maps). The masks are made again only if w_cone >
    lo_final."""
    _pairs_above(K, u, m, sh, msk, lo_final, fut)
    one = np.uint64(1)
    full = ~np.uint64(0) if m == 64 else (one << np.uint64(m)) - one
    w_cone = lo_final
    for c in range(m):
        _prefetch_next(K, ist, _PF_VERTEX)
        cu = np.uint64(c)
        low = ~fut[c] & full & ~(one << cu)  # U[c, j] <= lo_final
        light = False
        while low:
            j = lowest_bit(low)
            if not (fut[j] >> cu) & one:  # and U[j, c] <= lo_final
                light = True
                break
            low &= low - one
        if not light:
            rmin = _weight_min(K, u, m, c, sh, msk, w_cone)  # stops once c cannot raise w_cone
            w_cone = rmin if rmin > w_cone else w_cone
    if w_cone > lo_final:
        _pairs_above(K, u, m, sh, msk, w_cone, fut)


@njit(cache=True, _nrt=False, inline="always")
def _pairs_above(K, u, m, sh, msk, thr, fut):
    """m <= 64: fut[a] = bit mask of the columns b != a with key(U[a, b]) > thr."""
    one = np.uint64(1)
    for a in range(m):  # msk: the largest value of the key type
        bits = row_bits_keys(K, (u * m + a) * m, m, thr, msk, sh, msk)
        fut[a] = bits & ~(one << np.uint64(a))


@njit(cache=True, _nrt=False)
def _future_covered(adj, m, fut):
    """m <= 64: True if every pair (a, b) of fut[a] that is not an edge yet has a common neighbour,
    i.e. b is in the 2-neighbourhood of a (the union of the neighbourhoods of a's neighbours)."""
    for a in range(m):
        need = fut[a] & ~adj[a, 0]
        if need == 0:
            continue
        cover = np.uint64(0)
        bits = adj[a, 0]
        while bits:
            cover |= adj[lowest_bit(bits), 0]
            bits &= bits - np.uint64(1)
        if need & ~cover:
            return False
    return True


@njit(cache=True, _nrt=False, inline="always")
def _no_birth_left(K, u, m, words, sh, msk, ws, added, q, n):
    """After a group that leaves beta_1 = 0, whenever the number of edges added has doubled (grown by
    an eighth, for the bit masks below) since the last check: True if every edge that can still come has
    a common neighbour already. Common neighbours stay, so no later edge is a trigger and beta_1
    stays 0 to the end (the cone cut-off is the case of a vertex joined to all others). In the last
    block the edges that can still come are the rest of the block (cid[q:n], in any order; when the
    masks below exist and more than _FUT_LOOP edges are left, the masks, which cover them); before
    it, every pair whose weight is above w_cone and that is not an edge yet (24 <= m <= 64: the bit
    masks of :func:`_future_pairs`, made at the first such check; other m: any non-adjacent pair,
    :func:`_diameter_at_most_2`)."""
    cid, adj, ist, kst, fut = ws[3], ws[6], ws[7], ws[8], ws[15]
    ist[_ADDED] += added
    if ist[_ADDED] < ist[_CHECK]:
        return False
    if not ist[_LAST] and words == 1 and m >= _SMALL_FIRST_BLOCK_M:
        ist[_CHECK] = ist[_ADDED] + ist[_ADDED] // 8 + 1
        if not ist[_FUT]:
            _future_pairs(K, u, m, sh, msk, kst[_THR + ist[_NTHR] - 1], fut, ist)  # the last bound: lo_final
            ist[_FUT] = 1
        return _future_covered(adj, m, fut)
    ist[_CHECK] = 2 * ist[_ADDED]
    if not ist[_LAST]:
        return _diameter_at_most_2(adj, m, words)
    if ist[_FUT] and n - q > _FUT_LOOP:  # the masks, made already, are cheaper than a long rest
        return _future_covered(adj, m, fut)
    mask = np.int64(0xFFFF)
    for t in range(q, n):
        e = np.int64(cid[t])
        a = e >> _SHIFT
        b = e & mask
        if not _has_common(adj, a, b, words) and not _is_edge(adj, a, b):
            return False
    return True


@njit(cache=True, _nrt=False, inline="always")
def _block_bounds(rkey, rsel, m, lo_final, kst, ist, nt):
    """Bounds of blocks nt, nt + 1, ...: for _NARROW_FIRST_BLOCK_M <= m <= 64 the (m/3)-th and
    (m/2)-th largest row maxima; then the (3m/4)-th and the smallest one (each kept if below the
    previous bound and above lo_final), then lo_final."""
    ns = m if m <= _SAMPLES else _SAMPLES
    t1 = kth_desc16(rsel, ns, (3 * ns) // 4)
    t3 = t1  # (dropped: not below t1)
    t4 = t1
    if _NARROW_FIRST_BLOCK_M <= m <= 64:
        t3 = kth_desc16(rsel, ns, ns // 3)
        t4 = kth_desc16(rsel, ns, ns // 2)
    t2 = rkey[0]
    for i in range(1, m):
        t2 = rkey[i] if rkey[i] < t2 else t2
    for t in (t3, t4, t1, t2):
        if t > lo_final and (nt == 0 or t < kst[_THR + nt - 1]):
            kst[_THR + nt] = t
            nt += 1
    kst[_THR + nt] = lo_final
    ist[_NTHR] = nt + 1


# ------------------------------------------------------------------------------------------------
# one unit
# ------------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False, inline="always")
def _new_block(K, u, m, sh, msk, ws):
    """Gather the next block of edges, apply the cone cut-off to it, sort it (or leave it to
    :func:`_take`)."""
    rkey, rsel, cw, cid, deg, parent, adj, ist, kst, tmp, sw, sid, w2, ids2, hist, fut, pbuf = ws
    t = ist[_NEXT]
    ist[_NEXT] = t + 1
    if ist[_LAZY] and t == 1:
        ist[_LAZY] = 0
        _block_bounds(rkey, rsel, m, kst[_THR + 1], kst, ist, 1)
    lo = kst[_THR + t]
    kst[_LO] = lo
    n, rows = _collect_entries(K, u, m, lo, kst[_HI], sh, msk, rkey, cw, cid, deg, pbuf, ist)
    packed = n >= 0
    if packed:
        ist[_ENTRIES] = rows  # rows grow from block to block: the last block of entries has the most
    else:
        n = _collect(K, u, m, lo, kst[_HI], sh, msk, rkey, cw, cid, deg, tmp)
    last = t + 1 == ist[_NTHR]
    # cone cut-off: w_cone > lo iff some vertex is joined to all others by edges above lo. deg[c]
    # counts c's edges above lo, but blocks of entries count only those of c's row: the entries of
    # its column (at most one per row read) are left out. So deg[c] + slack >= m - 1 is necessary,
    # and _weight_min decides.
    slack = ist[_ENTRIES]
    cone = False
    w_cone = lo
    for c in range(m):
        _prefetch_next(K, ist, _PF_VERTEX)
        if deg[c] + slack >= m - 1:  # all of c's edges may be above lo
            rmin = _weight_min(K, u, m, c, sh, msk, lo)
            if rmin > lo and (not cone or rmin > w_cone):
                w_cone = rmin
                cone = True
    if cone:
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
    if packed:
        ist[_FINAL] = n
    elif n <= _RANK_SORT:
        _rank_sort(cw, cid, n, sw, sid)
        ist[_FINAL] = n
    elif n > _RADIX_SORT:
        _radix_sort(cw, cid, n, w2, ids2, hist, msk)
        ist[_FINAL] = n
    else:  # selected one at a time, only as far as the scan goes (_take)
        ist[_FINAL] = 0


@njit(cache=True, _nrt=False, inline="always")
def _run(K, u, m, words, sh, msk, ws):
    """Scan from the saved position, block after block. Returns the index, -1 or _NEED_GF2.

    One tie group at a time, with beta_1 = 0 before it. Edges that are not triggers (endpoints not
    yet connected, or with a common neighbour) are added at once: beta_1 stays 0. Triggers are
    set aside and retried once the rest of the group is in (a later edge of the group may give
    them a common neighbour; then they are no longer triggers). This reorders the group, which
    CRITERIA.md allows: only beta_1 after the whole group counts. If the set-aside edges S are:
    none, beta_1 is still 0; one edge, it closes a cycle as the group's last edge: born; more,
    all of S is added and beta_1 > 0 if some edge of S is in no triangle (its cycle, the edge plus
    a path that existed before it, is no boundary), else _group_beta1 gives beta_1 with S as the
    group (returns _NEED_GF2; :func:`_units` then resumes the scan or ends the unit).
    """
    rkey, rsel, cw, cid, deg, parent, adj, ist, kst, tmp, sw, sid, w2, ids2, hist, fut, pbuf = ws
    mask = np.int64(0xFFFF)
    while True:
        n = ist[_N]
        q = ist[_POS]
        while q < n:
            if q >= ist[_FINAL]:
                _take(cw, cid, q, ist)
            wg = cw[np.uint64(q)]  # indices as uint64 here: numba adds no negative-index wraparound
            gs = q
            held = 0  # triggers set aside, kept in cid[gs : gs + held]
            while True:  # one tie group
                e = np.uint64(cid[np.uint64(q)])
                a = e >> np.uint64(_SHIFT)
                b = e & np.uint64(0xFFFF)
                ra = _find(parent, a)
                rb = _find(parent, b)
                if _is_edge(adj, a, b):
                    pass  # the second entry of an edge that is in already (blocks of entries)
                elif ra != rb:
                    parent[np.uint64(ra)] = rb
                    _add_edge(adj, a, b)
                elif _has_common(adj, a, b, words):
                    _add_edge(adj, a, b)
                else:
                    cid[np.uint64(gs + held)] = e
                    held += 1
                q += 1
                _prefetch_next(K, ist, _PF_EDGE)
                if q >= n:
                    break
                if q >= ist[_FINAL]:
                    _take(cw, cid, q, ist)
                if cw[np.uint64(q)] != wg:
                    break
            changed = held > 0
            while changed:  # retry the set-aside edges while that adds some
                changed = False
                kept = 0
                for t in range(held):
                    e = np.int64(cid[gs + t])
                    a = e >> _SHIFT
                    b = e & mask
                    if _has_common(adj, a, b, words):
                        _add_edge(adj, a, b)
                        changed = True
                    else:
                        cid[gs + kept] = e
                        kept += 1
                held = kept
            if held == 0:
                if _no_birth_left(K, u, m, words, sh, msk, ws, q - gs, q, n):
                    return -1
                continue
            if held == 1:  # the last edge of the (reordered) group closes a cycle: born
                return _index(K, u, m, sh, msk, rkey, wg)
            for t in range(held):
                e = np.int64(cid[gs + t])
                _add_edge(adj, e >> _SHIFT, e & mask)
            for t in range(held):
                e = np.int64(cid[gs + t])
                if not _has_common(adj, e >> _SHIFT, e & mask, words):
                    return _index(K, u, m, sh, msk, rkey, wg)
            ist[_GS] = gs
            ist[_GE] = gs + held - 1
            ist[_UNIONS] = 0  # every set-aside edge joins two connected vertices
            ist[_POS] = q
            return _NEED_GF2
        if ist[_LAST]:
            return -1
        kst[_HI] = kst[_LO]
        _new_block(K, u, m, sh, msk, ws)


@njit(cache=True, _nrt=False, inline="always")
def _small_block(K, u, m, sh, msk, kinf, ws):
    """Small maps (m (m - 1) / 2 <= _RANK_SORT edges): all edges above w_cone in one sorted block
    (row maxima and NaN / constant maps as in _row_keys, the edges read as in _collect). Returns
    their number, or -1 / _NAN."""
    rkey, rmin, cw, cid, sw, sid = ws[0], ws[1], ws[2], ws[3], ws[10], ws[11]
    glob_min = _key(K[u, 0, 0], sh, msk)
    glob_max = glob_min
    base = u * m * m
    for i in range(m):
        kmax, kmin = row_max_min_keys(K, base + i * m, m, sh, msk)
        rkey[i] = kmax
        glob_max = kmax if kmax > glob_max else glob_max
        glob_min = kmin if kmin < glob_min else glob_min
        rmin[i] = kmax
    if glob_max > kinf or glob_min < -kinf - 1:
        return _NAN
    if glob_min == glob_max:
        return -1
    n = 0
    deg = ws[4]
    for i in range(m):  # every edge (all keys lie above glob_min - 1)
        n = collect_row_keys(K, u, m, i, glob_min - 1, glob_max, sh, msk, cw, cid, n, deg)
    mask = np.int64(0xFFFF)
    for q in range(n):
        x = cw[q]
        e = np.int64(cid[q])
        i = e >> _SHIFT
        j = e & mask
        rmin[i] = x if x < rmin[i] else rmin[i]
        rmin[j] = x if x < rmin[j] else rmin[j]
    w_cone = rmin[0]
    for i in range(1, m):
        w_cone = rmin[i] if rmin[i] > w_cone else w_cone
    kept = 0
    for q in range(n):  # the edges heavier than w_cone (branch-free)
        x = cw[q]
        e = cid[q]
        cw[kept] = x
        cid[kept] = e
        kept += x > w_cone
    _rank_sort(cw, cid, kept, sw, sid)
    return kept


@njit(cache=True, _nrt=False)
def _tiny_scan(K, u, m, sh, msk, rkey, cw, cid, q0, n, nbr, comp):
    """Small maps (m <= 16), the sorted edges above w_cone: the scan of cw[q0:n] with one bit mask
    per vertex for its neighbours and one for its component (a union relabels at most m vertices;
    ``q0 = 0`` starts them afresh, else the scan goes on from where it stopped). Returns the index,
    -1 (no birth up to n), or _TIE at the first tie group of two or more edges (the caller then
    runs the general scan from the start). ``nbr`` and ``comp``: int64 scratch of m entries (the
    bit masks). The tie test looks no further than n: a later part holds lighter edges only."""
    one = np.int64(1)
    if q0 == 0:
        for v in range(m):
            nbr[v] = 0
            comp[v] = one << v
    for q in range(q0, n):
        x = cw[q]
        if q + 1 < n and cw[q + 1] == x:
            return _TIE
        e = np.int64(cid[q])
        a = e >> _SHIFT
        b = e & np.int64(0xFFFF)
        bit_a = one << a
        bit_b = one << b
        if comp[a] & bit_b:
            if (nbr[a] & nbr[b]) == 0:  # joins two connected vertices without a common neighbour
                return _index(K, u, m, sh, msk, rkey, x)
        else:
            joined = comp[a] | comp[b]
            for v in range(m):  # branch-free: the bits of a new component are unpredictable
                comp[v] = joined if (joined >> v) & one else comp[v]
        nbr[a] |= bit_b
        nbr[b] |= bit_a
    return -1


@njit(cache=True, _nrt=False, inline="always")
def _w4(K, u, i, j, sh, msk):
    x = _key(K[u, i, j], sh, msk)
    y = _key(K[u, j, i], sh, msk)
    return x if x > y else y


@njit(cache=True, _nrt=False, inline="always")
def _cycle4(c0, c1, c2, c3, d0, d1, best):
    """The largest threshold t of the 4-cycle with edges c* and chords d0, d1: its edges are in
    and its chords out for every t in (max(d0, d1), min(c*)]; keeps the larger of that and best."""
    low = min(min(c0, c1), min(c2, c3))
    return low if low > max(d0, d1) and low > best else best


@njit(cache=True, _nrt=False)
def _four(K, u, sh, msk, kinf, none):
    """m = 4 in closed form. On 4 vertices beta_1 > 0 exactly when the graph is a 4-cycle without
    chords (a triangle is filled, and so are a 4-cycle with one or two chords). With the edges
    above and at a threshold t in the graph, the birth weight is the largest t at which the graph
    is one of the three 4-cycles (each the complement of a perfect matching, its chords):
    ``min(cycle) > max(chords)``, then t = min(cycle). ``none``: a key below every key."""
    lo = _key(K[u, 0, 0], sh, msk)
    hi = lo
    for i in range(4):
        for j in range(4):
            k = _key(K[u, i, j], sh, msk)
            lo = k if k < lo else lo
            hi = k if k > hi else hi
    if hi > kinf or lo < -kinf - 1:
        return _NAN
    w01 = _w4(K, u, 0, 1, sh, msk)
    w02 = _w4(K, u, 0, 2, sh, msk)
    w03 = _w4(K, u, 0, 3, sh, msk)
    w12 = _w4(K, u, 1, 2, sh, msk)
    w13 = _w4(K, u, 1, 3, sh, msk)
    w23 = _w4(K, u, 2, 3, sh, msk)
    best = _cycle4(w02, w03, w12, w13, w01, w23, none)
    best = _cycle4(w01, w03, w12, w23, w02, w13, best)
    best = _cycle4(w01, w02, w13, w23, w03, w12, best)
    if best == none:
        return -1
    count = 1
    for i in range(4):
        for j in range(4):
            count += _key(K[u, i, j], sh, msk) > best
    return count


@njit(cache=True, _nrt=False, inline="always")
def _reset(parent, deg, adj, m, words):
    """Union-find, degrees and adjacency of a new unit: one loop each (vectorised stores)."""
    for i in range(np.uint64(m)):
        parent[i] = i
    for i in range(np.uint64(m)):
        deg[i] = 0
    if words == 1:
        for i in range(np.uint64(m)):
            adj[i, 0] = 0
    else:
        for i in range(np.uint64(m)):
            for wd in range(np.uint64(words)):
                adj[i, wd] = 0


@njit(cache=True, _nrt=False, inline="always")
def _unit_start(K, u, m, words, sh, msk, kinf, ws):
    """Start unit ``u``: NaN and constant maps, block bounds, first block. Returns the result, or
    _SCAN when :func:`_run` decides (called by :func:`_units`, in one place)."""
    rkey, rsel, cw, cid, deg, parent, adj, ist, kst, tmp, sw, sid, w2, ids2, hist, fut, pbuf = ws
    if m == 4:
        return _four(K, u, sh, msk, kinf, -kinf - 2)
    # maps of up to 16 x 16: every edge above w_cone in one sorted block, in SIMD registers for
    # float32 maps (1.1-2.2x), else (float64) by _small_block for m (m - 1) / 2 <= _RANK_SORT
    n = SIMD_UNSUPPORTED
    rest = False  # sorted_edges16 left the edges in (w_cone, t] of tmp[256], tmp[257] for later
    if m == 8:
        n = eight_sorted_edges(K, u * 64, sh, msk, kinf, cw, cid)
    elif 5 <= m <= 16:
        n = sorted_edges16(K, u * m * m, m, sh, msk, kinf, cw, cid, rkey, tmp, True)
        rest = n >= 0 and tmp[257] != tmp[256]
    if n == SIMD_UNSUPPORTED and m * (m - 1) // 2 <= _RANK_SORT:
        n = _small_block(K, u, m, sh, msk, kinf, ws)
    if n != SIMD_UNSUPPORTED:
        if n < 0:
            return n  # -1 (constant map) or _NAN
        res = _tiny_scan(K, u, m, sh, msk, rkey, cw, cid, 0, n, deg, parent)
        if rest and (res == -1 or res == _TIE):  # the rest, sorted now: the scan needs it
            n0 = n
            n += sorted_rest16(tmp, m, cw, cid, n0)
            if res == -1:  # no birth among the heaviest edges: the scan goes on
                res = _tiny_scan(K, u, m, sh, msk, rkey, cw, cid, n0, n, deg, parent)
        if res != _TIE:
            return res
        ist[_N] = n
        ist[_FINAL] = n
        ist[_POS] = 0
        ist[_LAST] = True
        ist[_ADDED] = 0
        ist[_CHECK] = m
        for i in range(m):
            parent[i] = i
            for wd in range(words):
                adj[i, wd] = 0
        return _SCAN
    lo_final, glob_min, glob_max = _row_keys(K, u, m, sh, msk, rkey)
    # maps of 40 x 40 up to 16 KiB (64 x 64 in float32, 45 x 45 in float64): the next unit's map is prefetched a few
    # lines at a time while this one computes (cursor: _prefetch_next); smaller maps gain nothing
    # (the hardware prefetcher keeps up), larger ones would not fit next to this one in L1
    ist[_PF] = (u + 1) * m * m
    pf = m >= _PF_MIN_M and m * m * K.itemsize <= 16384
    ist[_PFEND] = min(u + 2, K.shape[0]) * m * m if pf else 0
    if glob_max > kinf or glob_min < -kinf - 1:
        return _NAN  # a NaN's key lies beyond the keys of +-inf
    if glob_min == glob_max:
        return -1  # constant map: a single tie group, which completes the graph
    # block bounds: the (m/3)-th (m >= _SMALL_FIRST_BLOCK_M) and (3m/4)-th largest row maxima, the
    # smallest one, lo_final (see module doc); each kept if below the previous bound and above lo_final
    ns = m if m <= _SAMPLES else _SAMPLES
    if m > _SAMPLES:  # evenly spaced samples of the row maxima (a constant divisor: a shift)
        for t in range(_SAMPLES):
            rsel[t] = rkey[np.uint64(t * m) // np.uint64(_SAMPLES)]
    else:
        for t in range(ns):
            rsel[t] = rkey[t]
    ist[_LAZY] = 0
    if m >= _SMALL_FIRST_BLOCK_M:
        t0 = kth_desc16(rsel, ns, ns // 6 if _NARROW_FIRST_BLOCK_M <= m <= 64 else ns // 3)
        if t0 > lo_final:  # the later bounds only once block 0 is used up (most births lie in it)
            kst[_THR] = t0
            kst[_THR + 1] = lo_final
            ist[_NTHR] = 2
            ist[_LAZY] = 1
    if not ist[_LAZY]:
        _block_bounds(rkey, rsel, m, lo_final, kst, ist, 0)
    ist[_NEXT] = 0
    ist[_ADDED] = 0
    ist[_CHECK] = m
    ist[_FUT] = 0
    ist[_ENTRIES] = 0
    kst[_HI] = glob_max
    _reset(parent, deg, adj, m, words)
    _new_block(K, u, m, sh, msk, ws)
    return _SCAN


@njit(parallel=True, cache=True, _nrt=True)
def births(keys, sh, msk, kinf, out, block):
    """Birth index of every map of a C-contiguous (n, m, m) float32 / float64 array, read through
    ``keys``, its int32 / int64 view (``sh``: bit width - 1, ``msk``: the non-sign bits, ``kinf``:
    the key of +inf, all of that integer type).

    Writes ``out[u]`` (int64): the 1-based index, -1 (no birth) or -3 (the map holds a NaN), and
    returns the number of maps that hold a NaN. Units are processed in blocks of ``block`` by a
    ``prange`` loop; the scratch memory is allocated once per block of units.
    """
    n = keys.shape[0]
    m = keys.shape[1]
    E = m * (m - 1) // 2
    words = (m + 63) // 64
    n_blocks = (n + block - 1) // block
    nan_units = 0
    for blk in prange(n_blocks):
        rkey = np.empty(m, dtype=keys.dtype)
        rsel = np.empty(m, dtype=keys.dtype)
        cw = np.empty(E, dtype=keys.dtype)
        cid = np.empty(E, dtype=np.int32)
        w2 = np.empty(E, dtype=keys.dtype)
        ids2 = np.empty(E, dtype=np.int32)
        hist = np.empty((8, 256), dtype=np.int64)
        deg = np.empty(m, dtype=np.int64)
        parent = np.empty(m, dtype=np.int64)
        adj = np.empty((m + 1, words), dtype=np.uint64)  # row m: scratch of _diameter_at_most_2
        ist = np.zeros(16, dtype=np.int64)
        kst = np.zeros(8, dtype=keys.dtype)
        tmp = np.empty(max(m * m, ROWS16), dtype=np.int32)  # m <= 16: the rows of sorted_edges16
        sw = np.empty(_RANK_SORT, dtype=keys.dtype)
        sid = np.empty(_RANK_SORT, dtype=np.int32)
        fut = np.empty(64, dtype=np.uint64)  # m <= 64: _future_pairs
        pbuf = np.empty(PACKED + m, dtype=np.int64)  # _PACKED_M <= m <= 64: blocks of entries
        ws = (rkey, rsel, cw, cid, deg, parent, adj, ist, kst, tmp, sw, sid, w2, ids2, hist, fut, pbuf)
        nan_units += _units(keys, blk * block, min(n, (blk + 1) * block), m, words, sh, msk, kinf, ws, out)
    return nan_units


@njit(cache=True, _nrt=False)
def _units(keys, start, stop, m, words, sh, msk, kinf, ws, out):
    """Units start .. stop - 1 (one block of :func:`births`) with the scratch ``ws``: one call per
    block, not per unit (passing the scratch arrays to a call cost about 0.1 us per unit: 1.11x at
    m = 56, 1.2-1.5x at m = 7 to 14), and the scan inlined once. Returns the number of maps that
    hold a NaN."""
    rkey, cw, cid, adj, ist = ws[0], ws[2], ws[3], ws[6], ws[7]
    nan_units = 0
    for u in range(start, stop):
        res = _unit_start(keys, u, m, words, sh, msk, kinf, ws)
        while res == _SCAN or res == _NEED_GF2:
            if res == _NEED_GF2:  # the pending group: its exact beta_1 decides
                gs = ist[_GS]
                ge = ist[_GE]
                if _group_beta1(cid, gs, ge, adj, m, words, (ge - gs + 1) - ist[_UNIONS]) > 0:
                    res = _index(keys, u, m, sh, msk, rkey, cw[gs])
                    break
            res = _run(keys, u, m, words, sh, msk, ws)
        out[u] = res
        nan_units += res == _NAN
        p = ist[_PF]
        if p < ist[_PFEND]:  # the rest of the next unit's map, at once: its row pass comes next
            prefetch_flat(keys, p, ist[_PFEND] - p)
    return nan_units
