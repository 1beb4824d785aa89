"""One config loader and one validation vocabulary (npuq.config, npuq._validate): TOML files, filling
dataclasses, declared field constraints, and the messages every config of npuq speaks in."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from npuq._validate import Interval, Options, check
from npuq.config import ConfigError, check_fields, checked, fill, read_toml, require


@dataclass
class Spec:
    name: str = "x"
    budget: int = checked(10, Interval(int, 1, None))
    rate: float = checked(0.5, Interval(float, 0, 1, closed="left"))
    mode: str = checked("a", Options(("a", "b")))
    sizes: list[int] | None = None

    def __post_init__(self):
        check_fields(self)


@pytest.mark.parametrize(
    "constraint, value, message",
    [
        (Interval(int, 1, None), 0, "n must be >= 1, got 0"),
        (Interval(int, None, 5), 6, "n must be <= 5, got 6"),
        (Interval(float, 0, None, closed="neither"), 0.0, "n must be > 0, got 0.0"),
        (Interval(float, 0, 1, closed="left"), 1.0, r"n must be in \[0, 1\), got 1.0"),
        (Interval(int, -128, 127), 128, r"n must be in \[-128, 127\], got 128"),
        (Options(("double", "single")), "x", "n must be one of 'double', 'single'; got 'x'"),
    ],
)
def test_constraints_say_what_they_accept(constraint, value, message):
    with pytest.raises(ValueError, match=message):
        check(value, "n", constraint)


@pytest.mark.parametrize("value", [True, np.bool_(False), 1.0, "1", None])
def test_an_int_interval_refuses_what_is_not_an_integer(value):
    with pytest.raises(TypeError, match="n must be an int"):
        Interval(int, 0, 10).check(value, "n")


def test_an_int_interval_accepts_integer_scalars():
    assert Interval(int, 0, 10).check(np.int64(3), "n") == 3
    assert Interval(int, 0, 10).check(np.array(4, dtype=np.int8), "n") == 4
    assert Interval(float, 0, 1).check(1, "x") == 1.0
    with pytest.raises(ValueError, match="finite"):
        Interval(float).check(float("nan"), "x")


def test_declared_constraints_hold_in_code_and_in_files():
    with pytest.raises(ValueError, match="budget must be >= 1, got 0"):
        Spec(budget=0)
    with pytest.raises(ConfigError, match=r"cfg.toml: spec.rate: rate must be in \[0, 1\), got 1.0"):
        fill(Spec, {"rate": 1.0}, "cfg.toml: spec")
    with pytest.raises(ConfigError, match="spec.mode: mode must be one of 'a', 'b'; got 'c'"):
        fill(Spec, {"mode": "c"}, "spec")
    assert fill(Spec, {"budget": 3, "sizes": [1, 2]}, "spec") == Spec(budget=3, sizes=[1, 2])


@pytest.mark.parametrize(
    "table, message",
    [
        ({"budjet": 3}, "spec: unknown key 'budjet'; known: budget, mode, name, rate, sizes"),
        ({"budget": "3"}, "spec.budget must be an integer, got str '3'"),
        ({"budget": True}, "spec.budget must be an integer, got bool True"),
        ({"rate": float("inf")}, "spec.rate must be a number"),
        ({"sizes": [1, "2"]}, r"spec.sizes\[1\] must be an integer"),
        ({"sizes": 3}, "spec.sizes must be a list of integers"),
    ],
)
def test_fill_names_the_key_and_the_problem(table, message):
    with pytest.raises(ConfigError, match=message):
        fill(Spec, table, "spec")


def test_fill_collects_unknown_keys_into_an_extra_field():
    @dataclass
    class Term:
        loss: str = "kd"
        params: dict | None = None

    assert fill(Term, {"loss": "hint", "beta": 2.0}, "t", extra="params") == Term("hint", {"beta": 2.0})


def test_require_raises_a_config_error_naming_where():
    assert require(3, "cfg: peers", Interval(int, 2, None)) == 3
    with pytest.raises(ConfigError, match="cfg: peers must be >= 2, got 1"):
        require(1, "cfg: peers", Interval(int, 2, None))


def test_read_toml_names_the_file(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('name = "a"\n[spec]\nbudget = 2\n')
    assert read_toml(good) == {"name": "a", "spec": {"budget": 2}}
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        read_toml(bad)
    with pytest.raises(ConfigError, match="missing.toml: no such config file"):
        read_toml(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        read_toml(tmp_path)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="binary.toml: not valid TOML"):
        read_toml(binary)


def test_every_config_of_npuq_raises_the_one_config_error():
    from npuq.distill.experiment import ConfigError as DistillConfigError
    from npuq.lrf.search.config import ConfigError as LrfConfigError

    assert DistillConfigError is ConfigError and LrfConfigError is ConfigError
