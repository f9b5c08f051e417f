"""Accuracy recovery after a prune: BatchNorm recalibration, least-squares reconstruction,
knowledge distillation, and optimizer state carried over through the surgery.

Four independent services (``docs/recovery.md`` states their exact definitions):

- :func:`recalibrate_bn` — re-estimate every BatchNorm's running statistics (exact per-channel mean
  and unbiased variance over the given batches; under DDP combined over ranks by image counts).
- :func:`reconstruct` — refit the weights of every layer whose inputs were pruned so that its
  output matches the unpruned network's (ridge least squares on sampled positions, He et al. 2017
  channel pruning / ThiNet), layer by layer from the input side.
- :func:`distillation_loss` and :class:`Teacher` — Hinton distillation from a frozen copy of the
  network before pruning.
- :func:`index_maps`, :func:`snapshot_optimizer_state`, :func:`restore_optimizer_state` — the
  optimizer's per-element state (momentum, Adam moments) of the kept weights, carried over to the
  optimizer rebuilt on the pruned parameters.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from lightprune.recovery import recalibrate_bn
    >>> net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    >>> recalibrate_bn(net, [torch.randn(8, 3), torch.randn(4, 3)])
    12
    >>> int(net[1].num_batches_tracked), net.training
    (2, True)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import split_batch
from .errors import ConfigError, check_positive_int
from .evaluation import inference, model_device, progress

__all__ = [
    "BATCH_NORMS",
    "recalibrate_bn",
    "LayerFit",
    "reconstruct",
    "distillation_loss",
    "Teacher",
    "ParamState",
    "index_maps",
    "snapshot_optimizer_state",
    "restore_optimizer_state",
]

BATCH_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
"""The normalisation layers :func:`recalibrate_bn` re-estimates (lazy variants derive from these)."""


# --------------------------------------------------------------------------------------------------
# shared helpers: inputs of a batch, one forward with a readable shape error, DDP sums
# --------------------------------------------------------------------------------------------------
def _inputs(batch: object, keys: Sequence[str] | None) -> torch.Tensor:
    """The input tensor of a batch: a plain tensor, or what :func:`~lightprune.data.split_batch` reads."""
    if isinstance(batch, torch.Tensor):
        return batch
    return split_batch(batch, keys)[0]


def _stream(
    batches: Iterable[Any] | None, *, keys: Sequence[str] | None, max_batches: int | None, enabled: bool, desc: str
) -> Iterator[torch.Tensor]:
    """Input tensors of the first ``max_batches`` batches, behind the shared progress bar."""
    if batches is None or isinstance(batches, (str, bytes, torch.Tensor)) or not hasattr(batches, "__iter__"):
        raise ConfigError(
            f"batches={type(batches).__name__} is not allowed; give an iterable of batches: tensors, "
            "(inputs, labels) tuples or dict batches (a DataLoader, a list)"
        )
    total = None
    if hasattr(batches, "__len__"):
        try:
            total = len(batches)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    bar = progress(batches, enabled=enabled, desc=desc, total=total)
    try:
        for i, batch in enumerate(bar):
            if max_batches is not None and i >= max_batches:
                break
            yield _inputs(batch, keys)
    finally:
        bar.close()


def _expected_input(model: nn.Module) -> str:
    """What the first Conv/Linear (in registration order) expects, for error messages."""
    shapes = {nn.Conv1d: "(N, {}, L)", nn.Conv2d: "(N, {}, H, W)", nn.Conv3d: "(N, {}, D, H, W)"}
    for name, mod in model.named_modules():
        for kind, shape in shapes.items():
            if isinstance(mod, kind):
                return f"its first layer {name!r} ({type(mod).__name__}) expects inputs of shape {shape.format(mod.in_channels)}"
        if isinstance(mod, nn.Linear):
            return f"its first layer {name!r} (Linear) expects inputs of shape (..., {mod.in_features})"
    return "it has no Conv/Linear layer to say what it expects"


class _Stop(Exception):
    """Raised by a hook to end a forward pass once everything needed is captured."""


def _forward(model: nn.Module, x: torch.Tensor) -> None:
    """``model(x)``; a forward that fails on the inputs' shape becomes a :class:`ConfigError`."""
    try:
        model(x)
    except _Stop:
        pass
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"batches: inputs of shape {tuple(x.shape)} do not fit the model: {_expected_input(model)} "
            f"(the forward pass failed with: {first})"
        ) from None


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the ranks of the default process group in place (a no-op in one process)."""
    if _distributed():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


# --------------------------------------------------------------------------------------------------
# 1. BatchNorm recalibration
# --------------------------------------------------------------------------------------------------
def _bn_update(
    x: torch.Tensor, s1: torch.Tensor | None, s2: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel running sums (channel dim 1) of ``x`` and ``x**2`` in float64, and the element
    count per channel.

    Example::

        >>> s1, s2, n = _bn_update(torch.tensor([[1.0, 2.0], [3.0, 6.0]]), None, None)
        >>> s1.tolist(), s2.tolist(), n
        ([4.0, 8.0], [10.0, 40.0], 2)
    """
    dims = [0, *range(2, x.ndim)]
    xd = x.detach().double()
    a, b = xd.sum(dims), (xd * xd).sum(dims)
    return (a if s1 is None else s1 + a), (b if s2 is None else s2 + b), x.numel() // x.shape[1]


def _bn_compute(s1: torch.Tensor, s2: torch.Tensor, n: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance from the sums: ``mean = S1/n``, ``E[x²] = S2/n``,
    ``var = (E[x²] − mean²) · n/(n − 1)`` (BatchNorm's ``running_var`` convention).

    Example::

        >>> m, v = _bn_compute(torch.tensor([4.0]), torch.tensor([10.0]), 2)
        >>> m.tolist(), v.tolist()
        ([2.0], [2.0])
    """
    mean = s1 / n
    biased = (s2 / n - mean * mean).clamp_min(0)
    return mean, biased * (n / (n - 1)) if n > 1 else biased


def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    max_batches: int | None = None,
    keys: Sequence[str] | None = None,
    progress: bool = False,
) -> int:
    """Re-estimate the running statistics of every BatchNorm from ``batches`` (forward only).

    For every ``BatchNorm1d/2d/3d`` and ``SyncBatchNorm`` that tracks running statistics, the
    statistics are replaced by the exact per-channel mean and unbiased variance of its inputs over
    all images of the pass (the limit of a cumulative average, ``momentum=None``, weighted per
    element rather than per batch). During the pass each such BatchNorm normalises with the current
    batch's statistics, exactly as in training (so later layers see what they see in training), while
    the rest of the network runs in eval mode (dropout off) without gradients. SyncBatchNorm
    normalises with its local batch only: no collective per batch, so ranks may hold different numbers
    of batches. Nothing is written until the pass has finished; afterwards every module is in its
    previous training mode, and ``momentum`` is never touched. ``num_batches_tracked`` becomes the
    number of batches (summed over ranks). A BatchNorm the forward pass never reaches is left as it is.

    Under an initialised ``torch.distributed`` group with more than one process, the per-channel
    sums of ``x`` and ``x²`` and the counts are summed over ranks (one ``all_reduce``), so every rank
    ends with the same statistics: those of one pass over the union of the shards. Every rank must
    call it (a rank with no batch contributes nothing).

    Args:
        model: the network, modified in place.
        batches: an iterable of input tensors, ``(inputs, labels, ...)`` tuples or dict batches
            (:func:`~lightprune.data.split_batch`); iterated once.
        max_batches: use only the first ``max_batches`` batches (default: all).
        keys: input and label keys of dict batches, default ``("image", "label")``.
        progress: show a progress bar.

    Returns:
        The number of images the statistics were estimated from (summed over ranks); 0 when the model
        has no BatchNorm with running statistics (it is then not run at all).

    Raises:
        ConfigError: ``batches`` is not an iterable of batches or holds no image; ``max_batches`` is
            not a positive integer; the inputs' shape does not fit the model (the message names the
            shape seen and what the first layer expects); a batch has a single value per channel.
    """
    if max_batches is not None:
        check_positive_int("max_batches", max_batches)
    norms = [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, BATCH_NORMS) and m.track_running_stats and m.running_mean is not None
    ]
    if not norms:
        return 0
    sums: dict[str, list[Any]] = {name: [None, None, 0] for name, _ in norms}

    def hook(mod, args, _out, _name):
        x = args[0]
        try:
            y = F.batch_norm(x, None, None, mod.weight, mod.bias, True, 0.0, mod.eps)
        except ValueError as err:  # "Expected more than 1 value per channel when training"
            raise ConfigError(f"recalibrate_bn: BatchNorm {_name!r} got inputs of shape {tuple(x.shape)}: {err}") from None
        s = sums[_name]
        s[0], s[1], n = _bn_update(x, s[0], s[1])
        s[2] += n
        return y

    handles = [m.register_forward_hook(lambda mod, a, o, _n=name: hook(mod, a, o, _n)) for name, m in norms]
    device = model_device(model)
    images = n_batches = 0
    try:
        with inference(model):
            for x in _stream(batches, keys=keys, max_batches=max_batches, enabled=progress, desc="recalibrating BatchNorm"):
                if x.shape[0] == 0:
                    continue
                _forward(model, x.to(device))
                images += x.shape[0]
                n_batches += 1
    finally:
        for h in handles:
            h.remove()

    # one flat float64 vector: [images, batches, then per norm: count, S1 (C), S2 (C)]
    parts: list[torch.Tensor] = [torch.tensor([images, n_batches], dtype=torch.float64, device=device)]
    for name, m in norms:
        s1, s2, n = sums[name]
        c = m.running_mean.numel()
        zeros = torch.zeros(c, dtype=torch.float64, device=device)
        parts += [torch.tensor([n], dtype=torch.float64, device=device),
                  zeros if s1 is None else s1.to(device), zeros if s2 is None else s2.to(device)]
    flat = _all_reduce_sum(torch.cat(parts))
    images, n_batches = int(flat[0]), int(flat[1])
    if images == 0:
        raise ConfigError("recalibrate_bn: batches holds no image" + (" on any rank" if _distributed() else ""))
    offset = 2
    with torch.no_grad():
        for _, m in norms:
            c = m.running_mean.numel()
            n = float(flat[offset])
            s1, s2 = flat[offset + 1 : offset + 1 + c], flat[offset + 1 + c : offset + 1 + 2 * c]
            offset += 1 + 2 * c
            if n == 0:  # not run by the forward pass (an unused branch): left as it is
                continue
            mean, var = _bn_compute(s1, s2, n)
            m.running_mean.copy_(mean.to(m.running_mean))
            m.running_var.copy_(var.to(m.running_var))
            if m.num_batches_tracked is not None:
                m.num_batches_tracked.fill_(n_batches)
    return images


# --------------------------------------------------------------------------------------------------
# 2. least-squares reconstruction
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerFit:
    """What :func:`reconstruct` did to one layer.

    Attributes:
        before: relative output error ``‖Y − Ŷ‖_F / ‖Y‖_F`` of the pruned layer with its weights as
            they were when its turn came (earlier layers already refit), on the sampled rows.
        after: the same with the refit weights (and bias).
        rows: number of sampled rows (image x position) the fit used, summed over ranks.
        inputs: number of input columns of the fit (``C_in·kh·kw``, plus 1 with an intercept).
        intercept: where the fitted constant went: ``"bias"``, ``"norm"`` (folded into the running mean
            of the BatchNorm right after a bias-free layer) or ``"none"`` (not fit).
    """

    before: float
    after: float
    rows: int
    inputs: int
    intercept: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _padded(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The conv's input with its padding applied explicitly (zeros or its ``padding_mode``)."""
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    if isinstance(conv.padding, str):  # "valid" / "same" (the extra row/column of an odd total goes last)
        th, tw = (0, 0) if conv.padding == "valid" else (dh * (kh - 1), dw * (kw - 1))
        pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    else:
        ph, pw = conv.padding
        pads = (pw, pw, ph, ph)
    if not any(pads):
        return x
    return F.pad(x, pads, mode="constant" if conv.padding_mode == "zeros" else conv.padding_mode)


def _patch_rows(conv: nn.Conv2d, xp: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """Input patches of ``conv`` as rows ``(N·k, C_in·kh·kw)``, columns in ``weight.view(C_out, -1)``
    order, at the flat output positions ``idx`` ``(N, k)`` of each image (``F.unfold`` of every
    position when None). ``xp`` is the padded input (:func:`_padded`). Only the sampled patches are
    materialised.

    Example::

        >>> conv = nn.Conv2d(2, 1, 3, stride=2)
        >>> xp = torch.randn(1, 2, 7, 7)
        >>> every = _patch_rows(conv, xp, None)  # 3x3 output positions
        >>> torch.equal(_patch_rows(conv, xp, torch.tensor([[4, 0]])), every[[4, 0]])
        True
    """
    if idx is None:
        cols = F.unfold(xp, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)  # (N, D, P)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    n, c, hp, wp = xp.shape
    (kh, kw), (dh, dw), (sh, sw) = conv.kernel_size, conv.dilation, conv.stride
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    top, left = (idx // wo) * sh, (idx % wo) * sw  # (N, k) corner of each patch
    rows = top[..., None, None] + dh * torch.arange(kh, device=idx.device)[:, None]  # (N, k, kh, 1)
    cols = left[..., None, None] + dw * torch.arange(kw, device=idx.device)[None, :]  # (N, k, 1, kw)
    flat = (rows * wp + cols).reshape(n, 1, -1).expand(n, c, -1)  # (N, C, k·kh·kw)
    patches = xp.reshape(n, c, hp * wp).gather(2, flat)
    k = idx.shape[1]
    return patches.view(n, c, k, kh * kw).permute(0, 2, 1, 3).reshape(n * k, c * kh * kw)


def _grid_rows(t: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """``(N, F, P)`` -> rows ``(N·k, F)`` at the positions ``idx`` ``(N, k)`` (every position when None)."""
    if idx is not None:
        t = t.gather(2, idx.unsqueeze(1).expand(-1, t.shape[1], -1))
    return t.transpose(1, 2).reshape(-1, t.shape[1])


def _positions(n: int, p: int, k: int | None, seed: int, device: torch.device) -> torch.Tensor | None:
    """``k`` distinct positions out of ``p`` for each of ``n`` images (None = all), seeded."""
    if k is None or k >= p:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, p, generator=g).argsort(dim=1)[:, :k].to(device)


def _draw_seed(seed: int, layer: int, batch: int, call: int) -> int:
    """Seed of the position draw of one layer, batch and call (deterministic, 63 bits)."""
    return (((seed * 1_000_003 + layer) * 1_000_033 + batch) * 1_000_037 + call) % (2**63 - 1)


def _layer_rows(
    layer: nn.Module, x: torch.Tensor, y: torch.Tensor, positions: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares rows of one call: the pruned layer's input ``x`` and the original layer's
    output ``y`` at the same (sampled) positions, as ``(rows, inputs)`` and ``(rows, outputs)``."""
    if isinstance(layer, nn.Conv2d):
        yp = y.flatten(2)  # (N, C_out, P)
        idx = _positions(yp.shape[0], yp.shape[2], positions, seed, y.device)
        return _patch_rows(layer, _padded(layer, x), None if idx is None else idx.to(x.device)), _grid_rows(yp, idx)
    xp = x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2)  # Linear on (N, ..., F): (N, F, T)
    yp = y.reshape(y.shape[0], -1, y.shape[-1]).transpose(1, 2)
    idx = _positions(xp.shape[0], xp.shape[2], positions, seed, x.device)
    return _grid_rows(xp, idx), _grid_rows(yp, None if idx is None else idx.to(y.device))


class _NormalEquations:
    """``XᵀX``, ``XᵀY``, ``‖Y‖²_F`` and the row count of one least-squares problem, accumulated in
    float64 batch by batch (a column of ones appended to ``X`` when ``intercept``); the sums reduce
    over ranks."""

    def __init__(self, inputs: int, outputs: int, intercept: bool, device: torch.device) -> None:
        d = inputs + intercept
        self.intercept = intercept
        self.gram = torch.zeros(d, d, dtype=torch.float64, device=device)
        self.rhs = torch.zeros(d, outputs, dtype=torch.float64, device=device)
        self.yy = torch.zeros((), dtype=torch.float64, device=device)
        self.rows = 0

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.to(self.gram.device, torch.float64), y.to(self.gram.device, torch.float64)
        if self.intercept:
            x = torch.cat([x, x.new_ones(x.shape[0], 1)], 1)
        self.gram += x.t() @ x
        self.rhs += x.t() @ y
        self.yy += (y * y).sum()
        self.rows += x.shape[0]

    def reduce(self) -> None:
        """Sum over the ranks of the default process group (one ``all_reduce``; no-op in one process)."""
        if not _distributed():
            return
        g, r = self.gram.numel(), self.rhs.numel()
        rows = torch.tensor([self.rows], dtype=torch.float64, device=self.gram.device)
        flat = _all_reduce_sum(torch.cat([self.gram.reshape(-1), self.rhs.reshape(-1), self.yy.reshape(1), rows]))
        self.gram, self.rhs = flat[:g].view_as(self.gram), flat[g : g + r].view_as(self.rhs)
        self.yy, self.rows = flat[g + r], int(flat[g + r + 1])


def _solve(gram: torch.Tensor, rhs: torch.Tensor, ridge: float, n_weights: int) -> torch.Tensor:
    """``(G + λ·s·D) Θ = B``, ``s`` the mean diagonal of ``G`` over the weight columns, ``D`` = 1 on
    the weight columns and 0 on the intercept; minimum-norm least squares when singular.

    Example::

        >>> g, b = 4 * torch.eye(2, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64)
        >>> [round(v, 9) for v in _solve(g, b, 1.0, 2).flatten().tolist()]  # (4 + 1·4)·θ = 1
        [0.125, 0.125]
    """
    a = gram.clone()
    if ridge > 0:
        diag = torch.diagonal(a)
        diag[:n_weights] += ridge * diag[:n_weights].mean().clamp_min(torch.finfo(a.dtype).tiny)
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, chol)
    return torch.linalg.lstsq(a.cpu(), rhs.cpu(), driver="gelsd").solution.to(rhs.device)


def _rel_error(theta: torch.Tensor, eq: _NormalEquations) -> float:
    """``‖Y − XΘ‖_F / ‖Y‖_F`` from the normal equations (no second pass over the data)."""
    err = eq.yy - 2 * (theta * eq.rhs).sum() + (theta * (eq.gram @ theta)).sum()
    return float((err.clamp_min(0) / eq.yy.clamp_min(torch.finfo(eq.yy.dtype).tiny)).sqrt())


def _theta_of(layer: nn.Module, intercept: str) -> torch.Tensor:
    """The layer's current weight (and bias, or a zero intercept) as the ``(inputs, outputs)`` unknowns."""
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1).t().double()
    if intercept == "bias":
        return torch.cat([w, layer.bias.detach().double().unsqueeze(0)])
    if intercept == "norm":
        return torch.cat([w, w.new_zeros(1, w.shape[1])])
    return w


def _out_map(name: str, pruned_out: int, original_out: int, plan: Any) -> torch.Tensor | None:
    """Original output channels the pruned layer kept (None: all of them, in order)."""
    if pruned_out == original_out:
        return None
    keep = None if plan is None else plan.keep.get(name)
    if keep is None:
        raise ConfigError(
            f"reconstruct: layer {name!r} has {pruned_out} outputs in pruned and {original_out} in original; "
            "pass plan= (the Plan that pruned it) so the kept outputs are known"
        )
    if len(keep) != pruned_out:
        raise ConfigError(f"reconstruct: the plan keeps {len(keep)} outputs of {name!r}, the pruned layer has {pruned_out}")
    return torch.as_tensor(keep, dtype=torch.long)


def _fittable(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.groups == 1) or isinstance(m, nn.Linear)


def _n_in(m: nn.Module) -> int:
    return m.in_channels if isinstance(m, nn.Conv2d) else m.in_features


def _n_out(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def _refit_layers(
    pruned: nn.Module, original: nn.Module, layers: Sequence[str] | None
) -> list[str]:
    """The layers to refit: those named (checked) or every Conv2d/Linear whose inputs were reduced."""
    p_mods, o_mods = dict(pruned.named_modules()), dict(original.named_modules())
    if layers is None:
        return [n for n, m in p_mods.items()
                if _fittable(m) and type(o_mods.get(n)) is type(m) and _n_in(m) < _n_in(o_mods[n])]
    layers = [layers] if isinstance(layers, str) else list(layers)
    for name in layers:
        if name not in p_mods or name not in o_mods:
            where = "pruned" if name not in p_mods else "original"
            raise ConfigError(f"layers contains {name!r}, which the {where} network does not have")
        pm, om = p_mods[name], o_mods[name]
        if not _fittable(pm) or type(pm) is not type(om):
            raise ConfigError(f"layers contains {name!r} ({type(pm).__name__}); allowed: Conv2d with groups=1 and Linear")
        if _n_in(pm) >= _n_in(om):
            raise ConfigError(
                f"layers contains {name!r}, whose inputs were not reduced ({_n_in(pm)} in pruned, {_n_in(om)} in original)"
            )
    return layers


def _accumulate(
    pruned: nn.Module, original: nn.Module, name: str, layer_index: int, calls: int, eq: _NormalEquations,
    out_map: torch.Tensor | None, batches: Iterable[Any], *, positions: int | None, seed: int,
    keys: Sequence[str] | None, max_batches: int | None, progress: bool,
) -> None:
    """Stream the batches through both networks and add the rows of every call of layer ``name`` to
    ``eq``: the pruned network's forward stops right before its layer's last call (only its inputs are
    needed), the original's right after its layer's last call. Both must be in inference mode."""
    pm, om = pruned.get_submodule(name), original.get_submodule(name)
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []

    def grab(store: list[torch.Tensor], value: torch.Tensor) -> None:
        store.append(value.detach())
        if len(store) == calls:
            raise _Stop  # nothing after this layer is needed

    handles = [pm.register_forward_pre_hook(lambda m, a: grab(xs, a[0])),
               om.register_forward_hook(lambda m, a, o: grab(ys, o))]
    p_dev, o_dev = model_device(pruned), model_device(original)
    try:
        stream = _stream(batches, keys=keys, max_batches=max_batches, enabled=progress, desc=f"reconstructing {name}")
        for bi, x in enumerate(stream):
            if x.shape[0] == 0:
                continue
            xs.clear()
            ys.clear()
            _forward(original, x.to(o_dev))
            _forward(pruned, x.to(p_dev))
            for ci, (xin, yout) in enumerate(zip(xs, ys, strict=True)):
                xr, yr = _layer_rows(pm, xin, yout.to(xin.device), positions, _draw_seed(seed, layer_index, bi, ci))
                eq.update(xr, yr if out_map is None else yr[:, out_map.to(yr.device)])
    finally:
        xs.clear()
        ys.clear()
        for h in handles:
            h.remove()


def reconstruct(
    pruned: nn.Module,
    original: nn.Module,
    batches: Iterable[Any],
    *,
    plan: Any = None,
    layers: Sequence[str] | None = None,
    ridge: float = 1e-3,
    positions: int | None = 256,
    max_batches: int | None = None,
    seed: int = 0,
    keys: Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, LayerFit]:
    """Refit every layer whose inputs were pruned so that it reproduces the unpruned layer's output.

    Least-squares reconstruction (He et al. 2017, *Channel pruning for accelerating very deep neural
    networks*; Luo et al. 2017, ThiNet). For every ``Conv2d`` with ``groups == 1`` and every
    ``Linear`` of ``pruned`` with fewer inputs than the module of the same name in ``original``, in
    execution order from the input side: the batches are streamed through both networks (eval mode,
    no gradients, each forward stopped once the layer has run); the rows of ``X`` are the pruned
    layer's inputs (a conv's ``F.unfold`` patches at ``positions`` output positions per image, drawn
    at random without replacement, seeded by ``seed``, the layer and the batch) and the rows of
    ``Y`` the original layer's output (before any norm or activation) at the same positions,
    restricted to the outputs the pruned layer kept. ``XᵀX`` and ``XᵀY`` (float64) are accumulated
    batch by batch, so only one batch of activations is held at a time, and the ridge system

        ``(XᵀX + λ·s·D) Θ = XᵀY``,  ``s = mean of the diagonal of XᵀX over the weight columns``

    is solved (``λ = ridge``; ``D`` is 1 on the weight columns and 0 on the intercept, which is not
    penalised; ``ridge=0`` is plain least squares, minimum-norm when ``XᵀX`` is singular). The
    scaling makes ``ridge`` independent of the activations' magnitude. An intercept column of ones
    is fit when the layer has a bias (it becomes the bias) or when a BatchNorm with running statistics
    follows a bias-free layer (it is folded into that norm: ``running_mean −= intercept``, exact in eval
    mode); otherwise no intercept is fit. A layer refit earlier changes what later layers receive, so
    each later ``X`` comes from the already reconstructed network. Under an initialised
    ``torch.distributed`` group the Gram matrices are summed over ranks, so every rank writes the same
    weights. BatchNorm statistics are not updated: call :func:`recalibrate_bn` afterwards.

    Args:
        pruned: the pruned network, modified in place.
        original: a copy of the network right before the prune (same module names); only read.
        batches: a re-iterable source of batches (tensors, ``(inputs, labels)`` tuples or dict batches:
            a list or a DataLoader); iterated once per refit layer plus once.
        plan: the :class:`~lightprune.planner.Plan` (or its ``to_dict()``) that pruned the network:
            tells which output channels a layer kept when its outputs were pruned as well. Needed
            whenever a refit layer lost outputs.
        layers: names of the layers to refit (default: every layer whose inputs were pruned).
        ridge: relative ridge ``λ >= 0``, default 1e-3.
        positions: sampled output positions per image for convs (and per leading position of a
            Linear applied to ``(N, ..., F)`` inputs), default 256; ``None`` = every position.
        max_batches: use only the first ``max_batches`` batches (default: all).
        seed: seed of the position draw, default 0.
        keys: input and label keys of dict batches, default ``("image", "label")``.
        progress: show a progress bar per layer.

    Returns:
        ``{layer: LayerFit}`` in the order the layers were refit: relative output error before and
        after, rows, input columns, where the intercept went.

    Raises:
        ConfigError: ``layers`` names a layer that does not exist in either network, is not a
            Conv2d (groups 1) / Linear, did not lose inputs, or does not run in the forward pass;
            a refit layer lost outputs and ``plan`` is missing; ``batches`` is empty or not
            re-iterable; ``ridge``, ``positions`` or ``max_batches`` out of range; the inputs do not fit.

    Example::

        >>> import copy, torch, lightprune as lp
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 2))
        >>> before = copy.deepcopy(net)
        >>> plan = lp.Plan({"0": torch.tensor([0, 1])}, {"0": 3}, [["0"]])  # drop hidden unit 2
        >>> x = torch.randn(64, 2)
        >>> _ = lp.prune(net, plan, x, measure_latency=False)
        >>> fit = reconstruct(net, before, [x], plan=plan, ridge=0.0)  # unit 2 was affine in units 0, 1
        >>> fit["1"].before > 0.01, fit["1"].after < 1e-6, torch.allclose(net(x), before(x), atol=1e-5)
        (True, True, True)
    """
    from .plan import Plan

    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0:
        raise ConfigError(f"ridge={ridge!r} is not allowed; it must be a number >= 0")
    if positions is not None:
        check_positive_int("positions", positions)
    if max_batches is not None:
        check_positive_int("max_batches", max_batches)
    if plan is not None and not isinstance(plan, Plan):
        plan = Plan.from_dict(plan)
    candidates = _refit_layers(pruned, original, layers)
    if hasattr(batches, "__iter__") and iter(batches) is batches:
        raise ConfigError(
            f"batches={type(batches).__name__} is not allowed: reconstruct iterates it once per layer; give a "
            "re-iterable source (a list or a DataLoader), not an iterator or generator"
        )
    gen = _stream(batches, keys=keys, max_batches=1, enabled=False, desc="")
    first = next(gen, None)
    gen.close()
    if first is None:
        raise ConfigError("reconstruct: batches holds no batch")

    # execution order and calls per forward, from the first batch
    p_mods, o_mods = dict(pruned.named_modules()), dict(original.named_modules())
    p_dev = model_device(pruned)
    calls: dict[str, int] = {}
    handles = [p_mods[n].register_forward_pre_hook(lambda m, a, _n=n: calls.__setitem__(_n, calls.get(_n, 0) + 1))
               for n in candidates]
    try:
        with inference(pruned):
            _forward(pruned, first.to(p_dev))
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in candidates if n not in calls]
    if missing and layers is not None:
        raise ConfigError(f"layers contains {missing[0]!r}, which does not run in the forward pass: it gets no data")
    order = list(calls)  # insertion order = order of the first calls
    norms: dict[str, nn.Module] = {}
    if any(p_mods[n].bias is None for n in order):  # a BatchNorm right after a bias-free layer takes the intercept
        from .collect import following_norms

        with inference(pruned):  # restores each module's own mode (the trace resets them all)
            found = following_norms(pruned, first[:1].to(p_dev))
        for n, norm_name in found.items():
            norm = p_mods.get(norm_name)
            if isinstance(norm, BATCH_NORMS) and norm.running_mean is not None:
                norms[n] = norm

    report: dict[str, LayerFit] = {}
    for li, name in enumerate(order):
        pm, om = p_mods[name], o_mods[name]
        out_map = _out_map(name, _n_out(pm), _n_out(om), plan)
        intercept = "bias" if pm.bias is not None else ("norm" if name in norms else "none")
        n_w = pm.weight[0].numel()
        eq = _NormalEquations(n_w, _n_out(pm), intercept != "none", p_dev)
        with inference(pruned), inference(original):
            _accumulate(pruned, original, name, li, calls[name], eq, out_map, batches, positions=positions,
                        seed=seed, keys=keys, max_batches=max_batches, progress=progress)
        eq.reduce()
        if eq.rows == 0:
            raise ConfigError(f"reconstruct: layer {name!r} received no image from batches")
        theta = _solve(eq.gram, eq.rhs, float(ridge), n_w)
        report[name] = LayerFit(_rel_error(_theta_of(pm, intercept), eq), _rel_error(theta, eq), eq.rows,
                                n_w + (intercept != "none"), intercept)
        with torch.no_grad():
            pm.weight.copy_(theta[:n_w].t().reshape(pm.weight.shape))
            if intercept == "bias":
                pm.bias.copy_(theta[n_w])
            elif intercept == "norm":
                norms[name].running_mean.sub_(theta[n_w].to(norms[name].running_mean))
    return report


# --------------------------------------------------------------------------------------------------
# 3. distillation
# --------------------------------------------------------------------------------------------------
def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    alpha: float = 0.5,
    temperature: float = 4.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Hinton et al. (2015) knowledge distillation:

        ``loss = (1 − α)·CE(z_s, y) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))``

    with the KL divergence averaged over the batch (``batchmean``) and no gradient through the
    teacher. ``T²`` keeps the soft term's gradient scale independent of ``T``.

    Args:
        student_logits: ``(N, K)`` logits of the network being trained.
        teacher_logits: ``(N, K)`` logits of the teacher (detached here).
        targets: ``(N,)`` class indices; may be None only when ``alpha == 1``.
        alpha: weight of the distillation term in ``[0, 1]``, default 0.5.
        temperature: softmax temperature ``T > 0``, default 4.0.

    Returns:
        ``(loss, {"ce": CE, "kd": T²·KL})``: the scalar loss and its two detached parts.

    Raises:
        ConfigError: the logits differ in shape or are not ``(N, K)``, ``targets`` does not match,
            ``alpha`` outside ``[0, 1]`` or ``temperature <= 0``.

    Example::

        >>> z = torch.tensor([[2.0, 0.0]])
        >>> loss, parts = distillation_loss(z, z, torch.tensor([0]), alpha=1.0)
        >>> float(loss), float(parts["kd"])
        (0.0, 0.0)
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ConfigError(f"alpha={alpha!r} is not allowed; it must be a number in [0, 1]")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ConfigError(f"temperature={temperature!r} is not allowed; it must be a number > 0")
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"distillation: student logits have shape {tuple(student_logits.shape)} but teacher logits "
            f"{tuple(teacher_logits.shape)}; the teacher must have the same outputs (classes) as the student"
        )
    if student_logits.ndim != 2:
        raise ConfigError(f"distillation: logits must be (batch, classes); got shape {tuple(student_logits.shape)}")
    t = float(temperature)
    log_s = F.log_softmax(student_logits / t, dim=1)
    log_t = F.log_softmax(teacher_logits.detach().to(student_logits.dtype) / t, dim=1)
    kd = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * (t * t)
    if targets is None:
        if alpha != 1:
            raise ConfigError(f"distillation: targets=None is allowed only with alpha=1; alpha={alpha!r}")
        ce = torch.zeros((), dtype=kd.dtype, device=kd.device)
    else:
        targets = torch.as_tensor(targets, device=student_logits.device).long()
        if targets.shape != student_logits.shape[:1]:
            raise ConfigError(
                f"distillation: targets have shape {tuple(targets.shape)}; expected ({student_logits.shape[0]},) class indices"
            )
        ce = F.cross_entropy(student_logits, targets)
    loss = (1 - alpha) * ce + alpha * kd if alpha < 1 else kd
    return loss, {"ce": ce.detach(), "kd": kd.detach()}


class Teacher:
    """A frozen network that gives distillation targets.

    The wrapped model has ``requires_grad=False`` everywhere and runs in eval mode under
    ``no_grad`` on every call. A ``Teacher`` is not an ``nn.Module``: kept as an attribute of a
    LightningModule it is not registered as a submodule, so it is not in the student's
    ``state_dict``, not seen by its optimizer, and not switched to training mode by ``.train()``.
    It moves to the device (and floating dtype) of the inputs it is given, so it follows the student.

    Args:
        model: the network to freeze; used as given (see :meth:`from_model` for a copy).

    Example::

        >>> t = Teacher.from_model(torch.nn.Linear(3, 2))
        >>> t(torch.zeros(4, 3)).shape, t.model.training
        (torch.Size([4, 2]), False)
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"Teacher: model={type(model).__name__} is not allowed; give an nn.Module")
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def from_model(cls, model: nn.Module) -> Teacher:
        """A teacher holding a deep copy of ``model`` (the student may then change freely)."""
        return cls(copy.deepcopy(model))

    @classmethod
    def from_state(cls, build: Callable[[], nn.Module], state_dict: Mapping[str, Any]) -> Teacher:
        """A teacher built by ``build()`` with ``state_dict`` loaded (strict).

        Raises:
            ConfigError: the state does not fit the built network.
        """
        model = build()
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as err:
            raise ConfigError(f"Teacher.from_state: the state_dict does not fit the built network: {err}") from None
        return cls(model)

    def to(self, *args: Any, **kwargs: Any) -> Teacher:
        """Move the wrapped model (``nn.Module.to`` arguments); returns self."""
        self.model.to(*args, **kwargs)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            if x.device != model_device(self.model):
                self.model.to(x.device)
            first = next(self.model.parameters(), None)
            if x.is_floating_point() and first is not None and first.is_floating_point() and first.dtype != x.dtype:
                self.model.to(x.dtype)
        self.model.eval()
        with torch.no_grad():
            return self.model(x)

    def __repr__(self) -> str:
        return f"Teacher({type(self.model).__name__})"


# --------------------------------------------------------------------------------------------------
# 4. optimizer state through a prune
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamState:
    """The optimizer state of one parameter before a prune, with the parameter's shape then."""

    shape: tuple[int, ...]
    state: dict[str, Any]


def index_maps(model: nn.Module, apply_prune: Callable[[nn.Module], Any]) -> dict[str, torch.Tensor]:
    """Which elements of each parameter survive a prune: ``{name: flat indices (long)}``.

    A deep copy of ``model`` is converted to float64 and every parameter is filled with its own flat
    indices (``arange(numel).view(shape)``, exact in float64 up to 2^53 elements); floating inputs of
    the copy's forward are cast to float64 by a hook, so ``apply_prune`` may run the copy on the
    real example inputs. ``apply_prune(copy)`` must prune the copy exactly as the real model will be
    pruned (e.g. ``lambda m: lp.prune(m, plan, x, measure_latency=False)``) and only select elements,
    not change them (no bias balancing). Each surviving parameter's values are then the flat indices,
    in the original parameter, of the elements it kept. Call it before pruning the real model.

    Args:
        model: the network before the prune (not modified).
        apply_prune: prunes the module it is given, in place.

    Returns:
        ``{parameter name: LongTensor of flat indices, in the pruned parameter's element order}``
        for every parameter present after the prune.

    Raises:
        ConfigError: ``apply_prune`` changed parameter values (they are no longer distinct indices of
            the original parameter) or added a parameter.

    Example::

        >>> net = torch.nn.Linear(3, 2)
        >>> def drop_input_1(m):
        ...     m.weight = torch.nn.Parameter(m.weight[:, [0, 2]])
        >>> index_maps(net, drop_input_1)["weight"].tolist()
        [0, 2, 3, 5]
    """
    twin = copy.deepcopy(model).double()
    numel = {}
    with torch.no_grad():
        for name, p in twin.named_parameters():
            p.copy_(torch.arange(p.numel(), dtype=torch.float64, device=p.device).view(p.shape))
            numel[name] = p.numel()

    def to_double(_m, args, kwargs):
        cast = lambda a: a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a  # noqa: E731
        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    twin.register_forward_pre_hook(to_double, with_kwargs=True)
    apply_prune(twin)
    maps: dict[str, torch.Tensor] = {}
    for name, p in twin.named_parameters():
        if name not in numel:
            raise ConfigError(f"index_maps: apply_prune added parameter {name!r}; it may only remove elements")
        v = p.detach().reshape(-1)
        idx = v.round().long()
        if (
            not torch.equal(v, idx.double())
            or (idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel[name]))
            or idx.unique().numel() != idx.numel()
        ):
            raise ConfigError(
                f"index_maps: after apply_prune, parameter {name!r} holds values that are not distinct element indices "
                "of the original; apply_prune may only remove elements (prune without bias balancing)"
            )
        maps[name] = idx.cpu()
    return maps


def snapshot_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, ParamState]:
    """The optimizer's per-parameter state keyed by parameter name, with tensors cloned (take it
    before the prune; the surgery may replace the parameter objects).

    Raises:
        ConfigError: the optimizer holds state for a tensor that is not a parameter of ``model``.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    snap: dict[str, ParamState] = {}
    for p, state in optimizer.state.items():
        if id(p) not in names:
            raise ConfigError(
                f"snapshot_optimizer_state: the optimizer holds state for a tensor of shape {tuple(p.shape)} "
                "that is not a parameter of the model"
            )
        snap[names[id(p)]] = ParamState(
            tuple(p.shape), {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in state.items()}
        )
    return snap


def restore_optimizer_state(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    snapshot: Mapping[str, ParamState],
    maps: Mapping[str, torch.Tensor],
) -> list[str]:
    """Load the snapshot into an optimizer rebuilt on the pruned parameters, kept elements only.

    For every parameter of ``model`` that the optimizer holds and the snapshot has state for, each
    state tensor with the old parameter's shape (SGD ``momentum_buffer``, Adam/AdamW ``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq``, ...) becomes ``old.reshape(-1)[map].view(new_shape)``; 0-dim
    tensors (``step``) and non-tensor values are copied as they are.

    Args:
        optimizer: the new optimizer, over (some of) the pruned model's parameters.
        model: the pruned model.
        snapshot: :func:`snapshot_optimizer_state` of the optimizer before the prune.
        maps: :func:`index_maps` of the prune.

    Returns:
        Names of the parameters whose state was restored.

    Raises:
        ConfigError: a parameter has no index map, its map does not fit its shape, or a state tensor
            is neither 0-dim nor of the old parameter's shape (e.g. factored Adafactor states).
    """
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    done: list[str] = []
    for name, p in model.named_parameters():
        if id(p) not in held or name not in snapshot:
            continue
        entry = snapshot[name]
        if name not in maps:
            raise ConfigError(f"restore_optimizer_state: no index map for parameter {name!r}; maps come from index_maps()")
        idx = maps[name]
        if idx.numel() != p.numel():
            raise ConfigError(
                f"restore_optimizer_state: the map of {name!r} has {idx.numel()} elements, the parameter has shape "
                f"{tuple(p.shape)}; the maps must come from the same prune"
            )
        new: dict[str, Any] = {}
        for key, v in entry.state.items():
            if not isinstance(v, torch.Tensor) or v.ndim == 0:
                new[key] = v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            elif tuple(v.shape) == tuple(entry.shape):
                new[key] = v.reshape(-1)[idx.to(v.device)].view(p.shape).clone()
            else:
                raise ConfigError(
                    f"restore_optimizer_state: state {key!r} of {name!r} has shape {tuple(v.shape)}, neither a scalar nor "
                    f"the parameter's shape {entry.shape}; it cannot be carried through a prune"
                )
        optimizer.state[p] = new
        done.append(name)
    return done
