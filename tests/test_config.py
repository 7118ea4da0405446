import copy

import pytest
import yaml

from saestab.config import ConfigError, validate_config

from .conftest import REPO, TINY_NATIVE


def minimal():
    return {"models": {"tiny": copy.deepcopy(TINY_NATIVE)},
            "corpus": {"source": "text_glob", "text_glob": "corpus/*.txt"},
            "tokens": {"context_length": 64}}


def test_defaults_are_filled():
    cfg = validate_config(minimal())
    assert cfg["weights"] == ["trained", "random"]
    assert cfg["cache"]["outlier_factor"] == 10
    assert cfg["tokens"]["prepend_bos"] is True
    assert cfg["tokens"]["context_length"] == 64  # given values are kept
    assert cfg["models"]["tiny"]["seed"] == 0


def test_default_and_test_configs_are_valid():
    for path in (REPO / "config.yaml", REPO / "tests" / "config.yaml"):
        cfg = validate_config(yaml.safe_load(path.read_text()), source=str(path))
        assert cfg["models"]


def test_unknown_key_is_named():
    cfg = minimal()
    cfg["tokens"]["context_lenght"] = 10
    with pytest.raises(ConfigError,
                       match=r"tokens: .*context_lenght.*allowed keys: .*context_length"):
        validate_config(cfg)


def test_bad_value_is_named_with_description():
    cfg = minimal()
    cfg["tokens"]["train_tokens"] = -5
    with pytest.raises(ConfigError, match=r"tokens\.train_tokens: -5 is less than the minimum"):
        validate_config(cfg)
    cfg = minimal()
    cfg["weights"] = ["trained", "salmon"]
    with pytest.raises(ConfigError, match=r"weights\.1: 'salmon' is not one of"):
        validate_config(cfg)


def test_cross_key_checks():
    cfg = minimal()
    cfg["corpus"]["text_glob"] = None
    with pytest.raises(ConfigError, match="corpus.text_glob: required"):
        validate_config(cfg)
    cfg = minimal()
    cfg["tokens"]["context_length"] = 128  # longer than the native model's n_ctx=64
    with pytest.raises(ConfigError, match=r"models\.tiny\.config\.n_ctx"):
        validate_config(cfg)
    cfg = minimal()
    del cfg["models"]["tiny"]["config"]
    with pytest.raises(ConfigError, match=r"models\.tiny\.config: required"):
        validate_config(cfg)


def test_validation_does_not_mutate_input():
    cfg = minimal()
    before = copy.deepcopy(cfg)
    validate_config(cfg)
    assert cfg == before


def test_checking_a_config_does_not_import_torch():
    """Every snakemake process (a dry run, each cluster job's own) checks the configuration; with
    torch imported for the recipe checks that took about half of a dry run. In a subprocess:
    this one has imported torch long ago."""
    import subprocess
    import sys

    script = """
import sys, yaml
sys.path.insert(0, "workflow")
from pathlib import Path
from saestab.config import validate_config
for path in ["config.yaml", "tests/config.yaml", *sorted(map(str, Path("configs").glob("*.yaml")))]:
    validate_config(yaml.safe_load(Path(path).read_text()), source=path)
print("torch" in sys.modules)
"""
    p = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                       timeout=300, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "False"


def test_recipe_rules_name_every_architecture():
    """The schema's architectures, the registered classes and the recipe rules are the same set,
    and each class carries its rules."""
    from saestab import recipes
    from saestab.config import load_schema
    from saestab.sae import ARCHITECTURES, get_architecture

    schema = load_schema()["properties"]["sae"]["properties"]["variants"]
    enum = schema["additionalProperties"]["properties"]["architecture"]["enum"]
    assert set(enum) == set(ARCHITECTURES) == set(recipes.RULES)
    for name in ARCHITECTURES:
        cls, r = get_architecture(name), recipes.RULES[name]
        assert (cls.uses_k, cls.coefficient_key, cls.has_sparse_path, cls.nested_groups) == (
            r.uses_k, r.coefficient_key, r.has_sparse_path, r.nested_groups)
