"""The torch-pruning boundary: every call into ``torch_pruning`` lives here.

- :func:`dependency_graph` — torch-pruning's ``DependencyGraph`` of a network;
- :class:`Group` / :func:`find_groups` — prunable layers whose output channels must be removed
  together (residual additions, depthwise convolutions, concatenations);
- :func:`out_channel_fn` — the pruning function that removes output channels of a layer;
- :func:`pruning_group`, :func:`group_items` — the group torch-pruning derives for removing given
  channels of a root layer, as plain ``(module name, module, is_output_side, indices)`` items;
- :func:`count_macs_params` — MACs and parameters per sample (attention modules by
  :func:`lightprune.attention.attention_macs`, whatever their head count);
- :func:`group_blockers` — groups a channel plan leaves whole (attention, unplanned outputs).

Nothing else in lightprune imports ``torch_pruning`` except ``criteria/adapters.py``, which wraps its
importance classes (Taylor, BN scale) and takes its graphs from here.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .evaluation import training_mode

__all__ = [
    "Group",
    "GroupItem",
    "dependency_graph",
    "find_groups",
    "out_channel_fn",
    "pruning_group",
    "group_items",
    "check_group",
    "count_macs_params",
    "output_layers",
    "two_samples",
    "channel_groups",
    "group_blockers",
]


@dataclass
class Group:
    """Prunable layers whose output channels are removed together (same indices).

    Attributes:
        root: the first member in execution order (torch-pruning's root for the group).
        members: every prunable layer of the group, root first.
        channels: number of channels the members share.
        channel_groups: ``G > 1`` when the channels feed a grouped convolution (or GroupNorm) with
            ``G`` groups: the channels form ``G`` blocks of ``channels / G`` and a plan must keep the
            same positions in every block (see :func:`channel_groups`).
    """

    root: str
    members: list[str]
    channels: int
    channel_groups: int = 1


@dataclass(frozen=True)
class GroupItem:
    """One dependency of a pruning group: ``module`` (named ``name``) loses ``indices`` on its output
    side (``output=True``) or on its input side."""

    name: str | None
    module: nn.Module
    output: bool
    indices: tuple[int, ...]


def out_channel_fn(module: nn.Module):
    """torch-pruning's function that removes output channels of ``module`` (Conv2d or Linear)."""
    import torch_pruning as tp

    if isinstance(module, nn.Conv2d):
        return tp.prune_conv_out_channels
    if isinstance(module, nn.Linear):
        return tp.prune_linear_out_channels
    raise ConfigError(f"cannot remove output channels of a {type(module).__name__}; prunable layers are Conv2d and Linear")


# one entry (the last graph built): a graph holds its model's modules, so a per-model cache would keep
# every model alive; the pipeline asks for the same model's graph several times in a row
_LAST: list[Any] = [None, None, None]  # [weakref to the model, signature, graph]


def _signature(model: nn.Module, example_inputs: torch.Tensor) -> tuple:
    """What the graph depends on: the module tree, every parameter's shape, the input's shape/dtype/device."""
    params = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    mods = tuple((n, type(m).__name__) for n, m in model.named_modules())
    return params, mods, tuple(example_inputs.shape[1:]), example_inputs.dtype, str(example_inputs.device)


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor, *, fresh: bool = False):
    """torch-pruning ``DependencyGraph`` of ``model`` (built with autograd on, whatever the caller's
    mode, in eval mode; every module's training flag restored). When the eval-mode forward leaves
    Conv2d / Linear layers out (auxiliary heads that run only in training, as in GoogLeNet and
    Inception v3), the graph of a training-mode forward on two samples is used instead, so that
    those layers' input channels follow a prune (buffers and RNG state restored: no trace left).

    The last graph built is reused while it is asked for the same model with the same structure
    (modules, parameter shapes) and input shape; a prune changes the shapes, so the next call rebuilds it.
    ``fresh=True`` always builds a new one (surgery, which mutates the model through it).
    """
    import torch_pruning as tp

    _tolerate_unknown_concat_widths()
    sig = _signature(model, example_inputs)
    ref, last_sig, last_dg = _LAST
    if not fresh and ref is not None and ref() is model and last_sig == sig:
        return last_dg
    modes = [(m, m.training) for m in model.modules()]
    with torch.inference_mode(False), torch.enable_grad():
        x = example_inputs.detach().clone()
        model.eval()
        try:
            dg = _build(tp, model, x)
            if _missing_layers(model, dg):
                # layers the eval-mode forward never calls (GoogLeNet / Inception v3 auxiliary heads):
                # the graph from a training-mode forward, so that their input channels follow a prune
                try:
                    with training_mode(model):
                        full = _build(tp, model, two_samples(x), forward_fn=lambda mod, inp: mod.train()(inp))
                except Exception:  # noqa: BLE001 - a model that does not run in training mode keeps its eval graph
                    full = dg
                if len(_missing_layers(model, full)) < len(_missing_layers(model, dg)):
                    dg = full
        finally:
            for m, was in modes:
                m.training = was
    _LAST[:] = [None, None, None] if fresh else [weakref.ref(model), sig, dg]
    return dg


def _build(tp, model: nn.Module, x: torch.Tensor, **kwargs):
    """torch-pruning's graph of ``model``; its failures become a :class:`ConfigError` that says where."""
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=x, **kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with the model and the step named
        import traceback

        frames = [f for f in traceback.extract_tb(err.__traceback__) if "torch_pruning" in f.filename]
        where = f" in torch-pruning's {frames[-1].name}" if frames else ""
        hint = (" (a reshape that mixes channels, such as ShuffleNet's channel shuffle, which torch-pruning "
                "cannot map)" if "reshape" in where else "")
        raise ConfigError(
            f"{type(model).__name__} cannot be pruned: torch-pruning could not build its dependency graph: "
            f"{type(err).__name__}{where}{hint}: {err}"
        ) from err


def _tolerate_unknown_concat_widths() -> None:
    """torch-pruning's ``update_concat_index_mapping`` (run whenever a graph is built and whenever a
    pruning group is derived) sums the inferred input widths of a concatenation before it checks them
    for None (an unknown width) and raises ``TypeError`` on Swin-S / Swin-B. Its own rule for an
    unknown width, a few lines later, is to leave the concatenation without an index mapping. This
    wraps the function once per process so that it follows that rule instead of raising; every other
    case runs torch-pruning's code unchanged."""
    from torch_pruning.dependency import index_mapping

    original = index_mapping.update_concat_index_mapping
    if getattr(original, "_lightprune", False):
        return

    def update(graph, cat_node):
        try:
            return original(graph, cat_node)
        except TypeError:
            if None in (getattr(cat_node.module, "concat_sizes", None) or ()):
                return None
            raise

    update._lightprune = True
    index_mapping.update_concat_index_mapping = update


def _missing_layers(model: nn.Module, dg) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m not in dg.module2node]


def two_samples(x: torch.Tensor) -> torch.Tensor:
    """A batch of at least two samples (batch-norm layers in training mode refuse one value per channel)."""
    return x if x.shape[0] >= 2 else torch.cat([x, x])


def pruning_group(dg, module: nn.Module, idxs: list[int]):
    """The torch-pruning group that removes output channels ``idxs`` of ``module`` (call ``.prune()``)."""
    return dg.get_pruning_group(module, out_channel_fn(module), list(idxs))


def group_items(dg, group, names: Mapping[nn.Module, str]) -> list[GroupItem]:
    """The dependencies of a torch-pruning group as plain :class:`GroupItem` records."""
    items = []
    for item in group:
        mod = item.dep.target.module
        out = bool(dg.is_out_channel_pruning_fn(item.dep.handler))
        if not out and not dg.is_in_channel_pruning_fn(item.dep.handler):
            continue
        items.append(GroupItem(names.get(mod), mod, out, tuple(int(i) for i in item.idxs)))
    return items


def find_groups(
    model: nn.Module, example_inputs: torch.Tensor, layers: Mapping[str, Any], skipped: dict[str, str] | None = None
) -> list[Group]:
    """Coupled groups among ``layers`` (every layer is in exactly one group), in execution order.

    Layers coupled with a channel permutation or a split (channel *i* of one is channel *j != i* of
    the other, or only part of its channels: CSPNet's split-and-concatenate) cannot share one
    kept-index set: with ``skipped`` given, every layer of such a group (and of any group that
    reaches one of them) is left out and recorded there with the reason; without it, a
    :class:`ConfigError` is raised."""
    dg = dependency_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    seen: set[str] = set()
    groups: list[Group] = []
    for name, layer in layers.items():
        if name in seen:
            continue
        g = pruning_group(dg, layer.module, list(range(layer.out_channels)))
        members, permuted = [name], None
        for item in g:
            other = names.get(item.dep.target.module)
            if dg.is_out_channel_pruning_fn(item.dep.handler) and other in layers and other != name:
                partial = layers[other].out_channels != layer.out_channels  # a split / concatenation
                if (partial or list(item.idxs) != list(item.root_idxs)) and permuted is None:
                    permuted = other
                if other not in members:
                    members.append(other)
        seen.update(members)
        left = next((m for m in members if skipped is not None and m in skipped), None)
        if permuted is not None or left is not None:
            why = (f"it is coupled with {permuted!r} through a channel permutation or a split (channel i of one is "
                   "another channel of the other), which one kept-index set cannot follow" if permuted is not None
                   else f"it is coupled with {left!r}, which is left whole")
            if skipped is None:
                raise ConfigError(f"layers {name!r} and {permuted or left!r}: {why}")
            for m in members:
                skipped.setdefault(m, f"it is left whole: {why}" if m == name else f"it is left whole: coupled with {name!r}")
            continue
        groups.append(Group(name, members, layer.out_channels))
    cg = channel_groups(model, example_inputs, {g.root: layers[g.root] for g in groups}, dg)
    for g in groups:
        g.channel_groups = cg.get(g.root, 1)
    return groups


def _absorbs_channels(module: nn.Module) -> bool:
    """A Conv2d (not depthwise) or Linear consumer mixes its input channels: they stop there."""
    if isinstance(module, nn.Conv2d):
        return not (module.groups > 1 and module.groups == module.in_channels)
    return isinstance(module, (nn.Linear, nn.MultiheadAttention))


def output_layers(model: nn.Module, example_inputs: torch.Tensor, dg=None) -> list[str]:
    """The Conv2d / Linear layers whose output channels *are* the network's output (in execution
    order): walking torch-pruning's graph forward from the layer through everything that keeps its
    channels (BatchNorm, activations, pooling, flatten, additions, depthwise convs, ...), the walk
    reaches the network output before any Conv2d/Linear consumer. A Linear classifier, SqueezeNet's
    1x1 conv classifier and every head of a network with several outputs are output layers;
    removing their output channels would change the output shape."""
    import torch_pruning as tp

    dg = dg if dg is not None else dependency_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    found: list[str] = []
    for module, node in dg.module2node.items():
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or module not in names:
            continue
        if not node.outputs:  # the last op of the graph
            found.append(names[module])
            continue
        stack, seen = list(node.outputs), set()
        while stack:
            cur = stack.pop()
            if id(cur) in seen:
                continue
            seen.add(id(cur))
            if _absorbs_channels(cur.module):
                continue
            if cur.type == tp.ops.OPTYPE.OUTPUT or not cur.outputs:
                found.append(names[module])
                break
            stack.extend(cur.outputs)
    return found


def channel_groups(model: nn.Module, example_inputs: torch.Tensor, layers: Mapping[str, Any], dg=None) -> dict[str, int]:
    """``{layer: G}`` for layers whose output channels feed a grouped (not depthwise) convolution or a
    GroupNorm with ``G`` groups: such channels can only be removed as the same positions in every one
    of the ``G`` consecutive blocks of ``C / G`` channels (torch-pruning's ``prune_conv_in_channels``
    keeps the first ``kept / G`` positions of a grouped conv's input). Layers not listed: 1."""
    dg = dg if dg is not None else dependency_graph(model, example_inputs)
    out: dict[str, int] = {}
    for name, layer in layers.items():
        g = pruning_group(dg, layer.module, list(range(layer.out_channels)))
        best = 1
        for item in g:
            mod = item.dep.target.module
            if isinstance(mod, nn.Conv2d) and mod.groups > 1 and mod.groups != mod.in_channels:
                best = max(best, int(mod.groups))
            elif isinstance(mod, nn.GroupNorm) and mod.num_groups > 1:
                best = max(best, int(mod.num_groups))
        if best > 1:
            out[name] = best
    return out


def group_blockers(
    model: nn.Module, example_inputs: torch.Tensor, groups: list[Group], layers: Mapping[str, Any], dg=None
) -> dict[str, str]:
    """``{group root: why}`` for the groups a channel plan must leave whole, because removing their
    channels would also cut into

    - an attention module (``nn.MultiheadAttention``, torchvision Swin / MaxViT, timm ``Attention`` --
      any module with ``num_heads`` or ``n_heads``, :func:`lightprune.attention.innermost_attention`):
      the residual stream of a transformer feeds every attention block, whose embedding width is
      split into heads (and hard-coded in torchvision's ViT);
      Its parameters count too (torchvision's Swin uses them with ``F.linear``);
    - the output side of a Conv2d/Linear that is not a prunable layer of the plan (an output layer).
    """
    from .attention import innermost_attention

    dg = dg if dg is not None else dependency_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    attn = innermost_attention(model)
    attn_mods = {id(sub): n for n, m in attn.items() for sub in m.modules()}
    attn_mods.update({id(p): n for n, m in attn.items() for p in m.parameters()})  # used functionally (Swin)
    out: dict[str, str] = {}
    for g in groups:
        layer = layers[g.root]
        reached = _reaches(dg, layer.module, attn_mods) if attn_mods else None
        if reached is not None:  # cheap walk first: the pruning group of a residual stream can take minutes
            out[g.root] = f"its channels reach the attention module {reached!r} (split into heads)"
            continue
        pg = pruning_group(dg, layer.module, list(range(min(1, layer.out_channels))))
        for item in pg:
            node = item.dep.target
            mod = node.module
            if id(mod) in attn_mods:
                out[g.root] = f"its channels reach the attention module {attn_mods[id(mod)]!r} (split into heads)"
                break
            if (
                dg.is_out_channel_pruning_fn(item.dep.handler)
                and isinstance(mod, (nn.Conv2d, nn.Linear))
                and not (isinstance(mod, nn.Conv2d) and mod.groups > 1)
                and names.get(mod) not in layers
            ):
                out[g.root] = f"it would remove output channels of {names.get(mod)!r}, which is not a prunable layer"
                break
    return out


# element-wise ops whose operands share channels (``Addmm`` -- a Linear on a 3-D/4-D input -- is not one)
_COUPLING = re.compile(r"(Add|Sub|Mul|Div)Backward")


def _reaches(dg, module: nn.Module, targets: Mapping[int, str]) -> str | None:
    """The name in ``targets`` (``{id(module or parameter): name}``) of the first graph node the
    channels of ``module``'s output reach, walking torch-pruning's graph without index mappings:
    forward through every op except a Conv2d/Linear/attention consumer (which absorbs channels), and
    backward from an element-wise op (addition, multiplication) to its other operands, which share the
    channels. None when none is reached. A superset of the pruning group's reach, in time linear in
    the graph (torch-pruning's own group derivation expands index sets at every reshape)."""
    import torch_pruning as tp

    start = dg.module2node.get(module)
    if start is None:
        return None
    stack, seen = [(start, True)], set()
    while stack:
        node, forward = stack.pop()
        if (id(node), forward) in seen:
            continue
        seen.add((id(node), forward))
        if node is not start and id(node.module) in targets:
            return targets[id(node.module)]
        if node is start and not forward:  # back at the layer itself (a depthwise / SE loop): its
            continue  # output was walked already, its input is not its channels
        absorbs = node is not start and _absorbs_channels(node.module)
        if forward and absorbs:
            continue
        if not forward and absorbs:  # a producer: its output carries the channels, go on from there
            stack.append((node, True))
            continue
        if forward or node is start:
            stack.extend((o, True) for o in node.outputs)
        if node.type == tp.ops.OPTYPE.ELEMENTWISE and len(node.inputs) > 1 and _COUPLING.match(type(node.grad_fn).__name__):
            stack.extend((i, False) for i in node.inputs)
        elif not forward:
            stack.extend((i, False) for i in node.inputs)
    return None


def check_group(dg, group) -> bool:
    """torch-pruning's check that the group leaves every layer at least one channel."""
    return bool(dg.check_pruning_group(group))


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) per sample, counted by torch-pruning (``tp.utils.count_ops_and_params``).

    The count includes BatchNorm/ReLU/pooling operations; ``example_inputs`` is reduced to one sample.
    """
    import torch_pruning as tp
    from torch_pruning.utils import op_counter

    from .attention import attention_macs, attention_types, swin_attention_macs
    from .evaluation import inference

    def attn_hook(module, inputs, output):
        x = inputs[0]
        if x.ndim == 4:  # shifted-window attention: (batch, height, width, channels)
            module.__flops__ += x.shape[0] * swin_attention_macs(module, *(int(s) for s in x.shape[1:]))
            return
        first = isinstance(module, nn.MultiheadAttention) and not module.batch_first
        batch, length = (x.shape[1], x.shape[0]) if first else (x.shape[0], x.shape[1])
        module.__flops__ += batch * attention_macs(module, int(length), int(x.shape[2]))

    # attention modules counted by one formula whatever their head count (torch-pruning's own hooks
    # assume the attention width equals the embedding width, which a head prune changes)
    custom = {cls: attn_hook for cls in attention_types()}
    with inference(model):
        op_counter.CUSTOM_MODULES_MAPPING = custom  # read (and reset) by count_ops_and_params
        try:
            macs, params = tp.utils.count_ops_and_params(model, example_inputs[:1])
        finally:
            op_counter.CUSTOM_MODULES_MAPPING = {}
    return int(macs), int(params)
