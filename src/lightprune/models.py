"""Model factory: torchvision classifiers and CIFAR-style variants for 32x32 inputs.

Example::

    >>> import torch, lightprune as lp
    >>> net = lp.create_model("cifar_vgg16", num_classes=10, width_mult=0.25)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .errors import ConfigError, InputSizeError, UnknownNameError, check_choice

__all__ = ["create_model", "list_models", "model_info", "ModelInfo", "CifarVGG", "MLP", "CifarAlexNet"]

# VGG layouts: numbers are conv widths, "M" a 2x2 max-pool.
VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    """VGG for 32x32 inputs: 3x3 convs (+BatchNorm) + ReLU, five max-pools, a 512-512-classes head.

    Same attribute layout as torchvision's VGG (``features``, ``avgpool``, ``classifier``), so the
    activation hooks and torch-pruning treat both alike.

    Args:
        cfg: layer layout, see ``VGG_CFGS``.
        num_classes: number of output classes (>= 2).
        in_channels: image channels (1 or 3).
        width_mult: multiplies every conv and hidden width (rounded, at least 4), default 1.0.
        batch_norm: BatchNorm after every conv, default True.
    """

    def __init__(
        self,
        cfg: list[int | str],
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ConfigError(f"width_mult={width_mult!r} is not allowed; it must be > 0")
        layers: list[nn.Module] = []
        c_in = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            c_out = max(4, int(round(int(v) * width_mult)))
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hidden = max(4, int(round(512 * width_mult)))
        self.classifier = nn.Sequential(
            nn.Linear(c_in, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class MLP(nn.Module):
    """Fully connected network on flattened images (the information-measures paper's setting, Liu,
    Amjad & Geiger: fully connected networks on flattened digit images, ReLU or sigmoid units).

    The image is average-pooled to ``input_size`` x ``input_size`` (8: the native size of the digits
    data set; a no-op there) and flattened; then ``hidden`` Linear layers, each followed by the
    activation, and the classifier. Our choice where the paper's exact widths were not available to
    us: ``hidden=(128, 64, 32)``.

    Args:
        num_classes: outputs (>= 2).
        in_channels: image channels.
        hidden: hidden widths (each multiplied by ``width_mult``, at least 4).
        activation: ``"relu"`` (default) or ``"sigmoid"`` (the paper studies both).
        input_size: side the image is pooled to before flattening, default 8.
        width_mult: multiplies the hidden widths, default 1.0.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, hidden: tuple[int, ...] | list[int] = (128, 64, 32),
                 activation: str = "relu", input_size: int = 8, width_mult: float = 1.0) -> None:
        super().__init__()
        check_choice("activation", activation, ("relu", "sigmoid"))
        if not width_mult > 0:
            raise ConfigError(f"width_mult={width_mult!r} is not allowed; it must be > 0")
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(input_size), nn.Flatten()]
        c_in = in_channels * input_size * input_size
        for h in hidden:
            w = max(4, int(round(h * width_mult)))
            layers += [nn.Linear(c_in, w), nn.ReLU(inplace=True) if activation == "relu" else nn.Sigmoid()]
            c_in = w
        layers.append(nn.Linear(c_in, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CifarAlexNet(nn.Module):
    """AlexNet for small inputs (32x32; the AFIE paper, Lu et al., prunes AlexNet on MNIST): torchvision's
    five convs (64, 192, 384, 256, 256) with 3x3 kernels, the first with stride 2, three 2x2 max-pools,
    no BatchNorm (as the original), then a 2x2 adaptive average pool and the 4096-4096-classes head
    with dropout.

    Args:
        num_classes: outputs (>= 2).
        in_channels: image channels (1 or 3).
        width_mult: multiplies every conv and hidden width (at least 4), default 1.0.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ConfigError(f"width_mult={width_mult!r} is not allowed; it must be > 0")

        def w(c: int) -> int:
            return max(4, int(round(c * width_mult)))

        c = [w(64), w(192), w(384), w(256), w(256)]
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c[0], 3, stride=2, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c[0], c[1], 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c[2], c[3], 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c[3], c[4], 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        h = w(4096)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(c[4] * 4, h), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(h, h), nn.ReLU(inplace=True),
            nn.Linear(h, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _replace_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap the first Conv2d of a torchvision model for one taking ``in_channels`` inputs."""
    if in_channels == 3:
        return model
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                module.groups,
                module.bias is not None,
            )
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return model
    raise ConfigError("model has no Conv2d layer to adapt to in_channels")


def _torchvision(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, **kw) -> nn.Module:
        return _replace_first_conv(builder(weights=None, num_classes=num_classes, **kw), in_channels)

    return build


def _cifar_vgg(cfg_name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, **kw) -> nn.Module:
        return CifarVGG(VGG_CFGS[cfg_name], num_classes=num_classes, in_channels=in_channels, **kw)

    return build


def _cifar_resnet(block: type[nn.Module], layers: list[int]) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, **kw) -> nn.Module:
        model = ResNet(block, layers, num_classes=num_classes, **kw)
        # CIFAR stem: 3x3 stride-1 conv, no max-pool (He et al. 2016, Sec. 4.2 style for 32x32)
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
        return model

    return build


@dataclass(frozen=True)
class ModelInfo:
    """What the factory knows about a model name."""

    name: str
    builder: Callable[..., nn.Module]
    input_size: int  # the size it is designed for
    min_input_size: int  # smallest square input it accepts
    family: str  # "vgg", "resnet", "mobilenet", "densenet"


_MODELS: dict[str, ModelInfo] = {}


def _register(name: str, builder: Callable[..., nn.Module], input_size: int, min_size: int, family: str) -> None:
    _MODELS[name] = ModelInfo(name, builder, input_size, min_size, family)


_register("vgg11_bn", _torchvision(tvm.vgg11_bn), 224, 32, "vgg")
_register("vgg16", _torchvision(tvm.vgg16), 224, 32, "vgg")
_register("vgg16_bn", _torchvision(tvm.vgg16_bn), 224, 32, "vgg")
_register("resnet18", _torchvision(tvm.resnet18), 224, 32, "resnet")
_register("resnet34", _torchvision(tvm.resnet34), 224, 32, "resnet")
_register("resnet50", _torchvision(tvm.resnet50), 224, 32, "resnet")
_register("mobilenet_v2", _torchvision(tvm.mobilenet_v2), 224, 32, "mobilenet")
_register("densenet121", _torchvision(tvm.densenet121), 224, 32, "densenet")
_register("cifar_vgg11", _cifar_vgg("vgg11"), 32, 32, "vgg")
_register("cifar_vgg16", _cifar_vgg("vgg16"), 32, 32, "vgg")
_register("cifar_resnet18", _cifar_resnet(BasicBlock, [2, 2, 2, 2]), 32, 8, "resnet")
_register("cifar_resnet34", _cifar_resnet(BasicBlock, [3, 4, 6, 3]), 32, 8, "resnet")
_register("cifar_resnet50", _cifar_resnet(Bottleneck, [3, 4, 6, 3]), 32, 8, "resnet")
_register("alexnet", lambda num_classes, in_channels, **kw: CifarAlexNet(num_classes, in_channels, **kw), 32, 16, "alexnet")
_register("mlp", lambda num_classes, in_channels, **kw: MLP(num_classes, in_channels, **kw), 8, 1, "mlp")


def _torchvision_names() -> list[str]:
    return sorted(tvm.list_models(module=tvm))


def _torchvision_any(name: str, num_classes: int, in_channels: int, image_size: int | None, kwargs: dict) -> nn.Module:
    """Any torchvision classification model (``torchvision.models.list_models(module=torchvision.models)``),
    randomly initialised; ``image_size`` is passed on to the models that take it (ViT)."""
    kw = dict(kwargs)
    if image_size is not None and name.startswith("vit_"):
        kw.setdefault("image_size", image_size)
    try:
        model = tvm.get_model(name, weights=None, num_classes=num_classes, **kw)
    except TypeError as err:
        raise ConfigError(f"bad keyword arguments for torchvision model {name!r}: {err}") from None
    return _replace_first_conv(model, in_channels)


def _timm_model(name: str, num_classes: int, in_channels: int, image_size: int | None, kwargs: dict) -> nn.Module:
    """``timm:<name>``: ``timm.create_model(name, pretrained=False, num_classes=..., in_chans=...)``;
    ``image_size`` becomes ``img_size`` for the models that take it (ViT, DeiT, ...)."""
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"model 'timm:{name}' needs timm, which is not installed; install the extra: pip install 'lightprune[timm]'"
        ) from None
    if not timm.is_model(name):
        raise ConfigError(f"model 'timm:{name}': {name!r} is not a timm model; timm.list_models() lists them")
    kw = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels, **kwargs}
    if image_size is not None and "img_size" not in kw:
        try:
            return timm.create_model(name, img_size=image_size, **kw)
        except TypeError:
            pass  # a model without img_size (a CNN): any input size
    try:
        return timm.create_model(name, **kw)
    except TypeError as err:
        raise ConfigError(f"bad keyword arguments for timm model {name!r}: {err}") from None


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODELS)


def model_info(name: str) -> ModelInfo:
    """Return the :class:`ModelInfo` of ``name``; unknown names raise :class:`UnknownNameError`."""
    if name not in _MODELS:
        raise UnknownNameError("model", name, _MODELS)
    return _MODELS[name]


def create_model(
    name: str,
    num_classes: int = 10,
    *,
    in_channels: int = 3,
    image_size: int | None = None,
    **kwargs,
) -> nn.Module:
    """Build a randomly initialised classifier.

    Args:
        name: one of :func:`list_models`, any other torchvision classification model name
            (``torchvision.models.list_models(module=torchvision.models)``, built with ``weights=None``),
            or ``"timm:<name>"`` for a timm model (needs the ``timm`` extra; ``image_size`` is passed
            as ``img_size`` to the timm models that take it).
        num_classes: number of outputs of the classifier, >= 2.
        in_channels: image channels, 1 or 3 (the first conv is adapted for 1).
        image_size: side of the square input images, checked against the model's minimum
            (32 for VGG/torchvision models, 8 for CIFAR ResNets); ``None`` skips the check.
        **kwargs: passed to the builder (``width_mult``, ``batch_norm`` for CIFAR VGGs; torchvision
            keyword arguments otherwise).

    Returns:
        The model, in training mode.

    Raises:
        UnknownNameError: unknown ``name``.
        ConfigError: ``num_classes`` < 2 or ``in_channels`` not 1/3.
        InputSizeError: ``image_size`` below the model's minimum.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes={num_classes!r} is not allowed; a classifier needs an integer >= 2")
    check_choice("in_channels", in_channels, (1, 3))
    if isinstance(name, str) and name.startswith("timm:"):
        return _timm_model(name[len("timm:"):], num_classes, in_channels, image_size, kwargs)
    if isinstance(name, str) and name not in _MODELS and name in _torchvision_names():
        return _torchvision_any(name, num_classes, in_channels, image_size, kwargs)
    info = model_info(name)
    if image_size is not None and image_size < info.min_input_size:
        raise InputSizeError(
            f"image_size={image_size} is too small for model {name!r}: it needs inputs of at least "
            f"{info.min_input_size}x{info.min_input_size} (designed for {info.input_size}x{info.input_size})"
        )
    try:
        return info.builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as err:
        raise ConfigError(f"bad keyword arguments for model {name!r}: {err}") from None
