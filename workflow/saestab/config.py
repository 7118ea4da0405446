"""Configuration: JSON-schema validation with defaults filled in, and errors that name the key.

The workflow validates ``config.yaml`` against ``workflow/schemas/config.schema.yaml`` before any
job runs; library users can call :func:`validate_config` on their own dicts.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .recipes import recipe_problems

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key and the reason."""


def _extend_with_defaults(validator_class: type) -> type:
    """A validator that fills in ``default`` values of object properties while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Mapping[str, Any], instance: Any,
                     schema: Mapping[str, Any]) -> Iterator[Any]:
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _extend_with_defaults(jsonschema.Draft202012Validator)


def load_schema(path: str | Path | None = None) -> dict[str, Any]:
    path = Path(path) if path is not None else SCHEMA_PATH
    with open(path) as fh:
        return yaml.safe_load(fh)


def _key(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"{error.message}; allowed keys: {', '.join(allowed)}"
    if error.validator == "not" and isinstance(error.validator_value, Mapping) \
            and "description" in error.validator_value:
        return str(error.validator_value["description"])
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {error.validator_value}"
    return error.message


def validate_config(config: Mapping[str, Any], schema: str | Path | Mapping[str, Any] | None = None,
                    source: str = "config") -> dict[str, Any]:
    """Validate ``config`` and return a copy with every default filled in.

    Raises :class:`ConfigError` listing each problem as ``<source>: <key>: <reason>``; a schema
    property's ``description`` is appended so the user learns what the key is for.
    """
    if not isinstance(schema, Mapping):
        schema = load_schema(schema)
    filled = copy.deepcopy(dict(config))
    validator = _Validator(schema)
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for err in errors:
            line = f"{source}: {_key(err)}: {_message(err)}"
            desc = err.schema.get("description") if isinstance(err.schema, Mapping) else None
            if desc and err.validator != "additionalProperties":
                line += f"  [{_key(err)}: {desc.strip().splitlines()[0]}]"
            lines.append(line)
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    _check_semantics(filled, source)
    return filled


def validate_recipe(recipe: Mapping[str, Any], source: str = "recipe") -> None:
    """Check one SAE recipe as the workflow does: the schema's ``sae.variants`` entry, then
    :func:`recipe_problems`. Raises :class:`ConfigError` naming each offending key."""
    schema = load_schema()
    variant = schema["properties"]["sae"]["properties"]["variants"]["additionalProperties"]
    given = {k: v for k, v in recipe.items() if v is not None}
    errors = list(_Validator(variant).iter_errors(copy.deepcopy(given)))
    lines = [f"{source}: {_key(e)}: {_message(e)}" for e in errors]
    if not errors:
        lines = [f"{source}: {p}" for p in recipe_problems(given)]
    if lines:
        raise ConfigError("invalid SAE recipe:\n  " + "\n  ".join(lines))


def _check_semantics(config: dict[str, Any], source: str) -> None:
    """Cross-key checks a JSON schema cannot express."""
    tokens = config.get("tokens", {})
    corpus = config.get("corpus", {})
    if corpus.get("source") == "text_glob" and not corpus.get("text_glob"):
        raise ConfigError(f"{source}: corpus.text_glob: required when corpus.source is 'text_glob'")
    if corpus.get("source") == "hf_dataset" and not (corpus.get("hf_dataset") or {}).get("name"):
        raise ConfigError(f"{source}: corpus.hf_dataset.name: required when corpus.source is "
                          "'hf_dataset'")
    for name, spec in config.get("models", {}).items():
        need = {"gguf": ("architecture_name",), "hub": ("name",),
                "native": ("config",)}[spec["source"]]
        for key in need:
            if key not in spec:
                raise ConfigError(f"{source}: models.{name}.{key}: required for a "
                                  f"{spec['source']!r} model")
        if spec["source"] == "native":
            n_ctx = spec["config"].get("n_ctx", 0)
            if n_ctx < tokens.get("context_length", 0):
                raise ConfigError(f"{source}: models.{name}.config.n_ctx: {n_ctx} is shorter than "
                                  f"tokens.context_length ({tokens['context_length']})")
    sae = config.get("sae", {})
    variants = sae.get("variants", {})
    for weights, names in sae.get("runs", {}).items():
        for name in names:
            if name not in variants:
                raise ConfigError(f"{source}: sae.runs.{weights}: unknown variant {name!r} "
                                  f"(defined: {', '.join(sorted(variants))})")
    for name in config.get("synthetic", {}).get("runs", []):
        if name not in variants:
            raise ConfigError(f"{source}: synthetic.runs: unknown variant {name!r} "
                              f"(defined: {', '.join(sorted(variants))})")
    for name, v in variants.items():
        for problem in recipe_problems(v):
            raise ConfigError(f"{source}: sae.variants.{name}.{problem}")
    if config.get("weights") and len(set(config["weights"])) != len(config["weights"]):
        raise ConfigError(f"{source}: weights: duplicate entries in {config['weights']}")
