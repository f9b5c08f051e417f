"""Explicit SIMD for the compiled birth-time kernel (:mod:`lightprune._birth_numba`).

numba has no vector types, and LLVM's loop vectoriser leaves the short rows of a feature map
(m = 14 to 64 entries) mostly to its scalar remainder loop: the row pass of a 56 x 56 float32 map
ran at about 1.4 cycles per entry. These intrinsics write the vector code directly in LLVM IR:
512-bit vectors (16 int32 / 8 int64 lanes; LLVM splits them where the CPU has narrower ones) and
masked loads for the end of a row, which read nothing past it. All of it is generic LLVM IR except
the compress-stores, which are compiled for the target's instruction set (:func:`compress_path`:
AVX-512, AVX2, or portable for any other CPU): an x86 intrinsic the CPU lacks would abort LLVM.

They work on *keys* (see :func:`lightprune._birth_numba._key`): the integer view of float32 /
float64 bits, mapped so that integer order is float order. Functions whose name has ``_keys`` read
raw bits (an int32 / int64 array viewing the floats) and map them on the fly (``sh``, ``msk``: the
key parameters); the others read keys already mapped. Offsets are flat offsets into the array's
C-contiguous data. Every function has a plain-loop twin in ``tests/test_simd.py``.

numba's on-disk cache of :mod:`lightprune._birth_numba` is keyed on that file alone, not on this
one: after changing this module, touch ``_birth_numba.py`` (or delete its ``*.nbi`` / ``*.nbc``
files in ``__pycache__``), or the cached kernel keeps the old intrinsics.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

_I1 = ir.IntType(1)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _key_vector(dt):
    """(lanes, vector type) for keys of the numba integer type ``dt``: 512-bit vectors."""
    lanes = 512 // dt.bitwidth
    return lanes, ir.VectorType(ir.IntType(dt.bitwidth), lanes)


def _splat(builder, x, vt):
    undef = ir.Constant(vt, ir.Undefined)
    v = builder.insert_element(undef, x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(_I32, vt.count), [0] * vt.count))


def _const_vec(vt, values):
    return ir.Constant(vt, [ir.Constant(vt.element, v) for v in values])


def _key_vec(builder, v, sh, msk):
    """The vector form of ``_key``: k = b ^ ((b >> sh) & msk); k + (k == -1)."""
    vt = v.type
    k = builder.xor(v, builder.and_(builder.ashr(v, _splat(builder, sh, vt)), _splat(builder, msk, vt)))
    minus1 = _const_vec(vt, [-1] * vt.count)
    return builder.add(k, builder.zext(builder.icmp_signed("==", k, minus1), vt))


def _lane_mask(builder, n, count):
    """<count x i1>: lane t < n (n: i64, may be <= 0 or >= count). Compared as i32 lanes, n
    clamped to [0, count] first: a compare of 64-bit lanes costs CPUs without AVX-512 some twenty
    instructions per 16 lanes (four compares and the packing of their results)."""
    zero, top = ir.Constant(_I64, 0), ir.Constant(_I64, count)
    c = builder.select(builder.icmp_signed("<", n, zero), zero, n)
    c = builder.trunc(builder.select(builder.icmp_signed(">", c, top), top, c), _I32)
    vt = ir.VectorType(_I32, count)
    return builder.icmp_signed("<", _const_vec(vt, range(count)), _splat(builder, c, vt))


def _declare(builder, name, ret, params):
    """The LLVM intrinsic ``name`` of the module, declared on first use."""
    fn = builder.module.globals.get(name)
    if fn is None:
        fn = ir.Function(builder.module, ir.FunctionType(ret, params), name=name)
    return fn


def _masked_load(builder, ptr, mask, passthru):
    vt = passthru.type
    name = f"llvm.masked.load.v{vt.count}i{vt.element.width}.p0"
    fn = _declare(builder, name, vt, [ptr.type, _I32, ir.VectorType(_I1, vt.count), vt])
    return builder.call(fn, [ptr, ir.Constant(_I32, vt.element.width // 8), mask, passthru])


def _full_load(builder, ptr, vt):
    return builder.load(builder.bitcast(ptr, vt.as_pointer()), align=vt.element.width // 8)


def _reduce(builder, v, op):
    vt = v.type
    name = f"llvm.vector.reduce.{op}.v{vt.count}i{vt.element.width}"
    fn = _declare(builder, name, vt.element, [vt])
    return builder.call(fn, [v])


def _sum_i64(builder, v):
    """Sum of the lanes of an integer vector, as i64."""
    total = _reduce(builder, v, "add")
    return builder.sext(total, _I64) if v.type.element.width < 64 else total


def _ptr(context, builder, aryty, ary, off):
    data = context.make_array(aryty)(context, builder, value=ary).data
    return builder.gep(data, [off])


def _chunk_loop(builder, n, L, init, step, tail):
    """Run ``step(j, accs) -> accs`` over the full chunks [j, j + L) of [0, n), then
    ``tail(j, rem, accs) -> accs`` once for the rest (rem = n - j, 0 <= rem < L); returns accs."""
    pre = builder.basic_block
    head = builder.append_basic_block("simd.head")
    body = builder.append_basic_block("simd.body")
    done = builder.append_basic_block("simd.done")
    builder.branch(head)
    builder.position_at_end(head)
    j = builder.phi(_I64)
    j.add_incoming(ir.Constant(_I64, 0), pre)
    phis = []
    for a in init:
        p = builder.phi(a.type)
        p.add_incoming(a, pre)
        phis.append(p)
    nxt = builder.add(j, ir.Constant(_I64, L))
    builder.cbranch(builder.icmp_signed("<=", nxt, n), body, done)
    builder.position_at_end(body)
    new = step(j, phis)
    for p, a in zip(phis, new, strict=True):
        p.add_incoming(a, builder.basic_block)
    j.add_incoming(nxt, builder.basic_block)
    builder.branch(head)
    builder.position_at_end(done)
    return tail(j, builder.sub(n, j), phis)


def _args(context, builder, sig, args, dt, int_args, key_args):
    """Cast the offset / count arguments to i64 and the key arguments to the key type."""
    out = []
    for a, t, i in zip(args, sig.args, range(len(args)), strict=True):
        if i in int_args:
            out.append(context.cast(builder, a, t, types.int64))
        elif i in key_args:
            out.append(context.cast(builder, a, t, dt))
        else:
            out.append(a)
    return out


def _row_max_min(keyed):
    """The intrinsic (largest, smallest) of the ``n >= 1`` entries of ``K`` from flat offset
    ``off``: of their keys (``keyed``), or of the raw integers (``sh``, ``msk`` unused; the raw
    order is the key order when no entry has its sign bit set)."""

    @intrinsic
    def row_max_min(typingctx, K, off, n, sh, msk):
        dt = K.dtype
        sig = types.UniTuple(dt, 2)(K, off, n, sh, msk)

        def codegen(context, builder, sig, args):
            ary, off, n, sh, msk = _args(context, builder, sig, args, dt, (1, 2), (3, 4))
            L, vt = _key_vector(dt)
            base = _ptr(context, builder, sig.args[0], ary, off)
            first = _splat(builder, builder.load(base), vt)  # masked-off lanes: the first entry

            def key(v):
                return _key_vec(builder, v, sh, msk) if keyed else v

            def fold(v, accs):
                k = key(v)
                hi, lo = accs
                return [
                    builder.select(builder.icmp_signed(">", k, hi), k, hi),
                    builder.select(builder.icmp_signed("<", k, lo), k, lo),
                ]

            def step(j, accs):
                return fold(_full_load(builder, builder.gep(base, [j]), vt), accs)

            def tail(j, rem, accs):
                lm = _lane_mask(builder, rem, L)
                return fold(_masked_load(builder, builder.gep(base, [j]), lm, first), accs)

            k0 = key(first)
            hi, lo = _chunk_loop(builder, n, L, [k0, k0], step, tail)
            return context.make_tuple(
                builder, sig.return_type, [_reduce(builder, hi, "smax"), _reduce(builder, lo, "smin")]
            )

        return sig, codegen

    return row_max_min


row_max_min_keys = _row_max_min(True)
row_max_min_keys.__doc__ = (
    "(largest, smallest) key of the ``n >= 1`` entries of ``K`` from flat offset ``off``."
)
row_max_min_raw = _row_max_min(False)
row_max_min_raw.__doc__ = """(largest, smallest) raw integer of the ``n >= 1`` entries of ``K`` from flat offset
``off`` (``sh``, ``msk`` unused): their keys when no entry has its sign bit set (a float >= +0.0,
or a NaN with the sign bit clear)."""


@intrinsic
def row_bits_keys(typingctx, K, off, n, lo, hi, sh, msk):
    """uint64 mask of the ``n <= 64`` entries of ``K`` from flat offset ``off``: bit t is set iff
    ``lo < key(entry t) <= hi``."""
    dt = K.dtype
    sig = types.uint64(K, off, n, lo, hi, sh, msk)

    def codegen(context, builder, sig, args):
        ary, off, n, lo, hi, sh, msk = _args(context, builder, sig, args, dt, (1, 2), (3, 4, 5, 6))
        L, vt = _key_vector(dt)
        base = _ptr(context, builder, sig.args[0], ary, off)
        lov = _splat(builder, lo, vt)
        hiv = _splat(builder, hi, vt)
        zero = _const_vec(vt, [0] * L)
        out = ir.Constant(_I64, 0)
        for c in range(64 // L):  # masked chunks past n load nothing and give no bits
            lm = _lane_mask(builder, builder.sub(n, ir.Constant(_I64, c * L)), L)
            v = _masked_load(builder, builder.gep(base, [ir.Constant(_I64, c * L)]), lm, zero)
            k = _key_vec(builder, v, sh, msk)
            sel = builder.and_(builder.icmp_signed(">", k, lov), builder.icmp_signed("<=", k, hiv))
            bits = builder.zext(builder.bitcast(builder.and_(sel, lm), ir.IntType(L)), _I64)
            out = builder.or_(out, builder.shl(bits, ir.Constant(_I64, c * L)))
        return out

    return sig, codegen


@intrinsic
def count_above_keys(typingctx, K, off, n, thr, sh, msk):
    """Number of the ``n >= 0`` entries of ``K`` from flat offset ``off`` whose key is above ``thr``."""
    dt = K.dtype
    sig = types.int64(K, off, n, thr, sh, msk)

    def codegen(context, builder, sig, args):
        ary, off, n, thr, sh, msk = _args(context, builder, sig, args, dt, (1, 2), (3, 4, 5))
        L, vt = _key_vector(dt)
        base = _ptr(context, builder, sig.args[0], ary, off)
        thv = _splat(builder, thr, vt)
        zero = _const_vec(vt, [0] * vt.count)

        def add(k, acc, lm=None):
            above = builder.icmp_signed(">", k, thv)
            if lm is not None:
                above = builder.and_(above, lm)
            return builder.add(acc, builder.zext(above, vt))

        def step(j, accs):
            return [add(_key_vec(builder, _full_load(builder, builder.gep(base, [j]), vt), sh, msk), accs[0])]

        def tail(j, rem, accs):
            lm = _lane_mask(builder, rem, vt.count)
            v = _masked_load(builder, builder.gep(base, [j]), lm, zero)
            return [add(_key_vec(builder, v, sh, msk), accs[0], lm)]

        (acc,) = _chunk_loop(builder, n, vt.count, [zero], step, tail)
        return _sum_i64(builder, acc)

    return sig, codegen


@intrinsic
def rank_desc(typingctx, w, n, i):
    """Rank of ``w[i]`` among ``w[:n]`` (1-D keys) by decreasing value, ties by position:
    ``#{j : w[j] > w[i]} + #{j < i : w[j] == w[i]}``. The ranks of w[:n] are 0 .. n - 1."""
    dt = w.dtype
    sig = types.int64(w, n, i)

    def codegen(context, builder, sig, args):
        ary, n, i = _args(context, builder, sig, args, dt, (1, 2), ())
        L, vt = _key_vector(dt)
        base = _ptr(context, builder, sig.args[0], ary, ir.Constant(_I64, 0))
        x = _splat(builder, builder.load(builder.gep(base, [i])), vt)
        iv = _splat(builder, i, ir.VectorType(_I64, L))
        lanes = _const_vec(ir.VectorType(_I64, L), range(L))
        zero = _const_vec(vt, [0] * L)

        def add(j, v, acc, lm=None):
            pos = builder.add(lanes, _splat(builder, j, ir.VectorType(_I64, L)))
            before = builder.and_(builder.icmp_signed("==", v, x), builder.icmp_signed("<", pos, iv))
            hit = builder.or_(builder.icmp_signed(">", v, x), before)
            if lm is not None:
                hit = builder.and_(hit, lm)
            return builder.add(acc, builder.zext(hit, vt))

        def step(j, accs):
            return [add(j, _full_load(builder, builder.gep(base, [j]), vt), accs[0])]

        def tail(j, rem, accs):
            lm = _lane_mask(builder, rem, L)
            return [add(j, _masked_load(builder, builder.gep(base, [j]), lm, zero), accs[0], lm)]

        (acc,) = _chunk_loop(builder, n, L, [zero], step, tail)
        return _sum_i64(builder, acc)

    return sig, codegen


@intrinsic
def kth_desc16(typingctx, w, n, k):
    """The ``k``-th largest (0-based) of ``w[:n]`` (1-D keys, ``1 <= n <= 16``, ``0 <= k < n``): the
    value of rank k in :func:`rank_desc`'s order, all 16 ranks in one vector (a broadcast and two
    compares per lane) instead of one :func:`rank_desc` call per candidate (about 2.5x fewer cycles
    for 16 samples). Lanes past n read nothing and hold the smallest key, so they rank last."""
    dt = w.dtype
    sig = w.dtype(w, n, k)

    def codegen(context, builder, sig, args):
        ary, n, k = _args(context, builder, sig, args, dt, (1, 2), ())
        L = 16
        et = ir.IntType(dt.bitwidth)
        vt = ir.VectorType(et, L)
        base = _ptr(context, builder, sig.args[0], ary, ir.Constant(_I64, 0))
        smallest = _const_vec(vt, [-(1 << (dt.bitwidth - 1))] * L)
        inside = _lane_mask(builder, n, L)
        v = _masked_load(builder, base, inside, smallest)
        acc = _const_vec(vt, [0] * L)
        undef = ir.Constant(vt, ir.Undefined)
        for j in range(L):  # rank of lane i: #{j : v_j > v_i} + #{j < i : v_j == v_i}
            bj = builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(_I32, L), [j] * L))
            after = _const_vec(ir.VectorType(_I1, L), [int(i > j) for i in range(L)])
            hit = builder.or_(builder.icmp_signed(">", bj, v), builder.and_(builder.icmp_signed("==", bj, v), after))
            acc = builder.add(acc, builder.zext(hit, vt))
        want = builder.and_(builder.icmp_signed("==", acc, _splat(builder, builder.trunc(k, et) if dt.bitwidth < 64 else k, vt)), inside)
        return _reduce(builder, builder.select(want, v, smallest), "smax")

    return sig, codegen


@intrinsic
def lowest_bit(typingctx, x):
    """Index of the lowest set bit of a non-zero uint64 (``tzcnt``)."""
    sig = types.int64(types.uint64)

    def codegen(context, builder, sig, args):
        fn = builder.module.declare_intrinsic("llvm.cttz", [_I64], fnty=ir.FunctionType(_I64, [_I64, _I1]))
        return builder.call(fn, [args[0], ir.Constant(_I1, 1)])

    return sig, codegen


@intrinsic
def argmax_from(typingctx, w, lo, hi):
    """Position of the largest of the 1-D keys ``w[lo:hi]`` (``lo < hi``), the first one if tied."""
    dt = w.dtype
    sig = types.int64(w, lo, hi)

    def codegen(context, builder, sig, args):
        ary, lo, hi = _args(context, builder, sig, args, dt, (1, 2), ())
        L, vt = _key_vector(dt)
        pt = ir.VectorType(_I64, L)
        base = _ptr(context, builder, sig.args[0], ary, lo)
        first = _splat(builder, builder.load(base), vt)  # masked-off lanes: the first key, position 0
        lanes = _const_vec(pt, range(L))

        def fold(j, v, accs):
            best, pos = accs
            better = builder.icmp_signed(">", v, best)  # strict: each lane keeps its first maximum
            here = builder.add(lanes, _splat(builder, j, pt))
            return [builder.select(better, v, best), builder.select(better, here, pos)]

        def step(j, accs):
            return fold(j, _full_load(builder, builder.gep(base, [j]), vt), accs)

        def tail(j, rem, accs):
            lm = _lane_mask(builder, rem, L)
            return fold(j, _masked_load(builder, builder.gep(base, [j]), lm, first), accs)

        n = builder.sub(hi, lo)
        best, pos = _chunk_loop(builder, n, L, [first, _const_vec(pt, [0] * L)], step, tail)
        top = _splat(builder, _reduce(builder, best, "smax"), vt)
        big = _const_vec(pt, [2**62] * L)
        where = builder.select(builder.icmp_signed("==", best, top), pos, big)
        return builder.add(lo, _reduce(builder, where, "smin"))

    return sig, codegen


def _target_features(context):
    """The feature flags (``+avx2``, ...) of the CPU that numba compiles for now: the target
    machine's feature string (the host's, or ``NUMBA_CPU_FEATURES``). An empty string (the CPU
    name alone decides, e.g. ``NUMBA_CPU_NAME=generic``) gives none: the portable path is exact on
    every CPU, while an intrinsic of an instruction set the CPU lacks aborts LLVM."""
    features = getattr(context.codegen(), "_tm_features", None)
    if features is None:  # a numba without that attribute: the host's features
        from llvmlite import binding

        features = binding.get_host_cpu_features().flatten()
    return {f[1:] for f in features.split(",") if f.startswith("+")}


def compress_path(context):
    """Which compress-store :func:`_compress_store` compiles for the target of ``context`` (a
    numba target context): ``"avx512"``, ``"avx2"`` or ``"portable"``."""
    features = _target_features(context)
    return "avx512" if "avx512f" in features else "avx2" if "avx2" in features else "portable"


def _compress_lut(builder, twice):
    """[2^(8 / twice) x i64], internal constant: entry b holds, in byte t, the i32 lane index that
    left-packs the t-th of 8 i32 lanes, for the mask b of 8 / twice lanes of 32 * twice bits (an
    i64 lane is the i32 lanes 2p, 2p + 1; bytes past the packed lanes 0)."""
    lanes = 8 // twice
    name = f"lightprune.simd.compress_lut{lanes}"
    g = builder.module.globals.get(name)
    if g is None:
        at = ir.ArrayType(_I64, 1 << lanes)
        entries = []
        for b in range(1 << lanes):
            pos = [twice * p + h for p in range(lanes) if b >> p & 1 for h in range(twice)]
            entries.append(sum(q << (8 * t) for t, q in enumerate(pos)))
        g = ir.GlobalVariable(builder.module, at, name=name)
        g.global_constant = True
        g.linkage = "internal"
        g.initializer = ir.Constant(at, entries)
    return g


def _compress_store(builder, v, ptr, mask, context):
    """Store the lanes of ``v`` selected by ``mask`` to consecutive places from ``ptr`` (what
    ``llvm.masked.compressstore`` does), piece by piece, each piece left-packed in a register and
    written by a masked store of its first popcount lanes:

    - AVX-512F: 512-bit pieces, ``vpcompressd`` / ``vpcompressq`` without a memory operand (the
      memory form is microcoded on AMD Zen 4, about 2.5x slower for a whole block gather there);
    - AVX2: 256-bit pieces, ``vpermd`` by the lane indices of :func:`_compress_lut` (an i64 lane
      is two i32 lanes);
    - otherwise (other architectures, ``NUMBA_CPU_NAME=generic``): ``llvm.masked.compressstore``,
      which LLVM lowers for any target.

    An intrinsic of an instruction set the target lacks aborts LLVM ("Do not know how to split the
    result of this operator"), so the path is chosen from the target's features at compile time."""
    vt = v.type
    w = vt.element.width
    path = compress_path(context)
    if path == "avx512":
        per = min(vt.count, 512 // w)
        pt = ir.VectorType(vt.element, per)
        compress = _declare(builder, f"llvm.x86.avx512.mask.compress.v{per}i{w}", pt, [pt, pt, ir.VectorType(_I1, per)])
        ctpop = _declare(builder, f"llvm.ctpop.i{per}", ir.IntType(per), [ir.IntType(per)])
        zero = _const_vec(pt, [0] * per)

        def pack(piece, lanes):
            pm = mask if per == vt.count else _shuffle(builder, mask, mask, lanes)
            count = builder.call(ctpop, [builder.bitcast(pm, ir.IntType(per))])
            return builder.call(compress, [piece, zero, pm]), count
    elif path == "avx2":
        # each piece's mask bits by a movmsk of the mask widened to the lanes' width: a <4 x i1> or
        # <8 x i1> shuffled out of the mask and bitcast to an integer costs AVX2 a vpextrb per lane
        per = 256 // w
        assert vt.count % per == 0, "the compress-stores here write whole 256-bit pieces"
        pt = ir.VectorType(vt.element, per)
        v8 = ir.VectorType(_I32, 8)
        permd = _declare(builder, "llvm.x86.avx2.permd", v8, [v8, v8])
        lut = _compress_lut(builder, w // 32)
        ft = ir.VectorType(ir.FloatType() if w == 32 else ir.DoubleType(), per)
        movmsk = _declare(builder, f"llvm.x86.avx.movmsk.{'ps' if w == 32 else 'pd'}.256", _I32, [ft])
        ctpop = _declare(builder, "llvm.ctpop.i32", _I32, [_I32])
        wide = builder.sext(mask, vt)  # all ones in the selected lanes

        def pack(piece, lanes):
            mp = wide if per == vt.count else _shuffle(builder, wide, wide, lanes)
            bits = builder.call(movmsk, [builder.bitcast(mp, ft)])
            idx = builder.load(builder.gep(lut, [ir.Constant(_I64, 0), builder.zext(bits, _I64)]))
            idx = builder.zext(builder.bitcast(idx, ir.VectorType(ir.IntType(8), 8)), v8)
            packed = builder.call(permd, [builder.bitcast(piece, v8) if w > 32 else piece, idx])
            return (builder.bitcast(packed, pt) if w > 32 else packed), builder.call(ctpop, [bits])
    else:
        mt = ir.VectorType(_I1, vt.count)
        fn = _declare(builder, f"llvm.masked.compressstore.v{vt.count}i{w}", ir.VoidType(), [vt, ptr.type, mt])
        builder.call(fn, [v, ptr, mask])
        return
    off = ir.Constant(_I64, 0)
    for p0 in range(0, vt.count, per):
        lanes = list(range(p0, p0 + per))
        packed, count = pack(v if per == vt.count else _shuffle(builder, v, v, lanes), lanes)
        k = builder.zext(count, _I64)
        _masked_store(builder, packed, builder.gep(ptr, [off]), _lane_mask(builder, k, per))
        off = builder.add(off, k)


def _masked_gather(builder, ptrs, mask, passthru):
    vt = passthru.type
    name = f"llvm.masked.gather.v{vt.count}i{vt.element.width}.v{vt.count}p0"
    fn = _declare(builder, name, vt, [ptrs.type, _I32, ir.VectorType(_I1, vt.count), vt])
    return builder.call(fn, [ptrs, ir.Constant(_I32, vt.element.width // 8), mask, passthru])


def _masked_store(builder, v, ptr, mask):
    vt = v.type
    name = f"llvm.masked.store.v{vt.count}i{vt.element.width}.p0"
    fn = _declare(builder, name, ir.VoidType(), [vt, ptr.type, _I32, ir.VectorType(_I1, vt.count)])
    builder.call(fn, [v, ptr, ir.Constant(_I32, vt.element.width // 8), mask])


@intrinsic
def collect_row_keys(typingctx, K, u, m, i, lo, hi, sh, msk, cw, cid, n, deg):
    """Append the edges of row ``i`` of map ``u`` (``m x m``, raw bits) whose weight's key lies in
    ``(lo, hi]`` and whose weight is carried by ``U[i, j]`` (``key(U[i, j]) > key(U[j, i])``, ties:
    ``i < j``; never j = i): keys to ``cw[n:]``, ids ``i << 16 | j`` to ``cid[n:]`` (int32), in
    increasing j; ``deg[i]`` and ``deg[j]`` (int64) count them. Returns the new ``n``. The column
    entries ``U[j, i]`` are gathered only for chunks of the row that hold an entry in range."""
    dt = K.dtype
    sig = types.int64(K, u, m, i, lo, hi, sh, msk, cw, cid, n, deg)

    def codegen(context, builder, sig, args):
        ary, u, m, i, lo, hi, sh, msk, cwa, cida, n, dega = _args(
            context, builder, sig, args, dt, (1, 2, 3, 10), (4, 5, 6, 7)
        )
        L, vt = _key_vector(dt)
        it = ir.VectorType(_I64, L)
        c = lambda x: ir.Constant(_I64, x)  # noqa: E731
        mm = builder.mul(m, m)
        unit = _ptr(context, builder, sig.args[0], ary, builder.mul(u, mm))
        row = builder.gep(unit, [builder.mul(i, m)])
        colbase = builder.gep(unit, [i])  # U[0, i]; U[j, i] = colbase + j * m
        cw_ptr = _ptr(context, builder, sig.args[8], cwa, c(0))
        cid_ptr = _ptr(context, builder, sig.args[9], cida, c(0))
        deg_ptr = _ptr(context, builder, sig.args[11], dega, c(0))
        lov = _splat(builder, lo, vt)
        hiv = _splat(builder, hi, vt)
        iv = _splat(builder, i, it)
        lanes = _const_vec(it, range(L))
        zero = _const_vec(vt, [0] * L)
        ptr_vt = ir.VectorType(colbase.type, L)
        colint = _splat(builder, builder.ptrtoint(colbase, _I64), it)
        stride = _splat(builder, builder.mul(m, c(dt.bitwidth // 8)), it)
        id_t = ir.IntType(32)

        def chunk(j0, lm, nn):
            """Columns j0 .. j0 + L - 1 (lanes in ``lm``); returns the new count."""
            body = builder.basic_block
            hit = builder.append_basic_block("col.hit")
            nxt = builder.append_basic_block("col.next")
            jv = builder.add(lanes, _splat(builder, j0, it))
            x = _key_vec(builder, _masked_load(builder, builder.gep(row, [j0]), lm, zero), sh, msk)
            inr = builder.and_(
                builder.and_(builder.icmp_signed(">", x, lov), builder.icmp_signed("<=", x, hiv)), lm
            )
            inr = builder.and_(inr, builder.icmp_signed("!=", jv, iv))
            any_in = builder.icmp_signed(
                "!=", builder.bitcast(inr, ir.IntType(L)), ir.Constant(ir.IntType(L), 0)
            )
            builder.cbranch(any_in, hit, nxt)

            builder.position_at_end(hit)
            ptrs = builder.inttoptr(builder.add(colint, builder.mul(jv, stride)), ptr_vt)
            y = _key_vec(builder, _masked_gather(builder, ptrs, inr, zero), sh, msk)
            tie_first = builder.and_(builder.icmp_signed("==", x, y), builder.icmp_signed("<", iv, jv))
            keep = builder.and_(inr, builder.or_(builder.icmp_signed(">", x, y), tie_first))
            ids = builder.trunc(
                builder.or_(builder.shl(iv, _splat(builder, c(16), it)), jv), ir.VectorType(id_t, L)
            )
            _compress_store(builder, x, builder.gep(cw_ptr, [nn]), keep, context)
            _compress_store(builder, ids, builder.gep(cid_ptr, [nn]), keep, context)
            kz = builder.zext(keep, it)
            dptr = builder.gep(deg_ptr, [j0])
            dv = _masked_load(builder, dptr, lm, _const_vec(it, [0] * L))
            _masked_store(builder, builder.add(dv, kz), dptr, lm)
            cnt = _reduce(builder, kz, "add")
            di = builder.gep(deg_ptr, [i])
            builder.store(builder.add(builder.load(di), cnt), di)
            n_hit = builder.add(nn, cnt)
            hit_end = builder.basic_block
            builder.branch(nxt)

            builder.position_at_end(nxt)
            n_next = builder.phi(_I64)
            n_next.add_incoming(nn, body)
            n_next.add_incoming(n_hit, hit_end)
            return n_next

        every = _const_vec(ir.VectorType(_I1, L), [1] * L)
        (nn,) = _chunk_loop(
            builder,
            m,
            L,
            [n],
            lambda j0, accs: [chunk(j0, every, accs[0])],
            lambda j0, rem, accs: [chunk(j0, _lane_mask(builder, rem, L), accs[0])],
        )
        return nn

    return sig, codegen


def _vmax(builder, a, b):
    return builder.select(builder.icmp_signed(">", a, b), a, b)


def _vmin(builder, a, b):
    return builder.select(builder.icmp_signed("<", a, b), a, b)


def _shuffle(builder, a, b, idx):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, len(idx)), idx))


def _bitonic_desc(builder, v):
    """Sort the lanes of the integer vector ``v`` (a power of two of them) by decreasing value: a
    bitonic network; each of its stages is a constant shuffle, a compare and two selects."""
    n = v.type.count
    k = 2
    while k <= n:
        j = k // 2
        while j >= 1:
            other = _shuffle(builder, v, v, [i ^ j for i in range(n)])
            gt = builder.icmp_signed(">", v, other)
            big = builder.select(gt, v, other)
            small = builder.select(gt, other, v)
            # lane i keeps the larger of its pair where its k-run is decreasing and it is the pair's
            # first lane, or the run is increasing and it is the second one
            first_big = [int(((i & k) == 0) == (i < i ^ j)) for i in range(n)]
            v = builder.select(ir.Constant(ir.VectorType(_I1, n), first_big), big, small)
            j //= 2
        k *= 2
    return v


SIMD_UNSUPPORTED = -5  # returned by the small-map intrinsics for int64 keys (float64 maps)


def _sort_store(builder, packed, n, cw_ptr, cid_ptr, context, dedupe=False):
    """Sort the 64-bit lanes ``key << 32 | id`` by decreasing value (the lanes past the first
    ``n`` hold the smallest value) and store the first ``n`` keys / ids to cw_ptr / cid_ptr;
    ``dedupe``: a lane equal to the one before it is left out (compress-stored). Returns the
    number stored (i64)."""
    q = packed.type
    L = q.count
    v = ir.VectorType(_I32, L)
    srt = _bitonic_desc(builder, packed)
    keys, ids = builder.trunc(builder.lshr(srt, _const_vec(q, [32] * L)), v), builder.trunc(srt, v)
    lm = _lane_mask(builder, n, L)
    if not dedupe:
        _masked_store(builder, keys, cw_ptr, lm)
        _masked_store(builder, ids, cid_ptr, lm)
        return n
    new = builder.icmp_signed("!=", srt, _shuffle(builder, srt, srt, [0] + list(range(L - 1))))
    keep = builder.and_(lm, builder.or_(new, ir.Constant(ir.VectorType(_I1, L), [1] + [0] * (L - 1))))
    _compress_store(builder, keys, cw_ptr, keep, context)
    _compress_store(builder, ids, cid_ptr, keep, context)
    ctpop = _declare(builder, f"llvm.ctpop.i{L}", ir.IntType(L), [ir.IntType(L)])
    count = builder.call(ctpop, [builder.bitcast(keep, ir.IntType(L))])
    return builder.trunc(count, _I64) if L > 64 else builder.zext(count, _I64)


def _sort_buffer(builder, buf, n, widths, cw_ptr, cid_ptr, context, dedupe=False):
    """Sort the ``n`` packed ``key << 32 | id`` of ``buf`` (i64*) by decreasing value and store their
    keys / ids (:func:`_sort_store`): in the narrowest bitonic network of ``widths`` (increasing)
    that holds n. Returns the number stored (i64)."""
    stored = cgutils.alloca_once(builder, _I64)

    def sort(widths):
        if len(widths) == 1:
            q = ir.VectorType(_I64, widths[0])
            lm = _lane_mask(builder, n, widths[0])
            packed = _masked_load(builder, buf, lm, _const_vec(q, [-(2**63)] * widths[0]))
            builder.store(_sort_store(builder, packed, n, cw_ptr, cid_ptr, context, dedupe), stored)
            return
        with builder.if_else(builder.icmp_signed("<=", n, ir.Constant(_I64, widths[0]))) as (fits, wider):
            with fits:
                sort(widths[:1])
            with wider:
                sort(widths[1:])

    sort(widths)
    return builder.load(stored)


def _pack(builder, keys, ids):
    """64-bit lanes ``key << 32 | id``: ordered by key, then id."""
    q = ids.type
    return builder.or_(builder.shl(builder.sext(keys, q), _const_vec(q, [32] * q.count)), ids)


def _small_map_result(builder, gmin, gmax, kinf, n):
    """-3 if a key lies beyond those of +-inf (a NaN), else -1 for a constant map, else n."""
    low = builder.sub(builder.neg(kinf), ir.Constant(kinf.type, 1))
    nan = builder.or_(builder.icmp_signed(">", gmax, kinf), builder.icmp_signed("<", gmin, low))
    res = builder.select(builder.icmp_signed("==", gmin, gmax), ir.Constant(_I64, -1), n)
    return builder.select(nan, ir.Constant(_I64, -3), res)


@intrinsic
def eight_sorted_edges(typingctx, K, off, sh, msk, kinf, cw, cid):
    """The edges of an 8 x 8 map (raw int32 bits from flat offset ``off``) that are heavier than
    ``w_cone``, by decreasing key: keys to ``cw[:n]``, ids ``i << 16 | j`` (i < j) to ``cid[:n]``
    (ties by decreasing id). ``W[i, j] = max(U[i, j], U[j, i])``, ``w_cone = max_c min_{j != c}
    W[c, j]``. Returns n, -1 for a constant map, -3 for a map that holds a NaN (a key beyond
    ``kinf`` or below ``-kinf - 1``), :data:`SIMD_UNSUPPORTED` for int64 keys.

    The whole map is one 64-lane vector: its transpose is a shuffle, the row minima off the
    diagonal a butterfly of three shuffles, and the 28 edges are sorted as 64-bit
    ``key << 32 | id``: those above ``w_cone`` compress-stored, then a 16- or 32-lane bitonic network.
    """
    dt = K.dtype
    sig = types.int64(K, off, sh, msk, kinf, cw, cid)

    def codegen(context, builder, sig, args):
        if dt.bitwidth != 32:
            return ir.Constant(_I64, SIMD_UNSUPPORTED)
        ary, off, sh, msk, kinf, cwa, cida = _args(context, builder, sig, args, dt, (1,), (2, 3, 4))
        v64, v32, q32 = ir.VectorType(_I32, 64), ir.VectorType(_I32, 32), ir.VectorType(_I64, 32)
        base = _ptr(context, builder, sig.args[0], ary, off)
        k = _key_vec(builder, builder.load(builder.bitcast(base, v64.as_pointer()), align=4), sh, msk)
        gmax = _reduce(builder, k, "smax")
        gmin = _reduce(builder, k, "smin")
        w = _vmax(builder, k, _shuffle(builder, k, k, [(p % 8) * 8 + p // 8 for p in range(64)]))  # W
        # w_cone: the row minima off the diagonal (spread over each row's lanes), then their maximum
        diag = ir.Constant(ir.VectorType(_I1, 64), [int(p % 9 == 0) for p in range(64)])
        rm = builder.select(diag, _const_vec(v64, [2**31 - 1] * 64), w)
        for s in (4, 2, 1):
            rm = _vmin(builder, rm, _shuffle(builder, rm, rm, [p ^ s for p in range(64)]))
        w_cone = _reduce(builder, rm, "smax")
        pairs = [(i, j) for i in range(8) for j in range(i + 1, 8)]  # 28 edges, 4 pad lanes
        e = _shuffle(builder, w, w, [i * 8 + j for i, j in pairs] + [0] * 4)
        valid = ir.Constant(ir.VectorType(_I1, 32), [1] * 28 + [0] * 4)
        above = builder.and_(builder.icmp_signed(">", e, _splat(builder, w_cone, v32)), valid)
        packed = _pack(builder, e, _const_vec(q32, [(i << 16) | j for i, j in pairs] + [0] * 4))
        buf = cgutils.alloca_once(builder, _I64, size=32)
        _compress_store(builder, packed, buf, above, context)
        ctpop = _declare(builder, "llvm.ctpop.i32", _I32, [_I32])
        n = builder.zext(builder.call(ctpop, [builder.bitcast(above, _I32)]), _I64)
        zero = ir.Constant(_I64, 0)
        cw_ptr = _ptr(context, builder, sig.args[5], cwa, zero)
        _sort_buffer(builder, buf, n, (16, 32), cw_ptr, _ptr(context, builder, sig.args[6], cida, zero), context)
        return _small_map_result(builder, gmin, gmax, kinf, n)

    return sig, codegen


ROWS16 = 16 * 16 + 2  # entries of the ``wrows`` scratch of :func:`sorted_edges16`
SPLIT16 = 32  # :func:`sorted_edges16` with ``split``: the first part holds at most this many edges, if a bound allows


def _inside16(builder, m, i, cols):
    """<16 x i1>: the lanes j < m of row i of an m x m map, none if i >= m (``cols``: lanes j < m)."""
    b16 = ir.VectorType(_I1, 16)
    here = builder.icmp_signed("<", ir.Constant(_I64, i), m)
    return builder.and_(cols, builder.select(here, _const_vec(b16, [1] * 16), _const_vec(b16, [0] * 16)))


def _upper16(builder, inside, i):
    """<16 x i1>: the lanes of row i that hold an edge (i < j < m), from its ``inside`` mask."""
    return builder.and_(inside, ir.Constant(ir.VectorType(_I1, 16), [int(j > i) for j in range(16)]))


def _count_true(builder, masks):
    """Number of true lanes of the <16 x i1> masks (i64)."""
    ctpop = _declare(builder, "llvm.ctpop.i16", ir.IntType(16), [ir.IntType(16)])
    n = ir.Constant(_I64, 0)
    for k in masks:
        n = builder.add(n, builder.zext(builder.call(ctpop, [builder.bitcast(k, ir.IntType(16))]), _I64))
    return n


def _sorted_rows16(builder, context, W, keep, cw_ptr, cid_ptr):
    """The edges of the rows W[i] (16-lane key vectors, i < 15) where ``keep[i]``, as 64-bit
    ``key << 32 | i << 16 | j``, compress-stored and sorted by decreasing value (a 16-, 32-, 64- or
    128-lane bitonic network); keys to cw_ptr, ids to cid_ptr. Returns their number (i64)."""
    q16 = ir.VectorType(_I64, 16)
    buf = cgutils.alloca_once(builder, _I64, size=128)
    ctpop = _declare(builder, "llvm.ctpop.i16", ir.IntType(16), [ir.IntType(16)])
    n = ir.Constant(_I64, 0)
    for i in range(15):
        packed = _pack(builder, W[i], _const_vec(q16, [(i << 16) | j for j in range(16)]))
        _compress_store(builder, packed, builder.gep(buf, [n]), keep[i], context)
        count = builder.call(ctpop, [builder.bitcast(keep[i], ir.IntType(16))])
        n = builder.add(n, builder.zext(count, _I64))
    _sort_buffer(builder, buf, n, (16, 32, 64, 128), cw_ptr, cid_ptr, context)
    return n


@intrinsic
def sorted_edges16(typingctx, K, off, m, sh, msk, kinf, cw, cid, rkey, wrows, split):
    """The edges of an m x m map, m <= 16 (raw int32 bits from flat offset ``off``), that are
    heavier than ``w_cone`` (exact), by decreasing key: keys to ``cw[:n]``, ids ``i << 16 | j``
    (i < j) to ``cid[:n]`` (ties by decreasing id); ``rkey[c]`` = max over j of ``W[c, j]``, the
    diagonal included (an upper bound of row c's largest key). Returns n, -1 for a constant map,
    -3 for a map that holds a NaN, :data:`SIMD_UNSUPPORTED` for int64 keys.

    ``wrows`` (int32, :data:`ROWS16` entries) receives the rows of W (row i from ``16 i``, the
    lanes and rows past m the smallest key), ``w_cone`` (entry 256) and the bound ``t`` of the
    edges stored (entry 257). ``split`` false: ``t = w_cone``, every edge above w_cone is stored.
    ``split`` true and more than :data:`SPLIT16` of them: only the edges above ``t``, the smallest
    of the three smallest row maxima above which at most SPLIT16 edges lie (if none: the third;
    no bound that leaves no edge). The scan usually ends among them (random 14 x 14 maps: 98 % of
    their births lie among the first 16 edges of some 67), and sorting 32 edges rather than 128
    costs a fraction; :func:`sorted_rest16` sorts the rest (w_cone, t] when the scan needs them.

    A row per 16-lane vector (lanes and rows past m read nothing and hold the smallest key in W):
    the transpose in four rounds of two-source shuffles, the column minima of W off the diagonal
    (= its row minima) give ``w_cone``, each row's edges above it are compress-stored as 64-bit
    ``key << 32 | id``, then sorted in a 16-, 32-, 64- or 128-lane bitonic network.
    """
    dt = K.dtype
    sig = types.int64(K, off, m, sh, msk, kinf, cw, cid, rkey, wrows, split)

    def codegen(context, builder, sig, args):
        if dt.bitwidth != 32:
            return ir.Constant(_I64, SIMD_UNSUPPORTED)
        ary, off, m, sh, msk, kinf, cwa, cida, rka, wra, split = _args(
            context, builder, sig, args, dt, (1, 2, 10), (3, 4, 5)
        )
        v16, b16 = ir.VectorType(_I32, 16), ir.VectorType(_I1, 16)
        base = _ptr(context, builder, sig.args[0], ary, off)
        cols = _lane_mask(builder, m, 16)  # lanes j < m
        first = _splat(builder, builder.load(base), v16)  # masked-off lanes: the first entry
        smallest = _const_vec(v16, [-(2**31)] * 16)
        largest = _const_vec(v16, [2**31 - 1] * 16)
        rows, inside = [], []
        for i in range(16):
            lm = _inside16(builder, m, i, cols)
            row = builder.gep(base, [builder.mul(m, ir.Constant(_I64, i))])
            rows.append(_key_vec(builder, _masked_load(builder, row, lm, first), sh, msk))
            inside.append(lm)
        hi, lo = rows[0], rows[0]
        for r in rows[1:]:
            hi, lo = _vmax(builder, hi, r), _vmin(builder, lo, r)
        gmax, gmin = _reduce(builder, hi, "smax"), _reduce(builder, lo, "smin")
        padded = [builder.select(inside[i], rows[i], smallest) for i in range(16)]
        t = list(padded)
        for b in range(4):  # transpose: swap bit b of the row with bit b of the lane
            B = 1 << b
            for i in range(16):
                if not i & B:
                    a, c = t[i], t[i | B]
                    t[i] = _shuffle(builder, a, c, [j if j & B == 0 else 16 + (j ^ B) for j in range(16)])
                    t[i | B] = _shuffle(builder, a, c, [(j ^ B) if j & B == 0 else 16 + j for j in range(16)])
        W = [_vmax(builder, padded[i], t[i]) for i in range(16)]
        cmin, cmax = largest, smallest
        for i in range(16):
            off_diag = builder.and_(inside[i], ir.Constant(b16, [int(j != i) for j in range(16)]))
            cmin = _vmin(builder, cmin, builder.select(off_diag, W[i], largest))
            cmax = _vmax(builder, cmax, W[i])
        w_cone = _reduce(builder, builder.select(cols, cmin, smallest), "smax")
        zero = ir.Constant(_I64, 0)
        _masked_store(builder, cmax, _ptr(context, builder, sig.args[8], rka, zero), cols)
        wr = _ptr(context, builder, sig.args[9], wra, zero)
        for i in range(16):
            builder.store(W[i], builder.bitcast(builder.gep(wr, [ir.Constant(_I64, 16 * i)]), v16.as_pointer()), align=4)
        builder.store(w_cone, builder.gep(wr, [ir.Constant(_I64, 256)]))
        upper = [_upper16(builder, inside[i], i) for i in range(15)]

        def above(bound):
            s = _splat(builder, bound, v16)
            return [builder.and_(builder.icmp_signed(">", W[i], s), upper[i]) for i in range(15)]

        bound = cgutils.alloca_once_value(builder, w_cone)
        edges = builder.sdiv(builder.mul(m, builder.sub(m, ir.Constant(_I64, 1))), ir.Constant(_I64, 2))
        more = builder.icmp_signed(">", edges, ir.Constant(_I64, SPLIT16))
        with builder.if_then(builder.and_(builder.icmp_signed("!=", split, zero), more)):
            count = cgutils.alloca_once_value(builder, _count_true(builder, above(w_cone)))
            rmax = builder.select(cols, cmax, largest)  # the row maxima (rows past m: the largest)
            for _ in range(3):  # the next larger row maximum while more than SPLIT16 edges lie above
                with builder.if_then(builder.icmp_signed(">", builder.load(count), ir.Constant(_I64, SPLIT16))):
                    now = _splat(builder, builder.load(bound), v16)
                    nxt = _reduce(builder, builder.select(builder.icmp_signed(">", rmax, now), rmax, largest), "smin")
                    c = _count_true(builder, above(nxt))
                    some = builder.icmp_signed(">", c, zero)  # else keep the bound, and stop
                    builder.store(builder.select(some, nxt, builder.load(bound)), bound)
                    builder.store(builder.select(some, c, zero), count)
        t_split = builder.load(bound)
        builder.store(t_split, builder.gep(wr, [ir.Constant(_I64, 257)]))
        cw_ptr = _ptr(context, builder, sig.args[6], cwa, zero)
        cid_ptr = _ptr(context, builder, sig.args[7], cida, zero)
        n = _sorted_rows16(builder, context, W, above(t_split), cw_ptr, cid_ptr)
        return _small_map_result(builder, gmin, gmax, kinf, n)

    return sig, codegen


@intrinsic
def sorted_rest16(typingctx, wrows, m, cw, cid, n0):
    """After :func:`sorted_edges16` with ``split``: the edges whose key lies in (w_cone, t] (entries
    256 and 257 of ``wrows``), from the rows of W it stored, by decreasing key (ties by decreasing
    id): keys to ``cw[n0:]``, ids to ``cid[n0:]``. Returns their number (0 when t = w_cone), or
    :data:`SIMD_UNSUPPORTED` for int64 keys (``cw``)."""
    sig = types.int64(wrows, m, cw, cid, n0)

    def codegen(context, builder, sig, args):
        if sig.args[2].dtype.bitwidth != 32:  # int64 keys: sorted_edges16 stored nothing
            return ir.Constant(_I64, SIMD_UNSUPPORTED)
        wra, m, cwa, cida, n0 = _args(context, builder, sig, args, types.int32, (1, 4), ())
        v16 = ir.VectorType(_I32, 16)
        wr = _ptr(context, builder, sig.args[0], wra, ir.Constant(_I64, 0))
        lo = _splat(builder, builder.load(builder.gep(wr, [ir.Constant(_I64, 256)])), v16)
        hi = _splat(builder, builder.load(builder.gep(wr, [ir.Constant(_I64, 257)])), v16)
        cols = _lane_mask(builder, m, 16)
        W, keep = [], []
        for i in range(15):
            w = builder.load(builder.bitcast(builder.gep(wr, [ir.Constant(_I64, 16 * i)]), v16.as_pointer()), align=4)
            in_range = builder.and_(builder.icmp_signed(">", w, lo), builder.icmp_signed("<=", w, hi))
            W.append(w)
            keep.append(builder.and_(in_range, _upper16(builder, _inside16(builder, m, i, cols), i)))
        cw_ptr = _ptr(context, builder, sig.args[2], cwa, n0)
        return _sorted_rows16(builder, context, W, keep, cw_ptr, _ptr(context, builder, sig.args[3], cida, n0))

    return sig, codegen


PACKED = 256  # the largest block that :func:`sort_packed` sorts


@intrinsic
def load_flat(typingctx, K, off):
    """The entry of ``K`` at flat offset ``off`` (its C-contiguous data), whatever K's shape."""
    sig = K.dtype(K, off)

    def codegen(context, builder, sig, args):
        ary, off = _args(context, builder, sig, args, K.dtype, (1,), ())
        return builder.load(_ptr(context, builder, sig.args[0], ary, off))

    return sig, codegen


@intrinsic
def prefetch_flat(typingctx, K, off, n):
    """Prefetch (into the caches, for reading) the ``n`` entries of ``K`` from flat offset ``off``:
    one software prefetch per 64-byte line. Never faults (a prefetch is only a hint)."""
    sig = types.void(K, off, n)

    def codegen(context, builder, sig, args):
        ary, off, n = _args(context, builder, sig, args, K.dtype, (1, 2), ())
        ptr = _ptr(context, builder, sig.args[0], ary, off)
        fn = _declare(builder, "llvm.prefetch.p0", ir.VoidType(), [ptr.type, _I32, _I32, _I32])
        per_line = max(1, 64 // (K.dtype.bitwidth // 8))

        def step(j, accs):
            builder.call(fn, [builder.gep(ptr, [j]), ir.Constant(_I32, 0), ir.Constant(_I32, 3),
                              ir.Constant(_I32, 1)])
            return accs

        _chunk_loop(builder, n, per_line, [], step, lambda j, rem, accs: accs)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, _nrt=False, inline="always")
def pack_row_entries(K, off, m, i, lo, hi, sh, msk, buf, n):
    """Append to ``buf[n:]`` (int64) the entries ``U[i, j]``, j != i, of the row at flat offset
    ``off`` (raw int32 bits, ``m <= 64`` entries) whose key lies in ``(lo, hi]``, as 64-bit
    ``key << 32 | min(i, j) << 16 | max(i, j)`` in increasing j (an edge's two entries give the
    same id). Returns the new ``n``, or :data:`SIMD_UNSUPPORTED` for int64 keys.

    The entries in range come from one bit mask (:func:`row_bits_keys`) and are written one by one:
    a row of a block holds few of them, and a compress-store per 16-lane chunk cost about 2.5x more
    (AMD Zen 4, where the memory form of ``vpcompressq`` is slow)."""
    if K.itemsize != 4:
        return SIMD_UNSUPPORTED
    one = np.uint64(1)
    bits = row_bits_keys(K, off, m, lo, hi, sh, msk) & ~(one << np.uint64(i))
    while bits:
        j = lowest_bit(bits)
        b = np.int64(load_flat(K, off + j))
        k = b ^ ((b >> sh) & msk)  # the key (as _birth_numba._key), sign-extended to 64 bits
        k += k == -1
        buf[n] = (k << 32) | (min(i, j) << 16) | max(i, j)
        n += 1
        bits &= bits - one
    return n


@intrinsic
def sort_packed(typingctx, buf, n, cw, cid):
    """Sort the ``n <= PACKED`` packed ``key << 32 | id`` of ``buf`` (int64) by decreasing value,
    leave out repeats (the two entries of an edge with equal keys), store the keys to ``cw`` and the
    ids to ``cid`` (int32): a 16-, 32-, 64-, 128- or 256-lane bitonic network. Returns how many were
    stored, or :data:`SIMD_UNSUPPORTED` for int64 keys (``cw``)."""
    sig = types.int64(buf, n, cw, cid)

    def codegen(context, builder, sig, args):
        if sig.args[2].dtype.bitwidth != 32:
            return ir.Constant(_I64, SIMD_UNSUPPORTED)
        bufa, n, cwa, cida = _args(context, builder, sig, args, types.int32, (1,), ())
        zero = ir.Constant(_I64, 0)
        return _sort_buffer(
            builder,
            _ptr(context, builder, sig.args[0], bufa, zero),
            n,
            (16, 32, 64, 128, PACKED),
            _ptr(context, builder, sig.args[2], cwa, zero),
            _ptr(context, builder, sig.args[3], cida, zero),
            context,
            dedupe=True,
        )

    return sig, codegen
