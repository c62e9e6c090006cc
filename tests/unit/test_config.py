import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from rl_platform.config import ConfigError, Registry, apply_overrides, check, config_to_dict

SHAPES = Registry("shape")


@dataclass(kw_only=True, slots=True)
class ShapeConfig:
    @classmethod
    def registry(cls):
        return SHAPES.classes()


@SHAPES.register("circle")
@dataclass(kw_only=True, slots=True)
class CircleConfig(ShapeConfig):
    radius: float = 1.0

    def __post_init__(self):
        check(self.radius > 0, "CircleConfig.radius", self.radius, "must be > 0", "use a positive radius")


@SHAPES.register("square")
@dataclass(kw_only=True, slots=True)
class SquareConfig(ShapeConfig):
    side: int = 2


@dataclass(kw_only=True, slots=True)
class Inner:
    lr: float = 0.1
    steps: int = 3
    name: str = "x"
    flag: bool = False
    dims: tuple[int, ...] = (1, 2)
    maybe: int | None = None


@dataclass(kw_only=True, slots=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    shape: ShapeConfig = field(default_factory=CircleConfig)


def test_overrides_parse_through_field_types():
    cfg = apply_overrides(Outer(), ["inner.lr=3e-4", "inner.steps=7", "inner.flag=true", "inner.dims=4,5,6",
                                    "inner.maybe=none", "inner.name=abc"])
    assert cfg.inner == Inner(lr=3e-4, steps=7, name="abc", flag=True, dims=(4, 5, 6), maybe=None)


def test_unknown_key_lists_valid_keys():
    valid = r"\['dims', 'flag', 'lr', 'maybe', 'name', 'steps'\]"
    with pytest.raises(ConfigError, match=r"unknown key 'inner.lrr'.*" + valid):
        apply_overrides(Outer(), ["inner.lrr=1"])


def test_wrong_type_names_the_key_and_value():
    with pytest.raises(ConfigError, match=r"--set inner.steps=abc: inner.steps='abc' is not a valid int"):
        apply_overrides(Outer(), ["inner.steps=abc"])


def test_polymorphic_field_selected_by_name_then_its_fields():
    cfg = apply_overrides(Outer(), ["shape=square", "shape.side=5"])
    assert cfg.shape == SquareConfig(side=5)
    assert config_to_dict(cfg)["shape"] == {"type": "square", "side": 5}
    with pytest.raises(ConfigError, match=r"not a registered ShapeConfig; valid: \['circle', 'square'\]"):
        apply_overrides(Outer(), ["shape=triangle"])


def test_validation_reruns_after_override():
    with pytest.raises(ConfigError, match=r"CircleConfig.radius=-1.0 must be > 0; use a positive radius"):
        apply_overrides(Outer(), ["shape.radius=-1"])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "jobs.pretrain", *args], capture_output=True, text=True, timeout=120)


def test_cli_malformed_set_prints_one_line_and_exits_2():
    for bad in (["--set", "model.num_expertz=3"], ["--set", "model.num_experts=abc"], ["--set", "model.top_k=99"]):
        result = _cli("--recipe", "pretrain_smoke", *bad)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: jobs.pretrain: --set"), result.stderr


def test_cli_lists_recipes_and_keys():
    result = _cli("--list-recipes")
    assert result.returncode == 0 and "pretrain_tiny" in result.stdout and "pretrain_smoke" in result.stdout
    keys = _cli("--recipe", "pretrain_smoke", "--list-keys")
    assert "optim.clipping.lambda_rel" in keys.stdout.split()
