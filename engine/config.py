"""Typed YAML configs: ruamel (YAML 1.2) loading, `_base_` inheritance, several files merged in order,
`--set key.sub=value` overrides (and flags that alias a key, `KeyOverride`), and validation against
dataclass schemas.

A schema is a dataclass whose fields are scalars (int, float, bool, str), `X | None`, `Literal[...]`,
`list[X]`, `tuple[X, ...]`, `dict[str, X]` or nested schema dataclasses. Every field must have a default;
a mapping given in YAML extends (not replaces) a `dict` field's default mapping;
the docstring of a schema documents its keys (``# comment`` after each field). A schema may define
``validate(self) -> None`` raising ``ValueError`` for cross-field checks.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import os
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from engine.atomic import atomic_write

T = TypeVar("T")
BASE_KEY = "_base_"


class ConfigError(ValueError):
    """A config file or override does not match its schema."""


def _yaml() -> YAML:
    return YAML(typ="safe", pure=True)


def yaml_error_text(exc: YAMLError, source: str) -> str:
    """A YAML error on one line, `SOURCE:LINE:COLUMN: invalid YAML: problem (context at LINE:COLUMN)` (1-based),
    instead of ruamel's several lines that name the stream, not the file."""
    mark = exc.problem_mark if isinstance(exc, MarkedYAMLError) else None
    if mark is None:
        return f"{source}: invalid YAML: {' '.join(str(exc).split())}"
    text = f"{source}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {exc.problem}"
    if exc.context:
        where = exc.context_mark
        text += f" ({exc.context}" + (f" at {where.line + 1}:{where.column + 1})" if where is not None else ")")
    return text


def parse_scalar(text: str, source: str | None = None) -> Any:
    """Parse an override value with YAML 1.2 rules (`6e-5` -> float, `[1, 2]` -> list, `null` -> None);
    invalid YAML is a one-line ConfigError naming `source` (e.g. the `--set` item)."""
    if text.strip() == "":
        return ""
    try:
        return _yaml().load(io.StringIO(text))
    except YAMLError as exc:
        mark = exc.problem_mark if isinstance(exc, MarkedYAMLError) else None
        problem = (exc.problem if mark is not None else None) or " ".join(str(exc).split())
        column = f" at column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{source or repr(text)}: the value is not valid YAML{column}: {problem} (quote a "
                          "string; close every bracket)") from None


def _deep_merge(base: dict, top: Mapping, origins: dict[str, str], source: str, prefix: str = "") -> dict:
    out = dict(base)
    for key, value in top.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value, origins, source, dotted + ".")
        else:
            out[key] = copy.deepcopy(dict(value)) if isinstance(value, Mapping) else copy.deepcopy(value)
            _record_origins(value, dotted, origins, source)
    return out


def _record_origins(value: Any, dotted: str, origins: dict[str, str], source: str) -> None:
    origins[dotted] = source
    if isinstance(value, Mapping):
        for k, v in value.items():
            _record_origins(v, f"{dotted}.{k}", origins, source)


def load_yaml_tree(path: str | Path, origins: dict[str, str] | None = None, _stack: tuple = ()) -> dict:
    """Read one YAML file, resolving `_base_` (a path or list of paths relative to the file) first."""
    path = Path(path)
    origins = {} if origins is None else origins
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _stack:
        raise ConfigError(f"{path}: circular _base_ chain: {' -> '.join(str(p) for p in _stack)}")
    try:
        data = _yaml().load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte offset {exc.start}: {exc.reason})") from None
    except YAMLError as exc:
        raise ConfigError(yaml_error_text(exc, str(path))) from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    data = dict(data)
    bases = data.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged: dict = {}
    for base in bases:
        base_tree = load_yaml_tree(path.parent / base, origins, _stack + (path.resolve(),))
        merged = _deep_merge(merged, base_tree, {}, "")
    return _deep_merge(merged, data, origins, str(path))


@dataclasses.dataclass(frozen=True)
class KeyOverride:
    """A config key set by a command-line flag other than `--set` (e.g. a published `--data_root D`)."""

    key: str  # dotted config key, e.g. data.root
    value: Any  # the value, already typed (str values are not YAML-parsed)
    source: str  # where it came from, shown by --help-config and in errors, e.g. "--data_root D"


# argparse.Namespace attribute with the KeyOverride tuple that flags aliasing config keys fill while parsing;
# `config_from_args` applies it after the config files and before `--set`.
FLAG_OVERRIDES = "flag_overrides"


def apply_value(tree: dict, key: str, value: Any, origins: dict[str, str], source: str) -> dict:
    """Set the dotted `key` of a raw config tree to `value`, recording `source` as its origin."""
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"{source}: empty key component in {key!r}")
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return _deep_merge(tree, nested, origins, source)


def apply_override(tree: dict, assignment: str, origins: dict[str, str]) -> dict:
    """Apply one `a.b.c=value` override to a raw config tree."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE (e.g. optim.lr=1e-5)")
    key, text = assignment.split("=", 1)
    if not all(key.strip().split(".")):
        raise ConfigError(f"--set {assignment!r}: empty key component")
    value = parse_scalar(text, f"--set {assignment!r}")
    return apply_value(tree, key, value, origins, f"--set {assignment}")


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, dotted: str, origins: dict[str, str]) -> Any:
    """Check/convert a raw YAML value to the annotated type, raising ConfigError with key and source."""
    origin = get_origin(tp)
    where = origins.get(dotted, "<defaults>")

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{where}: key '{dotted}' expects {expected}, got {type(value).__name__} {value!r}")

    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise fail(f"a mapping ({tp.__name__})")
        return _build(tp, value, origins, dotted + ".")
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, dotted, origins)
            except ConfigError as exc:
                errors.append(exc)
        raise fail(" or ".join(_type_name(o) for o in options))
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: key '{dotted}' must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise fail(f"a list ({_type_name(tp)})")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise fail(f"a list of {len(args)} items")
            return tuple(_convert(v, a, f"{dotted}[{i}]", origins) for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{dotted}[{i}]", origins) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise fail("a mapping")
        key_tp, val_tp = get_args(tp) or (str, Any)
        return {_convert(k, key_tp, dotted, origins): _convert(v, val_tp, f"{dotted}.{k}", origins)
                for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("a boolean (true/false)")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise ConfigError(f"key '{dotted}': unsupported schema type {tp!r}")


def _build(schema: type[T], data: Mapping, origins: dict[str, str], prefix: str = "") -> T:
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}{unknown[0]}"
        section = prefix.rstrip(".") or "top level"
        raise ConfigError(
            f"{origins.get(key, '<config>')}: unknown key '{key}'; valid keys in {section}: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {name: _convert(value, hints[name], f"{prefix}{name}", origins) for name, value in data.items()}
    for name, value in kwargs.items():  # mapping keys extend the schema's default mapping
        default_factory = fields[name].default_factory
        if isinstance(value, dict) and default_factory is not dataclasses.MISSING:
            default = default_factory()
            if isinstance(default, dict):
                kwargs[name] = {**default, **value}
    try:
        obj = schema(**kwargs)
    except TypeError as exc:  # a field without default that the config did not give
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {exc}") from None
    return obj


def build_config(schema: type[T], tree: Mapping, origins: dict[str, str] | None = None) -> T:
    """Validate a raw tree against `schema` (unknown keys and wrong types raise ConfigError)."""
    return _build(schema, tree, origins or {})


def load_config(schema: type[T], paths: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                key_overrides: Sequence[KeyOverride] = ()) -> T:
    """Merge YAML files in order (each with its `_base_` chain), apply `key_overrides` then the `--set`
    overrides, validate."""
    return load_config_with_origins(schema, paths, overrides, key_overrides)[0]


def load_config_with_origins(schema: type[T], paths: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                             key_overrides: Sequence[KeyOverride] = ()) -> tuple[T, dict[str, str]]:
    """`load_config` plus where each dotted key was set (a file, a flag, or `--set KEY=VALUE`)."""
    origins: dict[str, str] = {}
    tree: dict = {}
    for path in paths:
        tree = _deep_merge(tree, load_yaml_tree(path, origins), {}, "")
    for item in key_overrides:
        tree = apply_value(tree, item.key, item.value, origins, item.source)
    for assignment in overrides:
        tree = apply_override(tree, assignment, origins)
    return build_config(schema, tree, origins), origins


def check_select_metric(name: str | None, valid: Sequence[str], evaluation: str,
                        key: str = "train.select_metric") -> None:
    """`key` must name one of the `valid` metrics that the selection `evaluation` returns (checked before any
    data is read, not after the first epoch)."""
    if name is not None and name not in valid:
        raise ConfigError(f"{key} {name!r} is not a metric of {evaluation}; valid names: {', '.join(valid)}")


def config_to_dict(cfg: Any) -> Any:
    """Plain nested dict/list version of a schema instance (for checkpoints and logs)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


def config_yaml(cfg: Any) -> str:
    """The resolved config as YAML text (what `dump_config` writes and `--print-config` prints)."""
    yaml = YAML()
    yaml.default_flow_style = False
    stream = io.StringIO()
    yaml.dump(config_to_dict(cfg), stream)
    return stream.getvalue()


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (what actually ran), atomically."""
    text = config_yaml(cfg)
    with atomic_write(path) as f:
        f.write(text)


def describe_schema(schema: type, prefix: str = "", cfg: Any = None, origins: Mapping[str, str] | None = None
                    ) -> list[str]:
    """`key: type = default  # doc` lines for every key of a schema (used by `--help-config`).

    Given a resolved `cfg` (and the `origins` of `load_config_with_origins`), the lines show its values instead,
    each followed by `(from FILE)`, `(from --set KEY=VALUE)`, `(from --FLAG VALUE)` or `(default)`.
    """
    lines = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            lines.extend(describe_schema(tp, key + ".", None if cfg is None else getattr(cfg, f.name), origins))
            continue
        doc = f.metadata.get("doc", "")
        if cfg is None:
            value = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "<required>")
            where = ""
        else:
            value, where = getattr(cfg, f.name), f"  ({value_origin(key, origins or {})})"
        lines.append(f"{key}: {_type_name(tp)} = {value!r}{where}" + (f"  # {doc}" if doc else ""))
    return lines


def value_origin(key: str, origins: Mapping[str, str]) -> str:
    """`from SOURCE[, SOURCE...]` for a key (a mapping's entries may come from several), or `default`."""
    sources = [origins[key]] if key in origins else []
    sources += [src for k, src in origins.items() if k.startswith(key + ".") or k.startswith(key + "[")]
    sources = list(dict.fromkeys(sources))
    return f"from {', '.join(sources)}" if sources else "default"


def add_config_arguments(parser: argparse.ArgumentParser, default_config: str | None, flag: str = "--config",
                         set_example: str = "optim.lr=1e-5 train.epochs=2") -> None:
    """Add the config flags every entry point shares: config file(s), `--set`/`--cfg-options`, help.

    `--cfg` without a default is required, except with `--help-config` (checked in `config_from_args`).
    """
    if flag == "--cfg":
        parser.add_argument("--cfg", nargs="+", default=[default_config] if default_config else None,
                            help="YAML config files, merged in order" + ("" if default_config else " (required)"))
    else:
        parser.add_argument("--config", default=default_config, help="YAML config file (may use _base_)")
    parser.add_argument("--set", "--cfg-options", dest="overrides", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE", help=f"override config keys, e.g. --set {set_example}")
    parser.add_argument("--help-config", action="store_true",
                        help="list every config key with the value the given config files and --set resolve to, "
                             "where it came from, its type and meaning (the defaults without a config file)")
    parser.add_argument("--print-config", action="store_true",
                        help=f"print the resolved config as YAML (loadable again with {flag} FILE) and exit")


def config_from_args(schema: type[T], args: argparse.Namespace, key_overrides: Sequence[KeyOverride] = ()) -> T:
    """Load the schema from parsed arguments (`--config`/`--cfg`, then the flags that alias config keys, i.e.
    `args.flag_overrides` and `key_overrides`, then `--set`); `--help-config` and `--print-config` print it and
    exit 0."""
    paths = (args.cfg or []) if hasattr(args, "cfg") else ([args.config] if args.config else [])
    flags = [*getattr(args, FLAG_OVERRIDES, ()), *key_overrides]
    if getattr(args, "help_config", False):
        if not paths and not args.overrides and not flags:
            lines = ["# no config file given: the schema defaults", *describe_schema(schema)]
        else:
            cfg, origins = load_config_with_origins(schema, paths, args.overrides, flags)
            given = [*dict.fromkeys(item.source.split()[0] for item in flags), *(["--set"] if args.overrides else [])]
            lines = [f"# resolved from {' + '.join(str(p) for p in paths) or 'the defaults'}"
                     + (f" and {', '.join(given)}" if given else ""), *describe_schema(schema, cfg=cfg, origins=origins)]
        _print_and_exit("\n".join(lines) + "\n")
    if hasattr(args, "cfg") and not args.cfg:
        raise ConfigError("--cfg: give the YAML config file(s) of the run (see --help)")
    cfg = load_config(schema, paths, args.overrides, flags)
    if getattr(args, "print_config", False):
        _print_and_exit(config_yaml(cfg))
    return cfg


def _print_and_exit(text: str) -> typing.NoReturn:
    """Write `text` to stdout and exit 0, quietly when the reader went away (`--help-config | head`)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(0)


def field(default: Any = dataclasses.MISSING, doc: str = "", **kwargs: Any) -> Any:
    """`dataclasses.field` with a `doc` string shown by `--help-config`."""
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: copy.deepcopy(value), metadata={"doc": doc}, **kwargs)
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return dataclasses.field(default_factory=default, metadata={"doc": doc}, **kwargs)
    return dataclasses.field(default=default, metadata={"doc": doc}, **kwargs)
