"""Export a (pruned) network to ONNX or TorchScript, check the file against the torch model, time both.

- :func:`export` — write the file, run it back (onnxruntime on CPU / ``torch.jit.load``) at several
  batch sizes, compare with the torch model's outputs, time the artefact and the torch model with
  the one shared timer (:func:`lightprune.evaluation.measure_latency`); returns an :class:`ExportReport`.
- :func:`export_checkpoint` — the same from a Lightning checkpoint of :class:`~lightprune.ClassificationModule`
  (pruning plans replayed on load); the input shape comes from the plan, the hyperparameters or the caller.
- :func:`main` — ``lightprune export --ckpt PATH --out PATH [--format onnx|torchscript] ...``.

A pruned network is an ordinary ``nn.Module`` (torch-pruning removed the channels physically), so
the exported file is an ordinary ONNX / TorchScript file: running it needs neither lightprune nor
torch-pruning (for ONNX, nothing but onnxruntime and numpy).

``lp.export`` is the function; the module's other names import as ``from lightprune.export import
ExportReport``. ONNX needs the ``export`` extra: ``pip install lightprune[export]``.

Example::

    >>> import torch, lightprune as lp
    >>> net = lp.create_model("cifar_vgg11", 10, width_mult=0.25)
    >>> report = lp.export(net, torch.zeros(1, 3, 32, 32), "/tmp/vgg11.pt", format="torchscript",
    ...                    latency_runs=0)
    >>> report.format, sorted(report.max_abs_diff), report.max_abs_diff[7] <= 1e-4
    ('torchscript', [1, 7], True)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, LightpruneError, check_choice
from .evaluation import Latency, inference, measure_latency, model_device

__all__ = ["FORMATS", "ExportReport", "ExportError", "ExportDependencyError", "export", "export_checkpoint", "main"]

#: The formats :func:`export` writes.
FORMATS = ("onnx", "torchscript")

_INSTALL_HINT = "pip install lightprune[export]"
# what each format needs beyond torch: (import name, why)
_NEEDS = {
    "onnx": [("onnx", "torch.onnx.export"), ("onnxscript", "torch.onnx.export (dynamo exporter)")],
    "onnx-run": [("onnxruntime", "running the exported file (verification, latency)")],
}


class ExportError(LightpruneError, RuntimeError):
    """The export failed, or the exported file does not reproduce the torch model's outputs."""


class ExportDependencyError(LightpruneError, ImportError):
    """A package the export needs is not installed."""


@dataclass
class ExportReport:
    """What :func:`export` wrote and how the file compares with the torch model.

    Attributes:
        path: the written file.
        format: ``"onnx"`` or ``"torchscript"``.
        size_bytes: size of the file (ONNX weights are stored inside it, no external data file).
        input_shape: shape of the example input.
        dynamic_batch: the file accepts any batch size (ONNX: a symbolic ``batch`` axis).
        exporter: what wrote the file (``"torch.onnx.export(dynamo=True)"``, ``"torch.jit.trace"``).
        runtime: what ran the file back (``"onnxruntime 1.x CPUExecutionProvider"``, ``"torch.jit.load"``).
        opset: the ONNX opset of the file (None for TorchScript).
        atol: the tolerance of the check.
        max_abs_diff: ``{batch size: max |exported - torch|}`` over all outputs; empty if not verified.
        latency: the exported file's forward time (batch = the example's), or None.
        torch_latency: the torch model's forward time, same timer and batch, or None.
    """

    path: str
    format: str
    size_bytes: int
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    exporter: str
    runtime: str
    opset: int | None = None
    atol: float = 1e-4
    max_abs_diff: dict[int, float] = field(default_factory=dict)
    latency: Latency | None = None
    torch_latency: Latency | None = None

    @property
    def verified(self) -> bool:
        return bool(self.max_abs_diff)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "input_shape": list(self.input_shape),
            "dynamic_batch": self.dynamic_batch,
            "exporter": self.exporter,
            "runtime": self.runtime,
            "opset": self.opset,
            "atol": self.atol,
            "verified": self.verified,
            "max_abs_diff": {int(b): float(d) for b, d in self.max_abs_diff.items()},
            "latency": self.latency.to_dict() if self.latency else None,
            "torch_latency": self.torch_latency.to_dict() if self.torch_latency else None,
        }

    def __str__(self) -> str:
        opset = f", opset {self.opset}" if self.opset is not None else ""
        shape = ("batch", *self.input_shape[1:]) if self.dynamic_batch else self.input_shape
        lines = [
            f"exported {self.path}",
            f"  format   {self.format} ({self.exporter}{opset}), {self.size_bytes / 1e6:.2f} MB ({self.size_bytes:,} bytes)",
            f"  input    ({', '.join(map(str, shape))})",
        ]
        if self.max_abs_diff:
            lines += ["", f"  {'batch size':<22}" + "".join(f"{b:>12}" for b in self.max_abs_diff),
                      f"  {'max |exported - torch|':<22}" + "".join(f"{d:>12.2e}" for d in self.max_abs_diff.values())
                      + f"   (atol {self.atol:g}: ok, run with {self.runtime})"]
        else:
            lines.append("  not verified (the file was not run back)")
        if self.latency and self.torch_latency:
            a, t = self.latency, self.torch_latency
            lines += ["", f"  latency, batch {a.batch_size} (ms)   {'exported':>10} {'torch':>10}",
                      f"  {'median':<24}{a.median_ms:>10.3f} {t.median_ms:>10.3f}   "
                      f"(torch / exported = {t.median_ms / a.median_ms:.2f}x)",
                      f"  {'fastest':<24}{a.min_ms:>10.3f} {t.min_ms:>10.3f}   "
                      f"({a.runs} runs after {a.warmup} warm-up, {a.threads} threads, {a.device})"]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ helpers
def _require(fmt: str, run: bool) -> None:
    """Import what ``fmt`` needs (and onnxruntime if the file is to be run); clear error otherwise."""
    if fmt == "onnx":
        import inspect

        params = inspect.signature(torch.onnx.export).parameters
        if not {"dynamo", "dynamic_shapes", "external_data"} <= set(params):
            raise ExportDependencyError(
                f"format='onnx' needs torch.onnx.export(dynamo=True, dynamic_shapes=..., external_data=...) "
                f"(torch >= 2.6); this is torch {torch.__version__}: upgrade torch or use format='torchscript'"
            )
    needs = list(_NEEDS.get(fmt, []))
    if fmt == "onnx" and run:
        needs += _NEEDS["onnx-run"]
    for name, why in needs:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ExportDependencyError(
                f"format={fmt!r} needs the package {name!r} ({why}), which is not installed: {_INSTALL_HINT}"
            ) from err


@contextlib.contextmanager
def _quiet(fmt: str) -> Any:
    """Silence the exporters' noise (progress prints, deprecation warnings, internal logging); the
    captured text is attached to the error if the export fails."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "torch.utils.cpp_extension", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings():
            if fmt == "onnx":
                warnings.simplefilter("ignore")  # the dynamo exporter warns about its own internals
            else:
                # torch.jit.trace / save are deprecated upstream (FutureWarning); TracerWarnings stay visible
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            if fmt == "onnx":  # progress lines of the exporter
                with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                    yield buf
            else:
                yield buf
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _as_tensors(out: Any, what: str) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)) and out and all(isinstance(t, torch.Tensor) for t in out):
        return list(out)
    raise ConfigError(f"{what} returns {type(out).__name__}; export supports a tensor or a tuple/list of tensors")


def _check_args(fmt: Any, example_inputs: Any, atol: Any, batch_sizes: Any, opset: Any) -> tuple[int, ...]:
    check_choice("format", fmt, FORMATS)
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.ndim < 1 or example_inputs.shape[0] < 1:
        raise ConfigError(
            f"example_inputs={type(example_inputs).__name__} is not allowed; give one input tensor with a batch "
            "dimension first, e.g. torch.zeros(1, 3, 32, 32)"
        )
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not atol >= 0:
        raise ConfigError(f"atol={atol!r} is not allowed; it must be a number >= 0")
    sizes = tuple(batch_sizes) if isinstance(batch_sizes, (tuple, list)) else None
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise ConfigError(f"batch_sizes={batch_sizes!r} is not allowed; give a non-empty sequence of integers >= 1")
    if opset is not None:
        if fmt != "onnx":
            raise ConfigError(f"opset={opset!r} is not allowed with format={fmt!r}; it applies to format='onnx' only")
        if isinstance(opset, bool) or not isinstance(opset, int) or opset < 7:
            raise ConfigError(f"opset={opset!r} is not allowed; give an ONNX opset number (e.g. 18) or None")
    return sizes


def _export_onnx(net: nn.Module, x: torch.Tensor, path: Path, n_outputs: int, dynamic_batch: bool,
                 opset: int | None) -> tuple[str, int | None]:
    # Exporter: the torch.export-based ("dynamo") exporter, torch.onnx.export's default since torch 2.9.
    # The TorchScript-based one (dynamo=False) still works in torch 2.14 but is deprecated ("will be
    # removed") and warns on every call. Both reproduce our models (torchvision and CIFAR CNNs,
    # pruned) to ~1e-7 with a dynamic batch axis; dynamo takes ~2-3 s per export instead of ~0.1 s,
    # which is acceptable for a one-off export. external_data=False keeps the weights inside the one
    # .onnx file (the default would write a separate .onnx.data next to it); fine below ONNX's 2 GB.
    out_names = ["logits"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]
    kwargs: dict[str, Any] = dict(
        dynamo=True, external_data=False, verbose=False, input_names=["input"], output_names=out_names,
    )
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    with _quiet("onnx") as log:
        try:
            torch.onnx.export(net, (x,), str(path), **kwargs)
        except ModuleNotFoundError as err:
            raise ExportDependencyError(
                f"torch {torch.__version__}'s ONNX exporter needs a module that is not installed ({err.name}); "
                f"a newer onnxscript may be needed: {_INSTALL_HINT} (or pip install -U onnxscript)"
            ) from err
        except Exception as err:
            hint = (" The model's forward may fix the batch size (e.g. reshape(int(x.shape[0]), -1)): "
                    "try dynamic_batch=False." if dynamic_batch else "")
            tail = log.getvalue().strip()[-1500:]
            raise ExportError(
                f"torch.onnx.export (dynamo) could not export {type(net).__name__}: {type(err).__name__}: "
                f"{str(err)[:1500]}{hint} format='torchscript' is the alternative."
                + (f"\nexporter output:\n{tail}" if tail else "")
            ) from err
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset_used = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if dynamic_batch and dims and not dims[0].dim_param:
        raise ExportError(
            f"{path}: the exporter fixed the batch axis to {dims[0].dim_value} although dynamic_batch=True: the "
            "model's forward uses the batch size as a constant (e.g. reshape(int(x.shape[0]), -1)); make it use "
            "x.flatten(1) / x.shape[0], or pass dynamic_batch=False (the file then accepts that batch size only)"
        )
    return "torch.onnx.export(dynamo=True)", opset_used


def _export_torchscript(net: nn.Module, x: torch.Tensor, path: Path) -> str:
    # torch.jit.trace rather than script: tracing follows any forward that runs (torchvision models,
    # our CIFAR models, third-party code) while scripting rejects unsupported Python; a trace that
    # baked in the example's batch size is caught by the check at several batch sizes.
    with _quiet("torchscript") as log:
        try:
            traced = torch.jit.trace(net, (x,), check_trace=False)
            torch.jit.save(traced, str(path))
        except Exception as err:
            tail = log.getvalue().strip()[-1500:]
            raise ExportError(
                f"torch.jit.trace could not export {type(net).__name__}: {type(err).__name__}: {str(err)[:1500]}"
                + (f"\ntracer output:\n{tail}" if tail else "")
            ) from err
    return "torch.jit.trace"


def _onnx_runner(path: Path) -> tuple[Callable[[torch.Tensor], list[Any]], Any, str]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()  # the same thread count as the torch timing
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: torch.Tensor) -> list[Any]:
        return sess.run(None, {name: x.detach().cpu().numpy()})

    return run, sess, f"onnxruntime {ort.__version__} CPUExecutionProvider"


def _max_abs_diff(got: Sequence[Any], ref: Sequence[torch.Tensor], where: str) -> float:
    if len(got) != len(ref):
        raise ExportError(f"{where}: the exported file gives {len(got)} outputs, the torch model {len(ref)}")
    worst = 0.0
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        g = torch.as_tensor(g).detach().cpu().double()
        r = r.detach().cpu().double()
        if tuple(g.shape) != tuple(r.shape):
            raise ExportError(
                f"{where}: output {i} has shape {tuple(g.shape)} in the exported file but {tuple(r.shape)} in the "
                "torch model (did the export fix the batch size?)"
            )
        d = float((g - r).abs().max()) if g.numel() else 0.0
        worst = max(worst, d) if not math.isnan(d) else float("nan")
        if math.isnan(worst):
            break
    return worst


# ------------------------------------------------------------------------------------ export
def export(
    model: nn.Module,
    example_inputs: torch.Tensor,
    path: str | os.PathLike[str],
    format: str = "onnx",
    *,
    dynamic_batch: bool = True,
    verify: bool = True,
    opset: int | None = None,
    atol: float = 1e-4,
    batch_sizes: Sequence[int] = (1, 7),
    latency_runs: int = 20,
) -> ExportReport:
    """Write ``model`` to ``path`` as ONNX or TorchScript, check the file, time it.

    Args:
        model: an ``nn.Module`` or a :class:`~lightprune.ClassificationModule` (its ``.model`` is exported).
            It is put in eval mode for the export; every submodule's mode is restored afterwards.
        example_inputs: one input batch, e.g. ``torch.zeros(1, 3, 32, 32)`` (moved to the model's device).
        path: the file to write; missing parent folders are created. No extension is enforced.
        format: ``"onnx"`` (torch.onnx dynamo exporter, weights inside the one file) or ``"torchscript"``
            (``torch.jit.trace`` + ``torch.jit.save``).
        dynamic_batch: ONNX: the file's batch axis is symbolic (``batch``), any batch size runs. With
            False the file accepts only the example's batch size, and it is checked at that size only.
            TorchScript traces run at any batch size the forward allows (checked at ``batch_sizes``).
        verify: run the file back (onnxruntime CPU session / ``torch.jit.load``) on seeded random inputs
            shaped like ``example_inputs`` with each batch size of ``batch_sizes``, and compare with the
            torch model's outputs: the max absolute difference must be <= ``atol``.
        opset: ONNX opset (None: the exporter's default).
        atol: tolerance of the check, default 1e-4.
        batch_sizes: batch sizes of the check, default (1, 7).
        latency_runs: timed runs of the latency measurement of the file and of the torch model
            (:func:`lightprune.evaluation.measure_latency`, batch = the example's; onnxruntime gets the
            same thread count as torch); 0 = do not time.

    Returns:
        :class:`ExportReport` (``print(report)`` shows a small table; ``report.to_dict()`` plain data).

    Raises:
        ConfigError: an unknown ``format`` (the message lists the formats) or another bad argument.
        ExportDependencyError: an ``ImportError``: onnx / onnxscript / onnxruntime is missing
            (``pip install lightprune[export]``).
        ExportError: the exporter failed, or the file's outputs differ from the model's by more than
            ``atol`` (the file is kept for inspection).
    """
    from .module import ClassificationModule

    sizes = _check_args(format, example_inputs, atol, batch_sizes, opset)
    if isinstance(latency_runs, bool) or not isinstance(latency_runs, int) or latency_runs < 0:
        raise ConfigError(f"latency_runs={latency_runs!r} is not allowed; it must be an integer >= 0 (0: no timing)")
    net = model.model if isinstance(model, ClassificationModule) else model
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model={type(model).__name__} is not allowed; give an nn.Module or a ClassificationModule")
    run_back = verify or latency_runs > 0
    _require(format, run_back)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = model_device(net)
    x = example_inputs.to(device)
    if format == "onnx" and not dynamic_batch:
        sizes = (int(x.shape[0]),)
    gen = torch.Generator().manual_seed(0)
    checks = {b: torch.randn((b, *x.shape[1:]), generator=gen).to(device=device, dtype=x.dtype) for b in sizes}

    with inference(net):
        example_out = _as_tensors(net(x), type(net).__name__)
        refs = {}
        for b, xb in checks.items() if verify else ():
            try:
                refs[b] = _as_tensors(net(xb), type(net).__name__)
            except Exception as err:
                raise ConfigError(
                    f"batch_sizes={sizes!r}: the torch model itself fails at batch size {b} ({type(err).__name__}: "
                    f"{str(err)[:300]}); check with batch sizes it accepts"
                ) from err
        opset_used = None
        if format == "onnx":
            exporter, opset_used = _export_onnx(net, x, path, len(example_out), dynamic_batch, opset)
        else:
            exporter = _export_torchscript(net, x, path)

    runtime, run, timed = "", None, None
    if run_back:
        if format == "onnx":
            run, sess, runtime = _onnx_runner(path)
            feed = {sess.get_inputs()[0].name: x.detach().cpu().numpy()}

            def timed(_s=sess, _f=feed):
                return _s.run(None, _f)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated upstream
                loaded = torch.jit.load(str(path), map_location=device)
            loaded.eval()
            runtime, timed = "torch.jit.load", loaded

            def run(xb, _m=loaded):
                with torch.no_grad():
                    return _as_tensors(_m(xb), "the loaded TorchScript module")

    diffs: dict[int, float] = {}
    for b, xb in checks.items() if verify else ():
        where = f"{path} ({format}), batch size {b}"
        try:
            got = run(xb)
        except Exception as err:
            lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()] or [""]
            # onnxruntime states the problem first; a TorchScript interpreter error last, after its traceback
            msg = " ".join(lines[:2]) if format == "onnx" else lines[-1]
            msg = msg.removeprefix(f"{type(err).__name__}: ")
            raise ExportError(
                f"{where}: running the exported file failed: {type(err).__name__}: {msg[:800]}"
                + (" (did the export fix the batch size?)" if b != x.shape[0] else "")
            ) from err
        diffs[b] = _max_abs_diff(got, refs[b], where)
        if not diffs[b] <= atol:
            raise ExportError(
                f"{where}: the exported file's outputs differ from the torch model's by {diffs[b]:.3g} "
                f"(max absolute difference; atol={atol:g}); the file is kept for inspection"
            )

    lat = torch_lat = None
    if latency_runs:
        lat = measure_latency(timed, x, runs=latency_runs)
        torch_lat = measure_latency(net, x, runs=latency_runs)
    return ExportReport(
        path=str(path), format=format, size_bytes=path.stat().st_size, input_shape=tuple(int(s) for s in x.shape),
        dynamic_batch=bool(dynamic_batch) if format == "onnx" else True, exporter=exporter, runtime=runtime,
        opset=opset_used, atol=float(atol), max_abs_diff=diffs, latency=lat, torch_latency=torch_lat,
    )


# ------------------------------------------------------------------------------------ checkpoints
def _checkpoint_input_shape(module: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    from .lightning_glue import applied_plans

    if input_shape is not None:
        return tuple(int(s) for s in input_shape)
    plans = applied_plans(module)
    shape = (plans[-1].get("meta") or {}).get("input_shape") if plans else None
    if shape:
        return tuple(int(s) for s in shape)  # the shape the plan was made with
    hp = getattr(module, "hparams", {}) or {}
    size, channels = hp.get("image_size"), hp.get("in_channels", 3)
    if size:
        return (1, int(channels), int(size), int(size))
    raise ConfigError(
        "input_shape=None is not allowed for this checkpoint: it has no pruning plan with meta['input_shape'] and "
        "no image_size hyperparameter; give the shape, e.g. --input-shape 1,3,32,32"
    )


def export_checkpoint(
    ckpt: str | os.PathLike[str],
    path: str | os.PathLike[str],
    format: str = "onnx",
    *,
    input_shape: Sequence[int] | None = None,
    **kwargs: Any,
) -> ExportReport:
    """Export the network of a :class:`~lightprune.ClassificationModule` checkpoint.

    The checkpoint is loaded with ``ClassificationModule.load_from_checkpoint(ckpt, map_location="cpu",
    weights_only=True)``, which replays the pruning plans it carries. The example input shape is
    ``input_shape`` if given, else the last plan's ``meta["input_shape"]``, else
    ``(1, in_channels, image_size, image_size)`` from the hyperparameters. A checkpoint without a plan
    is exported as it is, with a warning. ``kwargs`` go to :func:`export`.

    Raises:
        ConfigError: ``ckpt`` does not exist or is not a ClassificationModule checkpoint, or the input
            shape cannot be told; and :func:`export`'s errors.
    """
    from .lightning_glue import applied_plans
    from .module import ClassificationModule

    check_choice("format", format, FORMATS)
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise ConfigError(f"ckpt={str(ckpt)!r} is not allowed: no such file; give the path of a Lightning .ckpt "
                          "of a ClassificationModule (e.g. runs/quickstart/version_0/checkpoints/last.ckpt)")
    try:
        module = ClassificationModule.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=True)
    except LightpruneError:
        raise
    except Exception as err:
        raise ConfigError(
            f"ckpt={str(ckpt)!r}: could not rebuild a ClassificationModule from it ({type(err).__name__}: "
            f"{str(err)[:500]}); export the network from Python with lp.export(model, example_inputs, path)"
        ) from err
    if not applied_plans(module):
        warnings.warn(
            f"{ckpt} carries no pruning plan: the network is exported as it is (unpruned, or pruned outside "
            "lightprune's callbacks)", UserWarning, stacklevel=2,
        )
    shape = _checkpoint_input_shape(module, input_shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return export(module, x, path, format, **kwargs)


# ------------------------------------------------------------------------------------ CLI
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive integers (e.g. 1,3,32,32)")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightprune export",
        description="Export the (pruned) network of a lightprune checkpoint to ONNX or TorchScript, run the "
        "file back against the torch model at several batch sizes, and time both.",
    )
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint of a ClassificationModule (plans are replayed)")
    p.add_argument("--out", required=True, help="file to write (folders are created), e.g. model.onnx")
    p.add_argument("--format", default="onnx", choices=FORMATS, help="default: onnx")
    p.add_argument("--input-shape", type=_int_list, default=None,
                   help="example input shape, e.g. 1,3,32,32 (default: from the checkpoint's plan or hyperparameters)")
    p.add_argument("--batch-sizes", type=_int_list, default=[1, 7], help="batch sizes of the check, default 1,7")
    p.add_argument("--no-verify", action="store_true", help="do not run the file back against the torch model")
    p.add_argument("--atol", type=float, default=1e-4, help="tolerance of the check (max abs difference), default 1e-4")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--static-batch", action="store_true", help="ONNX: fix the batch axis to the example's batch size")
    p.add_argument("--latency-runs", type=int, default=20, help="timed runs of the file and the torch model, 0 = none")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightprune export ...`` (``argv``: the arguments after ``export``)."""
    import json

    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    error: BaseException | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            report = export_checkpoint(
                args.ckpt, args.out, args.format, input_shape=args.input_shape, verify=not args.no_verify,
                batch_sizes=tuple(args.batch_sizes), atol=args.atol, opset=args.opset,
                dynamic_batch=not args.static_batch, latency_runs=args.latency_runs,
            )
        except (LightpruneError, ImportError) as err:
            error = err
    for w in caught:
        print(f"lightprune export: warning: {w.message}", file=sys.stderr)
    if error is not None:
        print(f"lightprune export: error: {error}", file=sys.stderr)
        raise SystemExit(2)
    print(report, flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")


if __name__ == "__main__":  # pragma: no cover
    main()
