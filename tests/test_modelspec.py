"""Model specs: the forms a user types, the errors for the others, and schemes added by other integrations."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from decouple.cli.model_spec import SCHEMES, Scheme, accepts_keyword, build_model, parse_model_spec, register_scheme
from decouple.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "kind", "target", "name"),
    [
        ("torchvision:resnet18", "torchvision", "resnet18", "resnet18"),
        ("tests.cli_models:tiny_net", "factory", "tests.cli_models", "tiny_net"),
        ("models/net.py:build", "factory", "models/net.py", "build"),
    ],
)
def test_spec_forms(text: str, kind: str, target: str, name: str) -> None:
    spec = parse_model_spec(text)
    assert (spec.kind, spec.target, spec.name, str(spec)) == (kind, target, name, text)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("resnet18", "not of a known form"),
        ("torchvision:", "names no model"),
        ("my-package:build", "neither a scheme nor a module path"),
        ("pkg.mod:3build", "not a Python name"),
        ("torchvision:resnet81", "did you mean 'resnet18'"),
        ("tests.cli_models:not_a_model", "not an nn.Module"),
        ("missing/file.py:build", "does not exist"),
    ],
)
def test_bad_specs_name_the_fix(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build_model(text)


def test_torchvision_models_are_built_without_weights() -> None:
    model = build_model("torchvision:resnet18", {"num_classes": 7})
    assert model.fc.out_features == 7
    with pytest.raises(ConfigError, match="weights=None"):
        build_model("torchvision:resnet18", {"weights": "DEFAULT"})


def test_a_python_file_can_hold_the_factory(tmp_path: Path) -> None:
    path = tmp_path / "net.py"
    path.write_text("from torch import nn\n\ndef build(width=3):\n    return nn.Linear(2, width)\n")
    model = build_model(f"{path}:build", {"width": 5})
    assert isinstance(model, nn.Linear) and model.out_features == 5
    with pytest.raises(ConfigError, match=r"signature is \(width=3\)"):
        build_model(f"{path}:build", {"depth": 2})


def test_accepts_keyword_reads_the_factory_signature() -> None:
    assert accepts_keyword("tests.cli_models:tiny_net", "num_classes")
    assert not accepts_keyword("tests.cli_models:not_a_model", "num_classes")
    assert accepts_keyword("torchvision:resnet18", "num_classes")


def test_other_integrations_register_schemes() -> None:
    def builder(name: str, kwargs: dict) -> nn.Module:
        if name != "Toy":
            raise ConfigError(f"no toy model {name!r}")
        return nn.Linear(kwargs.get("size", 2), 2)

    register_scheme(Scheme("toy", builder, "toy:Toy", "toy models"))
    try:
        assert build_model("toy:Toy", {"size": 4}).in_features == 4
        with pytest.raises(ConfigError, match="toy:NAME"):
            build_model("unknown:Thing")
        with pytest.raises(ConfigError, match="no toy model"):
            build_model("toy:Other")
    finally:
        del SCHEMES["toy"]
    assert "toy" not in SCHEMES
