"""Tests of lightprune.topology: exactness against giotto-ph, hand-computed cases, invariances, errors.

The exactness tests compare :func:`birth_times` (every kernel: the compiled numba kernel and the
torch kernel, against the same giotto result) with the giotto-ph reference on about 24,000 units
(random, ReLU-sparse, tie-heavy, constant, float16 and real conv activation maps). giotto computes
in float32: :func:`giotto_birth_times` flags the units where two distinct edge weights share a
float32 distance; those units are compared with giotto run on exact rank distances instead (same
filtration, integer values exact in float32), never with a tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

import lightprune.topology as topo
from lightprune import _simd
from lightprune.errors import ConfigError
from lightprune.topology import (
    betti_curve_features,
    betti_curves,
    birth_times,
    feature_entropy,
    feature_entropy_score,
    giotto_birth_times,
)


def examples(n: int) -> settings:
    """Hypothesis settings: n examples, derandomized (reproducible, no example database)."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Units compared with giotto, per test (checked by test_units_checked_against_giotto_total).
CHECKED: dict[str, int] = {}
EXACTNESS_TESTS = {
    "random",
    "relu_sparse",
    "small_integers",
    "tiny_hypothesis_maps",
    "constant",
    "float16",
    "digits_conv",
}


# The exact kernels: every exactness test checks each of them against one giotto computation
# (equivalent to parametrizing the tests over the method, without running giotto twice).
KERNELS = ("numba", "torch")


def assert_matches_giotto(maps: torch.Tensor, tally: str) -> torch.Tensor:
    """Assert birth_times(maps, method=k) == giotto reference unit by unit for every kernel k;
    return the births (those of the default method)."""
    ref, ambiguous = giotto_birth_times(maps)
    clear = ~ambiguous
    exact = None
    if bool(ambiguous.any()):
        # float32 merged two distinct weights: compare with giotto on exact rank distances
        exact, flags = giotto_birth_times(maps[ambiguous], distances="ranks")
        assert not bool(flags.any())
        CHECKED[tally + ":ambiguous"] = CHECKED.get(tally + ":ambiguous", 0) + int(ambiguous.sum())
    for method in KERNELS:
        ours = birth_times(maps, method=method)
        assert ours.shape == ref.shape == maps.shape[:-2]
        assert ours.dtype == torch.int64
        assert torch.equal(ours[clear], ref[clear]), _first_mismatch(maps, ours, ref, clear, method)
        if exact is not None:
            assert torch.equal(ours[ambiguous], exact), method
    CHECKED[tally] = CHECKED.get(tally, 0) + ref.numel()
    return birth_times(maps)


def _first_mismatch(maps, ours, ref, mask, method) -> str:
    bad = ((ours != ref) & mask).nonzero()
    if bad.numel() == 0:
        return ""
    idx = tuple(bad[0].tolist())
    return f"method={method} unit {idx}: ours={ours[idx].item()} giotto={ref[idx].item()} map=\n{maps[idx]}"


# ---------------------------------------------------------------------------------------------
# exactness against giotto-ph (property-based)
# ---------------------------------------------------------------------------------------------
seeds = st.integers(min_value=0, max_value=2**32 - 1)
sizes = st.integers(min_value=3, max_value=40)


@examples(100)
@given(seed=seeds, m=sizes, units=st.integers(40, 100))
def test_random_maps_match_giotto(seed, m, units):
    rng = np.random.default_rng(seed)
    maps = torch.from_numpy(rng.standard_normal((units, m, m)))
    assert_matches_giotto(maps, "random")


@examples(100)
@given(seed=seeds, m=sizes, units=st.integers(40, 100), zero_fraction=st.floats(0.3, 0.95))
def test_relu_sparse_maps_match_giotto(seed, m, units, zero_fraction):
    rng = np.random.default_rng(seed)
    shift = float(np.quantile(rng.standard_normal(10_000), zero_fraction))
    maps = torch.relu(torch.from_numpy(rng.standard_normal((units, m, m)) - shift))
    assert_matches_giotto(maps, "relu_sparse")


@examples(100)
@given(seed=seeds, m=sizes, units=st.integers(40, 100), low=st.integers(-3, 0), high=st.integers(1, 6))
def test_small_integer_maps_match_giotto(seed, m, units, low, high):
    # few distinct values: huge tie groups, many births decided by the exact tie-group rule
    rng = np.random.default_rng(seed)
    maps = torch.from_numpy(rng.integers(low, high + 1, (units, m, m)).astype(np.float64))
    assert_matches_giotto(maps, "small_integers")


@examples(300)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=3, max_dims=3, min_side=3, max_side=7).map(lambda s: (s[0], s[1], s[1])),
        elements=st.integers(0, 3).map(float),
    )
)
def test_tiny_tie_heavy_maps_match_giotto(maps):
    # hypothesis draws (and shrinks) the entries themselves
    assert_matches_giotto(torch.from_numpy(maps), "tiny_hypothesis_maps")


@examples(50)
@given(seed=seeds, m=sizes, value=st.floats(-1e6, 1e6))
def test_constant_and_almost_constant_maps_match_giotto(seed, m, value):
    rng = np.random.default_rng(seed)
    maps = np.full((20, m, m), value)
    for k in range(10, 20):  # half of them get one or a few off-values
        i, j = rng.integers(0, m, (2, k - 9))
        maps[k, i, j] = value + rng.choice([-1.0, 1.0])
    births = assert_matches_giotto(torch.from_numpy(maps), "constant")
    assert (births[:10] == -1).all()


@examples(50)
@given(seed=seeds, m=sizes, scale=st.sampled_from([0.01, 1.0, 100.0]))
def test_float16_maps_match_giotto(seed, m, scale):
    # float16 has 11 significant bits: many ties between distinct-looking activations
    rng = np.random.default_rng(seed)
    maps = torch.from_numpy(np.maximum(rng.standard_normal((40, m, m)) * scale, 0)).half()
    ours = assert_matches_giotto(maps, "float16")
    assert torch.equal(ours, birth_times(maps.double()))  # up-casting is exact


@pytest.fixture(scope="module")
def digits_maps() -> list[torch.Tensor]:
    """Real activation maps: random conv+ReLU layers on scikit-learn digits upsampled to 32x32."""
    from sklearn.datasets import load_digits

    torch.manual_seed(1234)
    images = torch.tensor(load_digits().images[:48], dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(images, size=32, mode="bilinear", align_corners=False)
    conv1, conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
    conv3, conv4 = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
    maps = []
    with torch.no_grad():
        a1 = torch.relu(conv1(x))
        z2 = conv2(a1)
        a2 = torch.relu(z2)
        a3 = torch.relu(conv3(F.max_pool2d(a2, 2)))
        a4 = torch.relu(conv4(F.max_pool2d(a3, 2)))
        maps += [a1, z2, a2, a3, a4]  # z2: pre-activation maps (negative values, few ties)
    return maps


def test_digits_conv_maps_match_giotto(digits_maps):
    for maps in digits_maps:
        assert maps.shape[0] == 48 and maps.ndim == 4
        assert_matches_giotto(maps, "digits_conv")
        assert_matches_giotto(maps.half(), "digits_conv")  # float16 storage, as under AMP


def test_units_checked_against_giotto_total():
    if not EXACTNESS_TESTS <= set(CHECKED):
        pytest.skip("runs only after all exactness tests of this module")
    total = sum(v for k, v in CHECKED.items() if ":" not in k)
    assert total >= 20_000, CHECKED


# ---------------------------------------------------------------------------------------------
# hand-computed cases
# ---------------------------------------------------------------------------------------------
def _sym(m: int, edges: dict[tuple[int, int], float], diag: float = 0.0) -> torch.Tensor:
    U = torch.zeros(m, m, dtype=torch.float64)
    for (i, j), w in edges.items():
        U[i, j] = U[j, i] = w
    U.fill_diagonal_(diag)
    return U


def test_four_cycle_without_chord():
    # cycle 0-1-2-3-0 at weight 5, chords at weight 1: born at threshold 5
    U = _sym(4, {(0, 1): 5, (1, 2): 5, (2, 3): 5, (0, 3): 5, (0, 2): 1, (1, 3): 1})
    assert birth_times(U).item() == 1
    # the diagonal counts in the index: 4 diagonal entries > 5 put the birth at index 5
    assert birth_times(U.fill_diagonal_(9.0)).item() == 5


def test_asymmetric_map_uses_max_of_both_triangles():
    # edge weights max(U[i,j], U[j,i]); the cycle 0-1-2-3-0 closes at weight 2 (edge 3-0)
    U = torch.zeros(4, 4)
    U[0, 1], U[1, 2], U[2, 3], U[3, 0] = 5.0, 4.0, 3.0, 2.0
    U[0, 2] = U[1, 3] = 1.0
    U[1, 0] = 0.5  # smaller than U[0, 1]: ignored
    # entries strictly greater than 2: 5, 4, 3 -> index 4
    assert birth_times(U).item() == 4
    assert birth_times(U.T).item() == 4  # transposing keeps every weight and every entry


def test_chord_before_closing_edge_gives_no_birth():
    # path 0-1-2-3 (weights 5, 4, 3), chords 0-2 (2.5) and 1-3 (2.4) before the closing edge 0-3 (2):
    # every cycle is filled by triangles at once -> beta_1 stays 0
    U = _sym(4, {(0, 1): 5, (1, 2): 4, (2, 3): 3, (0, 2): 2.5, (1, 3): 2.4, (0, 3): 2})
    assert birth_times(U).item() == -1


def test_triangle_maps_never_have_a_birth():
    assert (birth_times(torch.rand(100, 3, 3)) == -1).all()


def test_pentagon_birth_index():
    # 5-cycle 0-1-2-3-4-0 with weights 9, 8, 7, 6, 5, chords below: born at threshold 5 (closing edge)
    edges = {(0, 1): 9, (1, 2): 8, (2, 3): 7, (3, 4): 6, (0, 4): 5}
    edges.update({(0, 2): 1, (0, 3): 1, (1, 3): 1, (1, 4): 1, (2, 4): 1})
    # entries > 5: 9, 8, 7, 6 on both triangles = 8 -> index 9
    assert birth_times(_sym(5, edges)).item() == 9


@pytest.fixture
def count_tie_checks(monkeypatch):
    """Count the calls of the exact tie-group computation (to show the tests reach it)."""
    calls = []
    original = topo._group_beta1

    def wrapped(*args):
        result = original(*args)
        calls.append(result)
        return result

    monkeypatch.setattr(topo, "_group_beta1", wrapped)
    return calls


def test_cycle_filled_later_in_the_same_tie_group(count_tie_checks):
    # Tie group at weight 5 (lexicographic order 01, 02, 04, 13, 14, 23, 24, 34): the 4-cycle
    # 0-1-3-2-0 closes at edge 2-3 (2 and 3 have no common neighbour yet), then edges 2-4 and 3-4
    # of the same group cone it off. beta_1 is 0 after the whole group: no birth there.
    # Vertex 5 joins last (weight 1), so vertex 4 is not a cone point before the group ends.
    group = {(0, 1), (0, 2), (0, 4), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)}
    edges = dict.fromkeys(group, 5.0)
    edges.update({(0, 3): 3.0, (1, 2): 2.0})
    edges.update({(i, 5): 1.0 for i in range(5)})
    U = _sym(6, edges)
    assert birth_times(U, method="torch").item() == -1
    assert count_tie_checks == [0]  # decided by the exact rule (beta_1 = 0 after the group)
    assert birth_times(U, method="numba").item() == -1
    assert giotto_birth_times(U)[0].item() == -1
    # a naive edge-by-edge scan would report a birth at threshold 5 (index 1)


def test_cycle_survives_its_tie_group(count_tie_checks):
    # Same 4-cycle 0-1-3-2-0 closing at 2-3, followed in its tie group by the unrelated edge 4-5:
    # beta_1 = 1 after the group -> born at threshold 5. Diagonal 9 -> 6 larger entries -> index 7.
    group = {(0, 1), (0, 2), (1, 3), (2, 3), (4, 5)}
    edges = {(i, j): (5.0 if (i, j) in group else 1.0) for i in range(6) for j in range(i + 1, 6)}
    U = _sym(6, edges, diag=9.0)
    assert birth_times(U, method="torch").item() == 7
    assert count_tie_checks == [1]
    assert birth_times(U, method="numba").item() == 7
    assert giotto_birth_times(U)[0].item() == 7


def test_float32_ambiguity_is_flagged_and_resolved():
    # Exact: path 0-1-2-3 at weight 10, closing edge 0-3 at 1 + 1e-12, chord 0-2 at 1, chord 1-3 at
    # 0.5: the cycle is born at threshold 1 + 1e-12 (6 entries above it -> index 7). In float32 the
    # distances 10 - (1 + 1e-12) and 10 - 1 are equal, so giotto sees 0-3 and 0-2 enter together
    # (the cycle is filled at once) and reports no birth.
    U = _sym(4, {(0, 1): 10, (1, 2): 10, (2, 3): 10, (0, 3): 1 + 1e-12, (0, 2): 1, (1, 3): 0.5})
    assert birth_times(U).item() == 7
    literal, ambiguous = giotto_birth_times(U)
    assert ambiguous.item() and literal.item() == -1
    exact, flag = giotto_birth_times(U, distances="ranks")
    assert not flag.item() and exact.item() == 7
    assert birth_times(U, method="giotto").item() == 7  # the giotto method resolves ambiguity
    # the same map in float32 really has the tie (1 + 1e-12 rounds to 1): no birth there
    assert birth_times(U.float()).item() == -1 == giotto_birth_times(U.float())[0].item()


@examples(40)
@given(seed=seeds, m=st.integers(3, 25))
def test_giotto_method_equals_torch_method(seed, m):
    rng = np.random.default_rng(seed)
    maps = torch.from_numpy(rng.integers(0, 4, (10, m, m)).astype(np.float32))
    assert torch.equal(birth_times(maps, method="giotto"), birth_times(maps))


# ---------------------------------------------------------------------------------------------
# the compiled kernel against the torch kernel, its exact tie-group step, threads, dispatch
# ---------------------------------------------------------------------------------------------
@examples(60)
@given(seed=seeds, m=st.integers(3, 64), values=st.integers(1, 5), units=st.integers(1, 40))
def test_numba_equals_torch_on_tie_heavy_maps(seed, m, values, units):
    # integer entries in a small range: large tie groups, many first triggers inside a group
    rng = np.random.default_rng(seed)
    maps = torch.from_numpy(rng.integers(0, values + 1, (units, m, m)).astype(np.float32))
    assert torch.equal(birth_times(maps, method="numba"), birth_times(maps, method="torch"))


@examples(25)
@given(seed=seeds, m=st.integers(3, 224), zero_fraction=st.floats(0.0, 0.9))
def test_numba_equals_torch_on_post_relu_maps(seed, m, zero_fraction):
    rng = np.random.default_rng(seed)
    units = max(2, 4000 // (m * m // 16 + 1))
    maps = torch.from_numpy(rng.standard_normal((units, m, m)).astype(np.float32))
    maps = torch.relu(maps - float(np.quantile(maps.numpy(), zero_fraction)))
    assert torch.equal(birth_times(maps, method="numba"), birth_times(maps, method="torch"))


@pytest.mark.parametrize("values", [2, 3, 6, 1000])
def test_four_by_four_closed_form_matches_giotto(values):
    # m = 4 has its own closed form in the compiled kernel (a 4-cycle without chords): every
    # kind of tie between the six edges, the diagonal and -0.0 / +0.0, in float32 and float64
    rng = np.random.default_rng(values)
    maps = rng.integers(0, values, (3000, 4, 4)).astype(np.float64) - values // 3
    maps[rng.random(maps.shape) < 0.05] = -0.0
    births = assert_matches_giotto(torch.from_numpy(maps), "four_by_four")
    assert (births > 0).any() and (births == -1).any()
    assert torch.equal(birth_times(torch.from_numpy(maps).float(), method="numba"), births)


@pytest.mark.parametrize("m", [5, 8, 11, 16])
@pytest.mark.parametrize("values", [2, 4, 1000])
def test_small_map_simd_paths_match_giotto(m, values):
    # float32 maps of 5 <= m <= 16 take their own paths in the compiled kernel (the sorted block
    # in SIMD registers: lightprune._simd.eight_sorted_edges for m = 8, sorted_edges16 otherwise);
    # float64 ones the general paths
    rng = np.random.default_rng(values * 100 + m)
    maps = rng.integers(0, values, (12000 // m, m, m)).astype(np.float32) - values // 3
    maps[::3] *= rng.random(maps[::3].shape) < 0.12  # mostly zeros: units without a birth
    maps[rng.random(maps.shape) < 0.05] = -0.0
    births = assert_matches_giotto(torch.from_numpy(maps), "small_simd")
    assert (births > 0).any() and (births == -1).any()
    assert torch.equal(birth_times(torch.from_numpy(maps).double(), method="numba"), births)


def test_four_by_four_cycle_by_hand():
    # edges 01, 12, 23, 30 of weight 5, 4, 3, 2, chords 02 = 1 and 13 = 1: born when 30 closes the
    # 4-cycle at weight 2; entries above 2: the four upper entries 5, 4, 3 and the diagonal 9
    U = torch.tensor([[9.0, 5, 1, 0], [0, 0, 4, 1], [0, 0, 0, 3], [2, 0, 0, 0]])
    assert birth_times(U, method="numba").item() == 5 == birth_times(U, method="torch").item()
    U[0, 2] = 2.5  # a chord above the last cycle edge: the 4-cycle is filled, no birth
    assert birth_times(U, method="numba").item() == -1 == birth_times(U, method="torch").item()
    U[0, 2] = 2.0  # the chord in the same tie group as the last cycle edge: filled too
    assert birth_times(U, method="numba").item() == -1 == birth_times(U, method="torch").item()


@examples(150)
@given(
    seed=seeds,
    m=st.integers(3, 70),
    base_density=st.floats(0.0, 0.6),
    group_density=st.floats(0.02, 0.6),
)
def test_compiled_tie_group_step_equals_numpy_step(seed, m, base_density, group_density):
    """_birth_numba._group_beta1 (compiled) == topology._group_beta1 (numpy / scipy) on random
    complexes K0 (any edges) plus a random tie group G: both give max(0, #non-tree - rank_GF2(B))."""
    from lightprune import _birth_numba

    rng = np.random.default_rng(seed)
    iu, ju = np.triu_indices(m, k=1)
    E = iu.size
    kind = rng.random(E)
    base = np.flatnonzero(kind < base_density)
    group = np.flatnonzero((kind >= base_density) & (kind < base_density + group_density))
    if group.size == 0:
        return
    rng.shuffle(base)
    rng.shuffle(group)
    rest = np.setdiff1d(np.arange(E), np.concatenate([base, group]))
    order = np.concatenate([base, group, rest])
    gs, ge = base.size, base.size + group.size - 1
    R = np.full((m, m), E, dtype=np.int64)
    R[iu[order], ju[order]] = np.arange(E)
    R[ju[order], iu[order]] = np.arange(E)
    parent = list(range(m))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    tree = np.zeros(E, dtype=bool)
    for pos, e in enumerate(order[: ge + 1]):  # Kruskal in the refined order
        ra, rb = find(iu[e]), find(ju[e])
        if ra != rb:
            parent[ra] = rb
            tree[pos] = True
    a, b = iu[group], ju[group]
    expected = topo._group_beta1(R, a, b, tree[gs : ge + 1], gs, ge)
    words = (m + 63) // 64
    adj = np.zeros((m, words), dtype=np.uint64)
    for e in order[: ge + 1]:
        i, j = int(iu[e]), int(ju[e])
        adj[i, j // 64] |= np.uint64(1 << (j % 64))
        adj[j, i // 64] |= np.uint64(1 << (i % 64))
    ids = ((a.astype(np.int64) << 16) | b).astype(np.int32)
    n_cycles = group.size - int(tree[gs : ge + 1].sum())
    got = _birth_numba._group_beta1(ids, 0, group.size - 1, adj, m, words, n_cycles)
    assert got == expected


@pytest.mark.parametrize("threads", [1, 2])
def test_numba_kernel_runs_on_torch_threads(threads):
    import numba

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        maps = torch.relu(torch.randn(64, 12, 12, generator=torch.Generator().manual_seed(threads)))
        births = birth_times(maps, method="numba")
        assert numba.get_num_threads() == min(threads, numba.config.NUMBA_NUM_THREADS)
        assert torch.equal(births, birth_times(maps, method="torch"))
    finally:
        torch.set_num_threads(old)


def test_auto_uses_the_compiled_kernel_on_cpu(monkeypatch):
    calls = []
    original = topo._births_numba

    def wrapped(maps, chunk_size):
        calls.append(tuple(maps.shape))
        return original(maps, chunk_size)

    monkeypatch.setattr(topo, "_births_numba", wrapped)
    maps = torch.rand(3, 5, 5)
    assert torch.equal(birth_times(maps), birth_times(maps, method="torch"))
    assert calls == [(3, 5, 5)]


@pytest.mark.parametrize("chunk_size", [1, 7, None])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_numba_half_precision_chunks(chunk_size, dtype):
    # half-precision maps are up-cast to float32 one chunk at a time; exact, any chunk size
    gen = torch.Generator().manual_seed(6)
    maps = torch.relu(torch.randn(30, 11, 11, generator=gen)).to(dtype)
    births = birth_times(maps, method="numba", chunk_size=chunk_size)
    assert torch.equal(births, birth_times(maps.double(), method="torch"))


# ---------------------------------------------------------------------------------------------
# invariances, dtypes, shapes, chunking
# ---------------------------------------------------------------------------------------------
@examples(60)
@given(
    seed=seeds,
    m=st.integers(3, 30),
    c=st.floats(1e-20, 1e20, allow_nan=False, allow_infinity=False),
    ties=st.booleans(),
)
def test_positive_rescaling_leaves_births_unchanged(seed, m, c, ties):
    # float32-valued maps held in float64: x * c is exact to 2**-53 relative, far below the 2**-24
    # gaps between distinct float32 values, so the order (and ties) of the entries are unchanged
    rng = np.random.default_rng(seed)
    if ties:
        x = rng.integers(0, 4, (16, m, m)).astype(np.float32)
    else:
        x = np.maximum(rng.standard_normal((16, m, m)), 0).astype(np.float32)
    maps = torch.from_numpy(x).double()
    births = birth_times(maps)
    scaled = birth_times(maps * c)
    assert torch.equal(births, scaled)
    # ... so feature entropy is exactly invariant too
    for a, b in zip(
        feature_entropy(births.reshape(4, 4)), feature_entropy(scaled.reshape(4, 4)), strict=True
    ):
        assert torch.equal(a, b)


@examples(40)
@given(seed=seeds, m=st.integers(3, 30), exponent=st.integers(-20, 10))
def test_power_of_two_rescaling_in_float16_and_float32(seed, m, exponent):
    rng = np.random.default_rng(seed)
    maps = torch.from_numpy(rng.integers(0, 9, (16, m, m)).astype(np.float32))
    for dtype in (torch.float16, torch.float32):
        x = maps.to(dtype)
        assert torch.equal(birth_times(x), birth_times(x * 2.0**exponent))


@examples(40)
@given(seed=seeds, m=st.integers(3, 30))
def test_simultaneous_permutation_leaves_births_unchanged(seed, m):
    # relabelling the vertices changes the order inside tie groups but not the filtration
    rng = np.random.default_rng(seed)
    maps = torch.from_numpy(rng.integers(0, 3, (16, m, m)).astype(np.float64))
    perm = torch.from_numpy(rng.permutation(m))
    assert torch.equal(birth_times(maps), birth_times(maps[:, perm][:, :, perm]))
    assert torch.equal(birth_times(maps), birth_times(maps.transpose(1, 2)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_agree_on_exactly_representable_values(dtype):
    gen = torch.Generator().manual_seed(0)
    maps = torch.randint(-8, 200, (64, 12, 12), generator=gen).double()  # exact in every dtype
    maps[:32] = torch.relu(maps[:32])
    reference = birth_times(maps)
    assert torch.equal(birth_times(maps.to(dtype)), reference)


def test_float16_maps_rank_in_their_own_precision():
    gen = torch.Generator().manual_seed(1)
    maps = torch.rand(200, 16, 16, generator=gen, dtype=torch.float64).half()
    ours = birth_times(maps)
    assert torch.equal(ours, birth_times(maps.float()))
    assert torch.equal(ours, birth_times(maps.double()))


@pytest.mark.parametrize("m", [0, 1, 2])
def test_maps_smaller_than_three_have_no_birth(m):
    births = birth_times(torch.rand(5, 4, m, m))
    assert births.shape == (5, 4) and births.dtype == torch.int64
    assert (births == -1).all()


@pytest.mark.parametrize("shape", [(7, 7), (3, 7, 7), (2, 3, 7, 7), (2, 1, 3, 7, 7), (0, 7, 7)])
def test_batch_shapes_are_preserved(shape):
    maps = torch.rand(shape)
    births = birth_times(maps)
    assert births.shape == shape[:-2]
    flat = birth_times(maps.reshape(-1, 7, 7))
    assert torch.equal(births.reshape(-1), flat)


@pytest.mark.parametrize("chunk_size", [1, 3, 64, 10_000])
def test_chunking_does_not_change_results(chunk_size):
    gen = torch.Generator().manual_seed(2)
    maps = torch.randint(0, 4, (150, 15, 15), generator=gen).float()
    maps[75:] = torch.rand(75, 15, 15, generator=gen)
    assert torch.equal(birth_times(maps, chunk_size=chunk_size), birth_times(maps))
    # each unit alone gives the same answer as inside a batch
    singles = torch.stack([birth_times(u) for u in maps[::10]])
    assert torch.equal(singles, birth_times(maps)[::10])


def test_partial_first_pass_agrees_with_full_sort():
    # the kernel orders only the 4 m heaviest edges first and re-runs undecided units fully:
    # both outcomes must occur here, and the answers must equal a full-sort pass
    gen = torch.Generator().manual_seed(5)
    maps = torch.relu(torch.randn(300, 40, 40, generator=gen))
    maps[:100] = torch.randint(0, 3, (100, 40, 40), generator=gen).float()  # late or no births
    maps[100:150, :, :3] = 10.0  # a bright stripe: cone points, no birth
    _, unresolved = topo._births_pass(maps, top=4 * 40)
    assert unresolved.any() and (~unresolved).any()
    full, none_left = topo._births_pass(maps, top=None)
    assert not none_left.any()
    assert torch.equal(birth_times(maps), full)
    assert (full[100:150] == -1).all()


@pytest.mark.parametrize("m", [24, 40, 56, 64])
def test_units_without_birth_end_early_and_exactly(m, digits_maps):
    """Real maps upsampled to 24 <= m <= 64, where many units have no birth: the compiled kernel ends
    those early by the future-pair certificate (_birth_numba._future_pairs: every pair above w_cone
    has a common neighbour already). Same indices as the torch kernel on all units and as giotto on
    a subset; the subset holds units without a birth."""
    maps = F.interpolate(digits_maps[0][:, :8], size=m, mode="bilinear").reshape(-1, m, m)  # post-ReLU
    ours = birth_times(maps, method="numba")
    assert torch.equal(ours, birth_times(maps, method="torch"))
    assert (ours == -1).float().mean() >= 0.2  # the case under test is common on these maps
    sub = torch.cat([maps[ours == -1][:24], maps[ours != -1][:24]])
    assert_matches_giotto(sub, f"no_birth_{m}")


@pytest.mark.parametrize("m", [24, 33, 56, 64])
def test_blocks_of_entries_match_giotto(m):
    """float32 maps of 24 <= m <= 64 gather their blocks as entries, not edges
    (lightprune._simd.pack_row_entries, sort_packed): an edge whose two entries are both in a block
    comes once (equal keys) or again later (the scan skips it). Symmetric and almost symmetric maps,
    plateaus with more than PACKED entries in a block (those blocks fall back to edges), a hub
    reached through its column, and maps with negative entries and -0.0 (the row pass falls back to
    the keys). float64 maps take the edge blocks throughout: the same births."""
    rng = np.random.default_rng(m)
    n = 20
    relu = np.maximum(rng.standard_normal((n, m, m)), 0)
    sym = np.triu(relu, 1)
    sym = sym + sym.transpose(0, 2, 1)  # equal entries: each edge's two entries are one value
    near = relu + 0.5 * relu.transpose(0, 2, 1)  # both entries above a block's bound, unequal
    sampled = (np.arange(16) * m) // 16  # the rows whose maxima give block 0's bound
    plateau = rng.random((n, m, m))
    heavy = np.setdiff1d(np.arange(m), sampled[16 // 3 :])  # five sampled rows and the rest
    plateau[:, heavy] += 3  # block 0's bound: the largest light row maximum, below all of these
    hub = relu.copy()
    hub[:, 1:, 0] = 5 + rng.random((n, m - 1))  # vertex 0 joined to all others through its column
    signed = np.round(rng.standard_normal((n, m, m)), 1)
    signed[signed == 0] = -0.0
    maps = np.concatenate([relu, sym, near, plateau, hub, signed]).astype(np.float32)
    bound = -np.sort(-maps.max(axis=2)[:, sampled], axis=1)[:, 16 // 3]
    above = maps > bound[:, None, None]
    entries = above.sum(axis=(1, 2)) - np.diagonal(above, axis1=1, axis2=2).sum(axis=1)
    assert (entries > _simd.PACKED).sum() >= n  # blocks past PACKED
    births = assert_matches_giotto(torch.from_numpy(maps), "entries")
    assert (births > 0).any() and (births == -1).any()
    assert torch.equal(birth_times(torch.from_numpy(maps).double(), method="numba"), births)


@pytest.mark.parametrize("m", [24, 40, 64])
def test_late_births_after_a_hub_are_not_ended_early(m):
    """A hub vertex joined first to most vertices: their edges have a common neighbour (the hub), and
    the births come late, among the vertices outside the hub's reach, after the kernel's first
    no-birth checks. A certificate that skipped a pair would end such units with -1."""
    gen = torch.Generator().manual_seed(m)
    maps = torch.relu(torch.randn(64, m, m, generator=gen))
    reach = (3 * m) // 4
    maps[:, 0, 1:reach] = 10 + torch.rand(64, reach - 1, generator=gen)  # the hub: vertex 0
    maps[:, reach:] *= 0.01  # the vertices outside the hub's reach: their edges come last
    maps[:, :, reach:] *= 0.01
    ours = birth_times(maps, method="numba")
    assert torch.equal(ours, birth_times(maps, method="torch"))
    born = ours[ours > 0].float()
    assert len(born) >= 48 and born.median() > m * m / 4  # late births, after the hub's edges
    assert_matches_giotto(maps[:16], f"hub_{m}")


@pytest.mark.slow
@pytest.mark.parametrize("m", [56, 112])
def test_large_maps_match_giotto(m, digits_maps):
    gen = torch.Generator().manual_seed(m)
    relu = torch.relu(torch.randn(12, m, m, generator=gen))
    upsampled = F.interpolate(digits_maps[3][:2, :6], size=m, mode="bilinear").reshape(12, m, m)
    for maps in (relu, relu.half(), upsampled, torch.randint(0, 6, (12, m, m), generator=gen).float()):
        assert_matches_giotto(maps, f"large_{m}")


def test_gradients_and_non_contiguous_inputs():
    maps = torch.rand(6, 10, 10, requires_grad=True)
    births = birth_times(maps)
    assert not births.requires_grad
    assert torch.equal(
        birth_times(maps.detach().transpose(1, 2).contiguous()), birth_times(maps.transpose(1, 2))
    )
    assert torch.equal(birth_times(maps.detach().numpy()), births)  # numpy arrays are accepted


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    gen = torch.Generator().manual_seed(3)
    maps = torch.relu(torch.randn(500, 28, 28, generator=gen)).to(dtype)
    maps[:100] = torch.randint(0, 4, (100, 28, 28), generator=gen).to(dtype)
    on_gpu = birth_times(maps.cuda())
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), birth_times(maps))


# ---------------------------------------------------------------------------------------------
# feature entropy
# ---------------------------------------------------------------------------------------------
def entropy_reference(births: torch.Tensor, p: float) -> tuple[list[float], list[float]]:
    """Plain-Python transcription of CRITERIA.md step 5."""
    n, units = births.shape
    hs, es = [], []
    for j in range(units):
        values = [int(b) for b in births[:, j] if int(b) != -1]
        eps = len(values) / n
        h = 0.0
        for x in set(values):
            prob = values.count(x) / len(values)
            h -= prob * math.log(prob)
        if eps < p:
            h = (1 - eps) * math.log(n)
        hs.append(h)
        es.append(eps)
    return hs, es


@examples(100)
@given(
    seed=seeds,
    n=st.integers(1, 120),
    units=st.integers(1, 30),
    n_values=st.integers(1, 10),
    no_birth=st.floats(0.0, 1.0),
    p=st.floats(0.0, 1.0),
)
def test_feature_entropy_matches_plain_loop(seed, n, units, n_values, no_birth, p):
    rng = np.random.default_rng(seed)
    births = rng.integers(1, n_values + 1, (n, units)) * rng.integers(1, 50)
    births[rng.random((n, units)) < no_birth] = -1
    births = torch.from_numpy(births)
    H, eps = feature_entropy(births, p=p)
    assert H.dtype == eps.dtype == torch.float64 and H.shape == eps.shape == (units,)
    h_ref, e_ref = entropy_reference(births, p)
    torch.testing.assert_close(H, torch.tensor(h_ref, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eps, torch.tensor(e_ref, dtype=torch.float64), rtol=0, atol=0)
    score = feature_entropy_score(births, p=p)
    torch.testing.assert_close(score, H / eps.clamp(min=1 / n), rtol=0, atol=0)


def test_feature_entropy_hand_cases():
    births = torch.tensor(
        [
            [7, 2, -1, 3, -1],
            [7, 3, -1, 3, -1],
            [7, 2, -1, -1, -1],
            [7, 3, 4, -1, -1],
        ],
        dtype=torch.int16,
    )
    H, eps = feature_entropy(births, p=0.3)
    # unit 0: one value -> H = 0; unit 1: two equally likely values -> log 2
    # unit 2: eps = 1/4 < 0.3 -> (1 - 1/4) log 4; unit 3: eps = 1/2, one value -> 0
    # unit 4: no birth at all -> eps = 0 < p -> log 4
    expected = torch.tensor([0.0, math.log(2), 0.75 * math.log(4), 0.0, math.log(4)], dtype=torch.float64)
    torch.testing.assert_close(H, expected, rtol=1e-15, atol=1e-15)
    assert eps.tolist() == [1.0, 1.0, 0.25, 0.5, 0.0]
    score = feature_entropy_score(births, p=0.3)
    torch.testing.assert_close(
        score, torch.tensor([0.0, math.log(2), 3 * math.log(4), 0.0, 4 * math.log(4)], dtype=torch.float64)
    )
    # p = 0: the "ineffective" branch never applies; with no birth at all H = 0
    H0, _ = feature_entropy(births, p=0.0)
    assert H0[2].item() == 0.0 and H0[4].item() == 0.0


def test_feature_entropy_of_real_births_is_scale_invariant(digits_maps):
    maps = digits_maps[0][:, :4]  # (48 images, 4 units, 32, 32)
    births = birth_times(maps).to(torch.int16)
    for scale in (1e-3, 7.0, 2.0**20):
        assert torch.equal(birth_times(maps.double() * scale).to(torch.int16), births)
    H, eps = feature_entropy(births)
    assert H.shape == eps.shape == (4,) and (H >= 0).all() and ((eps >= 0) & (eps <= 1)).all()


# ---------------------------------------------------------------------------------------------
# Betti-curve variants
# ---------------------------------------------------------------------------------------------
def _betti_reference(maps: torch.Tensor, kind: str, n_bins: int | None) -> list[float]:
    """Direct giotto-ph computation of the documented convention, one unit at a time."""
    from gph import ripser_parallel

    out = []
    for U in maps.reshape(-1, maps.shape[-1], maps.shape[-1]).double().numpy():
        W = np.maximum(U, U.T)
        off = W[~np.eye(len(W), dtype=bool)]
        if off.max() == off.min():
            out.append(0.0)
            continue
        D = (off.max() - W) / (off.max() - off.min())
        np.fill_diagonal(D, 0)
        bars = ripser_parallel(D, metric="precomputed", maxdim=1)["dgms"][1].astype(np.float64)
        grid = np.unique(bars) if n_bins is None else np.linspace(0, 1, n_bins)
        curve = np.array([((bars[:, 0] <= t) & (t < bars[:, 1])).sum() for t in grid], dtype=float)
        if kind == "max":
            out.append(float(curve.max(initial=0)))
        elif n_bins is None:
            out.append(float((bars[:, 1] - bars[:, 0]).sum()))
        else:
            out.append(float(np.trapz(curve, grid)))
    return out


def test_betti_curve_features_hand_cases_weight_axis():
    square = _sym(4, {(0, 1): 5, (1, 2): 5, (2, 3): 5, (0, 3): 5, (0, 2): 1, (1, 3): 1})
    # one bar from t = 0 to t = 1
    assert betti_curve_features(square, kind="max", axis="weight").item() == 1.0
    assert betti_curve_features(square, kind="integral", axis="weight").item() == 1.0
    # two disjoint squares born together, their vertices joined last: beta_1 reaches 2
    two = torch.zeros(8, 8, dtype=torch.float64)
    two[:4, :4] = square
    two[4:, 4:] = square
    assert betti_curve_features(two, kind="max", axis="weight").item() == 2.0
    assert betti_curve_features(torch.ones(3, 5, 5), kind="integral", axis="weight").tolist() == [0.0] * 3
    assert betti_curve_features(torch.rand(2, 2, 2), axis="weight").tolist() == [0.0, 0.0]


def test_betti_curve_on_the_index_axis_hand_computed():
    # m = 5, diagonal 0, edge weights (both triangles of U hold them, so each edge is 2 entries):
    #   w=9: (0,1), (1,2)   entries v = 1..4    -> edges enter at v = 1  (path 0-1-2: beta_1 = 0)
    #   w=8: (2,3), (0,3)   entries v = 5..8    -> v = 5: square 0-1-2-3-0 closes        beta_1 = 1
    #   w=7: (1,4), (3,4)   entries v = 9..12   -> v = 9: cycle 1-4-3 + path 3-2-1 (or 3-0-1),
    #                                              4 and 3 have no common neighbour  beta_1 = 2
    #   w=6: (0,2)          entries v = 13, 14  -> triangles 012, 023 fill the square:
    #                                              E - V + C = 7 - 5 + 1 = 3, rank 2      beta_1 = 1
    #   w=5: (1,3)          entries v = 15, 16  -> triangles 013, 123, 134: with 012, 023 they have
    #                                              rank 4 (the tetrahedron 0123's faces: 3, plus 134),
    #                                              E - V + C = 8 - 5 + 1 = 4              beta_1 = 0
    #   w=2: (0,4), (2,4)   entries v = 17..20  -> common neighbours 1 / 1: stays           beta_1 = 0
    #   w=0: the diagonal   entries v = 21..25                                             beta_1 = 0
    U = _sym(5, {(0, 1): 9, (1, 2): 9, (2, 3): 8, (0, 3): 8, (1, 4): 7, (3, 4): 7, (0, 2): 6, (1, 3): 5,
                 (0, 4): 2, (2, 4): 2})
    curve = [0] * 4 + [1] * 4 + [2] * 4 + [1] * 2 + [0] * 11
    assert betti_curves(U).tolist() == curve
    assert betti_curve_features(U, kind="max").item() == 2.0
    assert betti_curve_features(U, kind="integral").item() == 4 * 1 + 4 * 2 + 2 * 1  # = 14
    assert birth_times(U).item() == 5  # the first v with beta_1 > 0
    # the diagonal counts on the axis: diagonal 10 > every weight shifts the curve by 5 steps
    shifted = betti_curves(U.clone().fill_diagonal_(10.0)).tolist()
    assert shifted == [0] * 5 + curve[:20]
    assert betti_curve_features(U.clone().fill_diagonal_(10.0), kind="integral").item() == 14.0
    # a cycle born and filled inside one tie group never shows: square + chord (0,2) all at 5
    tied = _sym(4, {(0, 1): 5, (1, 2): 5, (2, 3): 5, (0, 3): 5, (0, 2): 5, (1, 3): 1})
    assert betti_curves(tied).tolist() == [0] * 16 and birth_times(tied).item() == -1
    # the square of the docstrings: born at v = 1, filled when the chords enter at v = 9
    square = _sym(4, {(0, 1): 5, (1, 2): 5, (2, 3): 5, (0, 3): 5, (0, 2): 1, (1, 3): 1})
    assert betti_curve_features(square, kind="integral").item() == 8.0
    assert betti_curves(torch.rand(2, 2, 2)).tolist() == [[0, 0, 0, 0]] * 2


def _betti_brute_force(U: np.ndarray) -> list[int]:
    """beta_1 at every index v = 1..m*m by counting: (E - V + C) - rank_GF2(boundary of the triangles)."""
    m = U.shape[0]
    W = np.maximum(U, U.T)
    flat = U.ravel()
    step = {(i, j): 1 + int((flat > W[i, j]).sum()) for i in range(m) for j in range(i + 1, m)}
    curve = []
    for v in range(1, m * m + 1):
        edges = [e for e, s in step.items() if s <= v]
        col = {e: k for k, e in enumerate(edges)}
        parent = list(range(m))

        def root(a, parent=parent):
            while parent[a] != a:
                a = parent[a]
            return a

        for a, b in edges:
            parent[root(a)] = root(b)
        components = len({root(a) for a in range(m)})
        rows = []
        for a in range(m):
            for b in range(a + 1, m):
                for c in range(b + 1, m):
                    if all(e in col for e in ((a, b), (b, c), (a, c))):
                        row = np.zeros(len(edges), dtype=np.uint8)
                        row[[col[(a, b)], col[(b, c)], col[(a, c)]]] = 1
                        rows.append(row)
        rank = 0
        if rows:  # Gaussian elimination over GF(2)
            M = np.array(rows)
            for k in range(M.shape[1]):
                pivot = np.nonzero(M[rank:, k])[0]
                if pivot.size == 0:
                    continue
                M[[rank, rank + pivot[0]]] = M[[rank + pivot[0], rank]]
                M[(M[:, k] == 1) & (np.arange(len(M)) != rank)] ^= M[rank]
                rank += 1
                if rank == len(M):
                    break
        curve.append(len(edges) - m + components - rank)
    return curve


def test_betti_curves_match_counting_and_giotto_tda_on_random_maps():
    from gtda.homology import VietorisRipsPersistence

    gen = torch.Generator().manual_seed(11)
    maps = [torch.rand(m, m, generator=gen, dtype=torch.float64) for m in (3, 4, 5, 6) for _ in range(5)]
    maps += [torch.randint(0, 4, (m, m), generator=gen).double() for m in (4, 5, 6) for _ in range(5)]  # ties
    maps += [torch.relu(torch.randn(6, 6, generator=gen, dtype=torch.float64)) for _ in range(5)]
    for U in maps:
        m = U.shape[0]
        curve = betti_curves(U)
        assert curve.tolist() == _betti_brute_force(U.numpy())
        # giotto-tda: Vietoris-Rips on the step index at which each edge enters
        W = torch.maximum(U, U.T).numpy()
        D = 1.0 + (U.numpy().ravel()[None, None, :] > W[:, :, None]).sum(axis=2)
        np.fill_diagonal(D, 0.0)
        dgm = VietorisRipsPersistence(metric="precomputed", homology_dimensions=(1,)).fit_transform(D[None])[0]
        v = np.arange(1, m * m + 1)
        giotto = ((dgm[:, :1] <= v) & (v < dgm[:, 1:2])).sum(axis=0)
        assert curve.tolist() == giotto.tolist()
        assert betti_curve_features(U, kind="max").item() == curve.max().item()
        assert betti_curve_features(U, kind="integral").item() == curve.sum().item()
        first = int(torch.nonzero(curve)[0, 0]) + 1 if bool(curve.any()) else -1
        assert birth_times(U).item() == first
    # batched call = unit by unit; any strictly increasing transform leaves the index curve unchanged
    batch = torch.stack([U for U in maps if U.shape[0] == 6][:6]).reshape(2, 3, 6, 6)
    curves = betti_curves(batch)
    assert curves.shape == (2, 3, 36)
    assert torch.equal(curves, torch.stack([betti_curves(U) for U in batch.reshape(6, 6, 6)]).reshape(2, 3, 36))
    assert torch.equal(betti_curves(torch.exp(3 * batch) - 7), curves)


@pytest.mark.parametrize("kind", ["max", "integral"])
@pytest.mark.parametrize("n_bins", [None, 50])
def test_betti_curve_features_match_direct_giotto(kind, n_bins):
    gen = torch.Generator().manual_seed(4)
    maps = torch.relu(torch.randn(3, 8, 14, 14, generator=gen, dtype=torch.float64))
    maps[0] = torch.randint(0, 3, (8, 14, 14), generator=gen).double()
    feats = betti_curve_features(maps, kind=kind, axis="weight", n_bins=n_bins)
    assert feats.shape == (3, 8) and feats.dtype == torch.float64
    expected = torch.tensor(_betti_reference(maps, kind, n_bins), dtype=torch.float64).reshape(3, 8)
    torch.testing.assert_close(feats, expected, rtol=1e-12, atol=1e-12)
    # the normalised parameter makes the features invariant to a positive rescaling
    assert torch.equal(betti_curve_features(maps * 4.0, kind=kind, axis="weight", n_bins=n_bins), feats)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_birth_times_errors():
    with pytest.raises(
        ConfigError, match=r"method='cuda' is not allowed; choose one of: auto, numba, torch, giotto"
    ):
        birth_times(torch.rand(4, 4), method="cuda")


@pytest.mark.parametrize("method", ["auto", "numba", "torch", "giotto"])
def test_bad_maps_give_the_same_errors_for_every_method(method):
    def call(maps, **kw):
        return birth_times(maps, method=method, **kw)

    with pytest.raises(ConfigError, match=r"maps must have shape \(\.\.\., m, m\).*got shape \(5,\)"):
        call(torch.rand(5))
    with pytest.raises(ConfigError, match=r"maps must be square.*got shape \(2, 4, 5\)"):
        call(torch.rand(2, 4, 5))
    with pytest.raises(ConfigError, match=r"maps must have a floating dtype.*got torch.int64"):
        call(torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(ConfigError, match=r"maps must be a torch.Tensor.*got list"):
        call([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ConfigError, match=r"^maps contains NaN; birth times need totally ordered values$"):
        call(torch.full((3, 3), float("nan")))
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        maps = torch.rand(20, 9, 9).to(dtype)
        maps[13, 4, 7] = -float("nan")  # one NaN (negative sign bit) in one unit, off the diagonal
        with pytest.raises(ConfigError, match=r"^maps contains NaN"):
            call(maps)
        maps[13, 4, 7] = 0.5
        maps[19, 8, 8] = float("nan")  # on the diagonal of the last unit
        with pytest.raises(ConfigError, match=r"^maps contains NaN"):
            call(maps)
    with pytest.raises(ConfigError, match=r"chunk_size=0 is not allowed"):
        call(torch.rand(3, 3), chunk_size=0)


def test_giotto_and_betti_errors():
    with pytest.raises(
        ConfigError, match=r"distances='euclid' is not allowed; choose one of: weights, ranks"
    ):
        giotto_birth_times(torch.rand(4, 4), distances="euclid")
    with pytest.raises(ConfigError, match=r"n_threads=0 is not allowed"):
        giotto_birth_times(torch.rand(4, 4), n_threads=0)
    with pytest.raises(ConfigError, match=r"maps must be square"):
        giotto_birth_times(torch.rand(4, 3))
    with pytest.raises(ConfigError, match=r"maps contains \+-inf.*use distances='ranks'"):
        giotto_birth_times(torch.full((4, 4), float("inf")))
    inf_map = _sym(4, {(0, 1): math.inf, (1, 2): 5, (2, 3): 5, (0, 3): 5, (0, 2): 1, (1, 3): 1})
    assert giotto_birth_times(inf_map, distances="ranks")[0].item() == birth_times(inf_map).item() == 3
    with pytest.raises(ConfigError, match=r"kind='sum' is not allowed; choose one of: max, integral"):
        betti_curve_features(torch.rand(4, 4), kind="sum")
    with pytest.raises(ConfigError, match=r"n_bins=1 is not allowed"):
        betti_curve_features(torch.rand(4, 4), axis="weight", n_bins=1)
    with pytest.raises(ConfigError, match=r"n_bins=20 is not allowed with axis='index'.*axis='weight'"):
        betti_curve_features(torch.rand(4, 4), n_bins=20)
    with pytest.raises(ConfigError, match=r"axis='v' is not allowed; choose one of: index, weight"):
        betti_curve_features(torch.rand(4, 4), axis="v")
    with pytest.raises(ConfigError, match=r"n_threads=0 is not allowed"):
        betti_curves(torch.rand(4, 4), n_threads=0)
    with pytest.raises(ConfigError, match=r"maps contains NaN"):
        betti_curves(torch.full((4, 4), float("nan")))
    with pytest.raises(ConfigError, match=r"maps must have a floating dtype"):
        betti_curve_features(torch.ones(4, 4, dtype=torch.int32))


def test_feature_entropy_errors():
    births = torch.tensor([[1, -1], [2, 3]])
    for bad_p in (-0.1, 1.5, "0.1", None):
        with pytest.raises(ConfigError, match=rf"p={bad_p!r} is not allowed"):
            feature_entropy(births, p=bad_p)
    with pytest.raises(ConfigError, match=r"p=2 is not allowed"):
        feature_entropy_score(births, p=2)
    with pytest.raises(ConfigError, match=r"births must have shape \(N_images, U\), got shape \(2,\)"):
        feature_entropy(torch.tensor([1, 2]))
    with pytest.raises(ConfigError, match=r"births must have an integer dtype.*got torch.float32"):
        feature_entropy(torch.ones(2, 2))
    with pytest.raises(ConfigError, match=r"births must hold 1-based birth indices or -1.*found 0"):
        feature_entropy(torch.tensor([[1, 0]]))
    with pytest.raises(ConfigError, match=r"births must hold at least one image"):
        feature_entropy(torch.zeros(0, 3, dtype=torch.int64))
    with pytest.raises(ConfigError, match=r"births must be a torch.Tensor"):
        feature_entropy([[1, 2]])


def test_the_compiled_kernel_keeps_the_callers_thread_count():
    """In a fresh process where torch is set to 1 thread before numba is loaded: numba's first
    set_num_threads once reset torch's count to 2, and the next call then ran the kernel on 2 threads."""
    import subprocess
    import sys

    code = (
        "import torch, time\n"
        "torch.set_num_threads(1)\n"
        "from lightprune.topology import birth_times\n"
        "maps = torch.relu(torch.randn(400, 24, 24, generator=torch.Generator().manual_seed(0)))\n"
        "birth_times(maps, method='numba')\n"
        "import numba\n"
        "from numba import njit, prange\n"
        "import numpy as np\n"
        "@njit(parallel=True)\n"
        "def ids(out):\n"
        "    for i in prange(out.shape[0]):\n"
        "        out[i] = numba.get_thread_id()\n"
        "birth_times(maps, method='numba')\n"
        "o = np.zeros(256, np.int64); ids(o)\n"
        "print(torch.get_num_threads(), numba.get_num_threads(), len(set(o.tolist())))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["1", "1", "1"]
