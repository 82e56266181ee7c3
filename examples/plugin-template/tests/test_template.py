"""The template's plugins against ganforge's own contract checks (``ganforge.testing``). Run with the package
installed (``pip install -e .``): the checks find the plugins through the ``ganforge.plugins`` entry point,
exactly as ``ganforge run`` does."""

import pytest

from ganforge import registry
from ganforge.testing import check_architecture, check_balancer, check_loss

PLUGINS = [("architecture", "template_conv"), ("loss", "template_softplus"), ("balancer", "template_every_other")]


@pytest.mark.parametrize(("kind", "name"), PLUGINS)
def test_registered_through_the_entry_point(kind, name):
    # the source names this distribution: the plugin came in through pyproject.toml's entry point
    assert "ganforge-plugin-template" in registry.get(kind, name).source


def test_architecture(tmp_path):
    check_architecture("template_conv", tmp_path=tmp_path)  # its contract_options: 8 px, tiny widths


@pytest.mark.parametrize("resolution", [16, 32])
def test_architecture_at_training_resolutions(resolution):
    arch = check_architecture("template_conv", resolution=resolution, width=4)  # options go over contract_options
    assert arch.resolution == resolution


@pytest.mark.parametrize("options", [{}, {"temperature": 2.0}])
def test_loss(options):
    check_loss("template_softplus", **options)


@pytest.mark.parametrize("options", [{}, {"d_every": 3}])
def test_balancer(options):
    check_balancer("template_every_other", **options)


def test_bad_option_values_are_refused():
    # a ValueError from the constructor is what ganforge turns into a one-line recipe error
    with pytest.raises(ValueError, match="temperature must be > 0"):
        check_loss("template_softplus", temperature=0.0)
