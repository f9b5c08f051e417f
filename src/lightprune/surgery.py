"""Surgery: apply a :class:`~lightprune.planner.Plan` with torch-pruning, optionally with bias
balancing; replay a saved plan on a fresh model; params / MACs / latency report.

Example::

    >>> import torch, lightprune as lp
    >>> net = lp.create_model("cifar_vgg11", 10, width_mult=0.25)
    >>> x = torch.zeros(1, 3, 32, 32)
    >>> plan = lp.plan(net, lp.score(net, "l1"), strategy="uniform", ratio=0.5, example_inputs=x)
    >>> report = lp.prune(net, plan, x, measure_latency=False)
    >>> net.features[0].out_channels, report.params_after < report.params_before
    (8, True)
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import evaluation, recovery
from .attention import prune_heads
from .collect import find_prunable_layers, train_only_layers
from .data import split_batch
from .errors import ConfigError
from .evaluation import inference, model_device, training_mode
from .graph import check_group, count_macs_params, dependency_graph, group_items, pruning_group, two_samples
from .plan import Plan

__all__ = ["PruneReport", "prune", "restore", "count_macs_params", "consumer_input_means"]


@dataclass
class PruneReport:
    """What :func:`prune` did: sizes before/after and per-layer channel counts."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    channels_before: dict[str, int]
    channels_after: dict[str, int]
    latency_before: dict[str, Any] | None = None
    latency_after: dict[str, Any] | None = None
    bias_balanced: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    reconstruction: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}

    def __str__(self) -> str:
        def pct(a, b):
            return f"{100 * (1 - b / a):.1f} %" if a else "-"

        rows = [
            f"{'':<14}{'before':>16}{'after':>16}{'reduction':>12}",
            f"{'params':<14}{self.params_before:>16,}{self.params_after:>16,}{pct(self.params_before, self.params_after):>12}",
            f"{'MACs':<14}{self.macs_before:>16,}{self.macs_after:>16,}{pct(self.macs_before, self.macs_after):>12}",
        ]
        if self.latency_before and self.latency_after:
            lb, la = self.latency_before["median_ms"], self.latency_after["median_ms"]
            rows.append(f"{'latency (ms)':<14}{lb:>16.2f}{la:>16.2f}{pct(lb, la):>12}")
            rows.append(
                f"  (median of {self.latency_after['runs']} runs after {self.latency_after['warmup']} warm-up, "
                f"batch {self.latency_after['batch_size']}, {self.latency_after['threads']} threads, {self.latency_after['device']})"
            )
        return "\n".join(rows)


def consumer_input_means(
    model: nn.Module, module_names: Iterable[str], batches: Iterable[Any]
) -> dict[str, torch.Tensor]:
    """Mean input of each named Conv2d/Linear over ``batches``: per input channel (convs: over images
    and positions) or per input feature (Linear). Used by bias balancing."""
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    for name in module_names:

        def pre(mod, args, _n=name):
            x = args[0].detach().double()
            if x.ndim == 4:
                s, c = x.sum(dim=(0, 2, 3)), x.shape[0] * x.shape[2] * x.shape[3]
            else:
                s, c = x.reshape(-1, x.shape[-1]).sum(0), x.reshape(-1, x.shape[-1]).shape[0]
            sums[_n] = sums.get(_n, 0) + s
            counts[_n] = counts.get(_n, 0) + c

        handles.append(modules[name].register_forward_pre_hook(pre))
    try:
        with inference(model):
            device = model_device(model)
            for batch in batches:
                x = batch if isinstance(batch, torch.Tensor) else split_batch(batch)[0]
                model(x.to(device))
    finally:
        for h in handles:
            h.remove()
    if not counts:
        raise ConfigError("bias balancing: the scoring batches are empty")
    return {n: sums[n] / counts[n] for n in sums}


def _balance(consumer: nn.Module, name: str, idxs: list[int], mean_in: torch.Tensor, norm: nn.Module | None) -> None:
    """Add the removed inputs' mean contribution to the consumer's bias (or fold it into its BatchNorm)."""
    w = consumer.weight.detach().double()
    cols = torch.tensor(idxs, dtype=torch.long, device=w.device)
    m = mean_in.to(w.device)[cols]
    if w.ndim == 4:
        delta = (w[:, cols].sum(dim=(2, 3)) * m).sum(1)  # sum of kernel weights on channel j times its mean
    else:
        delta = (w[:, cols] * m).sum(1)
    with torch.no_grad():
        if consumer.bias is not None:
            consumer.bias.add_(delta.to(consumer.bias.dtype))
        elif isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d)) and norm.running_mean is not None:
            # BN(y + delta) in eval mode == BN with running_mean - delta; in training BN removes constants anyway
            norm.running_mean.sub_(delta.to(norm.running_mean.dtype))
        else:
            raise ConfigError(f"bias balancing: consumer {name!r} has no bias and no BatchNorm to absorb the shift")


def prune(
    model: nn.Module,
    plan: Plan | Mapping[str, Any],
    example_inputs: torch.Tensor,
    *,
    bias_balancing: bool = False,
    batches: Iterable[Any] | None = None,
    means: Mapping[str, torch.Tensor] | None = None,
    measure_latency: bool = True,
    latency_runs: int = 10,
    calibration: Iterable[Any] | None = None,
    recalibrate_bn: bool = True,
    reconstruct: bool = False,
    reconstruct_kwargs: Mapping[str, Any] | None = None,
) -> PruneReport:
    """Remove exactly the channels the plan does not keep, in place, with torch-pruning.

    Every coupled group is pruned as one (same indices in every member); consumers lose the
    matching input channels. Attention modules in ``plan.heads`` lose the heads not kept
    (:func:`lightprune.attention.prune_heads`; bias balancing and reconstruction cover channels only). The output layers never lose outputs (they are never in a plan, a
    group that would touch an unplanned Conv2d/Linear output raises, and a prune that changes the
    network's output shape is undone).

    Args:
        model: the network, modified in place.
        plan: a :class:`Plan` or its ``to_dict()``.
        example_inputs: an input batch for the dependency graph, MACs and latency.
        bias_balancing: replace each removed channel by its mean (CRITERIA.md "Bias balancing"):
            its mean contribution is added to the bias of every consumer (or subtracted from the
            running mean of the consumer's BatchNorm when the consumer has no bias). Needs
            ``batches`` (the scoring set) or precomputed ``means`` (:func:`consumer_input_means`).
        batches: ``(inputs, labels)`` batches to compute the means from.
        means: ``{consumer module name: mean input (C_in,)}``.
        measure_latency: time the model before and after (:func:`measure_latency` on ``example_inputs``).
        latency_runs: timed runs per measurement, default 10.
        calibration: batches for recovery right after the prune (the scoring set, or training batches).
            With them, BatchNorm statistics are re-estimated (:func:`lightprune.recovery.recalibrate_bn`)
            unless ``recalibrate_bn=False``. Without them, nothing is recovered.
        recalibrate_bn: re-estimate BatchNorm statistics on ``calibration``, default True.
        reconstruct: least-squares reconstruction of the layers that lost inputs
            (:func:`lightprune.recovery.reconstruct`, before the recalibration); needs ``calibration``.
        reconstruct_kwargs: options of the reconstruction (``ridge``, ``positions``, ``max_batches``, ...).

    Returns:
        :class:`PruneReport`.

    Raises:
        ConfigError: the plan names unknown layers, disagrees with the model's widths, would prune
            an unplanned layer, or bias balancing lacks its means.
    """
    if not isinstance(plan, Plan):
        plan = Plan.from_dict(plan)
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    for layer, c in plan.channels.items():
        if layer not in modules:
            raise ConfigError(f"the plan names layer {layer!r}, which the model does not have")
        mod = modules[layer]
        width = getattr(mod, "out_channels", getattr(mod, "out_features", None))
        if width != c:
            raise ConfigError(f"the plan expects {c} channels in {layer!r} but the model has {width}")
    for attn, h in plan.num_heads.items():
        if attn not in modules:
            raise ConfigError(f"the plan names attention module {attn!r}, which the model does not have")
        if getattr(modules[attn], "num_heads", None) != h:
            raise ConfigError(f"the plan expects {h} heads in {attn!r} but the model has "
                              f"{getattr(modules[attn], 'num_heads', None)}")
    macs0, params0 = count_macs_params(model, example_inputs)
    lat0 = evaluation.measure_latency(model, example_inputs, runs=latency_runs).to_dict() if measure_latency else None
    before = {n: plan.channels[n] for n in plan.keep}
    with inference(model):
        out_shape = _output_shapes(model(example_inputs))
    train_shape = None
    if train_only_layers(model, example_inputs):  # auxiliary heads: checked in training mode as well
        with training_mode(model), torch.no_grad():
            train_shape = _output_shapes(model(two_samples(example_inputs)))

    dg = dependency_graph(model, example_inputs, fresh=True)  # pruned through: not shared with the cache
    planned = set(plan.keep)
    todo = []
    for members in plan.groups:
        root = members[0]
        removed = plan.removed(root)
        for m in members[1:]:
            if plan.removed(m) != removed:
                raise ConfigError(f"the plan removes different channels from coupled layers {root!r} and {m!r}")
        if not removed:
            continue
        items = group_items(dg, pruning_group(dg, modules[root], removed), names)
        for it in items:
            if (
                it.output
                and isinstance(it.module, (nn.Conv2d, nn.Linear))
                and not (isinstance(it.module, nn.Conv2d) and it.module.groups > 1)
                and it.name not in planned
            ):
                raise ConfigError(
                    f"pruning {root!r} would also remove output channels of {it.name!r}, which the plan does not list"
                )
        if not check_group(dg, pruning_group(dg, modules[root], removed)):
            raise ConfigError(f"pruning {root!r} as planned would empty a layer of its group")
        todo.append((root, removed, items))

    backup = copy.deepcopy(model)  # the prune is undone if the network comes out broken
    balanced: list[str] = []
    if bias_balancing:
        consumers: dict[str, list[tuple[nn.Module, list[int]]]] = {}
        for _root, _removed, items in todo:
            for it in items:
                if it.output or not isinstance(it.module, (nn.Conv2d, nn.Linear)):
                    continue
                if isinstance(it.module, nn.Conv2d) and it.module.groups > 1:
                    continue  # a depthwise conv is pruned with its producer, not a consumer
                consumers.setdefault(it.name, []).append((it.module, list(it.indices)))
        if means is None:
            if batches is None:
                raise ConfigError("bias_balancing=True needs batches= (the scoring set) or means=")
            means = consumer_input_means(model, consumers, batches)
        layer_info = find_prunable_layers(model, example_inputs)
        norms = {n: (modules[info.norm] if info.norm else None) for n, info in layer_info.items()}
        for name, cons in consumers.items():
            if name not in means:
                raise ConfigError(f"bias balancing: no mean input for consumer {name!r}")
            for mod, idxs in cons:
                _balance(mod, name, idxs, means[name], norms.get(name))
            balanced.append(name)

    # Prune group by group, each group re-derived right before it is pruned: a root's own channel
    # indices are untouched by the other groups, but concatenation consumers (DenseNet) shift, and
    # torch-pruning recomputes those offsets from the current shapes when a group is built.
    for root, removed, _ in todo:
        pruning_group(dg, modules[root], removed).prune()
    try:
        for attn, kept in plan.heads.items():  # whole heads: inside the module, nothing outside changes width
            if len(kept) < plan.num_heads[attn]:
                prune_heads(modules[attn], kept, attn)
    except ConfigError:
        model.__dict__.update(backup.__dict__)
        raise

    _check_after(model, backup, plan, modules, example_inputs, out_shape, train_shape)
    recovered: list[str] = []
    fits: dict[str, Any] = {}
    if reconstruct:
        if calibration is None:
            raise ConfigError("reconstruct=True needs calibration= (batches of the scoring set or training data)")
        fits = {n: f.to_dict() for n, f in recovery.reconstruct(model, backup, calibration, plan=plan,
                                                                 **dict(reconstruct_kwargs or {})).items()}
        recovered.append("reconstruct")
    if calibration is not None and recalibrate_bn and recovery.recalibrate_bn(model, calibration):
        recovered.append("recalibrate_bn")
    after = {layer: _width(modules[layer]) for layer in plan.keep}
    macs1, params1 = count_macs_params(model, example_inputs)
    lat1 = evaluation.measure_latency(model, example_inputs, runs=latency_runs).to_dict() if measure_latency else None
    return PruneReport(params0, params1, macs0, macs1, before, after, lat0, lat1, balanced, recovered, fits)


def _width(mod: nn.Module) -> int | None:
    return getattr(mod, "out_channels", getattr(mod, "out_features", None))


def _output_shapes(out: object) -> object:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (list, tuple)):
        return [_output_shapes(o) for o in out]
    if isinstance(out, dict):
        return {k: _output_shapes(v) for k, v in out.items()}
    return type(out).__name__


def _check_after(model, backup, plan, modules, example_inputs, out_shape, train_shape=None) -> None:
    """The cheap correctness check after every prune: every planned layer has the planned width, the
    network runs on the example input and its output shape is unchanged (``train_shape``: in training
    mode too, for networks with training-only layers); otherwise undo and raise."""
    problem = None
    for layer in plan.keep:
        if _width(modules[layer]) != len(plan.keep[layer]):
            problem = f"{layer!r} has {_width(modules[layer])} channels, the plan keeps {len(plan.keep[layer])}"
            break
    for attn, kept in plan.heads.items():
        if problem is None and modules[attn].num_heads != len(kept):
            problem = f"{attn!r} has {modules[attn].num_heads} heads, the plan keeps {len(kept)}"
    if problem is None:
        mode = ""
        try:
            with inference(model):
                shape = _output_shapes(model(example_inputs))
            if shape != out_shape:
                problem = f"the network's output shape changed from {out_shape} to {shape}"
            if problem is None and train_shape is not None:
                mode = " in training mode"
                with training_mode(model), torch.no_grad():
                    shape = _output_shapes(model(two_samples(example_inputs)))
                if shape != train_shape:
                    problem = f"the network's training-mode output shape changed from {train_shape} to {shape}"
        except RuntimeError as err:
            problem = f"the pruned network no longer runs{mode}: {str(err).splitlines()[0]}"
    if problem is not None:
        model.__dict__.update(backup.__dict__)  # undo: the module tree as it was before the prune
        raise ConfigError(f"the prune was undone: {problem}")


def restore(model: nn.Module, plan_dict: Plan | Mapping[str, Any], example_inputs: torch.Tensor | None = None) -> nn.Module:
    """Replay a saved plan on a freshly built model, so that the pruned model's plain ``state_dict``
    loads into it (``model.load_state_dict(pruned_state_dict)``). Returns ``model``.

    The example input shape is read from ``plan.meta["input_shape"]`` (set by :func:`lightprune.plan`)
    unless ``example_inputs`` is given.
    """
    plan = plan_dict if isinstance(plan_dict, Plan) else Plan.from_dict(plan_dict)
    if example_inputs is None:
        shape = plan.meta.get("input_shape")
        if not shape:
            raise ConfigError("restore: the plan has no meta['input_shape']; pass example_inputs=")
        example_inputs = torch.zeros(*shape, device=next(model.parameters()).device)
    prune(model, plan, example_inputs, measure_latency=False)
    return model


def removed_channel_fill(
    model: nn.Module,
    layers: Iterable[str] | Mapping[str, Any] | None,
    batches: Iterable[Any],
    example_inputs: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The value bias balancing gives each channel of ``layers`` when it is removed: the mean of what
    the layer's **consumer receives** on that channel (its input, after any pooling), over ``batches``.

    This is the one definition of bias balancing (CRITERIA.md "Bias balancing"): :func:`prune` with
    ``bias_balancing=True`` folds exactly these means (:func:`consumer_input_means`) into every
    consumer's bias, and ablation in mean mode (:func:`lightprune.analysis.ablate_channels`) fills a
    removed channel of the post-activation map with them. The two agree exactly when the consumer has
    no padding and the path from the captured map to the consumer maps a constant map to the same
    constant (max or average pooling, identity; a Linear after ``Flatten`` sees a 1x1 map).

    The consumers of a layer are the Conv2d / Linear layers that lose input channels when its output
    channels are removed (the in-channel side of its torch-pruning group; depthwise convs are pruned
    with their producer and skipped, as in :func:`prune`) and whose input depends on the layer's
    post-activation output (a residual group's consumers that read another member's output are left
    out). When several consumers remain, the first in execution order is used (the ablation can put
    only one value in the map; surgery balances each consumer with its own mean). A Linear consumer
    after ``Flatten`` gets ``r`` input features per channel: the fill is their mean.

    Args:
        model: the network (not modified; run in eval mode, every module's mode restored).
        layers: prunable layer names (or a mapping keyed by them, e.g. from
            :func:`lightprune.collect.find_prunable_layers`); None: every prunable layer.
        batches: the scoring set, ``(inputs, labels)`` or dict batches, or plain input tensors.
        example_inputs: a small input batch for the dependency graph and the tracing.

    Returns:
        ``{layer: (C,) float64 tensor}`` on the CPU.

    Raises:
        ConfigError: a name is not a prunable layer, a layer has no Conv2d / Linear consumer (nothing
            to balance), or ``batches`` is empty.

    Example::

        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.MaxPool2d(2), torch.nn.Conv2d(2, 3, 2), torch.nn.Flatten(),
        ...                           torch.nn.Linear(3, 2))
        >>> x = torch.randn(4, 1, 4, 4)
        >>> fill = removed_channel_fill(net, ["0"], [x], x[:1])
        >>> pooled = torch.nn.functional.max_pool2d(torch.relu(net[0](x)), 2)
        >>> bool(torch.allclose(fill["0"], pooled.double().mean(dim=(0, 2, 3))))
        True
    """
    found = find_prunable_layers(model, example_inputs, None if layers is None else list(layers))
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    dg = dependency_graph(model, example_inputs)
    chosen: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, info in found.items():
        items = group_items(dg, pruning_group(dg, info.module, list(range(info.out_channels))), names)
        candidates = {
            it.name: it.indices
            for it in items
            if not it.output
            and it.name is not None
            and isinstance(it.module, (nn.Conv2d, nn.Linear))
            and not (isinstance(it.module, nn.Conv2d) and it.module.groups > 1)
        }
        reached = _consumers_reached(model, {name: info}, list(candidates), example_inputs)
        if not reached:
            raise ConfigError(
                f"layer {name!r} has no Conv2d / Linear consumer of its channels: removing them leaves nothing "
                "to balance"
            )
        chosen[name] = (reached[0], candidates[reached[0]])
    means = consumer_input_means(model, {c for c, _ in chosen.values()}, batches)
    fill: dict[str, torch.Tensor] = {}
    for name, (consumer, idx) in chosen.items():
        c_out = found[name].out_channels
        if len(idx) % c_out:
            raise ConfigError(
                f"layer {name!r}: its consumer {consumer!r} takes {len(idx)} inputs from its {c_out} channels; "
                "cannot map them back to channels"
            )
        m = means[consumer].cpu()[torch.tensor(idx, dtype=torch.long)]
        fill[name] = m.reshape(c_out, -1).mean(1)
    return fill


def _consumers_reached(
    model: nn.Module, layer: Mapping[str, Any], consumers: list[str], example_inputs: torch.Tensor
) -> list[str]:
    """Those of ``consumers`` whose input depends on the layer's post-activation output, in execution
    order (one forward pass of ``example_inputs`` with only that output requiring gradients)."""
    from .collect import capture_activations

    modules = dict(model.named_modules())
    reached: list[str] = []
    handles = []
    for cname in consumers:

        def pre(mod, args, _n=cname):
            if args and isinstance(args[0], torch.Tensor) and args[0].requires_grad and _n not in reached:
                reached.append(_n)

        handles.append(modules[cname].register_forward_pre_hook(pre))
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        mark = lambda _name, out: out.detach().requires_grad_(True) * 1.0  # noqa: E731  (a non-leaf)
        with inference(model, grad=True), capture_activations(model, dict(layer), mark):
            model(example_inputs.detach())
    finally:
        for p, was in flags:
            p.requires_grad_(was)
        for h in handles:
            h.remove()
    return reached


__all__.append("removed_channel_fill")
