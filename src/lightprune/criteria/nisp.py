"""NISP (Yu et al. 2018) with Inf-FS (Roffo et al. 2015) final-response scores. Definition: CRITERIA.md.

Two steps:

1. **FRL scores.** The final response layer (FRL; default: the input of the last ``nn.Linear``
   executed, i.e. the features the classifier sees) is recorded for every image of the scoring set,
   giving an ``N x D`` response matrix (gathered across processes, so every rank holds all rows).
   :func:`inf_fs` turns it into one score per FRL neuron, ``s_FRL`` (D,).
2. **Back-propagation.** ``s_in = |W|^T s_out`` through every layer (conv: ``|W|`` summed over the
   kernel positions); pooling, normalisation, activations, dropout and flatten pass scores through
   (flatten: a channel's score is the sum over its positions); residual additions add. This is
   computed the general way, as one vector-Jacobian product through a linearised copy of the
   network (:func:`linearized_copy`): the gradient of ``s_FRL . FRL`` at each prunable layer's
   output, summed over positions, is that layer's channel importance.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn
from torchmetrics.utilities import dim_zero_cat

from ..collect import ACTIVATIONS, PrunableLayer
from ..errors import ConfigError, check_choice
from .base import Criterion, Scores, register_criterion

__all__ = ["NISP", "inf_fs", "linearized_copy"]

_CORRELATIONS = ("spearman", "pearson")
_POOLINGS = ("mean", "sum")
_PRECISIONS = ("float64", "model")
#: Inf-FS builds a D x D float64 matrix: refuse FRLs wider than this (8192: 0.5 GiB).
MAX_FRL_WIDTH = 8192

#: replaced by the identity in the linearised copy (scores pass through them)
_PASS_THROUGH: tuple[type[nn.Module], ...] = ACTIVATIONS + (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.dropout._DropoutNd,
    nn.AlphaDropout,
    nn.Threshold,
    nn.RReLU,
    nn.LogSigmoid,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Softshrink,
    nn.Hardshrink,
)
_WINDOW_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE_POOLS = (
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
_UNSUPPORTED = (nn.LPPool1d, nn.LPPool2d, nn.FractionalMaxPool2d, nn.FractionalMaxPool3d, nn.GLU)


# --------------------------------------------------------------------------------------------------
# Inf-FS
# --------------------------------------------------------------------------------------------------
def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..N of every column of ``x`` (N, D); tied values share the mean of their ranks."""
    n, d = x.shape
    sorted_x, order = x.sort(dim=0)
    new_run = torch.ones_like(sorted_x, dtype=torch.bool)
    new_run[1:] = sorted_x[1:] != sorted_x[:-1]
    run = new_run.long().cumsum(0) - 1 + torch.arange(d, device=x.device) * n  # unique run id per column
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=x.device).unsqueeze(1).expand(n, d)
    total = torch.zeros(n * d, dtype=torch.float64, device=x.device).scatter_add_(0, run.flatten(), pos.flatten())
    count = torch.zeros(n * d, dtype=torch.float64, device=x.device).scatter_add_(
        0, run.flatten(), torch.ones(n * d, dtype=torch.float64, device=x.device)
    )
    mean_rank = (total / count.clamp(min=1))[run]
    return torch.empty_like(mean_rank).scatter_(0, order, mean_rank)


def _correlation(x: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between the columns of ``x``; NaN where a column is constant."""
    z = x - x.mean(dim=0)
    norm = z.norm(dim=0)
    return (z.T @ z) / (norm.unsqueeze(1) * norm.unsqueeze(0))


def inf_fs(
    responses: torch.Tensor,
    alpha: float = 0.5,
    factor: float = 0.9,
    correlation: str = "spearman",
) -> torch.Tensor:
    """Unsupervised Infinite Feature Selection (Roffo et al. 2015): one score per feature (column).

    With ``x_i`` the i-th column of ``responses`` (N samples x D features):

    - ``sigma_i`` = standard deviation of ``x_i``; ``M_ij = max(sigma_i, sigma_j)``;
      ``sigma_ij = (M_ij - min M) / (max M - min M)`` (all 0 when every ``sigma`` is equal). The
      min-max scaling makes the result independent of the std's ``N`` vs ``N - 1`` convention.
    - ``c_ij = 1 - |rho_ij|``, ``rho`` = Spearman rank correlation (``correlation="pearson"``:
      Pearson). As in the authors' code, a constant feature has ``rho = 0`` (so ``c = 1``) with
      every feature, itself included.
    - affinity ``A = alpha * sigma + (1 - alpha) * c`` (D x D, symmetric, non-negative; the
      diagonal is kept).
    - ``r = factor / rho(A)``, ``rho(A)`` the spectral radius (largest eigenvalue), so the path series
      converges: ``S = sum_{l >= 1} (r A)^l = (I - r A)^{-1} - I``.
    - score ``s_i = sum_j S_ij``, computed as ``(I - r A)^{-1} 1 - 1``. Higher = more important.
      When ``A = 0`` every score is 0.

    Args:
        responses: (N, D) real tensor, N >= 2; computed in float64 on its device.
        alpha: mixing weight of the std term, in [0, 1]; default 0.5 (the authors' default; at 0.5
            the two published conventions, alpha on sigma or on c, agree).
        factor: ``r * rho(A)``, in (0, 1); default 0.9 (the ICCV 2015 code).
        correlation: ``"spearman"`` (default, the paper) or ``"pearson"``.

    Returns:
        (D,) float64 scores.

    Raises:
        ConfigError: bad shape, fewer than 2 samples, non-finite values, or a hyperparameter out of range.

    Example::

        >>> x = torch.tensor([[0.0, 1.0, 5.0], [1.0, 3.0, 5.0], [2.0, 2.0, 5.0]])
        >>> [round(v, 4) for v in inf_fs(x).tolist()]
        [8.7235, 8.7235, 9.5082]
    """
    _check_inf_fs_hparams(alpha, factor, correlation)
    if responses.ndim != 2:
        raise ConfigError(f"inf_fs: responses must be (N samples, D features), got shape {tuple(responses.shape)}")
    n, d = responses.shape
    if n < 2:
        raise ConfigError(f"inf_fs: needs at least 2 samples to estimate deviations and correlations, got {n}")
    x = responses.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ConfigError("inf_fs: responses contain NaN or infinite values")

    std = x.std(dim=0)
    m = torch.maximum(std.unsqueeze(0), std.unsqueeze(1))
    m = m - m.min()
    top = m.max()
    sigma = m / top if top > 0 else torch.zeros_like(m)

    rho = _correlation(_average_ranks(x) if correlation == "spearman" else x)
    rho = torch.nan_to_num(rho, nan=0.0).clamp(-1.0, 1.0)
    c = 1.0 - rho.abs()

    a = alpha * sigma + (1.0 - alpha) * c
    radius = torch.linalg.eigvalsh(a)[-1]  # A is symmetric and non-negative: its Perron root
    if radius <= 0:
        return torch.zeros(d, dtype=torch.float64, device=x.device)
    r = factor / radius
    eye = torch.eye(d, dtype=torch.float64, device=x.device)
    ones = torch.ones(d, 1, dtype=torch.float64, device=x.device)
    return torch.linalg.solve(eye - r * a, ones).squeeze(1) - 1.0


def _check_inf_fs_hparams(alpha: object, factor: object, correlation: object) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={alpha!r} is not allowed; it must be a number in [0, 1]")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0.0 < factor < 1.0:
        raise ConfigError(f"factor={factor!r} is not allowed; it must be a number in (0, 1) (r = factor / rho(A))")
    check_choice("correlation", correlation, _CORRELATIONS)


# --------------------------------------------------------------------------------------------------
# the linearised copy
# --------------------------------------------------------------------------------------------------
def _tuple(v: Any, nd: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd


class _LinearPool(nn.Module):
    """Linear stand-in for a max/avg pooling module (see :func:`linearized_copy`)."""

    def __init__(self, pool: nn.Module, mode: str, name: str) -> None:
        super().__init__()
        self.nd = int(type(pool).__name__[-2])  # "...Pool2d" -> 2
        self.mode = mode
        self.adaptive = isinstance(pool, _ADAPTIVE_POOLS)
        if getattr(pool, "return_indices", False):
            raise ConfigError(f"NISP: pooling module {name!r} returns indices; it cannot be linearised")
        if self.adaptive:
            self.output_size = _tuple(pool.output_size, self.nd)
            return
        if any(d != 1 for d in _tuple(getattr(pool, "dilation", 1), self.nd)):
            raise ConfigError(f"NISP: dilated pooling ({name!r}) cannot be linearised")
        self.kernel = _tuple(pool.kernel_size, self.nd)
        self.stride = _tuple(pool.stride if pool.stride is not None else pool.kernel_size, self.nd)
        self.padding = _tuple(pool.padding, self.nd)
        self.ceil_mode = bool(pool.ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.adaptive:
            return self._adaptive(x)
        if self.nd == 1:  # avg_pool1d has no divisor_override: go through 2-D
            return self._window(x.unsqueeze(-2), 2, (1, *self.kernel), (1, *self.stride), (0, *self.padding)).squeeze(-2)
        return self._window(x, self.nd, self.kernel, self.stride, self.padding)

    def _window(self, x, nd, kernel, stride, padding):
        pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
        if self.mode == "mean":  # every window's mean of its real (unpadded) elements
            return pool(x, kernel, stride, padding, self.ceil_mode, count_include_pad=False)
        return pool(x, kernel, stride, padding, self.ceil_mode, count_include_pad=True, divisor_override=1)

    def _adaptive(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[-self.nd :]
        out = tuple(s if o is None else o for o, s in zip(self.output_size, sizes, strict=True))
        pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[self.nd - 1]
        y = pool(x, out)
        if self.mode == "sum":  # times the size of every adaptive region
            count = torch.ones((), dtype=x.dtype, device=x.device)
            for k, (o, s) in enumerate(zip(out, sizes, strict=True)):
                i = torch.arange(o, device=x.device)
                n = torch.div((i + 1) * s + o - 1, o, rounding_mode="floor") - torch.div(i * s, o, rounding_mode="floor")
                count = count.unsqueeze(-1) * n.to(x.dtype).view(*([1] * k), o)
            y = y * count
        return y

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, adaptive={self.adaptive}"


def linearized_copy(
    model: nn.Module, pooling: str = "mean", dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> nn.Module:
    """A deep copy of ``model`` made linear for NISP's back-propagation (the model is not touched).

    In the copy:

    - every parameter is replaced by its absolute value, every bias (a parameter named ``bias``) by 0;
    - activations, BatchNorm / other norms and dropout are replaced by ``nn.Identity``;
    - max and average pooling (plain and adaptive, 1-3 d) are replaced by a linear pooling:
      ``pooling="mean"`` (default): the mean of each window's real elements, whose backward hands
      every output gradient in full to its window, so a channel's total gradient (the sum over
      positions = its NISP score) passes through unchanged, for any kernel, stride, padding or
      ``ceil_mode``; ``pooling="sum"``: the sum of each window (the channel's *activation* total
      passes forward unchanged, and its score is multiplied by the window size);
    - zero-padded convolutions pad circularly, so every kernel tap lands on a real position and the
      sum over positions of ``|W|^T g`` is exactly ``(|W| summed over the kernel)^T (g summed over
      positions)`` — CRITERIA.md's ``s_in = |W|^T s_out``, without border effects;
    - the copy is in eval mode, in ``dtype`` (default float64), on ``device`` (default: where the
      model is), without gradients for its parameters.

    Functional calls inside ``forward`` (``F.relu``, ``F.max_pool2d``) are not modules and stay as
    they are; probe the copy with a positive input (all ones): with ``|W|`` and zero biases every
    pre-activation is then >= 0, so a functional ReLU acts as the identity.

    Raises:
        ConfigError: a module that cannot be linearised (LP/fractional pooling, dilated pooling,
            pooling that returns indices, GLU), or a model that cannot be deep-copied.
    """
    check_choice("pooling", pooling, _POOLINGS)
    try:
        net = copy.deepcopy(model)
    except Exception as err:  # noqa: BLE001 (any failure of user code)
        raise ConfigError(f"NISP needs a deep copy of the model, which failed: {err}") from err
    swaps: list[tuple[str, nn.Module]] = []
    for name, module in net.named_modules():
        if not name:
            continue
        if isinstance(module, _UNSUPPORTED):
            raise ConfigError(f"NISP cannot pass scores through {type(module).__name__} ({name!r})")
        if isinstance(module, _PASS_THROUGH):
            swaps.append((name, nn.Identity()))
        elif isinstance(module, _WINDOW_POOLS + _ADAPTIVE_POOLS):
            swaps.append((name, _LinearPool(module, pooling, name)))
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.padding_mode == "zeros":
            padded = module.padding == "same" if isinstance(module.padding, str) else any(module.padding)
            if padded:
                module.padding_mode = "circular"
    for name, new in swaps:
        parent, _, attr = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, attr, new)
    with torch.no_grad():
        for pname, p in net.named_parameters():
            if pname.rpartition(".")[2] == "bias":
                p.zero_()
            else:
                p.abs_()
    net.to(device=device, dtype=dtype)
    net.requires_grad_(False)
    return net.eval()


# --------------------------------------------------------------------------------------------------
# the criterion
# --------------------------------------------------------------------------------------------------
class _Responses(torchmetrics.Metric):
    """The FRL responses of the scoring set, (N, D) float64, gathered from every process ("cat")."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("rows", default=[], dist_reduce_fx="cat")

    def update(self, rows: torch.Tensor) -> None:
        self.rows.append(rows.detach().to(torch.float64))

    def compute(self) -> torch.Tensor:
        return dim_zero_cat(self.rows)


def _inputs_of(batch: Any) -> torch.Tensor:
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"each scoring batch must be a tensor or (inputs, labels); got {type(batch).__name__}")
    return x


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _frl_hooks(net: nn.Module, frl: str | None, store: dict[str, Any], *, for_grad: bool) -> list:
    """Hooks recording the FRL tensor of each forward pass in ``store["x"]`` (its module in
    ``store["name"]``): the input of the last ``nn.Linear`` called (``frl=None``) or the output of
    module ``frl`` (its last call). ``for_grad=False``: a detached float64 copy; ``for_grad=True``:
    the tensor itself, while the network continues on a clone (so later in-place ops cannot touch it)."""

    def record(name: str, t: torch.Tensor) -> torch.Tensor | None:
        store["name"] = name
        if for_grad:
            store["x"] = t
            return t.clone()
        store["x"] = t.detach().to(torch.float64, copy=True)
        return None

    if frl is not None:
        return [net.get_submodule(frl).register_forward_hook(lambda mod, args, out: record(frl, out))]
    handles = []
    for name, m in net.named_modules():
        if isinstance(m, nn.Linear):

            def pre(mod, args, _name=name):
                new = record(_name, args[0])
                return None if new is None else (new, *args[1:])

            handles.append(m.register_forward_pre_hook(pre))
    return handles


@register_criterion("nisp")
class NISP(Criterion):
    """Neuron Importance Score Propagation (Yu et al. 2018); FRL scores by unsupervised Inf-FS.

    1. The final response layer (FRL) is recorded for every image of the scoring set (eval mode, no
       gradients): by default the input of the last ``nn.Linear`` executed (the features of the
       classifier); ``frl="module.name"``: the output of that module (flattened per image; its last
       call when it runs several times). Rows are gathered from every process (a torchmetrics
       ``"cat"`` state), so every rank scores on all the images and ends with the same scores.
    2. ``s_FRL = inf_fs(responses, alpha, factor, correlation)`` (D,) — see :func:`inf_fs`.
    3. One vector-Jacobian product through :func:`linearized_copy` (``|W|``, zero biases, identities
       for activations/norms/dropout, linear pooling), probed with one all-ones image of the
       scoring set's shape: the gradient of ``s_FRL . FRL`` at each prunable layer's output (a
       forward hook on the copy's layer), summed over positions (all dims but the channel dim:
       dim 1 for convs, the last dim for Linear layers), is the layer's importance. Because the
       copy is linear, the result does not depend on the probe. This realises
       ``s_in = |W|^T s_out`` (conv: ``|W|`` summed over kernel positions) with pooling, norms,
       activations and flatten passing scores through (flatten: a channel's score is the sum over
       its positions) and residual additions adding.

    Args:
        alpha: Inf-FS mixing weight of the std term, in [0, 1]; default 0.5.
        factor: Inf-FS ``r * rho(A)``, in (0, 1); default 0.9.
        correlation: Inf-FS correlation, ``"spearman"`` (default) or ``"pearson"``.
        frl: name of the module whose output is the FRL; default None (the input of the last Linear).
        pooling: linear stand-in for max/avg pooling, ``"mean"`` (default: channel scores pass
            through unchanged, as CRITERIA.md asks) or ``"sum"`` (scores scale with the window size).
        precision: ``"model"`` (default): the responses come from the model itself in its own
            dtype; ``"float64"``: from a float64 copy, so the scores do not depend on batch size or
            process count beyond float64 rounding (float32 forward passes differ by ~1e-7 between
            batch sizes; float64 costs about 5x the time and 2x the memory on CPU). The
            back-propagation is always in float64.

    Importance: (C,) float64 per prunable layer, >= 0, higher = keep. ``Scores.meta`` holds ``frl``
    (the module name), ``frl_width`` (D) and ``num_images`` (N over all processes).

    Raises:
        ConfigError: a hyperparameter out of range (at construction); at scoring: no scoring set, an
            empty one or a single image, no Linear layer (default FRL), an unknown ``frl``, an FRL
            wider than ``MAX_FRL_WIDTH`` (8192), a prunable layer that does not feed the FRL, a
            module that cannot be linearised.

    Example::

        >>> import torch, lightprune as lp
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> s = lp.score(net, "nisp", [(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))], progress=False)
        >>> s["0"].shape, s.meta["frl"], s.meta["num_images"]
        (torch.Size([3]), '2', 8)
    """

    needs_data = True

    def __init__(
        self,
        alpha: float = 0.5,
        factor: float = 0.9,
        correlation: str = "spearman",
        frl: str | None = None,
        pooling: str = "mean",
        precision: str = "model",
    ) -> None:
        _check_inf_fs_hparams(alpha, factor, correlation)
        if frl is not None and (not isinstance(frl, str) or not frl):
            raise ConfigError(f"frl={frl!r} is not allowed; give a module name or None (the input of the last Linear)")
        check_choice("pooling", pooling, _POOLINGS)
        check_choice("precision", precision, _PRECISIONS)
        self.alpha, self.factor, self.correlation = alpha, factor, correlation
        self.frl, self.pooling, self.precision = frl, pooling, precision

    # -- step 1 ------------------------------------------------------------------------------------
    def _responses(self, net: nn.Module, batches: Iterable[Any], progress: bool) -> tuple[torch.Tensor, str, tuple]:
        device, dtype = _device(net), next(net.parameters()).dtype
        state = _Responses().to(device)
        store: dict[str, Any] = {}
        names: set[str] = set()
        shape: tuple = ()
        it = batches
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(batches, desc="scoring nisp", leave=False, total=len(batches) if hasattr(batches, "__len__") else None)
        handles = _frl_hooks(net, self.frl, store, for_grad=False)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                for batch in it:
                    x = _inputs_of(batch).to(device)
                    net(x.to(dtype) if x.is_floating_point() else x)
                    if "x" not in store:
                        raise ConfigError("NISP: the model ran no nn.Linear layer; name the FRL module with frl=")
                    rows = store.pop("x").flatten(1)
                    if rows.shape[1] > MAX_FRL_WIDTH:
                        raise ConfigError(
                            f"NISP: the FRL {store['name']!r} has {rows.shape[1]} features per image; Inf-FS "
                            f"supports at most {MAX_FRL_WIDTH}: choose a later (narrower) module with frl="
                        )
                    names.add(store["name"])
                    shape = shape or tuple(x.shape[1:])
                    state.update(rows)
        finally:
            net.train(was_training)
            for h in handles:
                h.remove()
        if len(names) > 1:
            raise ConfigError(f"NISP: the last Linear layer differs between batches ({sorted(names)}); pass frl=")
        if not state.rows:
            raise ConfigError("NISP: the scoring set holds no image")
        return state.compute().cpu(), names.pop(), shape

    # -- step 3 ------------------------------------------------------------------------------------
    def _propagate(
        self, net: nn.Module, layers: dict[str, PrunableLayer], frl_name: str, shape: tuple, s_frl: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        modules = dict(net.named_modules())
        outputs: dict[str, list[torch.Tensor]] = {n: [] for n in layers}

        def grab(mod, args, out, _name):
            outputs[_name].append(out)
            return out.clone()  # later in-place ops (x += shortcut) act on the clone, not on `out`

        store: dict[str, Any] = {}
        frl = None if self.frl is None else frl_name
        handles = [modules[n].register_forward_hook(lambda m, a, o, _n=n: grab(m, a, o, _n)) for n in layers]
        handles += _frl_hooks(net, frl, store, for_grad=True)
        device = _device(net)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                probe = torch.ones(1, *shape, dtype=torch.float64, device=device, requires_grad=True)
                try:
                    net(probe.clone())
                except RuntimeError as err:
                    raise ConfigError(f"NISP: the linearised copy failed on a probe of shape {(1, *shape)}: {err}") from err
                if self.frl is None and store.get("name") != frl_name:
                    raise ConfigError(f"NISP: the linearised copy's last Linear is {store.get('name')!r}, not {frl_name!r}")
                target = store["x"]
                if target.numel() != s_frl.numel():
                    raise ConfigError(f"NISP: the FRL has {target.numel()} values on the probe, {s_frl.numel()} scores")
                missing = [n for n, outs in outputs.items() if not outs]
                if missing:
                    raise ConfigError(f"NISP: layers {missing} did not run in the forward pass")
                flat = [(n, o) for n, outs in outputs.items() for o in outs]
                grads = torch.autograd.grad(
                    target,
                    [o for _, o in flat],
                    grad_outputs=s_frl.to(device=device, dtype=target.dtype).view_as(target),
                    allow_unused=True,
                )
        finally:
            for h in handles:
                h.remove()
        unused = sorted({n for (n, _), g in zip(flat, grads, strict=True) if g is None}, key=list(layers).index)
        if unused:
            raise ConfigError(
                f"NISP: layers {unused} do not feed the FRL {frl_name!r}, so no score reaches them; "
                "score them with another criterion, drop them with layers=, or choose a later frl="
            )
        imp: dict[str, torch.Tensor] = {n: torch.zeros(layers[n].out_channels, dtype=torch.float64) for n in layers}
        for (n, _), g in zip(flat, grads, strict=True):
            ch = 1 if layers[n].kind == "conv" else g.ndim - 1
            dims = [d for d in range(g.ndim) if d != ch]
            imp[n] += (g.sum(dim=dims) if dims else g).detach().double().cpu()
        return imp

    def score(self, model, layers, batches=None, *, num_classes=None, progress=False) -> Scores:
        if batches is None:
            raise ConfigError("criterion 'nisp' needs a scoring set: pass (inputs, labels) batches")
        modules = dict(model.named_modules())
        if self.frl is not None and self.frl not in modules:
            raise ConfigError(f"frl={self.frl!r} is not a module of the model")
        if not layers:
            raise ConfigError("NISP: no layer to score")
        device = _device(model)
        if self.precision == "float64" and device.type == "mps":
            raise ConfigError("precision='float64' is not available on MPS devices; use precision='model'")
        if self.precision == "float64":
            try:
                work = copy.deepcopy(model).to(torch.float64)
            except Exception as err:  # noqa: BLE001
                raise ConfigError(f"NISP needs a deep copy of the model, which failed: {err}") from err
        else:
            work = model
        responses, frl_name, shape = self._responses(work, batches, progress)
        del work
        s_frl = inf_fs(responses, self.alpha, self.factor, self.correlation)
        net = linearized_copy(model, self.pooling, torch.float64, "cpu" if device.type == "mps" else None)
        imp = self._propagate(net, layers, frl_name, shape, s_frl)
        meta = {"hparams": self.hparams(), "frl": frl_name, "frl_width": int(s_frl.numel()), "num_images": int(responses.shape[0])}
        return Scores(imp, criterion=self.name, meta=meta)
