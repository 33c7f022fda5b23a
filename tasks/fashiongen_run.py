"""The run shared by `pretrain.py` and `retrieval.py`: FashionGen data, a Fashion-FINE model, the engine's
training loop with held-out (or test) selection, and one final test-split evaluation."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from datasets.fashiongen import FashionGenSplit
from datasets.text import load_tokenizer
from engine.config import add_config_arguments, config_from_args
from engine.precision import resolve_precision
from engine.run import add_run_arguments, start_run
from tasks.cmr_eval import report_test, selection_evaluator, split_products, test_evaluator
from tasks.fine_common import build_model, check_queue_size, initialise, train_select_report
from tasks.fine_schema import PretrainConfig

DatasetFactory = Callable[[Any, FashionGenSplit, Any, list[int] | None], Dataset]


def parse(argv: list[str] | None, description: str, schema: type, default_config: str) -> tuple[Any, Any]:
    """Entry-point arguments and the validated config."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, default_config)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    return args, config_from_args(schema, args)


def run_fashiongen(args: Any, cfg: PretrainConfig, model_cls: type[nn.Module], make_dataset: DatasetFactory) -> int:
    """Train (or with `--evaluate` only evaluate) a Fashion-FINE model on FashionGen."""
    output_dir = Path(args.output_dir or cfg.output_dir)
    info = start_run(cfg.runtime, output_dir, cfg)
    precision = resolve_precision(cfg.train.precision, info.device)
    data, image_res, workers = cfg.data, cfg.model.vision.image_res, cfg.runtime.num_workers
    checkpoint = args.checkpoint or cfg.checkpoint

    tokenizer = load_tokenizer(data.tokenizer)
    test_split = FashionGenSplit(data.root, "validation")
    model = build_model(model_cls, cfg.model, cfg.loss, cfg.compat, tokenizer)
    test_eval = test_evaluator(data, cfg.eval, tokenizer, image_res, test_split, output_dir, workers, info.device,
                               precision)
    if args.evaluate:
        if not checkpoint:
            raise FileNotFoundError("--evaluate needs --checkpoint <weights> (a fine-tuned or released checkpoint)")
        initialise(model, checkpoint, strict=True)
        report_test(test_eval, model.to(info.device), output_dir, {"checkpoint": checkpoint})
        return 0

    check_queue_size(cfg.model.queue_size, data.batch_size * info.world_size)
    train_split = FashionGenSplit(data.root, "train")  # evaluation alone needs only the test split's files
    initialise(model, checkpoint)
    train_products, heldout = split_products(data, train_split, output_dir)
    dataset = make_dataset(cfg, train_split, tokenizer, train_products)
    select = selection_evaluator(data, cfg.eval, tokenizer, image_res, train_split, test_split, heldout, output_dir,
                                 workers, info.device, precision)
    train_select_report(cfg, info, output_dir, model, dataset, select, args.resume,
                        lambda module, extra: report_test(test_eval, module, output_dir, extra))
    return 0
