"""The config mechanism (jaxgrpo.config) on a toy section: a key's type / choice / range error
names the key, each key is checked once, compose builds the locked ConfigDict, describe lists
every key with its doc. The experiment's own keys are in tests/test_experiment.py."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest

from jaxgrpo import config
from jaxgrpo.errors import ConfigError
from jaxgrpo.experiment import base_config, flatten, SECTIONS, validate


def _one_line(e) -> str:
    msg = str(e)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- a toy section


@dataclasses.dataclass(frozen=True, kw_only=True)
class Root(config.Section):
    """The toy's root keys."""

    NAME: ClassVar[str] = ""
    seed: int = config.key(0, "the seed", ge=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Toy(config.Section):
    """A toy section.

    Its second paragraph is not part of --help.
    """

    NAME: ClassVar[str] = "toy"
    mode: str = config.key("a", "the mode", choices=("a", "b"))
    rate: float = config.key(0.5, "a rate in (0, 1]", gt=0, le=1)
    axis: int = config.key(-1, "an axis size; -1 = the rest", ge=1, also=(-1,))
    width: int = config.key(8, "a width", ge=2, why="a width must be >= 2 here")
    flag: bool = config.key(False, "a flag")
    cache: object = config.key("", "a dtype name; '' = none", convert=lambda v: v or None)
    extra: int = 7  # a plain program field: not a key

    def __post_init__(self):
        if self.flag and self.mode == "b":
            raise ConfigError("config.toy.flag=True needs config.toy.mode='a'")


TOY = (Root, Toy)


def _toy(**flat):
    c = config.compose(TOY)
    c.update_from_flattened_dict(flat)
    return c


def test_compose_builds_a_locked_config_of_the_declared_keys():
    c = config.compose(TOY)
    assert flatten(c) == {"seed": 0, "toy.mode": "a", "toy.rate": 0.5, "toy.axis": -1,
                          "toy.width": 8, "toy.flag": False, "toy.cache": ""}
    with pytest.raises(AttributeError, match="nope"):
        c.toy.nope = 1  # locked: an unknown key is refused, naming it
    with pytest.raises(TypeError):
        c.toy.width = "wide"  # ml_collections' type safety
    assert "extra" not in c.toy  # a plain field is the program's, not a key
    t = Toy.from_config(c.toy, extra=3)
    assert (t.extra, t.cache, t.rate) == (3, None, 0.5)  # convert: "" -> None
    assert Toy.from_config(_toy(**{"toy.cache": "bf16"}).toy).cache == "bf16"


@pytest.mark.parametrize("flat,message", [
    ({"toy.mode": "c"}, "config.toy.mode='c': is not one of ('a', 'b')"),
    ({"toy.rate": 0.0}, "config.toy.rate=0.0: must be (0, 1]"),
    ({"toy.rate": 1.5}, "config.toy.rate=1.5: must be (0, 1]"),
    ({"toy.rate": float("inf")}, "config.toy.rate=inf: must be (0, 1]"),
    ({"toy.axis": 0}, "config.toy.axis=0: must be -1 or >= 1"),
    ({"toy.axis": -2}, "config.toy.axis=-2: must be -1 or >= 1"),
    ({"toy.width": 1}, "config.toy.width=1: a width must be >= 2 here"),
    ({"seed": -1}, "config.seed=-1: must be >= 0"),
])
def test_a_bad_value_names_its_key(flat, message):
    with pytest.raises(ConfigError) as e:
        config.check_keys(_toy(**flat), TOY)
    assert _one_line(e.value) == message


def test_the_type_is_checked_even_without_ml_collections_type_safety():
    c = config.compose(TOY).to_dict()  # a plain dict: nothing refused the value on assignment
    c["toy"]["width"] = True
    with pytest.raises(ConfigError, match=r"^config\.toy\.width=True: must be a int$"):
        config.check_keys(c, TOY)
    c["toy"]["width"] = 8
    c["toy"]["rate"] = 1  # an int where a float is declared is a number
    config.check_keys(c, TOY)


def test_allowed_values_pass_and_cross_field_checks_run_at_from_config():
    c = _toy(**{"toy.mode": "b", "toy.axis": 3, "toy.rate": 1.0, "toy.flag": True})
    config.check_keys(c, TOY)  # every key is fine on its own
    with pytest.raises(ConfigError, match=r"config\.toy\.flag=True needs config\.toy\.mode='a'"):
        Toy.from_config(c.toy)


def test_each_key_is_checked_once(monkeypatch):
    """check_keys visits each declared key exactly once (counted at check_value)."""
    seen = []
    real = config.check_value
    monkeypatch.setattr(config, "check_value", lambda p, s, v: (seen.append(p), real(p, s, v)))
    config.check_keys(base_config(), SECTIONS)
    declared = [k for k in flatten(base_config()) if not k.startswith("advantage.options.")]
    assert sorted(seen) == sorted(declared)


def test_a_bad_loss_key_raises_once_with_one_message(monkeypatch):
    """A negative loss.kl_clamp is refused by its range, the one check of that key (it used to be
    checked again by a second rule with another message)."""
    raised = []
    real = config.fail

    def counting_fail(path, value, why):
        raised.append((path, why))
        real(path, value, why)

    monkeypatch.setattr(config, "fail", counting_fail)
    c = base_config()
    c.loss.kl_clamp = -1.0
    with pytest.raises(ConfigError) as e:
        validate(c)
    assert _one_line(e.value) == "config.loss.kl_clamp=-1.0: must be >= 0"
    assert raised == [("loss.kl_clamp", "must be >= 0")]
    from jaxgrpo.losses import LossConfig
    assert config.keys(LossConfig)["kl_clamp"].range == ">= 0"


def test_range_text():
    r = lambda **kw: config.Key(0, "", **kw).range  # noqa: E731
    assert (r(ge=0), r(gt=0), r(ge=0, lt=1), r(gt=0, le=1), r(ge=0, le=1)) == (
        ">= 0", "> 0", "[0, 1)", "(0, 1]", "[0, 1]")
    assert r(ge=1, also=(-1,)) == "-1 or >= 1" and r() == "" and r(le=2.5) == "<= 2.5"


def test_describe_lists_every_key_with_type_default_and_doc():
    text = config.describe(TOY, source="tests.Toy")
    lines = text.splitlines()
    assert lines[0].endswith("Types and defaults come from tests.Toy.")
    assert "[run]" in lines and "[toy]  A toy section." in lines
    row = {ln.split()[0]: ln for ln in lines if ln.startswith("  ")}
    assert row["toy.rate"] == "  toy.rate   float, (0, 1], default 0.5: a rate in (0, 1]"
    assert row["toy.mode"].startswith("  toy.mode   str, one of a|b, default 'a': the mode")
    assert row["seed"].strip() == "seed  int, >= 0, default 0: the seed"
    assert "extra" not in row


def test_config_imports_only_errors():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(config))
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in mods if m and m.startswith("jaxgrpo")} == {"jaxgrpo.errors"}
