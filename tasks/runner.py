"""The one runner behind every entry point: start the run, then either evaluate (strict load, final report) or
train (initial weights, held-out split, training with selection, reload of the selected checkpoint, final
report). Training records and the final metrics go to one metric sink (engine.tracking: log.jsonl, and the
trackers of `--report-to` / the config's report_to)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.config import config_from_args, config_to_dict
from engine.logger import get_logger
from engine.precision import resolve_precision
from engine.run import start_run
from engine.run_folder import RunFolder
from engine.tracking import Tracker, check_report_to
from engine.trainer import FitResult, Trainer
from models.weights import load_weights
from tasks.base import RunContext, RunRequest, Task


def main(task_cls: type[Task], argv: list[str] | None, description: str) -> int:
    """Parse the command line of `task_cls`'s entry point and run it."""
    args = task_cls.build_parser(description).parse_args(argv)
    cfg = config_from_args(task_cls.schema, args)
    request = task_cls.make_request(args, cfg)
    if getattr(args, "report_to", None) is not None:  # --report-to overrides the config's report_to
        request.options["report_to"] = list(args.report_to)
    return run(task_cls, cfg, request)


def run(task_cls: type[Task], cfg: Any, request: RunRequest) -> int:
    """Run a task on a validated config."""
    task_cls.check_inputs(cfg, request)
    check_report_to(request.options.get("report_to") or ())  # a missing tracker package: before anything starts
    folder = run_folder(task_cls, cfg, request)
    tracker = None
    try:
        info = start_run(task_cls.runtime(cfg), request.output_dir, cfg, folder=folder)
        for note in request.notes:
            get_logger().info(note)
        context = RunContext(info, request.output_dir, resolve_precision(task_cls.train_precision(cfg), info.device))
        task = task_cls(cfg, context, request)
        tracker = make_tracker(task, request)  # before anything is built: a missing tracker package fails first
        model = task.build_model()
        if not request.evaluate:
            task.check_training()
        final = task.final_report()
        if request.evaluate:
            return evaluate(task, model, final, request, tracker)
        train(task, model, final, request, tracker)
        return 0
    finally:
        if tracker is not None:
            tracker.close()
        folder.close()


def run_folder(task_cls: type[Task], cfg: Any, request: RunRequest) -> RunFolder:
    """What the run asks of its output folder (locked for the run's life; a new training run needs an unused
    folder or --overwrite, which never removes the run's own --checkpoint)."""
    return RunFolder(Path(request.output_dir), task_cls.run_files(cfg), training=not request.evaluate,
                     resumed=bool(request.resume), overwrite=request.overwrite,
                     keep=tuple(p for p in (request.checkpoint,) if p))


def make_tracker(task: Task, request: RunRequest) -> Tracker:
    """The run's metric sink: `--report-to` (request.options['report_to']), else the plan's train.report_to."""
    report_to = request.options.get("report_to")
    if report_to is None:
        report_to = task.training().train.report_to
    tracker = Tracker(task.run.output_dir, report_to, enabled=task.run.info.is_main,
                      config=config_to_dict(task.cfg))
    if tracker.report_to:
        get_logger().info("metrics go to log.jsonl and %s", ", ".join(
            f"{name} ({tracker.tensorboard_dir})" if name == "tensorboard" else name for name in tracker.report_to))
    return tracker


def log_final(tracker: Tracker, metrics: dict[str, float] | None, checkpoint: Any, step: int) -> None:
    """The final evaluation as a `final` record (log.jsonl) and `final/<metric>` scalars (rank 0)."""
    numbers = {k: float(v) for k, v in (metrics or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        tracker.write({"kind": "final", "step": step, **numbers, "checkpoint": str(checkpoint)})


def evaluate(task: Task, model: Any, final: Any, request: RunRequest, tracker: Tracker) -> int:
    load_weights(model, request.checkpoint, family=task.weight_family, strict=request.strict)
    metrics = final.report(model.to(task.run.device), {"checkpoint": request.checkpoint})
    log_final(tracker, metrics, request.checkpoint, step=0)
    return 0


def train(task: Task, model: Any, final: Any, request: RunRequest, tracker: Tracker) -> FitResult:
    """Train with selection (after `check_training`); then reload the selected checkpoint (best, else last) and
    report on it."""
    task.initialise(model, request.checkpoint)
    heldout = task.heldout_split()
    dataset = task.train_set(heldout)
    select = task.selection_evaluator(heldout)
    loader = task.train_loader(dataset)
    # On the run's device before the optimizer is built: Adam(W) takes the fused kernel there (engine.optim).
    optimizer, scheduler = task.optimizer(model.to(task.run.device), len(loader))
    plan = task.training()
    run = task.run
    trainer = Trainer(model, loader, optimizer, scheduler, plan.train, run.info, run.output_dir,
                      schedule_interval=plan.schedule_interval, loss_weights=plan.loss_weights, evaluate=select,
                      config_dict=config_to_dict(task.cfg), checkpoint_names=plan.checkpoint_names,
                      tracker=tracker, model_card=type(task).model_card(task.cfg))
    if request.resume:
        trainer.resume(request.resume)
    result = trainer.fit()
    if result.interrupted:
        return result
    last, best = (Path(run.output_dir) / name for name in plan.checkpoint_names)
    chosen = best if result.best_epoch is not None and best.is_file() else last  # never another run's best
    load_weights(trainer.module, chosen, family=task.weight_family, strict=True)
    name = getattr(select, "name", None)
    get_logger().info("final evaluation of %s (selected on %s, epoch %s)", chosen, name or "-", result.best_epoch)
    extra: dict[str, Any] = {"checkpoint": str(chosen), "selected_on": name, "best_epoch": result.best_epoch}
    warning = getattr(select, "selection_warning", None)
    if warning:  # selected on the reported split
        extra["selection_warning"] = warning
    metrics = final.report(trainer.module, extra)
    log_final(tracker, metrics, chosen, step=result.global_step)
    return result
