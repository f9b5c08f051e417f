"""Find the prunable layers of a network and capture their post-activation outputs with hooks.

**Prunable layers**: every ``nn.Conv2d`` with ``groups == 1`` (depthwise/grouped convs are coupled
to the conv that feeds them and are pruned with it, not scored alone) and every ``nn.Linear``,
except

- the **output layer(s)**: with example inputs, found by tracing (torch-pruning's graph,
  :func:`lightprune.graph.output_layers`): every Conv2d/Linear whose output channels reach the
  network's output without passing through another Conv2d/Linear -- a Linear classifier,
  SqueezeNet's 1x1 conv classifier, every head of a network with several outputs. Without inputs
  (or when the graph cannot be traced): the last ``Linear`` and the last Conv2d/Linear registered;
- the projections inside an attention module (``nn.MultiheadAttention``, or a module with a
  ``num_heads`` attribute: torchvision Swin, timm ``Attention``): their outputs are split into heads.
  Whole heads are planned separately (``plan.heads``, :mod:`lightprune.attention`).

**Where the post-activation output is taken** (one forward pass on example inputs, tracing which
module consumes which tensor object):

1. start at the layer's output;
2. if the next module to receive exactly that tensor is a BatchNorm, move to its output;
3. if the next module to receive exactly that tensor is an activation module (ReLU, ReLU6,
   SiLU, GELU, Sigmoid, Tanh, Hardswish, ...), capture *that call's* output.

What this gives on the supported architectures (tested in ``tests/test_collect.py``):

- VGG (torchvision and CIFAR): ``conv -> bn -> relu``: the ReLU output. Hidden Linear layers of
  the classifier: the ReLU after them.
- ResNet: inner convs (``conv1``; ``conv2`` of bottlenecks): ``bn -> relu``. A block's last conv:
  its BatchNorm output is added *in place* to the shortcut and then goes through the block's ReLU,
  so the capture is the block output ``relu(bn(conv) + shortcut)`` — the same tensor for every conv
  of a residual group, consistent with pruning the group together. ``downsample.0``: its
  BatchNorm output (no activation of its own). The block's shared ``relu`` module is called several
  times per forward; the capture records *which* call (``capture_call``).
- MobileNetV2: expansion/stem/last convs: ``bn -> ReLU6``; projection convs (linear bottleneck):
  the BatchNorm output; depthwise convs are not scored (coupled to the expansion conv).
- Pre-activation designs (DenseNet): the conv's own output (the next BatchNorm acts on a
  concatenation, not on this tensor).

Token outputs: a Linear inside a transformer MLP outputs ``(B, N, C)``; the router hands the
criteria the mean over the ``N`` tokens, ``(B, C)``, like a Linear neuron's output. Feature entropy
needs a spatial map ``(B, C, H, W)`` and does not apply to these layers.

Functional activations (``F.relu`` inside ``forward``) are not modules and cannot be seen: the
capture then stops at the BatchNorm (or the layer).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import ConfigError
from .evaluation import inference, training_mode
from .graph import output_layers, two_samples

__all__ = [
    "PrunableLayer", "find_prunable_layers", "trace_leaf_calls", "following_norms", "not_prunable", "select_layers", "capture_activations", "all_finite",
    "ACTIVATIONS",
    "LAYER_TYPES",
]

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
)
NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


@dataclass
class PrunableLayer:
    """A layer whose output channels can be removed.

    Attributes:
        name: module name in ``model.named_modules()``.
        module: the ``nn.Conv2d`` / ``nn.Linear``.
        kind: ``"conv"`` or ``"linear"``.
        out_channels: number of output channels / neurons.
        capture: name of the module whose output is the layer's post-activation output.
        capture_call: which call of ``capture`` within one forward pass (0-based).
        chain: module types from the layer to the capture, e.g. ``("Conv2d", "BatchNorm2d", "ReLU")``.
        activation: the activation module at the end of the chain, or None.
        norm: name of the normalisation module right after the layer (BatchNorm), or None.
    """

    name: str
    module: nn.Module
    kind: str
    out_channels: int
    capture: str = ""
    capture_call: int = 0
    chain: tuple[str, ...] = field(default_factory=tuple)
    activation: nn.Module | None = None
    norm: str | None = None


def _is_candidate(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.groups == 1) or isinstance(module, nn.Linear)


@dataclass
class _Call:
    name: str
    module: nn.Module
    index: int  # which call of this module
    inp: object
    out: object


def trace_leaf_calls(model: nn.Module, example_inputs: torch.Tensor, *, train: bool = False) -> list[_Call]:
    """Run one forward pass recording every leaf-module call (keeps tensors alive, so identity is safe).

    In eval mode; ``train=True``: in training mode, without gradients, leaving no trace
    (:class:`lightprune.evaluation.training_mode`)."""
    calls: list[_Call] = []
    counts: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue

        def hook(mod, args, out, _name=name):
            idx = counts.get(_name, 0)
            counts[_name] = idx + 1
            calls.append(_Call(_name, mod, idx, args[0] if args else None, out))

        handles.append(module.register_forward_hook(hook))
    try:
        if train:
            with training_mode(model), torch.no_grad():
                model(example_inputs)
        else:
            with inference(model):
                model(example_inputs)
    finally:
        for h in handles:
            h.remove()
    return calls


def train_only_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """Conv2d / Linear layers that a training-mode forward calls and an eval-mode one does not."""
    names = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    called = {c.name for c in trace_leaf_calls(model, example_inputs)}
    if not names - called:
        return []
    try:
        in_train = {c.name for c in trace_leaf_calls(model, two_samples(example_inputs), train=True)}
    except Exception:  # noqa: BLE001 - a model that does not run in training mode: nothing to check there
        return []
    return sorted((names & in_train) - called)


def find_prunable_layers(
    model: nn.Module,
    example_inputs: torch.Tensor | None = None,
    layers: Sequence[str] | None = None,
) -> dict[str, PrunableLayer]:
    """Return the prunable layers of ``model`` in execution order (registration order without inputs).

    Args:
        model: the network.
        example_inputs: a small input batch, e.g. ``torch.zeros(1, 3, 32, 32)``. With it, the
            post-activation capture point of each layer is located (see the module docstring) and
            the output layers are found by tracing; without it, ``capture`` is the layer itself and
            the output layers are the last Linear and the last Conv2d/Linear registered.
        layers: restrict to these module names (each must be a prunable layer).

    Raises:
        ConfigError: a name in ``layers`` is not a module, or not a prunable layer.
    """
    modules = dict(model.named_modules())
    if example_inputs is None:
        order = [n for n, m in modules.items() if _is_candidate(m)]
        calls: list[_Call] = []
    else:
        calls = trace_leaf_calls(model, example_inputs)
        seen: list[str] = []
        for c in calls:
            if _is_candidate(c.module) and c.name not in seen:
                seen.append(c.name)
        order = seen
    excluded = _excluded(model, modules, order, example_inputs, calls)
    candidates = [n for n in order if n not in excluded]

    if layers is not None:
        for n in layers:
            if n not in modules:
                raise ConfigError(f"layers contains {n!r}, which is not a module of the model")
            if n not in candidates:
                why = excluded.get(n) or f"a {type(modules[n]).__name__}"
                raise ConfigError(
                    f"layers contains {n!r}, which is {why}, not a prunable layer; prunable layers: {candidates}"
                )
        wanted = set(layers)
        candidates = [n for n in candidates if n in wanted]

    out: dict[str, PrunableLayer] = {}
    for n in candidates:
        m = modules[n]
        kind = "conv" if isinstance(m, nn.Conv2d) else "linear"
        width = m.out_channels if kind == "conv" else m.out_features
        info = PrunableLayer(n, m, kind, width, capture=n, chain=(type(m).__name__,))
        if calls:
            _locate_capture(info, calls)
        out[n] = info
    return out


def _output_layers(model, modules, order, example_inputs, calls) -> list[str]:
    if calls:
        try:
            found = output_layers(model, example_inputs)
            if found:
                return found
        except Exception:  # noqa: BLE001 - a graph torch-pruning cannot trace: the registration rule below
            pass
    linears = [n for n in order if isinstance(modules[n], nn.Linear)]
    out = linears[-1:]
    if not calls and order and order[-1] not in out:
        out.append(order[-1])  # a 1x1 conv classifier (SqueezeNet) registered last
    return out


def _excluded(model, modules, order, example_inputs, calls) -> dict[str, str]:
    """``{name: why}`` for the Conv2d/Linear layers that are not prunable: the output layer(s) and the
    projections inside attention modules (their outputs are split into heads)."""
    from .attention import innermost_attention

    why: dict[str, str] = {}
    for n in _output_layers(model, modules, order, example_inputs, calls):
        why[n] = "the final classifier" if isinstance(modules[n], nn.Linear) else "an output layer of the network"
    for parent_name, parent in innermost_attention(model).items():
        for child_name, child in parent.named_modules():  # every layer inside (Swin V2's position-bias MLP)
            if not child_name:
                continue
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if _is_candidate(child) and full not in why:
                why[full] = (
                    f"a {type(child).__name__} inside the attention module {parent_name!r} (its outputs are "
                    "split into heads, which channel plans do not follow)"
                )
    return why


def following_norms(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, str]:
    """``{layer: name of the normalisation module that receives its output}`` for every Conv2d/Linear
    (output layers included), found by the same trace as the capture points."""
    calls = trace_leaf_calls(model, example_inputs)
    out: dict[str, str] = {}
    for n, m in model.named_modules():
        if _is_candidate(m) and any(c.name == n for c in calls):
            info = PrunableLayer(n, m, "conv" if isinstance(m, nn.Conv2d) else "linear",
                                 m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            _locate_capture(info, calls)
            if info.norm:
                out[n] = info.norm
    return out


def not_prunable(model: nn.Module, example_inputs: torch.Tensor | None = None) -> dict[str, str]:
    """``{name: why}`` for the Conv2d/Linear layers that :func:`find_prunable_layers` leaves out
    (output layers, attention projections; grouped convs are not listed). With ``example_inputs``,
    also the layers the forward pass on them never calls (an auxiliary head that runs only in
    training mode, as in GoogLeNet / Inception v3 in eval mode): scores made without inputs cover
    them, but no trace can plan them."""
    modules = dict(model.named_modules())
    calls = trace_leaf_calls(model, example_inputs) if example_inputs is not None else []
    order = [n for n, m in modules.items() if _is_candidate(m)]
    why = _excluded(model, modules, order, example_inputs, calls)
    if example_inputs is not None:
        called = {c.name for c in calls}
        mode = "training" if model.training else "eval"
        for n in order:
            if n not in called and n not in why:
                why[n] = (f"not called by the forward pass on example_inputs (in {mode} mode; e.g. an "
                          "auxiliary head that runs only in training)")
    return why


def _locate_capture(info: PrunableLayer, calls: list[_Call]) -> None:
    pos = next(i for i, c in enumerate(calls) if c.name == info.name)
    current = calls[pos]
    chain = [type(current.module).__name__]

    def next_consumer(after: int, tensor: object) -> int | None:
        for j in range(after + 1, len(calls)):
            if calls[j].inp is tensor:
                return j
        return None

    j = next_consumer(pos, current.out)
    if j is not None and isinstance(calls[j].module, NORMS):
        current, pos = calls[j], j
        chain.append(type(current.module).__name__)
        info.norm = current.name
        j = next_consumer(pos, current.out)
    if j is not None and isinstance(calls[j].module, ACTIVATIONS):
        current = calls[j]
        chain.append(type(current.module).__name__)
        info.activation = current.module
    info.capture, info.capture_call, info.chain = current.name, current.index, tuple(chain)


#: values of ``layer_types=`` in :func:`select_layers` (:attr:`PrunableLayer.kind`)
LAYER_TYPES = ("conv", "linear")


def _as_list(value: str | Sequence[str] | None, what: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    out = list(value)
    for v in out:
        if not isinstance(v, str):
            raise ConfigError(f"{what} must be names or glob patterns (strings); got {v!r}")
    return out


def select_layers(
    found: Mapping[str, PrunableLayer],
    layers: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    layer_types: str | Sequence[str] | None = None,
    *,
    modules: Mapping[str, nn.Module] | None = None,
) -> dict[str, PrunableLayer]:
    """The layer scope, written once: the layers of ``found`` (in its order) that are selected.

    Every front end (``lp.score``, ``lp.plan``, the engine's ``PruneSpec``, ``PruningCallback``,
    ``compare``) selects its layers here.

    Args:
        found: the prunable layers (:func:`find_prunable_layers`).
        layers: names or ``fnmatch`` glob patterns (``"features.*"``, ``"layer[12].*.conv?"``); a layer
            is kept when it matches any of them. None: every layer.
        exclude: names or glob patterns removed afterwards.
        layer_types: ``"conv"`` and/or ``"linear"`` (:attr:`PrunableLayer.kind`); None: both.
        modules: ``dict(model.named_modules())``, only to explain a name that matches nothing.

    Raises:
        ConfigError: an entry of ``layers`` or ``exclude`` that matches no prunable layer (the
            message lists them), an unknown layer type, or an empty selection.

    Example::

        >>> import lightprune as lp
        >>> from lightprune.collect import find_prunable_layers, select_layers
        >>> found = find_prunable_layers(lp.create_model("cifar_vgg11", 10, width_mult=0.25))
        >>> list(select_layers(found, layers="features.*", exclude=["features.0"]))[:2]
        ['features.4', 'features.8']
        >>> list(select_layers(found, layer_types="linear"))
        ['classifier.0']
    """
    names = list(found)
    wanted = _as_list(layers, "layers")
    dropped = _as_list(exclude, "exclude")
    types = _as_list(layer_types, "layer_types")

    def match(what: str, patterns: list[str]) -> set[str]:
        hit: set[str] = set()
        for pat in patterns:
            m = {n for n in names if n == pat or fnmatch.fnmatchcase(n, pat)}
            if not m:
                why = "which matches no prunable layer"
                if modules is not None and pat in modules:
                    last = [n for n, mod in modules.items() if isinstance(mod, nn.Linear)]
                    mod = modules[pat]
                    if isinstance(mod, nn.Linear) and last and pat == last[-1]:
                        why = "which is the final classifier, not a prunable layer"
                    else:
                        why = f"which is a {type(mod).__name__}, not a prunable layer"
                elif modules is not None and not any(ch in pat for ch in "*?["):
                    why = "which is not a module of the model"
                raise ConfigError(f"{what} contains {pat!r}, {why}; prunable layers: {names}")
            hit |= m
        return hit

    keep = match("layers", wanted) if wanted is not None else set(names)
    if dropped:
        keep -= match("exclude", dropped)
    if types is not None:
        for t in types:
            if t not in LAYER_TYPES:
                raise ConfigError(f"layer_types contains {t!r}; allowed: {', '.join(LAYER_TYPES)}")
        keep = {n for n in keep if found[n].kind in types}
    out = {n: found[n] for n in names if n in keep}
    if not out and names:
        raise ConfigError(
            f"no layer left to prune after layers={layers!r}, exclude={exclude!r}, layer_types={layer_types!r}; "
            f"prunable layers: {names}"
        )
    return out


def all_finite(t: torch.Tensor) -> bool:
    """True iff no entry of ``t`` is NaN or +-inf.

    One sum (float32 accumulation for float16 / bfloat16): a NaN or an infinity makes the sum NaN or
    infinite whatever the order of the additions, and the sum reads the tensor once without the
    boolean copy of ``torch.isfinite(t).all()`` (about 20x faster on CPU). Only a non-finite sum
    (a true NaN / inf, or a sum that overflowed) is checked entry by entry.
    """
    if not t.is_floating_point() and not t.is_complex():
        return True
    low = t.dtype in (torch.float16, torch.bfloat16)
    total = t.sum(dtype=torch.float32) if low else t.sum()
    return bool(torch.isfinite(total)) or bool(torch.isfinite(t).all())


@contextmanager
def capture_activations(
    model: nn.Module,
    layers: dict[str, PrunableLayer],
    fn: Callable[[str, torch.Tensor], torch.Tensor | None],
    *,
    check_finite: bool = False,
) -> Iterator[None]:
    """The one hook router: while active, every forward pass calls ``fn(layer_name, post_activation_output)``
    once per layer, right when the output exists.

    Layers share a capture module when one module serves several of them (a ResNet block's ReLU serves
    ``conv1`` at call 0 and the block output at call 1): the router counts the calls of each capture
    module once per forward pass and routes each call to exactly the layers captured there.

    **Replacement**: when ``fn`` returns a tensor, it replaces the module's output for the rest of the
    forward pass (ablation, mean fill); several layers on the same call see the output as replaced by
    the previous ones. ``fn`` returning None only reads. ``fn`` must consume the tensor at once
    (update a statistic); nothing is kept, so at most one batch of activations is alive at any time.

    Raises:
        ConfigError: with ``check_finite``, a layer's activations contain NaN or inf (names the layer).
    """
    modules = dict(model.named_modules())
    by_capture: dict[str, dict[int, list[str]]] = {}
    for layer in layers.values():
        by_capture.setdefault(layer.capture, {}).setdefault(layer.capture_call, []).append(layer.name)
    counts: dict[str, int] = {}
    handles = [model.register_forward_pre_hook(lambda mod, args: counts.clear())]
    for cap, per_call in by_capture.items():

        def hook(mod, args, out, _cap=cap, _per_call=per_call):
            idx = counts.get(_cap, 0)
            counts[_cap] = idx + 1
            replaced = None
            for layer_name in _per_call.get(idx, ()):
                if check_finite and not all_finite(out):
                    raise ConfigError(
                        f"layer {layer_name!r}: its activations contain NaN or inf (captured at {_cap!r}); "
                        "check the inputs and the weights (a diverged training?)"
                    )
                if out.ndim == 3 and layers[layer_name].kind == "linear":
                    # token outputs (B, N, C) of a transformer MLP: the criteria see the mean over tokens
                    if fn(layer_name, out.mean(1)) is not None:
                        raise ConfigError(
                            f"layer {layer_name!r} outputs tokens (B, N, C): replacing its output "
                            "(ablation) is supported for (B, C) and (B, C, H, W) outputs only"
                        )
                    continue
                new = fn(layer_name, out)
                if new is not None:
                    out = replaced = new
            return replaced

        handles.append(modules[cap].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
