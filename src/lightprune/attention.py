"""Attention heads: which attention modules can lose whole heads, how a head is scored, and the surgery.

**Head-prunable modules** (:func:`find_attention`):

- ``nn.MultiheadAttention`` (torchvision's ViT ``self_attention``) with one packed input projection
  (``in_proj_weight``, ``kdim == vdim == embed_dim``), no ``bias_k``/``bias_v`` and no
  ``add_zero_attn``. After a prune its class becomes :class:`HeadPrunedMultiheadAttention` (a
  subclass: same parameter names, so a pruned ``state_dict`` loads into a replayed model), whose
  forward computes the attention of the kept heads; ``num_heads`` is the kept count, ``head_dim``
  and ``embed_dim`` (the input and output width) are unchanged.
- timm's ``Attention`` (``timm.models.vision_transformer.Attention``: ViT, DeiT, ...): ``qkv`` Linear
  of ``3 * num_heads * head_dim`` outputs, ``proj`` Linear; after a prune ``num_heads`` and
  ``attn_dim`` are the kept values and ``head_dim`` is unchanged (its forward reshapes with them).
  Its ``norm`` (``scale_norm``) and ``gate`` lose the same positions.

- torchvision Swin's ``ShiftedWindowAttention`` and ``ShiftedWindowAttentionV2`` (``qkv`` Linear of
  ``3 * dim`` outputs, ``proj`` Linear): torchvision's functional forward derives the head width from
  the *input* width, so after a prune the class becomes :class:`HeadPrunedShiftedWindowAttention`
  (or ``...V2``, subclasses with the same parameter names), whose forward takes ``head_dim`` from the
  module. The relative-position bias table (V1) or the last layer of the continuous position-bias
  MLP and ``logit_scale`` (V2) lose the removed heads' columns / rows.

Other modules with ``num_heads`` or ``n_heads`` (timm's window attentions, torchvision MaxViT's
``RelativePositionalMultiHeadAttention``, ...) keep their heads:
:func:`head_unprunable` names them with the reason.

**Head score** (:func:`head_scores`): the L1 norm of the head's weights, whatever the channel
criterion: ``sum |W|`` over the head's ``3 * head_dim`` rows of the query/key/value projection plus
its ``head_dim`` columns of the output projection (biases left out). The lowest-scored heads are
removed.

**Count** (:func:`heads_to_keep`): a module with ``H`` heads pruned at ratio ``r`` removes
``round(r * H)`` heads (half-up: 30 % of 12 heads removes 4, 50 % of 4 removes 2) and keeps at least
one; ties in score keep the lower head index. Kept head indices are ascending.

Removing a head is exactly zeroing its contribution: the pruned module's output equals the
unpruned module's output with the head's columns of the output projection set to zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

__all__ = [
    "AttentionInfo", "HeadPrunedMultiheadAttention", "HeadPrunedShiftedWindowAttention",
    "HeadPrunedShiftedWindowAttentionV2", "find_attention", "head_unprunable", "head_scores",
    "heads_to_keep", "innermost_attention", "prune_heads", "attention_macs", "swin_attention_macs", "attention_types",
]


@dataclass
class AttentionInfo:
    """A head-prunable attention module: ``kind`` ``"mha"`` (``nn.MultiheadAttention``), ``"timm"`` or
    ``"swin"`` (torchvision's shifted-window attention, V1 or V2)."""

    name: str
    module: nn.Module
    kind: str
    num_heads: int
    head_dim: int


def _timm_attention_class():
    try:
        from timm.models.vision_transformer import Attention
    except Exception:  # noqa: BLE001 - timm is an optional extra
        return None
    return Attention


def _swin_classes() -> tuple[type[nn.Module], ...]:
    """torchvision's (ShiftedWindowAttention, ShiftedWindowAttentionV2)."""
    from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

    return ShiftedWindowAttention, ShiftedWindowAttentionV2


def _is_swin(module: nn.Module) -> bool:
    return isinstance(module, _swin_classes())


def _why_not(module: nn.Module) -> str | None:
    """None when the heads of ``module`` can be removed, else why not."""
    if _is_swin(module):
        if type(module) not in (*_swin_classes(), HeadPrunedShiftedWindowAttention, HeadPrunedShiftedWindowAttentionV2):
            return f"a subclass {type(module).__name__} of torchvision's shifted-window attention (its forward is unknown)"
        if module.qkv.out_features % (3 * module.num_heads) or module.proj.in_features * 3 != module.qkv.out_features:
            return "its qkv width is not 3 * num_heads * head_dim with proj reading num_heads * head_dim"
        return None
    if isinstance(module, nn.MultiheadAttention):
        if not module._qkv_same_embed_dim:
            return "its key/value widths differ from the query width (separate projections)"
        if module.bias_k is not None or module.add_zero_attn:
            return "it has bias_k/bias_v or add_zero_attn"
        return None
    timm_attn = _timm_attention_class()
    if timm_attn is not None and type(module) is timm_attn:
        if getattr(module, "attn_dim", None) != module.num_heads * module.head_dim:
            return "its attn_dim is not num_heads * head_dim"
        return None
    return (f"a {type(module).__name__} (head pruning supports nn.MultiheadAttention, timm's "
            "vision_transformer.Attention and torchvision Swin's ShiftedWindowAttention / V2)")


def _is_attention(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention) or hasattr(m, "num_heads") or hasattr(m, "n_heads")


def innermost_attention(model: nn.Module) -> dict[str, nn.Module]:
    """The attention modules of ``model`` (``nn.MultiheadAttention`` or anything with ``num_heads`` or
    ``n_heads``, like MaxViT's) that hold no other attention module: a ViT encoder block that stores
    ``num_heads`` is not one."""
    return {
        n: m for n, m in model.named_modules()
        if n and _is_attention(m) and not any(_is_attention(c) for c in m.modules() if c is not m)
    }


def find_attention(model: nn.Module) -> dict[str, AttentionInfo]:
    """The head-prunable attention modules of ``model`` (registration order)."""
    out: dict[str, AttentionInfo] = {}
    for name, m in innermost_attention(model).items():
        if _why_not(m) is None:
            kind = "mha" if isinstance(m, nn.MultiheadAttention) else "swin" if _is_swin(m) else "timm"
            out[name] = AttentionInfo(name, m, kind, int(m.num_heads), _head_dim(m))
    return out


def _head_dim(m: nn.Module) -> int:
    if _is_swin(m) and not hasattr(m, "head_dim"):
        return m.qkv.out_features // (3 * m.num_heads)
    return int(m.head_dim)


def head_unprunable(model: nn.Module) -> dict[str, str]:
    """``{attention module: why its heads are kept}`` for the attention modules :func:`find_attention` skips."""
    return {n: why for n, m in innermost_attention(model).items() if (why := _why_not(m)) is not None}


def _weights(info: AttentionInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """(query/key/value projection weight ``(3 A, E)``, output projection weight ``(E_out, A)``)."""
    m = info.module
    if info.kind == "mha":
        return m.in_proj_weight, m.out_proj.weight
    return m.qkv.weight, m.proj.weight


def head_scores(info: AttentionInfo) -> torch.Tensor:
    """``(num_heads,)`` float64: the L1 norm of each head's q/k/v rows and output-projection columns."""
    w_in, w_out = _weights(info)
    h, d = info.num_heads, info.head_dim
    w_in = w_in.detach().double().abs().reshape(3, h, d, -1).sum(dim=(0, 2, 3))
    w_out = w_out.detach().double().abs().reshape(w_out.shape[0], h, d).sum(dim=(0, 2))
    return (w_in + w_out).cpu()


def heads_to_keep(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Kept head indices (ascending): ``round(ratio * H)`` lowest-scored heads removed (half-up), at
    least one kept; ties keep the lower index."""
    h = scores.numel()
    keep = max(1, h - math.floor(ratio * h + 0.5))
    order = sorted(range(h), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(sorted(order[:keep]), dtype=torch.long)


def _rows(keep: torch.Tensor, h: int, d: int, copies: int) -> torch.Tensor:
    """Row indices of the kept heads in a ``(copies * h * d)`` projection (q, k, v blocks)."""
    per = (keep[:, None] * d + torch.arange(d)).reshape(-1)
    return torch.cat([per + c * h * d for c in range(copies)])


def _select(param: torch.Tensor, idx: torch.Tensor, dim: int) -> nn.Parameter:
    return nn.Parameter(param.detach().index_select(dim, idx.to(param.device)).clone(), requires_grad=param.requires_grad)


def _linear_out(lin: nn.Linear, idx: torch.Tensor) -> None:
    lin.weight = _select(lin.weight, idx, 0)
    if lin.bias is not None:
        lin.bias = _select(lin.bias, idx, 0)
    lin.out_features = len(idx)


def _linear_in(lin: nn.Linear, idx: torch.Tensor) -> None:
    lin.weight = _select(lin.weight, idx, 1)
    lin.in_features = len(idx)


def prune_heads(module: nn.Module, keep: torch.Tensor | list[int], name: str = "?") -> None:
    """Keep only heads ``keep`` of the attention module ``module`` (in place)."""
    why = _why_not(module)
    if why is not None:
        raise ConfigError(f"cannot remove heads of {name!r}: {why}")
    keep = torch.as_tensor(keep, dtype=torch.long)
    h, d = int(module.num_heads), _head_dim(module)
    if len(keep) == 0 or int(keep.min()) < 0 or int(keep.max()) >= h or len(set(keep.tolist())) != len(keep):
        raise ConfigError(f"kept heads of {name!r} must be distinct, in [0, {h}) and not empty; got {keep.tolist()}")
    qkv_rows, cols = _rows(keep, h, d, 3), _rows(keep, h, d, 1)
    if isinstance(module, nn.MultiheadAttention):
        module.in_proj_weight = _select(module.in_proj_weight, qkv_rows, 0)
        if module.in_proj_bias is not None:
            module.in_proj_bias = _select(module.in_proj_bias, qkv_rows, 0)
        _linear_in(module.out_proj, cols)
        module.__class__ = HeadPrunedMultiheadAttention
        module.num_heads = len(keep)
        return
    if _is_swin(module):
        _prune_swin_heads(module, keep, qkv_rows, cols, d)
        return
    _linear_out(module.qkv, qkv_rows)
    _linear_in(module.proj, cols)
    if getattr(module, "gate", None) is not None:
        _linear_out(module.gate, cols)
    norm = getattr(module, "norm", None)
    if isinstance(norm, nn.LayerNorm):
        if norm.weight is not None:
            norm.weight = _select(norm.weight, cols, 0)
        if norm.bias is not None:
            norm.bias = _select(norm.bias, cols, 0)
        norm.normalized_shape = (len(cols),)
    module.num_heads = len(keep)
    module.attn_dim = len(keep) * d


def _prune_swin_heads(module: nn.Module, keep: torch.Tensor, qkv_rows: torch.Tensor, cols: torch.Tensor, d: int) -> None:
    v2 = isinstance(module, _swin_classes()[1])
    _linear_out(module.qkv, qkv_rows)
    _linear_in(module.proj, cols)
    if v2:
        _linear_out(module.cpb_mlp[-1], keep)
        module.logit_scale = _select(module.logit_scale, keep, 0)
    else:
        module.relative_position_bias_table = _select(module.relative_position_bias_table, keep, 1)
    module.__class__ = HeadPrunedShiftedWindowAttentionV2 if v2 else HeadPrunedShiftedWindowAttention
    module.num_heads = len(keep)
    module.head_dim = d


def _shift_mask(hp: int, wp: int, window: list[int], shift: list[int], device, dtype) -> torch.Tensor:
    """``(windows, n, n)`` additive mask of shifted-window attention: after the cyclic shift, tokens of
    one window that come from different regions of the map (labelled by where the shift cut the rows
    and the columns) do not attend to each other (-100, as in the Swin paper's implementation)."""

    def labels(size: int, win: int, sh: int) -> torch.Tensor:
        i = torch.arange(size, device=device)
        return ((i >= size - win).long() + (i >= size - sh).long()) if sh > 0 else torch.zeros_like(i)

    lab = labels(hp, window[0], shift[0])[:, None] * 3 + labels(wp, window[1], shift[1])[None, :]
    lab = lab.view(hp // window[0], window[0], wp // window[1], window[1]).permute(0, 2, 1, 3)
    lab = lab.reshape(-1, window[0] * window[1])
    differ = lab[:, None, :] != lab[:, :, None]
    return torch.zeros(differ.shape, device=device, dtype=dtype).masked_fill(differ, -100.0)


def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
    """Shifted-window attention with ``self.num_heads`` heads of ``self.head_dim`` (input ``(B, H, W, C)``;
    the output has ``proj.out_features`` channels). V2 (``logit_scale``): cosine attention, no key bias."""
    b, h_in, w_in, c = x.shape
    wh, ww = self.window_size
    x = F.pad(x, (0, 0, 0, (-w_in) % ww, 0, (-h_in) % wh))
    hp, wp = x.shape[1], x.shape[2]
    shift = [0 if wh >= hp else self.shift_size[0], 0 if ww >= wp else self.shift_size[1]]
    if sum(shift):
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    n, windows = wh * ww, (hp // wh) * (wp // ww)
    x = x.view(b, hp // wh, wh, wp // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b * windows, n, c)
    heads, d = self.num_heads, self.head_dim
    logit_scale = getattr(self, "logit_scale", None)
    bias = self.qkv.bias
    if logit_scale is not None and bias is not None:
        bias = torch.cat([bias[: heads * d], torch.zeros_like(bias[heads * d : 2 * heads * d]), bias[2 * heads * d :]])
    q, k, v = F.linear(x, self.qkv.weight, bias).view(b * windows, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * d**-0.5) @ k.transpose(-2, -1)
    attn = attn + self.get_relative_position_bias()
    if sum(shift):
        mask = _shift_mask(hp, wp, self.window_size, shift, x.device, attn.dtype)
        attn = (attn.view(b, windows, heads, n, n) + mask[None, :, None]).view(b * windows, heads, n, n)
    attn = F.dropout(attn.softmax(-1), p=self.attention_dropout, training=self.training)
    out = F.linear((attn @ v).transpose(1, 2).reshape(b * windows, n, heads * d), self.proj.weight, self.proj.bias)
    out = F.dropout(out, p=self.dropout, training=self.training)
    c_out = out.shape[-1]
    out = out.view(b, hp // wh, wp // ww, wh, ww, c_out).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c_out)
    if sum(shift):
        out = torch.roll(out, shifts=(shift[0], shift[1]), dims=(1, 2))
    return out[:, :h_in, :w_in, :].contiguous()


def _swin_pruned_class(base: type[nn.Module], name: str) -> type[nn.Module]:
    return type(name, (base,), {
        "__doc__": f"A torchvision ``{base.__name__}`` that lost heads: ``num_heads`` heads of ``head_dim`` each "
                   "(input and output width unchanged). Made by :func:`prune_heads`, never built directly.",
        "__module__": __name__,
        "forward": _window_attention,
    })


class HeadPrunedMultiheadAttention(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` that lost heads: ``num_heads`` heads of ``head_dim`` each, input and
    output width ``embed_dim`` unchanged (``in_proj_weight``: ``(3 * num_heads * head_dim, embed_dim)``,
    ``out_proj``: ``num_heads * head_dim -> embed_dim``). Made by :func:`prune_heads`, never built directly.
    Takes the arguments of ``nn.MultiheadAttention.forward``; ``attn_mask`` ``(L, S)`` or
    ``(batch * num_heads, L, S)``, boolean (True: not attended) or additive."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, n, _ = query.shape
        s = key.shape[1]
        h, d = self.num_heads, self.head_dim
        a = h * d
        wq, wk, wv = self.in_proj_weight.split(a)
        bq, bk, bv = self.in_proj_bias.split(a) if self.in_proj_bias is not None else (None, None, None)
        q = F.linear(query, wq, bq).view(b, n, h, d).transpose(1, 2)
        k = F.linear(key, wk, bk).view(b, s, h, d).transpose(1, 2)
        v = F.linear(value, wv, bv).view(b, s, h, d).transpose(1, 2)
        mask = None
        if attn_mask is not None:
            m = attn_mask
            m = torch.zeros_like(m, dtype=q.dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(q.dtype)
            mask = m.view(b, h, n, s) if m.ndim == 3 else m
        elif is_causal:
            mask = torch.full((n, s), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        if key_padding_mask is not None:
            kp = key_padding_mask
            kp = torch.zeros_like(kp, dtype=q.dtype).masked_fill(kp, float("-inf")) if kp.dtype == torch.bool else kp.to(q.dtype)
            kp = kp.view(b, 1, 1, s)
            mask = kp if mask is None else mask + kp
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            attn = (q * d ** -0.5) @ k.transpose(-2, -1)
            if mask is not None:
                attn = attn + mask
            attn = attn.softmax(-1)
            weights = attn.mean(1) if average_attn_weights else attn
            out = F.dropout(attn, p) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, a))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


HeadPrunedShiftedWindowAttention = _swin_pruned_class(_swin_classes()[0], "HeadPrunedShiftedWindowAttention")
HeadPrunedShiftedWindowAttentionV2 = _swin_pruned_class(_swin_classes()[1], "HeadPrunedShiftedWindowAttentionV2")


def attention_types() -> tuple[type[nn.Module], ...]:
    """The attention classes :func:`attention_macs` counts: ``nn.MultiheadAttention``,
    :class:`HeadPrunedMultiheadAttention`, torchvision's shifted-window attentions (pruned or not) and
    timm's ``Attention`` when timm is installed."""
    timm_attn = _timm_attention_class()
    return (nn.MultiheadAttention, HeadPrunedMultiheadAttention, *_swin_classes(), HeadPrunedShiftedWindowAttention,
            HeadPrunedShiftedWindowAttentionV2) + (
        (timm_attn,) if timm_attn is not None else ())


def swin_attention_macs(module: nn.Module, height: int, width: int, in_width: int) -> int:
    """MACs of one sample ``(height, width, in_width)`` through a shifted-window attention module of any
    head count: the q/k/v projection with its bias and the output projection with its bias on every
    token of the padded map, per window and head ``Q K^T``, softmax and ``A V`` (the terms of
    :func:`attention_macs`, window by window; the position-bias MLP of V2 is not counted)."""
    wh, ww = module.window_size
    hp, wp = height + (-height) % wh, width + (-width) % ww
    h, d = int(module.num_heads), _head_dim(module)
    a, n, tokens = h * d, wh * ww, hp * wp
    macs = tokens * a + 3 * tokens * in_width * a + (3 * tokens * a if module.qkv.bias is not None else 0)
    macs += (tokens // n) * h * (2 * n * n * d + n * n)
    macs += tokens * module.proj.out_features * (a + 1)
    return int(macs)


def attention_macs(module: nn.Module, length: int, in_width: int) -> int:
    """MACs of one sample through an attention module of any head count: the same terms as
    torch-pruning's ``multihead_attention_counter_hook`` (query scaling, the q/k/v projections and their
    bias, per head ``Q K^T``, softmax and ``A V``, the output projection with its bias), with the
    attention width ``A = num_heads * head_dim`` in place of the embedding width where they differ."""
    h, d = int(module.num_heads), int(module.head_dim)
    a = h * d
    if isinstance(module, nn.MultiheadAttention):
        has_bias, out_width = module.in_proj_bias is not None, module.out_proj.out_features
    else:
        has_bias, out_width = module.qkv.bias is not None, module.proj.out_features
    n = length
    macs = n * a + 3 * n * in_width * a + (3 * n * a if has_bias else 0)
    macs += h * (2 * n * n * d + n * n)
    macs += n * out_width * (a + 1)
    return int(macs)
