"""The comparison loop: base model -> for each criterion: score once -> for each ratio: plan, prune,
evaluate, fine-tune, evaluate -> one JSON per finished (criterion, ratio) pair -> report.

Run directory layout::

    <run_dir>/
      base.ckpt            the trained base model (when trained here; reruns reuse it)
      base.json            its accuracy, params, MACs, latency (+ the fingerprint of the checkpoint)
      config.yaml          the options of the last run
      train/               CSV logs of the base training
      scores/<crit>.json   Scores.to_dict() of each criterion on the base model (+ fingerprint)
      pairs/<crit>_r<ratio>.json   one finished pair: metrics, plan, per-layer channels (+ fingerprint)
      pairs/<crit>_r<ratio>.pt     (save_weights) plan + fine-tuned state_dict
      results.csv  report.md  *.png  spearman.csv
      wandb/               offline W&B runs (one per pair, one summary run)

A pair (or a criterion's scores) is reused when its JSON exists and its fingerprint (every option
that changes its result) matches; otherwise it is recomputed. Every JSON is written atomically, at
once when the pair finishes, so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, LightpruneError
from ..lightning_glue import quiet_lightning
from .config import CompareConfig

__all__ = ["Comparison", "pair_filename", "run_comparison"]

log = logging.getLogger("lightprune.compare")


def pair_filename(criterion: str, ratio: float) -> str:
    """File stem of a (criterion, ratio) pair, e.g. ``l1_r0.5``."""
    return f"{criterion}_r{ratio:g}"


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False, default=_json_default))
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=_json_default).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]




class Comparison:
    """One comparison (see the module docstring). ``Comparison(cfg).run()`` returns the result rows."""

    def __init__(self, cfg: CompareConfig, *, echo=None) -> None:
        self.cfg = cfg
        self.echo = echo or _print
        self.run_dir = cfg.run_dir
        self.base_module = None
        self.dm = None
        self.example: torch.Tensor | None = None
        self.base: dict[str, Any] = {}
        self.layers: list[str] = []
        self.layer_note = ""
        self.scores: dict[str, Any] = {}
        self.data_config: Any = None

    # ------------------------------------------------------------------------------------------
    # setup: recipe, base model, base metrics, layers
    # ------------------------------------------------------------------------------------------
    def _recipe_file(self) -> Path:
        """Write the recipe the base model is built (and trained) from to ``<run_dir>/recipe.yaml``:
        without pruning callbacks (the base model stays unpruned) and without its logger."""
        import yaml

        cfg = self.cfg
        if isinstance(cfg.recipe, dict):
            recipe = copy.deepcopy(cfg.recipe)
        else:
            try:
                recipe = yaml.safe_load(Path(cfg.recipe).read_text()) or {}
            except (OSError, yaml.YAMLError) as err:
                raise ConfigError(f"recipe={str(cfg.recipe)!r} cannot be read as YAML: {err}") from None
        if not isinstance(recipe, dict) or "model" not in recipe or "data" not in recipe:
            raise ConfigError(f"recipe={str(cfg.recipe)!r} is not a LightningCLI fit config with model and data sections")
        trainer = recipe.setdefault("trainer", {}) or {}
        recipe["trainer"] = trainer
        callbacks = trainer.get("callbacks")
        if isinstance(callbacks, dict):
            callbacks = [callbacks]
        if callbacks:
            kept = [cb for cb in callbacks if not str((cb or {}).get("class_path", "")).startswith("lightprune.callbacks")]
            dropped = [cb.get("class_path") for cb in callbacks if cb not in kept]
            if dropped:
                self.echo(f"recipe: dropped {', '.join(dropped)} (the base model of a comparison is not pruned)")
            trainer["callbacks"] = kept
        trainer.pop("logger", None)
        trainer["default_root_dir"] = str(self.run_dir / "train")
        recipe.pop("ckpt_path", None)
        path = self.run_dir / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    def _recipe_cli(self):
        from ..cli import LightpruneCLI
        from ..data import ClassificationDataModule
        from ..module import ClassificationModule

        cfg = self.cfg
        args = ["--config", str(self._recipe_file())]
        if cfg.train_epochs is not None:
            args.append(f"--trainer.max_epochs={cfg.train_epochs}")
        args += list(cfg.recipe_overrides)
        try:
            options = {"subclass_mode_model": True, "subclass_mode_data": True, "save_config_callback": None,
                       "run": False, "auto_configure_optimizers": False}
            return LightpruneCLI(ClassificationModule, ClassificationDataModule, args=args, **options)
        except SystemExit as err:
            raise ConfigError(
                f"recipe={_show(cfg.recipe)} (with recipe_overrides={cfg.recipe_overrides!r}) is not a valid "
                "LightningCLI fit config; the parser's message is printed above"
            ) from err

    def _device(self) -> torch.device:
        if self.cfg.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")

    def _trainer(self, **kwargs):
        import lightning as L

        opts = dict(
            accelerator="gpu" if self._device().type == "cuda" else "cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        opts.update(kwargs)
        return L.Trainer(**opts)

    def _evaluate(self, module) -> dict[str, float]:
        """``val/*`` and ``test/*`` metrics of ``module``'s network (the shared evaluation; nothing logged)."""
        from ..engine import evaluate_splits

        module.to(self._device())
        return evaluate_splits(module.model, self._eval_loaders(), self.num_classes)

    def _eval_loaders(self) -> dict[str, Any]:
        return {"val": self.dm.val_dataloader(), "test": self.dm.test_dataloader()}

    def _latency(self, model) -> dict[str, float]:
        """Forward time of a ``latency_batch_size`` batch with the shared timer: ``latency_ms`` is the
        fastest of ``latency_runs`` timed passes after 3 warm-up passes (the least disturbed by other
        load on the machine), ``latency_median_ms`` the median; ``img_per_s`` = batch / fastest."""
        from ..evaluation import measure_latency

        assert self.example is not None
        device = self._device()
        x = torch.zeros(self.cfg.latency_batch_size, *self.example.shape[1:], device=device)
        lat = measure_latency(model.to(device), x, warmup=3, runs=self.cfg.latency_runs)
        return {"latency_ms": lat.min_ms, "latency_median_ms": lat.median_ms, "img_per_s": x.shape[0] / (lat.min_ms / 1000.0)}

    def setup(self) -> None:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        with quiet_lightning():
            cli = self._recipe_cli()
        module, dm = cli.model, cli.datamodule
        self.dm = dm
        data_cfg = cli.config.get("data") if hasattr(cli.config, "get") else None
        self.data_config = data_cfg.as_dict() if hasattr(data_cfg, "as_dict") else data_cfg
        dm.setup("fit")
        ckpt = cfg.checkpoint or self.run_dir / "base.ckpt"
        if cfg.checkpoint is None and not ckpt.exists():
            self.echo(f"no checkpoint given: training the base model from the recipe {_show(cfg.recipe)} (saved to {ckpt})")
            from lightning.pytorch.loggers import CSVLogger

            trainer = cli.trainer
            trainer.loggers = [CSVLogger(save_dir=str(self.run_dir), name="train")]
            trainer.callbacks.append(_EpochEcho(self.echo))
            t0 = time.perf_counter()
            with quiet_lightning():
                trainer.fit(module, datamodule=dm)
            tmp = ckpt.with_suffix(".ckpt.tmp")
            trainer.save_checkpoint(str(tmp))
            os.replace(tmp, ckpt)
            self.echo(f"base model trained in {time.perf_counter() - t0:.1f} s")
        self._load_checkpoint(module, ckpt)
        module.to(self._device())
        self.base_module = module
        self.example = next(iter(dm.val_dataloader()))[0][:1].to(self._device())
        self.num_classes = int(dm.num_classes)
        self.ckpt_digest = _file_digest(ckpt)
        self.ckpt_path = ckpt
        self._setup_layers()
        self._base_metrics()

    def _load_checkpoint(self, module, path: Path) -> None:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
            raise ConfigError(f"checkpoint={str(path)!r} cannot be read with torch.load(weights_only=True): {err}") from None
        state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
        if not isinstance(state, dict) or not state:
            raise ConfigError(f"checkpoint={str(path)!r} holds no state_dict")
        if not any(k.startswith("model.") for k in state):
            state = {f"model.{k}": v for k, v in state.items()}
        try:
            if isinstance(raw, dict) and "state_dict" in raw and hasattr(module, "on_load_checkpoint"):
                module.on_load_checkpoint(raw)  # a pruned checkpoint: replay its plans first
            module.load_state_dict(state, strict=True)
        except RuntimeError as err:
            first = str(err).splitlines()[:3]
            raise ConfigError(
                f"checkpoint={str(path)!r} does not fit the recipe's model ({type(module.model).__name__}); "
                f"give a checkpoint of the model the recipe {_show(self.cfg.recipe)} builds: {' '.join(first)}"
            ) from None

    def _setup_layers(self) -> None:
        from ..collect import find_prunable_layers, select_layers
        from ..criteria import criterion_class

        model = self.base_module.model
        found = select_layers(find_prunable_layers(model, self.example), self.cfg.layers, self.cfg.exclude,
                              self.cfg.layer_types, modules=dict(model.named_modules()))
        if self.cfg.layers is None:
            needs_bn = [c for c in self.cfg.criteria if any(criterion_class(p).needs_batchnorm for p in c.split("+"))]
            if needs_bn:
                dropped = [n for n, info in found.items() if info.norm is None]
                found = {n: info for n, info in found.items() if info.norm is not None}
                if dropped:
                    self.layer_note = (
                        f"layers without a BatchNorm ({', '.join(dropped)}) are left unpruned for every criterion, "
                        f"because {', '.join(needs_bn)} cannot score them"
                    )
        if not found:
            raise ConfigError("the comparison has no layer to prune (layers= is empty after the rules above)")
        self.layers = list(found)

    def _base_metrics(self) -> None:
        from ..surgery import count_macs_params

        path = self.run_dir / "base.json"
        fp = {"checkpoint": self.ckpt_digest, "recipe_data": _digest(self._data_signature())}
        cached = _read_json(path)
        if cached and cached.get("fingerprint") == fp:
            self.base = cached
            return
        self.echo("evaluating the base model")
        metrics = self._evaluate(self.base_module)
        macs, params = count_macs_params(self.base_module.model, self.example)
        self.base = {
            "fingerprint": fp,
            "checkpoint": str(self.ckpt_path),
            "metrics": metrics,
            "params": params,
            "macs": macs,
            **self._latency(self.base_module.model),
        }
        _write_json(path, self.base)

    def _data_signature(self) -> dict[str, Any]:
        """What defines the data (splits, scoring set): the recipe's data section."""
        return {"class": type(self.dm).__name__, "config": json.loads(json.dumps(self.data_config, default=str))}

    # ------------------------------------------------------------------------------------------
    # scoring (once per criterion, cached)
    # ------------------------------------------------------------------------------------------
    def _scores_fingerprint(self, criterion: str) -> dict[str, Any]:
        from ..engine import needs_layer_scores

        c = self.cfg
        return {
            "criterion": criterion,
            "hparams": self._criterion_hparams(criterion),
            "samples_per_class": c.samples_per_class,
            "scoring_classes": c.scoring_classes,
            "seed": c.seed,
            "layers": self.layers,
            "depth_split": c.depth_split if "+" in criterion else None,
            "layer_scores": needs_layer_scores(self._spec(criterion, 0.0)),
            "checkpoint": self.ckpt_digest,
            "data": _digest(self._data_signature()),
        }

    def _criterion_hparams(self, criterion: str) -> dict[str, Any]:
        from ..criteria import criterion_class

        hp = dict(self.cfg.criterion_hparams.get(criterion, {}))
        if "+" in criterion:  # per-layer criteria by depth: {part: {hyperparameters}}
            out = {}
            for part in criterion.split("+"):
                sub = dict(hp.get(part) or {})
                if criterion_class(part).seeded:
                    sub.setdefault("seed", self.cfg.seed)
                out[part] = sub
            return out
        if criterion_class(criterion).seeded:
            hp.setdefault("seed", self.cfg.seed)
        return hp

    def _spec(self, criterion: str, ratio: float):
        from ..engine import PruneSpec

        return PruneSpec(criterion=criterion, criterion_kwargs=self._criterion_hparams(criterion), strategy=self.cfg.strategy,
                         ratio=ratio, strategy_kwargs=dict(self.cfg.strategy_options), layers=self.layers,
                         recalibrate_bn=self.cfg.recalibrate_bn, reconstruct=self.cfg.reconstruct,
                         depth_split=self.cfg.depth_split if "+" in criterion else None)

    def _scoring(self):
        from ..data import resolve_scoring_set

        return resolve_scoring_set(self.dm, samples_per_class=self.cfg.samples_per_class, classes=self.cfg.scoring_classes)

    def get_scores(self, criterion: str):
        """Scores of ``criterion`` on the base model, through the engine (cached in ``scores/<criterion>.json``);
        layer-level scores attached when the strategy needs them."""
        import lightning as L

        from ..criteria import Scores
        from ..engine import merge_per_layer, score_for_spec

        if criterion in self.scores:
            return self.scores[criterion]
        path = self.run_dir / "scores" / f"{criterion}.json"
        fp = self._scores_fingerprint(criterion)
        cached = _read_json(path)
        if cached and cached.get("fingerprint") == fp:
            s = Scores.from_dict(cached["scores"])
            s.meta["warnings"] = cached.get("warnings", [])
            s.meta["score_s"] = cached.get("score_s")
            self.scores[criterion] = s
            return s
        L.seed_everything(self.cfg.seed, verbose=False)
        t0 = time.perf_counter()
        s = score_for_spec(self.base_module.model, self._spec(criterion, 0.5), self._scoring(), progress=self.cfg.progress)
        if not isinstance(s, Scores):  # per-layer criteria: one Scores, the criterion by layer in meta
            s = merge_per_layer(s, criterion)
        elapsed = time.perf_counter() - t0
        notes = []
        if s.flat:
            notes.append(
                f"{criterion} gives every channel the same score in {len(s.flat)} of {len(s)} layers ({', '.join(s.flat)}): "
                "it cannot rank them, and the planner keeps the lowest channel indices there"
            )
        for n in notes:
            self.echo(f"  note ({criterion}): {n}")
        s.meta["warnings"] = notes
        s.meta["score_s"] = elapsed
        _write_json(path, {"fingerprint": fp, "scores": s.to_dict(), "warnings": notes, "score_s": elapsed})
        self.scores[criterion] = s
        return s

    # ------------------------------------------------------------------------------------------
    # one pair
    # ------------------------------------------------------------------------------------------
    def pair_fingerprint(self, criterion: str, ratio: float) -> dict[str, Any]:
        c = self.cfg
        return {
            "scores": self._scores_fingerprint(criterion),
            "strategy": c.strategy,
            "strategy_options": c.strategy_options,
            "ratio": ratio,
            "finetune": asdict(c.finetune),
            "recovery": {"recalibrate_bn": c.recalibrate_bn, "reconstruct": c.reconstruct},
            "seed": c.seed,
        }

    def load_pair(self, criterion: str, ratio: float) -> dict[str, Any] | None:
        data = _read_json(self.run_dir / "pairs" / f"{pair_filename(criterion, ratio)}.json")
        if data and data.get("fingerprint") == _digest(self.pair_fingerprint(criterion, ratio)):
            return data
        return None

    def run_pair(self, criterion: str, ratio: float, stage=lambda s: None) -> dict[str, Any]:
        from ..engine import run_prune
        from ..surgery import restore
        from . import wandb_log

        cfg = self.cfg
        stage("scoring")
        scores = self.get_scores(criterion)
        stage("pruning")
        module = copy.deepcopy(self.base_module)
        plain = copy.deepcopy(self.base_module) if cfg.finetune.distillation and cfg.finetune.without_distillation else None
        res = run_prune(module.model, self._scoring(), self._spec(criterion, ratio), scores=scores,
                        evaluate_on=self._eval_loaders(), num_classes=self.num_classes, evaluate_before=False,
                        latency_inputs=None)
        p, rep, before = res.plan, res.report, res.metrics_after or {}
        no_recovery: dict[str, float] = {}
        if rep.recovered:  # the same prune without recovery, for the report
            bare = copy.deepcopy(self.base_module)
            spec = dataclasses.replace(self._spec(criterion, ratio), recalibrate_bn=False, reconstruct=False)
            no_recovery = run_prune(bare.model, self._scoring(), spec, scores=scores, evaluate_on=self._eval_loaders(),
                                    num_classes=self.num_classes, evaluate_before=False, latency_inputs=None).metrics_after or {}
            del bare
        run = wandb_log.init_pair_run(cfg, criterion, ratio, self) if cfg.wandb else None
        try:
            if run is not None:
                wandb_log.log_pruning(run, p, rep, scores, before)
            ft_s = 0.0
            no_kd: dict[str, float] = {}
            if cfg.finetune.epochs > 0:
                if plain is not None:  # the same pruned (and recovered) network, fine-tuned without distillation
                    stage("fine-tuning (no distillation)")
                    restore(plain.model, p)
                    plain.model.load_state_dict(module.model.state_dict())
                    self._finetune(plain, None, distill=False)
                    no_kd = self._evaluate(plain)
                    del plain
                stage("fine-tuning")
                ft_s = self._finetune(module, run)
            stage("evaluating")
            after = self._evaluate(module) if cfg.finetune.epochs > 0 else dict(before)
            lat = self._latency(module.model)
            row = self._row(criterion, ratio, p, rep, before, after, lat, scores, ft_s)
            row["test_acc_before_ft_no_recovery"] = no_recovery.get("test/acc", before.get("test/acc"))
            row["recovery"] = "+".join(rep.recovered) or "none"
            row["test_acc_no_kd"] = no_kd.get("test/acc") if no_kd else None
            row["distillation"] = bool(cfg.finetune.distillation and cfg.finetune.epochs > 0)
            row["wandb_run"] = run.id if run is not None else ""
            result = {
                "fingerprint": _digest(self.pair_fingerprint(criterion, ratio)),
                "criterion": criterion,
                "ratio": ratio,
                "row": row,
                "plan": p.to_dict(),
                "channels_before": rep.channels_before,
                "channels_after": rep.channels_after,
                "metrics_before_ft": before,
                "metrics_after_ft": after,
            }
            if run is not None:
                wandb_log.log_result(run, row, after)
        except BaseException:
            if run is not None:
                run.finish(exit_code=1)
            raise
        if run is not None:
            run.finish()
        if cfg.save_weights:
            tmp = self.run_dir / "pairs" / f"{pair_filename(criterion, ratio)}.pt.tmp"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"plan": p.to_dict(), "state_dict": module.model.state_dict()}, tmp)
            os.replace(tmp, tmp.with_suffix(""))
        _write_json(self.run_dir / "pairs" / f"{pair_filename(criterion, ratio)}.json", result)
        return result

    def _finetune(self, module, run, distill: bool = True) -> float:
        import lightning as L

        from ..recovery import Teacher

        ft = self.cfg.finetune
        L.seed_everything(self.cfg.seed, verbose=False)
        if distill and ft.distillation:  # the unpruned base model is the teacher
            module.distillation = dict(ft.distillation)
            module.set_teacher(Teacher.from_model(self.base_module.model))
        else:
            module.distillation, module.teacher = None, None

        def optimizer(params):
            return torch.optim.SGD(params, lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay)

        def scheduler(opt):
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=ft.epochs)

        module._log_hyperparams = False  # the recipe's optimizer settings would mislead: ours are in the run config
        module.optimizer_factory = optimizer
        module.lr_scheduler_factory = scheduler if ft.schedule == "cosine" else None
        logger = False
        if run is not None:
            from lightning.pytorch.loggers import WandbLogger

            logger = WandbLogger(experiment=run, log_model=False)
        limit = ft.limit_train_batches
        limit = int(limit) if isinstance(limit, float) and limit > 1 and limit.is_integer() else limit
        t0 = time.perf_counter()
        with quiet_lightning():
            trainer = self._trainer(
                max_epochs=ft.epochs, logger=logger, limit_train_batches=limit, log_every_n_steps=1,
            )
            trainer.fit(module, datamodule=self.dm)
        return time.perf_counter() - t0

    def _row(self, criterion, ratio, p, rep, before, after, lat, scores, ft_s) -> dict[str, Any]:
        b = self.base
        base_test = b["metrics"].get("test/acc", float("nan"))
        row: dict[str, Any] = {
            "criterion": criterion,
            "ratio": ratio,
            "strategy": self.cfg.strategy,
            "channel_ratio": p.global_ratio,
            "val_acc_before_ft": before.get("val/acc"),
            "test_acc_before_ft": before.get("test/acc"),
            "val_acc": after.get("val/acc"),
            "val_balanced_acc": after.get("val/balanced_acc"),
            "test_acc": after.get("test/acc"),
            "test_balanced_acc": after.get("test/balanced_acc"),
            "base_test_acc": base_test,
            "acc_drop": base_test - after.get("test/acc", float("nan")),
            "acc_drop_before_ft": base_test - before.get("test/acc", float("nan")),
            "params": rep.params_after,
            "params_base": rep.params_before,
            "params_pruned_ratio": 1 - rep.params_after / rep.params_before,
            "macs": rep.macs_after,
            "macs_base": rep.macs_before,
            "macs_pruned_ratio": 1 - rep.macs_after / rep.macs_before,
            "latency_ms": lat["latency_ms"],
            "latency_median_ms": lat["latency_median_ms"],
            "img_per_s": lat["img_per_s"],
            "score_s": scores.meta.get("score_s"),
            "finetune_s": ft_s,
        }
        return row

    # ------------------------------------------------------------------------------------------
    # the loop
    # ------------------------------------------------------------------------------------------
    def pairs(self) -> list[tuple[str, float]]:
        return [(c, r) for c in self.cfg.criteria for r in self.cfg.ratios]

    def run(self) -> list[dict[str, Any]]:
        from . import report, wandb_log

        cfg = self.cfg
        if cfg.wandb:
            os.environ.setdefault("WANDB_MODE", "offline")
        self.setup()
        (self.run_dir / "config.yaml").write_text(_yaml(cfg.to_dict()))
        results: dict[tuple[str, float], dict[str, Any]] = {}
        todo = []
        for c, r in self.pairs():
            done = self.load_pair(c, r)
            if done is not None:
                results[(c, r)] = done
            else:
                todo.append((c, r))
        n = len(self.pairs())
        self.echo(
            f"comparison {cfg.group!r}: {len(cfg.criteria)} criteria x {len(cfg.ratios)} ratio(s) = {n} pairs; "
            f"{n - len(todo)} already done (skipped), {len(todo)} to run. Base test acc "
            f"{self.base['metrics'].get('test/acc', float('nan')):.4f}, {len(self.layers)} layers pruned."
        )
        for c, r in results:
            self.echo(f"  skip {c} @ {r:g} (finished earlier)")
        if self.layer_note:
            self.echo(f"  note: {self.layer_note}")
        bar = _progress(len(todo), cfg.progress and bool(todo))
        try:
            for c, r in todo:
                bar.set_description(f"{c} @ {r:g}")
                t0 = time.perf_counter()
                try:
                    res = self.run_pair(c, r, stage=lambda s: bar.set_postfix_str(s))
                except LightpruneError as err:
                    raise ConfigError(f"criterion {c!r} at ratio {r:g} failed: {err}") from err
                results[(c, r)] = res
                row = res["row"]
                bar.write(
                    f"  done {c} @ {r:g} in {time.perf_counter() - t0:.1f} s: acc before FT {row['test_acc_before_ft']:.4f}, "
                    f"after {row['test_acc']:.4f}, params -{100 * row['params_pruned_ratio']:.1f} %, "
                    f"MACs -{100 * row['macs_pruned_ratio']:.1f} %"
                )
                bar.update(1)
        finally:
            bar.close()
        ordered = [results[p] for p in self.pairs()]
        self.echo("writing the report")
        scores = {c: self.get_scores(c) for c in cfg.criteria}
        files = report.write_report(self, ordered, scores)
        if cfg.wandb:
            wandb_log.log_summary(self, ordered, files)
        self.echo(f"report: {self.run_dir / 'report.md'}")
        return ordered


class _EpochEcho:
    """A Lightning callback that prints one line per epoch of the base training."""

    def __new__(cls, echo):
        from lightning.pytorch.callbacks import Callback

        class EpochEcho(Callback):
            def __init__(self) -> None:
                self.t0 = time.perf_counter()

            def on_validation_epoch_end(self, trainer, pl_module) -> None:
                if trainer.sanity_checking:
                    return
                m = trainer.callback_metrics
                acc = float(m["val/acc"]) if "val/acc" in m else float("nan")
                echo(f"  base epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: val/acc {acc:.4f} "
                     f"({time.perf_counter() - self.t0:.0f} s)")

        return EpochEcho()


def _show(recipe: Any) -> str:
    return "<inline mapping>" if isinstance(recipe, dict) else repr(str(recipe))


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(data, default=_json_default)), sort_keys=False)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="pair", disable=not enabled, dynamic_ncols=True)


def _print(*args: Any) -> None:
    print(*args, flush=True)


def run_comparison(cfg: CompareConfig, echo=None) -> list[dict[str, Any]]:
    """Run (or resume) the comparison described by ``cfg``; returns one result dict per pair."""
    return Comparison(cfg, echo=echo).run()
