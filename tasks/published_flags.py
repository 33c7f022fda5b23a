"""The command-line arguments of the published scripts (Fashion-FINE `pretrain.py`/`retrieval.py`/`tgir.py`,
its BLIP `train_retrieval.py`, ASEN++ `main.py`), one table per entry point, and what each does here.

Every published argument is either
* native: an argument of our own parser with the same name (`--config`, `--output_dir`, `--evaluate`, ...);
* an alias of a config key: `--data_root D` is `--set data.root=D` (its origin shows as `--data_root D` in
  `--help-config`; applied after the config files, before `--set`, which has the last word);
* accepted without a key, with a one-line warning saying what happens instead (`--world_size`: the process
  group comes from the launcher's environment), where every published value behaves as here; or
* accepted only at the values we reproduce (`--replace_kind_num 2`); any other value is rejected with one
  line naming what to use (a `ConfigError`, exit status 2), never silently ignored.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import FLAG_OVERRIDES, ConfigError, KeyOverride, parse_scalar

PROCESS_GROUP_NOTE = ("ignored: the process group comes from the launcher's environment (torchrun "
                      "--nproc_per_node N; NGPU=N for the .sh scripts)")


@dataclass(frozen=True)
class PublishedFlag:
    """One argument of a published script's argparse and what it does here."""

    flag: str  # the published spelling, e.g. "--data_root"
    default: Any = None  # the published argparse default (documentation and tests)
    key: str | None = None  # the config key it sets (an alias of --set KEY=VALUE)
    parse: bool = False  # YAML-parse the value (numbers); False keeps the text (paths, names)
    native: bool = False  # our parser has an argument of that name already; nothing is added
    honoured: tuple[str, ...] | None = None  # key-less: the values accepted (None = every value)
    note: str = ""  # key-less: what happens instead (printed as a warning when accepted, if `warn`)
    warn: bool = True
    rejected: str = ""  # key-less: what to use instead of a value outside `honoured`
    nargs: str | None = None  # "?" for a flag that may come without a value (`--distributed`)
    dir_key: str | None = None  # key set instead when the value is an existing local folder

    @property
    def help(self) -> str:
        if self.key:
            return f"published flag: same as --set {self.key}=VALUE"
        allowed = f" (accepted: {', '.join(self.honoured)})" if self.honoured else ""
        local = f"; a local folder sets {self.dir_key}" if self.dir_key else ""
        return f"published flag{allowed}: {self.note or 'as published'}{local}"

    def resolve(self, value: str | None) -> KeyOverride | None:
        """The config override a given value stands for (None: nothing to set); ConfigError when the value
        cannot be honoured."""
        source = self.flag if value is None else f"{self.flag} {value}"
        if self.key is not None:
            return KeyOverride(self.key, parse_scalar(value) if self.parse else value, source)
        honoured = self.honoured is not None and value in self.honoured
        # The published default (a hub name) stays a no-op even where a folder of that name exists.
        if not honoured and self.dir_key is not None and value and Path(value).is_dir():
            return KeyOverride(self.dir_key, value, source)
        if self.honoured is not None and not honoured:
            raise ConfigError(f"{source}: {self.rejected}")
        if self.warn and self.note:
            warn(f"{source}: {self.note}")
        return None


def warn(message: str) -> None:
    """One warning line on stderr (rank 0 only: every rank parses the same command line)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"warning: {message}", file=sys.stderr)


class _PublishedAction(argparse.Action):
    """Records the override a published flag stands for on the namespace (`engine.config.FLAG_OVERRIDES`)."""

    def __init__(self, option_strings: list[str], dest: str, published: PublishedFlag, **kwargs: Any) -> None:
        self.published = published
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        override = self.published.resolve(values)
        if override is not None:
            setattr(namespace, FLAG_OVERRIDES, (*getattr(namespace, FLAG_OVERRIDES, ()), override))
        setattr(namespace, self.dest, values)


def add_published_flags(parser: argparse.ArgumentParser, flags: Sequence[PublishedFlag]) -> None:
    """Add the non-native flags of a table to `parser` (their values become `KeyOverride`s while parsing,
    which `engine.config.config_from_args` applies); native ones must exist in `parser` already."""
    known = parser._option_string_actions  # noqa: SLF001 - argparse has no public lookup
    missing = [f.flag for f in flags if f.native and f.flag not in known]
    if missing:
        raise ValueError(f"native published flags missing from the parser: {', '.join(missing)}")
    parser.set_defaults(**{FLAG_OVERRIDES: ()})
    added = [f for f in flags if not f.native]
    if not added:
        return
    group = parser.add_argument_group("published flags", "arguments of the published scripts, kept for their "
                                                         "command lines (a config key each where one exists)")
    for f in added:
        group.add_argument(f.flag, dest="published_" + f.flag.lstrip("-"), action=_PublishedAction, published=f,
                           nargs=f.nargs, metavar=None if f.nargs else "VALUE", default=None, help=f.help)


def native(flag: str, default: Any = None) -> PublishedFlag:
    return PublishedFlag(flag, default, native=True)


def alias(flag: str, key: str, default: Any = None, parse: bool = False) -> PublishedFlag:
    return PublishedFlag(flag, default, key=key, parse=parse)


# The ALBEF-style launch flags every published Fashion-FINE and BLIP script has.
_LAUNCH = (
    native("--config"), native("--output_dir"), native("--evaluate", False),
    alias("--device", "runtime.device", "cuda"),
    PublishedFlag("--world_size", 1, note=PROCESS_GROUP_NOTE),
    PublishedFlag("--dist_url", "env://", honoured=("env://",), warn=False,
                  rejected="not supported: the process group is initialised from the launcher's environment; use "
                           "torchrun --master_addr/--master_port (MASTER_PORT for the .sh scripts)"),
    PublishedFlag("--distributed", True, nargs="?",
                  note="ignored (as published, where the environment decides): distributed when launched by "
                       "torchrun with WORLD_SIZE > 1"),
)
# Fashion-FINE's own flags shared by pretrain.py, retrieval.py and tgir.py.
_FINE = (
    *_LAUNCH, native("--checkpoint"), native("--pre_point"),
    alias("--seed", "runtime.seed", 66, parse=True),
    alias("--data_root", "data.root"),
    PublishedFlag("--text_encoder", "bert-base-uncased", honoured=("bert-base-uncased",), dir_key="data.tokenizer",
                  note="nothing is downloaded: the tokenizer is the local folder data.tokenizer (bert-base-uncased's "
                       "vocabulary with the sign tokens, scripts/build_vocab.py)",
                  rejected="not a local folder, and nothing is downloaded here: give the tokenizer folder "
                           "(--set data.tokenizer=DIR)"),
)

PRETRAIN_FLAGS: tuple[PublishedFlag, ...] = (
    *_FINE,
    alias("--max_word_num", "data.max_words", 180, parse=True),
    alias("--text_patch_ratio", "model.mix.txt_local_ratio", 0.25, parse=True),
    alias("--img_patch_ratio", "model.mix.img_local_ratio", 0.05, parse=True),
    alias("--alpha_focal", "loss.focal.alpha", 0.5, parse=True),
    alias("--gamma_focal", "loss.focal.gamma", 2.0, parse=True),
    PublishedFlag("--replace_kind_num", 2, honoured=("2",), warn=False,
                  rejected="not supported: replaced tokens are always of the 2 published kinds (a random token or "
                           "a WordNet antonym, 50/50; see data.wordnet_path); no config key changes their number"),
    PublishedFlag("--catemap_filename", "categorys_to_sign.txt", honoured=("categorys_to_sign.txt",), warn=False,
                  rejected="not supported: the category->sign map is the packaged datasets/data/categorys_to_sign.txt "
                           "(the table prepare_dataset.py writes into data.root); no config key names another file"),
    PublishedFlag("--product_list_filename", "productid_list.json", honoured=("productid_list.json",), warn=False,
                  rejected="not supported: the product lists are data.root/<split>/productid_list.json (written by "
                           "prepare_dataset.py); point data.root at another folder instead (--set data.root=DIR)"),
)
RETRIEVAL_FLAGS = PRETRAIN_FLAGS  # the published retrieval.py has the same argparse as pretrain.py
TGIR_FLAGS: tuple[PublishedFlag, ...] = (
    *_FINE,
    alias("--max_word_num", "data.max_words", 79, parse=True),
    alias("--train_class", "data.train_class", "all"),
)
BLIP_FLAGS: tuple[PublishedFlag, ...] = (*_LAUNCH, alias("--seed", "runtime.seed", 42, parse=True))
ASEN_FLAGS: tuple[PublishedFlag, ...] = (native("--cfg"), native("--resume"), native("--test"))
