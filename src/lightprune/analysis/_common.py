"""Shared helpers of the analyses: model unwrapping, re-iterable batch views, evaluation of many
channel-mask configurations in one streamed pass, tables (CSV + markdown) and plotting setup.

Data, evaluation and progress bars come from the core services (:mod:`lightprune.data`,
:mod:`lightprune.evaluation`); hooks from :func:`lightprune.collect.capture_activations`."""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import evaluation
from ..collect import PrunableLayer, capture_activations, find_prunable_layers
from ..criteria import Criterion, Scores, create_criterion, score
from ..data import Batches, ScoringSet, resolve_scoring_set, split_batch
from ..errors import ConfigError, check_choice, check_positive_int
from ..evaluation import inference, model_device

__all__ = [
    "unwrap",
    "batch_view",
    "evaluation_set",
    "class_count",
    "resolve_layers",
    "resolve_criteria",
    "criterion_label",
    "compute_scores",
    "reinitialize",
    "random_copy",
    "MaskedEval",
    "metrics_from_confusion",
    "write_table",
    "markdown_table",
    "pyplot",
    "save_figure",
]

ABLATION_MODES = ("zero", "mean")


# --------------------------------------------------------------------------------------------
# models and data
# --------------------------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a :class:`~lightprune.ClassificationModule` (its ``.model``), else ``model``.

    Layer names are those of the network (``features.3``), as :func:`lightprune.score` gives them
    when it is called on ``module.model``.
    """
    from ..module import ClassificationModule

    if isinstance(model, ClassificationModule):
        return model.model
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model={type(model).__name__} is not allowed; give an nn.Module or a ClassificationModule"
        )
    return model


class _BatchView:
    """A re-iterable view of ``(inputs, labels)`` batches: optionally rescaled inputs and/or one class.

    ``lp.score`` iterates its data more than once (example inputs, class count, scoring), so the
    view re-applies the transformation on every pass instead of caching anything; the random factors
    depend only on the seed and the batch index, so every pass sees the same images.
    """

    def __init__(
        self,
        source: Iterable[Any],
        *,
        scale: float | None = None,
        only_class: int | None = None,
        random_scale: tuple[float, float] | None = None,
        seed: int = 0,
    ) -> None:
        self.source, self.scale, self.only_class = source, scale, only_class
        self.random_scale, self.seed = random_scale, seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b, batch in enumerate(self.source):
            x, y = split_batch(batch)
            if self.random_scale is not None:
                lo, hi = self.random_scale
                u = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(self.seed + b), dtype=torch.float64)
                factors = (lo + (hi - lo) * u).to(x.dtype).to(x.device)
                x = x * factors.reshape(-1, *([1] * (x.ndim - 1)))
            if self.only_class is not None:
                keep = y == self.only_class
                if not bool(keep.any()):
                    continue
                x, y = x[keep], y[keep]
            if self.scale is not None:
                x = x * self.scale
            yield x, y


class _SizedBatchView(_BatchView):
    def __len__(self) -> int:  # an upper bound with only_class (batches without the class are skipped)
        return len(self.source)  # type: ignore[arg-type]


def batch_view(
    source: Iterable[Any],
    *,
    scale: float | None = None,
    only_class: int | None = None,
    random_scale: tuple[float, float] | None = None,
    seed: int = 0,
) -> _BatchView:
    """A re-iterable view of ``source`` (tuple or dict batches) with transformed inputs.

    Args:
        source: the batches.
        scale: every input times this factor.
        only_class: keep only the images of this class (batches without it are skipped).
        random_scale: ``(lo, hi)``: image ``i`` of batch ``b`` times ``lo + (hi - lo) * u[i]``,
            ``u = torch.rand(len(batch), generator=torch.Generator().manual_seed(seed + b),
            dtype=torch.float64)`` (per-image random rescaling, the same on every pass).
        seed: seed of ``random_scale``.

    Example::

        >>> x = torch.ones(3, 1, 2, 2)
        >>> view = batch_view([(x, torch.zeros(3))], random_scale=(0.5, 1.5), seed=7)
        >>> u = torch.rand(3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        >>> bool(torch.allclose(next(iter(view))[0][:, 0, 0, 0], (0.5 + u).float()))
        True
    """
    cls = _SizedBatchView if hasattr(source, "__len__") else _BatchView
    return cls(source, scale=scale, only_class=only_class, random_scale=random_scale, seed=seed)


def evaluation_set(test_data: Any) -> ScoringSet:
    """The evaluation data: a data module's test split, or batches / a DataLoader as given (tuple or
    dict batches, through :func:`lightprune.data.resolve_scoring_set`)."""
    from ..data import ClassificationDataModule

    if isinstance(test_data, ClassificationDataModule):
        test_data.setup("test")
        return ScoringSet(Batches(test_data.test_dataloader()), test_data.num_classes)
    return resolve_scoring_set(test_data, argument="test_data")


def class_count(data: ScoringSet, given: int | None) -> int:
    """``given``, else the data's class count, else ``max(label) + 1`` over its batches."""
    if given is not None:
        return check_positive_int("num_classes", given, minimum=2)
    if data.num_classes is not None:
        return int(data.num_classes)
    top = max((int(y.max()) for _, y in data.batches), default=-1)
    if top < 1:
        raise ConfigError("num_classes could not be inferred (fewer than 2 classes in the labels); pass num_classes=")
    return top + 1


def resolve_layers(
    model: nn.Module, example: torch.Tensor, layers: str | Sequence[str] | None
) -> dict[str, PrunableLayer]:
    if isinstance(layers, str):
        layers = [layers]
    found = find_prunable_layers(model, example, layers)
    if not found:
        raise ConfigError("the model has no prunable layer (Conv2d with groups=1 or hidden Linear)")
    return found


CriterionLike = str | Criterion | Scores


def resolve_criteria(criteria: CriterionLike | Sequence[CriterionLike]) -> list[CriterionLike]:
    """Names are checked against the registry at once (unknown name: the error lists the known ones)."""
    if isinstance(criteria, (str, Criterion, Scores)):
        criteria = [criteria]
    out = list(criteria)
    if not out:
        raise ConfigError(
            "criteria=[] is not allowed; give at least one criterion name (see lightprune.list_criteria())"
        )
    for c in out:
        if isinstance(c, str):
            create_criterion(c)  # raises UnknownNameError listing the registered names
        elif not isinstance(c, (Criterion, Scores)):
            raise ConfigError(
                f"criteria contains {c!r}; give registered names, Criterion instances or Scores"
            )
    labels = [criterion_label(c) for c in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"criteria={labels} names a criterion twice")
    return out


def criterion_label(c: CriterionLike) -> str:
    if isinstance(c, str):
        return c
    return c.criterion if isinstance(c, Scores) else c.name


def compute_scores(
    model: nn.Module,
    criterion: CriterionLike,
    batches: Iterable[Any] | None,
    layers: Sequence[str],
    *,
    num_classes: int | None,
    progress: bool,
) -> Scores:
    """``lp.score`` of ``layers`` (a given :class:`Scores` is checked and returned as is)."""
    if isinstance(criterion, Scores):
        missing = [n for n in layers if n not in criterion]
        if missing:
            raise ConfigError(f"the Scores of {criterion.criterion!r} have no entry for layers {missing}")
        return criterion
    return score(model, criterion, batches, layers=list(layers), num_classes=num_classes, progress=progress)


def reinitialize(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Re-draw the parameters of ``module`` and its children in place (the library's model init).

    Conv2d: Kaiming normal (fan_out, ReLU), bias 0; Linear: N(0, 0.01), bias 0 (both as
    :class:`~lightprune.models.CifarVGG`); BatchNorm: weight 1, bias 0, running statistics reset;
    any other module with parameters of its own and a ``reset_parameters()`` (LayerNorm, PReLU, ...):
    reset under a torch seed drawn from ``generator``. Modules are visited in ``module.modules()``
    order, each drawing from ``generator`` in turn.
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                std = math.sqrt(2.0 / fan_out)
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * 0.01)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()
            elif next(m.parameters(recurse=False), None) is not None and hasattr(m, "reset_parameters"):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
                    m.reset_parameters()
    return module


def random_copy(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``model`` with every parameter re-drawn by :func:`reinitialize`."""
    g = torch.Generator().manual_seed(seed)
    net = copy.deepcopy(model)
    return reinitialize(net, g).to(model_device(model))


# --------------------------------------------------------------------------------------------
# evaluation of many mask configurations in one pass
# --------------------------------------------------------------------------------------------
class MaskedEval:
    """Test-set metrics of many channel-mask configurations, streamed, weights untouched.

    Each configuration ``k`` keeps or removes channels of some layers: ``masks[layer]`` is a
    ``(K, C)`` 0/1 tensor (1 = keep). A removed channel's post-activation output is replaced by 0
    (``mode="zero"``) or by ``fill[layer][c]`` (``mode="mean"``: the bias-balancing value,
    :func:`lightprune.surgery.removed_channel_fill`).

    The one hook router (:func:`lightprune.collect.capture_activations`, with replacement) does it
    on the layers' post-activation outputs: ``out * mask + (1 - mask) * fill``. Several configurations share one
    forward pass: the first hooked output is repeated ``K`` times along the batch (replica ``k`` =
    rows ``k*B:(k+1)*B``), so the part of the network before it runs once per batch. Where that
    is not possible (a branch outside the hook joins later, e.g. a residual shortcut), the inputs
    are repeated instead (``expand="input"``); the first batch checks the hook expansion against
    a plain forward and switches by itself.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Mapping[str, PrunableLayer],
        masks: Mapping[str, torch.Tensor],
        *,
        mode: str = "zero",
        fill: Mapping[str, torch.Tensor] | None = None,
        num_classes: int,
        max_images: int = 2048,
    ) -> None:
        check_choice("mode", mode, ABLATION_MODES)
        if mode == "mean" and fill is None:
            raise ConfigError("mode='mean' needs the fill values (fill=, see lightprune.surgery.removed_channel_fill)")
        sizes = {int(m.shape[0]) for m in masks.values()} or {1}
        if len(sizes) != 1:
            raise ConfigError(f"every layer needs the same number of configurations; got {sorted(sizes)}")
        self.model, self.layers, self.mode, self.num_classes = model, dict(layers), mode, num_classes
        self.K = sizes.pop()
        self.max_images = max_images
        self.device = model_device(model)
        self.masks = {n: m.to(self.device, torch.float32) for n, m in masks.items()}
        self.fill = {
            n: (fill[n] if fill is not None and mode == "mean" else torch.zeros(layers[n].out_channels)).to(
                self.device, torch.float32
            )
            for n in masks
        }
        self.expand = "hook"

    # one forward of configurations [k0, k1) on batch x
    def _forward(self, x: torch.Tensor, k0: int, k1: int, expand: str) -> torch.Tensor:
        k = k1 - k0
        b = x.shape[0]

        def fill(name: str, out: torch.Tensor) -> torch.Tensor:
            if out.shape[0] == b and k > 1:  # the first hooked output: one replica per configuration
                out = out.repeat(k, *([1] * (out.ndim - 1)))
            elif out.shape[0] != k * b:
                raise RuntimeError(f"unexpected batch size {out.shape[0]} at {name} (B={b}, K={k})")
            shape = (-1, *([1] * (out.ndim - 2)))
            mask = self.masks[name][k0:k1].repeat_interleave(b, dim=0).reshape(k * b, *shape)
            return out * mask + (1.0 - mask) * self.fill[name].reshape(1, *shape)

        layers = {n: self.layers[n] for n in self.masks}
        with capture_activations(self.model, layers, fill):
            inp = x.repeat(k, *([1] * (x.ndim - 1))) if expand == "input" and k > 1 else x
            return self.model(inp)

    def run(
        self, batches: Iterable[Any], *, progress: bool = False, desc: str = "ablation"
    ) -> dict[str, torch.Tensor]:
        """Stream ``batches`` (tuple or dict batches); return ``confusion`` (K, n, n) int64 (rows: true
        class), ``loss_sum`` (K,) float64 and ``count`` (images)."""
        n = self.num_classes
        confusion = torch.zeros(self.K, n, n, dtype=torch.int64)
        loss_sum = torch.zeros(self.K, dtype=torch.float64)
        seen = 0
        # one tick per (configuration, batch): fine-grained even when a batch carries many configurations
        total = len(batches) * self.K if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
        with inference(self.model), evaluation.progress(enabled=progress, desc=desc, total=total) as bar:
            for batch in batches:
                x, y = split_batch(batch)
                x, y = x.to(self.device), y.to(self.device)
                if int(y.max()) >= n or int(y.min()) < 0:
                    raise ConfigError(f"labels outside [0, {n}) in the test data; num_classes={n}")
                b = x.shape[0]
                step = max(1, self.max_images // max(1, b))
                for k0 in range(0, self.K, step):
                    k1 = min(self.K, k0 + step)
                    logits = self._checked_forward(x, k0, k1)
                    logits = logits.reshape(k1 - k0, b, -1).double()
                    yy = y.repeat(k1 - k0)
                    loss = F.cross_entropy(logits.reshape((k1 - k0) * b, -1), yy, reduction="none")
                    loss_sum[k0:k1] += loss.reshape(k1 - k0, b).sum(1).cpu()
                    pred = logits.argmax(-1)  # (k, b)
                    idx = (y.unsqueeze(0) * n + pred).cpu()
                    offs = torch.arange(k1 - k0).unsqueeze(1) * (n * n)
                    confusion[k0:k1] += torch.bincount(
                        (idx + offs).reshape(-1), minlength=(k1 - k0) * n * n
                    ).reshape(k1 - k0, n, n)
                    bar.update(k1 - k0)
                seen += b
        if seen == 0:
            raise ConfigError("the test data holds no image (empty loader)")
        return {"confusion": confusion, "loss_sum": loss_sum, "count": seen}

    def _checked_forward(self, x: torch.Tensor, k0: int, k1: int) -> torch.Tensor:
        if self.expand == "input" or k1 - k0 == 1:
            return self._forward(x, k0, k1, "input")
        if self.expand == "hook":
            try:
                out = self._forward(x, k0, k1, "hook")
                ok = out.shape[0] == (k1 - k0) * x.shape[0]
                if ok:  # first time only: the hook expansion must match a plain forward
                    ref = self._forward(x, k1 - 1, k1, "input")
                    ok = torch.allclose(out[-x.shape[0] :], ref, rtol=1e-4, atol=1e-5)
            except RuntimeError:
                ok = False
            if ok:
                self.expand = "hook-checked"
                return out
            self.expand = "input"
            return self._forward(x, k0, k1, "input")
        return self._forward(x, k0, k1, "hook")


def metrics_from_confusion(
    confusion: torch.Tensor, loss_sum: torch.Tensor, count: int
) -> dict[str, torch.Tensor]:
    """Per configuration: ``acc``, ``loss``, ``balanced_acc`` (mean recall), and per class
    ``recall`` (K, n) and one-vs-rest ``class_bacc`` (K, n) = (recall_c + specificity_c) / 2."""
    conf = confusion.double()
    total = conf.sum(dim=(1, 2))
    tp = torch.diagonal(conf, dim1=1, dim2=2)  # (K, n)
    support = conf.sum(dim=2)  # true class counts
    predicted = conf.sum(dim=1)
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.full_like(tp, float("nan")))
    negatives = total.unsqueeze(1) - support
    tn = negatives - (predicted - tp)
    spec = torch.where(negatives > 0, tn / negatives.clamp(min=1), torch.full_like(tp, float("nan")))
    return {
        "acc": tp.sum(1) / total,
        "loss": loss_sum / count,
        "balanced_acc": torch.nanmean(recall, dim=1),
        "recall": recall,
        "class_bacc": (recall + spec) / 2,
    }


# --------------------------------------------------------------------------------------------
# tables, progress bars, plots
# --------------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 10 ** (-digits)):
            return f"{v:.{digits}g}"
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 4
) -> str:
    """A GitHub markdown table of ``rows`` (floats with ``digits`` decimals, bools as yes/no)."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |"]
    aligns = [
        "---:" if isinstance(rows[0].get(c), (int, float)) and not isinstance(rows[0].get(c), bool) else "---"
        for c in columns
    ]
    lines.append("|" + "|".join(aligns) + "|")
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, ""), digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_table(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    stem: str,
    *,
    columns: Sequence[str] | None = None,
    title: str | None = None,
    note: str | None = None,
    digits: int = 4,
    markdown: bool = True,
) -> dict[str, Path]:
    """Write ``<stem>.csv`` (all columns, full precision) and ``<stem>.md`` (``columns``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / f"{stem}.csv"}
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(paths["csv"], "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})
    if markdown:
        paths["md"] = out / f"{stem}.md"
        text = (f"### {title}\n\n" if title else "") + (f"{note}\n\n" if note else "")
        paths["md"].write_text(text + markdown_table(rows, columns, digits))
    return paths


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (PNG, 110 dpi; parent folders created) and close it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
