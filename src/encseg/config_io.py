"""Configs in and out: YAML files, ``key.path=value`` overrides, validation with errors that name the key.

Overrides are parsed as YAML and then read against the type of the field they set; a misspelt key fails with
the closest valid one before anything expensive starts (``ConfigError``). ``RETIRED_KEYS`` lists keys earlier
versions wrote: a run directory's stored config is read without them, a user's config fails with the reason.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from encseg.config import ConfigError, RunConfig


# ------------------------------------------------------------------------------------ load / override
def parse_overrides(overrides: list[str], model: type[BaseModel] | None = None) -> dict[str, Any]:
    """``["train.lr=1e-3", "model.encoder.name=dinov2_vitb14"]`` -> nested dict.

    Values are parsed as YAML, then read against the type of the field they set (``model``, default
    ``RunConfig``): where that field does not take the YAML value but takes the text as written, the text wins,
    so ``logging.progress_bar=off`` stays the string ``off`` (YAML 1.1 reads it as False) while a bool field
    still reads ``off`` as False.
    """
    model = model or RunConfig
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key segment")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {p!r}")
        node[parts[-1]] = _typed_value(raw, _field_type(model, parts))
    return tree


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


_MISSING = object()


def _parse_value(raw: str) -> Any:
    if raw == "":
        return ""
    value = yaml.safe_load(raw)
    # YAML 1.1 reads "1e-3" as a string; on a command line it always means a number
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


def _field_type(model: type[BaseModel], parts: list[str]) -> Any:
    """The annotation of the field at ``parts`` (through nested models and ``dict[str, V]`` values), or
    ``_MISSING`` for a key that is not a field (validation names it later)."""
    current: Any = model
    for part in parts:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                return _MISSING
            current = field.annotation
            continue
        mapping = next((a for a in (current, *get_args(current)) if get_origin(a) is dict), None)
        if mapping is None:
            nested = _unwrap(current)
            if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
                return _MISSING
            return _field_type(nested, [part])
        current = get_args(mapping)[1] if get_args(mapping) else Any
    return current


def _accepts(annotation: Any, value: Any) -> bool:
    try:
        TypeAdapter(annotation).validate_python(value)
    except (ValidationError, TypeError, ValueError):
        return False
    return True


def _typed_value(raw: str, annotation: Any) -> Any:
    value = _parse_value(raw)
    if annotation is _MISSING or annotation is Any or _accepts(annotation, value):
        return value
    if _accepts(annotation, raw) or isinstance(value, bool):
        return raw  # the text as written; a YAML word (on/off/yes/no) keeps its spelling in any error message
    return value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for suggesting the closest key)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):  # a list index: the list's item model owns the next key
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    args = getattr(annotation, "__args__", None)
    if args:
        for a in args:
            inner = _unwrap(a)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return annotation


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = [f"{source}: invalid config"]
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            hint = ""
            if owner is not None:
                close = difflib.get_close_matches(str(loc[-1]), list(owner.model_fields), n=1, cutoff=0.5)
                valid = ", ".join(owner.model_fields)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (valid keys: {valid})"
            lines.append(f"  unknown key {key!r}{hint}")
        else:
            lines.append(f"  {key or '<root>'}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate(model: type[BaseModel], data: dict[str, Any], source: str = "config"):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model, source)) from None


# Keys that earlier versions wrote into run configs and that are gone: (why, the key that replaces it or None).
# A run directory's stored config.yaml is read without them (a renamed key's value moves to its new name), so
# finished results stay readable; a config a user writes that still has one fails with the reason.
RETIRED_KEYS: dict[str, tuple[str, str | None]] = {
    "eval.converge_fraction": ("convergence is judged by the dev-curve criterion (train.converge); the "
                               "95%-of-best rule it set was no longer reported", None),
    "eval.batch_size": ("the evaluation batch size lives with the other loader settings", "data.eval_batch_size"),
}


# Encoder keys added later whose default changed what an existing run computed: key -> (the encoder names it
# applies to, by prefix; the value those runs were made with). A stored config.yaml without the key reads with
# that value, so a study does not reuse such a run as a run of the new default, and a resume refuses it naming
# the key (set the old value to resume it).
STORED_ENCODER_DEFAULTS: dict[str, tuple[tuple[str, ...], Any]] = {
    # DINOv2 entries tapped raw block outputs before feature_norm existed; their default is now DINOv2's protocol
    "feature_norm": (("dinov2_",), False),
}


def _stored_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    encoder = (raw.get("model") or {}).get("encoder") or {}
    name = str(encoder.get("name", ""))
    for key, (prefixes, value) in STORED_ENCODER_DEFAULTS.items():
        if name.startswith(prefixes) and key not in encoder:
            raw = deep_merge(raw, {"model": {"encoder": {key: value}}})
    return raw


def _retire(raw: dict[str, Any], stored: bool, source: str) -> dict[str, Any]:
    for key, (why, new) in RETIRED_KEYS.items():
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        if not stored:
            hint = f"; use {new!r}" if new else "; remove it"
            raise ConfigError(f"{source}: {key!r} no longer exists: {why}{hint}")
        value = node.pop(leaf)
        if new is not None:
            raw = deep_merge(nest_key(new, value), raw)
    return raw


def nest_key(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None,
                    data: dict[str, Any] | None = None, stored: bool = False) -> RunConfig:
    """Read a run YAML (or a dict), apply overrides, validate. Relative dataset roots resolve against CWD.

    ``stored``: the file is a run directory's ``config.yaml`` written by an earlier version (``RETIRED_KEYS``)."""
    source = str(path) if path else "config"
    raw = read_yaml(path) if path is not None else dict(data or {})
    raw = _retire(deep_merge(raw, parse_overrides(overrides or [])), stored, source)
    return validate(RunConfig, _stored_defaults(raw) if stored else raw, source)


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
