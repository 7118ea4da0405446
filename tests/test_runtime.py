"""Run-time settings (device, checkpoint cadence, evaluation batch and chunk sizes) stay out of
rule params, and the figure names the rules use are the ones the plotting code draws."""

from __future__ import annotations

import re

import pytest
import yaml

from saestab import figures, runtime
from saestab.config import validate_config

from .conftest import REPO


@pytest.fixture(scope="module")
def config():
    return validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))


def test_every_runtime_key_is_in_the_schema_and_marked(config):
    schema = (REPO / "workflow" / "schemas" / "config.schema.yaml").read_text()
    assert schema.count("Run-time setting: changing it reruns no finished job.") == \
        len(runtime.RUNTIME_KEYS)
    for key in runtime.RUNTIME_KEYS:
        assert runtime.setting(config, key) is not None, key


def test_result_section_drops_only_runtime_keys(config):
    section = runtime.result_section(config, "function.masking")
    assert "batch_size" not in section and "ce_batch_size" not in section
    assert section["n_anchors"] == config["function"]["masking"]["n_anchors"]
    assert "chunk_size" not in runtime.result_section(config, "stability")
    assert runtime.result_section(config, "stability")["theta"] == 0.7
    assert "batch_size" in config["function"]["masking"]  # the config itself is untouched


def test_setting_refuses_a_result_setting(config):
    with pytest.raises(KeyError, match="not a run-time setting"):
        runtime.setting(config, "stability.theta")


def test_no_rule_passes_a_runtime_setting_as_a_param():
    """A params entry that reads a run-time key would make Snakemake rerun jobs when it changes
    (the workflow test checks the effect; this names the rule)."""
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for name, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", smk.read_text(),
                                     flags=re.M):
            params = re.search(r"^    params:\n((?:        .*\n)*)", body, flags=re.M)
            if params is None:
                continue
            text = params.group(1)
            for key in runtime.RUNTIME_KEYS:
                last = key.split(".")[-1]
                assert f'"{last}"' not in text, f"{smk.name}: rule {name} passes {key}"
            # a whole section holding run-time keys must go through result_section()
            whole = re.search(r'config\["(stability|sae)"\],?$|config\["function"\]'
                              r'\["(masking|surface)"\],?$', text, flags=re.M)
            assert whole is None, f"{smk.name}: rule {name}: use result_section()"


def test_figure_names_match_the_drawing_functions():
    from saestab import plotting
    from saestab.plotting import function, geometry

    assert tuple(plotting.FIGURES) == figures.CENSUS.names
    assert tuple(function.FIGURES) == figures.FUNCTION.names
    assert tuple(geometry.FIGURES) == figures.GEOMETRY.names
    assert tuple(geometry.SYNTHETIC_FIGURES) == figures.SYNTHETIC.names
