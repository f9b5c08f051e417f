"""The SIMD intrinsics of lightprune._simd against plain loops, on float32 and float64 keys,
row lengths around the vector widths (1 .. 70), offsets that start mid-array, and -0.0 / +-inf."""

import os

import numpy as np
import pytest

pytest.importorskip("numba")
from numba import njit  # noqa: E402

from lightprune import _simd  # noqa: E402
from lightprune._birth_numba import _key  # noqa: E402
from lightprune.topology import _NUMBA_KEYS32, _NUMBA_KEYS64  # noqa: E402

_KEYS = {np.float32: (np.int32, _NUMBA_KEYS32), np.float64: (np.int64, _NUMBA_KEYS64)}


def _maps(dtype, n_entries, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n_entries).astype(dtype)
    x[rng.random(n_entries) < 0.3] = 0.0  # ties, as after a ReLU
    x[rng.random(n_entries) < 0.05] = -0.0
    x[rng.random(n_entries) < 0.01] = np.inf
    x[rng.random(n_entries) < 0.01] = -np.inf
    return x


@njit
def _simd_all(K, n, lo, hi, sh, msk, out):
    r = 0
    for off in range(0, K.shape[0] - n + 1, 7):
        a, b = _simd.row_max_min_keys(K, off, n, sh, msk)
        out[r, 0] = a
        out[r, 1] = b
        out[r, 2] = _simd.row_bits_keys(K, off, min(n, 64), lo, hi, sh, msk)
        out[r, 3] = _simd.count_above_keys(K, off, n, lo, sh, msk)
        r += 1
    return r


@njit
def _loops_all(K, n, lo, hi, sh, msk, out):
    r = 0
    for off in range(0, K.shape[0] - n + 1, 7):
        a = _key(K[off], sh, msk)
        b = a
        bits = np.uint64(0)
        count = 0
        for t in range(n):
            k = _key(K[off + t], sh, msk)
            a = max(a, k)
            b = min(b, k)
            if t < 64 and lo < k <= hi:
                bits |= np.uint64(1) << np.uint64(t)
            count += k > lo
        out[r, 0] = a
        out[r, 1] = b
        out[r, 2] = bits
        out[r, 3] = count
        r += 1
    return r


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_intrinsics_equal_plain_loops(dtype):
    ity, (sh, msk, _) = _KEYS[dtype]
    K = _maps(dtype, 300, 0).view(ity)
    keys = np.array([_key(b, sh, msk) for b in K[:40]], dtype=ity)
    for n in [1, 2, 7, 8, 9, 14, 15, 16, 17, 31, 32, 33, 56, 63, 64, 65, 70]:
        for lo, hi in [(keys.min(), keys.max()), (np.median(keys), keys.max()), (keys[3], keys[5])]:
            lo, hi = ity(min(lo, hi)), ity(max(lo, hi))
            got = np.zeros((300, 4), np.int64)
            want = np.zeros((300, 4), np.int64)
            rows = _simd_all(K, n, lo, hi, ity(sh), ity(msk), got)
            assert rows == _loops_all(K, n, lo, hi, ity(sh), ity(msk), want) > 0
            np.testing.assert_array_equal(got[:rows], want[:rows], err_msg=f"n={n} lo={lo} hi={hi}")


@njit
def _per_index(w, n, out, kth):
    """out[i] = rank_desc(w, n, i), or (``kth``) kth_desc16(w, n, i), for i < n."""
    for i in range(n):
        out[i] = _simd.kth_desc16(w, n, i) if kth else _simd.rank_desc(w, n, i)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_rank_desc_is_the_stable_decreasing_order(dtype):
    rng = np.random.default_rng(1)
    for n in [1, 2, 5, 8, 15, 16, 17, 40, 64, 100]:
        w = rng.integers(-5, 5, n).astype(dtype)  # many ties
        got = np.zeros(n, np.int64)
        _per_index(w, n, got, False)
        order = np.argsort(-w.astype(np.int64), kind="stable")
        want = np.empty(n, np.int64)
        want[order] = np.arange(n)
        np.testing.assert_array_equal(got, want, err_msg=f"n={n}")


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_kth_desc16_is_the_kth_largest(dtype):
    rng = np.random.default_rng(5)
    info = np.iinfo(dtype)
    for n in [1, 2, 3, 7, 15, 16]:
        for lo, hi in [(-3, 3), (info.min, info.max)]:  # ties, and keys at the type's limits
            w = rng.integers(lo, hi, n, dtype=dtype, endpoint=True)
            if n > 1:
                w[-1] = info.min  # the smallest key, as held by the lanes past n
            got = np.zeros(n, dtype)
            _per_index(np.concatenate([w, np.full(20, info.max, dtype)]), n, got, True)  # entries past n unread
            np.testing.assert_array_equal(got, np.sort(w)[::-1], err_msg=f"n={n}")


@njit
def _bit_ops(xs, out):
    for i in range(xs.shape[0]):
        out[i] = _simd.lowest_bit(xs[i])


def test_lowest_bit():
    rng = np.random.default_rng(2)
    xs = rng.integers(1, 2**63, 500, dtype=np.uint64) << rng.integers(0, 40, 500).astype(np.uint64)
    xs = np.concatenate([xs[xs != 0], np.uint64(1) << np.arange(64, dtype=np.uint64)])
    out = np.zeros(len(xs), np.int64)
    _bit_ops(xs, out)
    for x, low in zip(xs.tolist(), out.tolist(), strict=True):
        assert low == (x & -x).bit_length() - 1


@njit
def _argmaxes(w, out):
    r = 0
    for lo in range(0, len(w), 3):
        for hi in range(lo + 1, len(w) + 1, 5):
            out[r] = _simd.argmax_from(w, lo, hi)
            r += 1
    return r


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_argmax_from_is_the_first_largest(dtype):
    rng = np.random.default_rng(3)
    w = rng.integers(-4, 4, 90).astype(dtype)  # ties everywhere
    out = np.zeros(90 * 90, np.int64)
    r = _argmaxes(w, out)
    want = [lo + int(np.argmax(w[lo:hi])) for lo in range(0, 90, 3) for hi in range(lo + 1, 91, 5)]
    assert r == len(want) > 100
    np.testing.assert_array_equal(out[:r], want)


@njit
def _collect_simd(K, m, lo, hi, sh, msk, cw, cid, deg):
    n = 0
    for u in range(K.shape[0]):
        for i in range(m):
            n = _simd.collect_row_keys(K, u, m, i, lo, hi, sh, msk, cw, cid, n, deg)
    return n


@njit
def _collect_loops(K, m, lo, hi, sh, msk, cw, cid, deg):
    n = 0
    for u in range(K.shape[0]):
        for i in range(m):
            for j in range(m):
                x = _key(K[u, i, j], sh, msk)
                y = _key(K[u, j, i], sh, msk)
                if j != i and lo < x <= hi and (x > y or (x == y and i < j)):
                    cw[n] = x
                    cid[n] = (i << 16) | j
                    deg[i] += 1
                    deg[j] += 1
                    n += 1
    return n


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m", [3, 8, 14, 16, 17, 33, 56, 70])
def test_collect_row_keys_equals_plain_loops(dtype, m):
    ity, (sh, msk, _) = _KEYS[dtype]
    K = np.round(_maps(dtype, 5 * m * m, m), 1).reshape(5, m, m).view(ity)  # rounded: ties
    keys = np.sort([_key(b, sh, msk) for b in K.ravel()])
    q = [keys[int(f * (len(keys) - 1))] for f in (0.25, 0.5, 0.75)]
    for lo, hi in [(keys[0] - 1, keys[-1]), (q[0], q[2]), (q[1], q[1] + 1)]:
        out = []
        for fn in (_collect_simd, _collect_loops):
            cw = np.zeros(5 * m * m, ity)
            cid = np.zeros(5 * m * m, np.int32)
            deg = np.zeros(m, np.int64)
            n = fn(K, m, ity(lo), ity(hi), ity(sh), ity(msk), cw, cid, deg)
            out.append((n, cw[:n].tolist(), cid[:n].tolist(), deg.tolist()))
        assert out[0] == out[1]
        assert out[0][0] > 0 or lo == q[1]


@njit
def _eight_simd(K, sh, msk, kinf, cw, cid, res):
    for u in range(K.shape[0]):
        res[u] = _simd.eight_sorted_edges(K, u * 64, sh, msk, kinf, cw[u], cid[u])


def _edges_loops(U, sh, msk, kinf):
    """(n or -1 / -3, [(key, id)] by decreasing key then id, W) for one m x m map of raw bits."""
    m = U.shape[0]
    k = np.array([[_key(b, sh, msk) for b in row] for row in U], dtype=np.int64)
    W = np.maximum(k, k.T)
    if k.max() > kinf or k.min() < -kinf - 1:
        return -3, [], W
    if k.min() == k.max():
        return -1, [], W
    w_cone = max(min(W[c, j] for j in range(m) if j != c) for c in range(m))
    edges = sorted(
        ((int(W[i, j]), (i << 16) | j) for i in range(m) for j in range(i + 1, m) if W[i, j] > w_cone),
        reverse=True,
    )
    return len(edges), edges, W


def test_eight_sorted_edges_equals_plain_loops():
    """The 8 x 8 path (w_cone, the edges above it, a bitonic sort) against a plain loop: tie-heavy
    maps of 2 to 20 levels, negative values, -0.0 next to +0.0, constant maps, NaN and +-inf."""
    ity, (sh, msk, kinf) = _KEYS[np.float32]
    rng = np.random.default_rng(8)
    n_maps = 3000
    A = (rng.integers(0, rng.integers(2, 21, n_maps)[:, None, None], (n_maps, 8, 8)) - 1).astype(np.float32)
    A[::5][A[::5] == 0] = -0.0
    A[7] = 2.5  # constant maps, one with -0.0 next to +0.0
    A[8] = 0.0
    A[8, 3, 5] = -0.0
    A[9, 2, 6] = np.nan
    A[10, 7, 0] = -np.nan
    A[11, 1, 4] = np.inf
    A[12, 0, 0] = -np.inf
    K = A.view(ity)
    cw = np.zeros((n_maps, 28), ity)
    cid = np.zeros((n_maps, 28), np.int32)
    res = np.zeros(n_maps, np.int64)
    _eight_simd(K, ity(sh), ity(msk), ity(kinf), cw, cid, res)
    assert res[7] == res[8] == -1 and res[9] == res[10] == -3 and res[11] >= 0 and res[12] >= 0
    for u in range(n_maps):
        n, edges, _ = _edges_loops(K[u], sh, msk, kinf)
        assert res[u] == n, u
        assert list(zip(cw[u, : max(n, 0)].tolist(), cid[u, : max(n, 0)].tolist(), strict=True)) == edges, u
    assert 0 < (res > 0).mean() < 1 and res.max() >= 15  # non-trivial blocks


def test_small_map_intrinsics_leave_float64_maps_to_the_general_path():
    ity, (sh, msk, kinf) = _KEYS[np.float64]
    K = np.zeros((1, 8, 8)).view(ity)
    res = np.zeros(1, np.int64)
    _eight_simd(K, ity(sh), ity(msk), ity(kinf), np.zeros((1, 28), ity), np.zeros((1, 28), np.int32), res)
    assert res[0] == _simd.SIMD_UNSUPPORTED
    args = (np.zeros((1, 28), ity), np.zeros((1, 28), np.int32), np.zeros((1, 8), ity), res)
    for split in (False, True):
        res[0] = 0
        scratch = (np.zeros(1, np.int64), np.zeros((1, _simd.ROWS16), np.int32))
        _sixteen_simd(K, 8, ity(sh), ity(msk), ity(kinf), *args, split, *scratch)
        assert res[0] == _simd.SIMD_UNSUPPORTED


@njit
def _sixteen_simd(K, m, sh, msk, kinf, cw, cid, rkey, res, split, first, wrows):
    """sorted_edges16 on every map; with ``split``, then sorted_rest16 after the first part
    (``first[u]``: its length, ``wrows[u]``: the scratch)."""
    for u in range(K.shape[0]):
        w = wrows[u]
        n = _simd.sorted_edges16(K, u * m * m, m, sh, msk, kinf, cw[u], cid[u], rkey[u], w, split)
        if split and n >= 0:
            first[u] = n
            n += _simd.sorted_rest16(w, m, cw[u], cid[u], n)
        res[u] = n


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("m", [5, 7, 8, 9, 13, 16])
def test_sorted_edges16_equals_plain_loops(m, split):
    """The m <= 16 path (rows in registers, w_cone, the edges above it, bitonic sorts of 32, 64 and
    128 lanes) against a plain loop: tie-heavy maps, few to many levels, -0.0, constant maps, NaN.
    ``split``: the heaviest edges first (above a row maximum, at most SPLIT16 of them where the
    bound allows), then the rest by sorted_rest16: together the same sorted edges."""
    ity, (sh, msk, kinf) = _KEYS[np.float32]
    rng = np.random.default_rng(m)
    n_maps = 2000
    levels = rng.integers(2, 500, n_maps)[:, None, None]
    A = (rng.integers(0, levels, (n_maps, m, m)) - rng.integers(0, levels)).astype(np.float32)
    A[::3] = np.maximum(A[::3], 0.0)  # post-ReLU maps: few edges above w_cone
    A[::5][A[::5] == 0] = -0.0
    A[7] = 2.5
    A[8] = 0.0
    A[8, 3, 4] = -0.0
    A[9, 2, 1] = np.nan
    A[10, 0, 0] = -np.inf
    K = A.view(ity)
    E = m * (m - 1) // 2
    cw = np.zeros((n_maps, E), ity)
    cid = np.zeros((n_maps, E), np.int32)
    rkey = np.zeros((n_maps, m), ity)
    res = np.zeros(n_maps, np.int64)
    first = np.full(n_maps, -1, np.int64)
    wrows = np.zeros((n_maps, _simd.ROWS16), np.int32)
    _sixteen_simd(K, m, ity(sh), ity(msk), ity(kinf), cw, cid, rkey, res, split, first, wrows)
    assert res[7] == res[8] == -1 and res[9] == -3 and res[10] >= 0
    sizes, parts = [], 0
    for u in range(n_maps):
        n, edges, W = _edges_loops(K[u], sh, msk, kinf)
        assert res[u] == n, u
        if n < 0:
            continue
        assert list(zip(cw[u, :n].tolist(), cid[u, :n].tolist(), strict=True)) == edges, u
        assert rkey[u].tolist() == W.max(axis=1).tolist(), u
        sizes.append(n)
        w_cone, t = wrows[u, 256], wrows[u, 257]
        assert w_cone == max(min(W[c, j] for j in range(m) if j != c) for c in range(m)), u
        assert wrows[u, :256].reshape(16, 16)[:m, :m].tolist() == W.tolist(), u
        if not split:
            assert t == w_cone
            continue
        # the bound: w_cone if at most SPLIT16 edges, else a row maximum with edges above it
        nA = int(first[u])
        assert nA == sum(k > t for k, _ in edges), u
        expect = w_cone  # the rule, as a plain loop: up to three row maxima above w_cone, upwards
        if n > _simd.SPLIT16:
            for r in sorted({r for r in W.max(axis=1).tolist() if r > w_cone})[:3]:
                c = sum(k > r for k, _ in edges)
                if c == 0:
                    break
                expect = r
                if c <= _simd.SPLIT16:
                    break
        assert t == expect, u
        parts += nA < n
    if split and E - (m + 1) // 2 > _simd.SPLIT16:  # more edges than SPLIT16 can lie above w_cone
        assert parts > 0
    # every sort width that m allows was used (at least (m + 1) // 2 edges are not above w_cone:
    # each vertex has one, and an edge serves two vertices)
    sizes, most = np.array(sizes), E - (m + 1) // 2
    assert (sizes <= 32).any()
    assert ((sizes > 32) & (sizes <= 64)).any() == (most > 32)
    assert (sizes > 64).any() == (most > 64)


@njit
def _raw_rows(K, n, out):
    r = 0
    for off in range(0, K.shape[0] - n + 1, 7):
        out[r, 0], out[r, 1] = _simd.row_max_min_raw(K, off, n, K[0], K[0])
        r += 1
    return r


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_max_min_raw_is_the_integer_extremes(dtype):
    """The raw integers' largest and smallest (signed), and on maps whose entries are all >= +0.0
    (post-ReLU) or NaN with the sign bit clear, the same as the keys' extremes."""
    ity, (sh, msk, _) = _KEYS[dtype]
    x = _maps(dtype, 300, 1)
    x[5] = np.nan
    for K, nonneg in ((x.view(ity), False), (np.maximum(x, 0).view(ity), True)):
        for n in [1, 7, 15, 16, 17, 33, 56, 64, 70]:
            got = np.zeros((300, 2), np.int64)
            rows = _raw_rows(K, n, got)
            for r, off in enumerate(range(0, K.shape[0] - n + 1, 7)):
                assert got[r].tolist() == [K[off : off + n].max(), K[off : off + n].min()], (n, off)
                if nonneg:
                    keys = [_key(b, sh, msk) for b in K[off : off + n]]
                    assert got[r].tolist() == [max(keys), min(keys)], (n, off)
            assert rows > 0
    assert (np.maximum(x, 0).view(ity) >= 0).all() and (x.view(ity) < 0).any()


@njit
def _pack_rows(K, m, lo, hi, sh, msk, buf, counts):
    n = 0
    for i in range(m):
        n = _simd.pack_row_entries(K, i * m, m, i, lo, hi, sh, msk, buf, n)
        counts[i] = n
    return n


@pytest.mark.parametrize("m", [24, 31, 32, 33, 56, 64])
def test_pack_row_entries_equals_plain_loop(m):
    """Each row's entries in (lo, hi], off the diagonal, as key << 32 | min(i, j) << 16 | max(i, j)
    in increasing j: tie-heavy values, -0.0 next to +0.0, +-inf, bounds from the whole range to
    none; rows of m around the 16-lane chunks."""
    ity, (sh, msk, _) = _KEYS[np.float32]
    rng = np.random.default_rng(m)
    x = _maps(np.float32, m * m, m)
    x[rng.random(m * m) < 0.3] = 1.5
    K = x.view(ity)
    keys = np.array([_key(b, sh, msk) for b in K], dtype=np.int64)
    for lo, hi in [
        (keys.min() - 1, keys.max()),
        (np.median(keys), keys.max()),
        (keys.min(), np.median(keys)),
    ]:
        lo, hi = ity(lo), ity(hi)
        buf = np.zeros(m * m + m, np.int64)
        counts = np.zeros(m, np.int64)
        n = _pack_rows(K, m, lo, hi, ity(sh), ity(msk), buf, counts)
        want = [
            (int(keys[i * m + j]) << 32) | (min(i, j) << 16) | max(i, j)
            for i in range(m)
            for j in range(m)
            if i != j and lo < keys[i * m + j] <= hi
        ]
        assert n == len(want) > 0 and buf[:n].tolist() == want
        per_row = [sum(1 for j in range(m) if j != i and lo < keys[i * m + j] <= hi) for i in range(m)]
        assert np.diff(counts, prepend=0).tolist() == per_row
    res = _pack_rows(np.zeros(m * m, np.int64), m, 0, 1, 63, 2**63 - 1, np.zeros(m * m, np.int64), counts)
    assert res == _simd.SIMD_UNSUPPORTED


@njit
def _sort_packed(buf, n, cw, cid):
    return _simd.sort_packed(buf, n, cw, cid)


def test_sort_packed_sorts_and_leaves_out_repeats():
    """n = 0 .. PACKED packed values (negative keys, repeats, equal keys with other ids): keys and
    ids of the distinct values by decreasing value, in the 16-, 32-, 64-, 128- and 256-lane networks."""
    rng = np.random.default_rng(0)
    for n in list(range(0, 40)) + [63, 64, 65, 100, 127, 128, 129, 200, 255, _simd.PACKED]:
        for _ in range(3):
            keys = rng.integers(-5, 5, n) * rng.integers(1, 2**20)
            ids = rng.integers(0, 6, n) << 16 | rng.integers(0, 64, n)
            buf = np.zeros(_simd.PACKED + 8, np.int64)
            buf[:n] = (keys.astype(np.int64) << 32) | ids
            cw = np.zeros(_simd.PACKED, np.int32)
            cid = np.zeros(_simd.PACKED, np.int32)
            stored = _sort_packed(buf, n, cw, cid)
            want = sorted(set(buf[:n].tolist()), reverse=True)
            assert stored == len(want), n
            assert [
                (k << 32) | i for k, i in zip(cw[:stored].tolist(), cid[:stored].tolist(), strict=True)
            ] == want
    assert _sort_packed(buf, 4, np.zeros(8, np.int64), cid) == _simd.SIMD_UNSUPPORTED


def test_the_compress_path_is_the_targets():
    """The compress-stores compile to the target's instruction set: AVX-512's register-form
    compress, AVX2's ``vpermd`` by a lane table, or LLVM's portable ``masked.compressstore``."""
    from numba.core.registry import cpu_target

    path = _simd.compress_path(cpu_target.target_context)
    buf = np.zeros(_simd.PACKED, np.int64)
    _sort_packed(buf, 0, np.zeros(_simd.PACKED, np.int32), np.zeros(_simd.PACKED, np.int32))
    sig = next(s for s in _sort_packed.signatures if s[2].dtype.bitwidth == 32)  # int32 cw
    ir = _sort_packed.inspect_llvm(sig)
    assert ("llvm.x86.avx512.mask.compress" in ir) == (path == "avx512")
    assert ("llvm.x86.avx2.permd" in ir) == (path == "avx2")


def test_the_child_process_compiles_for_the_cpu_it_was_given():
    """In the processes of tests/test_simd_targets.py: numba's target is the CPU it was given."""
    want = os.environ.get("LIGHTPRUNE_SIMD_CPU")
    if not want:
        pytest.skip("only in the process for another CPU")
    from numba.core.registry import cpu_target

    assert _simd.compress_path(cpu_target.target_context) == want
