"""Evaluation services shared by every front end: inference mode, accuracy, latency, progress bars.

- :func:`inference` — a context manager: eval mode and no gradients, every module's own training
  flag restored afterwards (a frozen BatchNorm inside a training network stays frozen).
- :func:`evaluate` — top-1 / balanced accuracy and mean cross-entropy over batches, with
  torchmetrics; under DDP each rank feeds its own shard and the states reduce.
- :func:`measure_latency` — forward time on ``torch.utils.benchmark.Timer`` (warm-up, thread count
  and device stated in the result); also times any callable (e.g. an onnxruntime session).
- :func:`compare_latency` — several networks timed with their runs interleaved; the per-round
  ratios (speed-up, latency reduction) stay honest on a machine whose speed drifts.
- :func:`progress` — the one progress-bar wrapper (tqdm), silent when disabled.

Example::

    >>> import torch
    >>> from lightprune.evaluation import measure_latency
    >>> lat = measure_latency(torch.nn.Linear(4, 2), torch.zeros(3, 4), runs=3, warmup=1)
    >>> lat.batch_size, lat.runs, lat.median_ms > 0
    (3, 3, True)
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .data import split_batch
from .errors import ConfigError

__all__ = ["inference", "model_device", "evaluate", "Latency", "LatencyComparison", "measure_latency", "compare_latency", "progress"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model without either."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextmanager
def inference(model: nn.Module, *, grad: bool = False) -> Iterator[nn.Module]:
    """Eval mode (and no gradients unless ``grad``) for the block; each submodule's training flag
    is restored on exit, exactly as it was."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.set_grad_enabled(grad):
            yield model
    finally:
        for m, was in modes:
            m.training = was


@contextmanager
def training_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Training mode for the block, leaving no trace: the module's buffers (batch-norm statistics),
    each submodule's training flag and the global RNG state (dropout) are restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    with torch.random.fork_rng(devices=[]):
        try:
            yield model.train()
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            for m, was in modes:
                m.training = was


def progress(iterable: Iterable[Any] | None = None, *, enabled: bool = True, desc: str = "", total: int | None = None,
             **kwargs: Any):
    """A tqdm progress bar over ``iterable`` (``enabled=False``: a silent one with the same API)."""
    from tqdm.auto import tqdm

    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False, dynamic_ncols=True, **kwargs)


def evaluate(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    num_classes: int,
    device: torch.device | str | None = None,
    progress_bar: bool = False,
    desc: str = "evaluating",
) -> dict[str, float]:
    """Accuracy of ``model`` on ``batches`` of ``(inputs, labels)``.

    Returns ``{"acc", "balanced_acc", "acc_top5", "loss", "n"}`` (top-1 accuracy, macro-averaged
    recall, top-5 accuracy when there are at least 5 classes, mean cross-entropy, number of images). Under an initialised ``torch.distributed`` process group the
    counts are summed over ranks, so each rank evaluates only its shard and all get the same result.
    """
    import torch.nn.functional as F
    from torchmetrics.classification import MulticlassAccuracy

    if num_classes is None or int(num_classes) < 2:
        raise ConfigError(f"num_classes={num_classes!r} is not allowed; it must be an integer >= 2")
    device = torch.device(device) if device is not None else model_device(model)
    acc = MulticlassAccuracy(num_classes, average="micro").to(device)
    bal = MulticlassAccuracy(num_classes, average="macro").to(device)
    top5 = MulticlassAccuracy(num_classes, top_k=5, average="micro").to(device) if num_classes >= 5 else None
    loss_n = torch.zeros(2, dtype=torch.float64, device=device)
    with inference(model):
        for batch in progress(batches, enabled=progress_bar, desc=desc):
            x, y = split_batch(batch)
            x, y = x.to(device), y.to(device).long()
            logits = model(x)
            if logits.ndim != 2 or logits.shape[1] != num_classes:
                raise ConfigError(f"the model outputs shape {tuple(logits.shape)}; expected (batch, {num_classes}) logits")
            acc.update(logits, y)
            bal.update(logits, y)
            if top5 is not None:
                top5.update(logits, y)
            loss_n[0] += F.cross_entropy(logits.double(), y, reduction="sum")
            loss_n[1] += y.numel()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(loss_n)
    if loss_n[1] == 0:
        raise ConfigError("evaluate: the batches hold no image")
    out = {"acc": float(acc.compute()), "balanced_acc": float(bal.compute())}
    if top5 is not None:
        out["acc_top5"] = float(top5.compute())
    out.update({"loss": float(loss_n[0] / loss_n[1]), "n": int(loss_n[1])})
    return out


@dataclass(frozen=True)
class Latency:
    """A latency measurement: milliseconds per forward call, and how it was measured."""

    median_ms: float
    min_ms: float
    iqr_ms: float
    runs: int
    warmup: int
    batch_size: int | None
    threads: int
    device: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.median_ms:.3f} ms (median of {self.runs} runs after {self.warmup} warm-up, "
                f"batch {self.batch_size}, {self.threads} threads, {self.device})")


def _check_timing(runs: int, warmup: int, threads: int | None) -> None:
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ConfigError(f"runs={runs!r} is not allowed; it must be an integer >= 1")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup={warmup!r} is not allowed; it must be an integer >= 0")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads={threads!r} is not allowed; it must be an integer >= 1 or None")


def _timed_call(model: nn.Module | Callable[[], Any], example_inputs: torch.Tensor | None):
    """(zero-argument call, device, batch size, context manager) for a module or a callable."""
    if isinstance(model, nn.Module):
        if example_inputs is None:
            raise ConfigError("measure_latency: example_inputs is needed to time an nn.Module")

        def call(_m=model, _x=example_inputs):
            return _m(_x)

        return call, str(example_inputs.device), int(example_inputs.shape[0]), inference(model)
    if callable(model):
        batch = int(example_inputs.shape[0]) if example_inputs is not None else None
        return model, "cpu", batch, nullcontext()
    raise ConfigError(f"model={type(model).__name__} is not allowed; give an nn.Module or a callable")


def _summary(times: list[float], warmup: int, batch: int | None, threads: int, device: str) -> Latency:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return Latency(statistics.median(times), min(times), q[2] - q[0], len(times), warmup, batch, threads, device)


def measure_latency(
    model: nn.Module | Callable[[], Any],
    example_inputs: torch.Tensor | None = None,
    *,
    warmup: int = 3,
    runs: int = 10,
    threads: int | None = None,
) -> Latency:
    """Time ``model(example_inputs)`` (eval mode, no gradients) or a zero-argument callable.

    Uses ``torch.utils.benchmark.Timer`` (which synchronises CUDA) with ``threads`` CPU threads
    (default: the current ``torch.get_num_threads()``): ``warmup`` untimed calls, then ``runs``
    timed calls of one forward each; the median, minimum and interquartile range are reported.
    To compare networks (a speed-up, a latency reduction), use :func:`compare_latency`, which
    interleaves their runs.
    """
    return compare_latency([model], example_inputs, warmup=warmup, runs=runs, threads=threads).latencies[0]


@dataclass(frozen=True)
class LatencyComparison:
    """Interleaved latencies of several networks (:func:`compare_latency`).

    ``ratios[i]`` is the median over rounds of ``time_i / time_0`` within the same round: the
    first network is the reference (the original), so ``1 - ratios[i]`` is network i's latency
    reduction and ``1 / ratios[i]`` its speed-up."""

    latencies: tuple[Latency, ...]
    ratios: tuple[float, ...]
    times_ms: tuple[tuple[float, ...], ...] = ()  #: per network, the time of each round

    def round_ratios(self, i: int = 1) -> list[float]:
        """``time_i / time_0`` of every round."""
        return [a / b for a, b in zip(self.times_ms[i], self.times_ms[0], strict=True)]

    def reduction(self, i: int = 1) -> float:
        return 1.0 - self.ratios[i]


def compare_latency(
    models: Iterable[nn.Module | Callable[[], Any]],
    example_inputs: torch.Tensor | None = None,
    *,
    warmup: int = 3,
    runs: int = 10,
    threads: int | None = None,
) -> LatencyComparison:
    """Time several networks on the same inputs with their runs interleaved.

    Each of ``runs`` rounds times one forward of every network (the order rotates from round to
    round), so a machine whose speed drifts (other jobs, frequency scaling) slows every network in
    a round alike: the per-round ratios to the first network, and their median, stay honest where
    two back-to-back blocks of runs would not. Each network gets ``warmup`` untimed calls first
    (and ``torch.utils.benchmark.Timer.timeit`` itself makes two untimed calls before each timed one).

    >>> import torch
    >>> big, small = torch.nn.Linear(256, 256), torch.nn.Linear(256, 8)
    >>> cmp = compare_latency([big, small], torch.zeros(64, 256), runs=3, warmup=1)
    >>> len(cmp.latencies), cmp.ratios[0], cmp.latencies[1].runs
    (2, 1.0, 3)
    """
    from contextlib import ExitStack

    from torch.utils.benchmark import Timer

    _check_timing(runs, warmup, threads)
    models = list(models)
    if not models:
        raise ConfigError("compare_latency: models is empty; give at least one network")
    n_threads = threads or torch.get_num_threads()
    calls = [_timed_call(m, example_inputs) for m in models]
    old = torch.get_num_threads()
    times: list[list[float]] = [[] for _ in models]
    try:
        with ExitStack() as stack:
            for _, _, _, ctx in calls:
                stack.enter_context(ctx)
            timers = [Timer(stmt="call()", globals={"call": c}, num_threads=n_threads) for c, *_ in calls]
            if warmup:
                for t in timers:
                    t.timeit(warmup)
            for r in range(runs):
                for k in range(len(timers)):
                    i = (r + k) % len(timers)
                    times[i].append(timers[i].timeit(1).median * 1000)
    finally:
        torch.set_num_threads(old)
    lats = tuple(_summary(t, warmup, b, n_threads, d) for t, (_, d, b, _) in zip(times, calls, strict=True))
    ratios = tuple(statistics.median(ti / t0 for ti, t0 in zip(t, times[0], strict=True)) for t in times)
    return LatencyComparison(lats, ratios, tuple(tuple(t) for t in times))

