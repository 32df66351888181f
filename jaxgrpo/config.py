"""The config mechanism: keys declared as dataclass fields, composed into one locked ConfigDict.

A *section* is a frozen ``kw_only`` dataclass declared in the module that reads it, with
``NAME: ClassVar[str]`` = its name in the config (``""`` for the root keys) and its keys as
fields made by :func:`key` (default, one-line doc, allowed values or range)::

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class LossConfig(config.Section):
        NAME: ClassVar[str] = "loss"
        eps_low: float = config.key(0.2, "lower clip range of the importance ratio", ge=0)

        def __post_init__(self):  # the section's own cross-field checks (ConfigError)
            ...

    c = config.compose([RunConfig, LossConfig, ...])   # locked ml_collections.ConfigDict
    config.check_keys(c, sections)                     # type, choice, range of every key, once
    loss = LossConfig.from_config(c.loss)              # the typed value (runs __post_init__)

A section may also have plain fields (no :func:`key`): program parameters that code fills in
(``from_config(section, **program_fields)``), not part of the ConfigDict. Which sections make
an experiment, and the rules across sections, are ``jaxgrpo.experiment``'s. This module imports
no jaxgrpo module but ``jaxgrpo.errors``, so every module can declare its section.
"""
from __future__ import annotations

import dataclasses
import math
import string
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Optional, Sequence, Tuple

import ml_collections as mc

from jaxgrpo.errors import ConfigError

__all__ = ["Key", "key", "Section", "keys", "compose", "check_keys", "check_value", "flatten",
           "docs", "choices", "ranges", "describe", "fail", "get", "check_template"]

_META = "jaxgrpo.config.key"


@dataclasses.dataclass(frozen=True)
class Key:
    """What :func:`key` records about one config key (see there)."""

    default: Any
    doc: str
    choices: Optional[Tuple] = None
    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    also: Tuple = ()
    why: Optional[str] = None
    convert: Optional[Callable[[Any], Any]] = None

    @property
    def range(self) -> str:
        """The allowed range as ``--help`` and the errors write it: ``">= 0"``, ``"> 0"``,
        ``"(0, 1]"``, ``"[0, 1)"``, ``"-1 or >= 1"``; "" for a key without one."""
        lo = (f"{_num(self.ge)}", "[") if self.ge is not None else (
            (f"{_num(self.gt)}", "(") if self.gt is not None else None)
        hi = (f"{_num(self.le)}", "]") if self.le is not None else (
            (f"{_num(self.lt)}", ")") if self.lt is not None else None)
        if lo and hi:
            text = f"{lo[1]}{lo[0]}, {hi[0]}{hi[1]}"
        elif lo:
            text = (">= " if lo[1] == "[" else "> ") + lo[0]
        elif hi:
            text = ("<= " if hi[1] == "]" else "< ") + hi[0]
        else:
            return ""
        return " or ".join([*(_num(a) for a in self.also), text])

    def in_range(self, value) -> bool:
        """Whether a number satisfies the range (a bool or a non-finite float never does)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if value in self.also:
            return True
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def key(default, doc: str, *, choices: Optional[Sequence] = None, ge=None, gt=None, le=None,
        lt=None, also: Tuple = (), why: Optional[str] = None,
        convert: Optional[Callable[[Any], Any]] = None):
    """A config key as a dataclass field: ``default`` (its type is the key's type), a one-line
    ``doc`` (``--help``), allowed ``choices`` or a range (``ge`` / ``gt`` / ``le`` / ``lt``; the
    values in ``also`` are allowed besides, e.g. ``also=(-1,)`` for "-1 or >= 1"). ``why``
    replaces "must be <range>" in the range error. ``convert`` maps the config value to the
    field's value (e.g. ``""`` -> None); the field's default is then ``convert(default)``."""
    spec = Key(default, doc, None if choices is None else choices, ge, gt, le, lt, tuple(also),
               why, convert)
    return dataclasses.field(default=convert(default) if convert else default,
                             metadata={_META: spec})


def keys(section) -> Dict[str, Key]:
    """``{field name: Key}`` of a section class's key fields, in declaration order."""
    return {f.name: f.metadata[_META] for f in dataclasses.fields(section) if _META in f.metadata}


class Section:
    """Base of a section dataclass: ``NAME`` and :meth:`from_config`."""

    NAME: ClassVar[str]

    @classmethod
    def nested(cls) -> Dict[str, Dict[str, Any]]:
        """Nested groups of the section that no :func:`key` declares (e.g. the advantage
        transforms' options): ``{field: {...}}``; the field is filled from the config."""
        return {}

    @classmethod
    def from_config(cls, section, **program_fields):
        """The typed section of a (validated) ConfigDict section, plus ``program_fields`` for the
        plain fields; runs the section's ``__post_init__`` checks."""
        values = {name: (k.convert(section[name]) if k.convert else section[name])
                  for name, k in keys(cls).items()}
        for name in cls.nested():
            group = section[name]
            values[name] = group.to_dict() if isinstance(group, mc.ConfigDict) else dict(group)
        return cls(**values, **program_fields)


def _path(section, name: str) -> str:
    return f"{section.NAME}.{name}" if section.NAME else name


def compose(sections: Iterable) -> mc.ConfigDict:
    """The locked ConfigDict of ``sections``: the root section's (``NAME == ""``) keys at the top,
    every other section's keys under ``c.<NAME>``, at their defaults. Setting an unknown key raises
    (naming it) and a value of another type is refused (ml_collections' type safety)."""
    c = mc.ConfigDict()
    for s in sections:
        values = {name: k.default for name, k in keys(s).items()}
        values.update({name: mc.ConfigDict(group) for name, group in s.nested().items()})
        if s.NAME:
            if s.NAME in c:
                raise ValueError(f"two sections are named {s.NAME!r}")
            c[s.NAME] = mc.ConfigDict(values)
        else:
            for name, v in values.items():
                c[name] = v
    c.lock()
    return c


def get(c, path: str):
    """``c["a"]["b"]`` for ``path="a.b"``."""
    node = c
    for part in path.split("."):
        node = node[part]
    return node


def fail(path: str, value, why: str):
    """Raise the one-line ``config.<path>=<value!r>: <why>`` ConfigError."""
    raise ConfigError(f"config.{path}={value!r}: {why}")


def _type_ok(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, type(default))


def check_value(path: str, spec: Key, value) -> None:
    """One key's type, choice and range; ConfigError naming ``config.<path>`` otherwise."""
    if not _type_ok(value, spec.default):
        fail(path, value, f"must be a {type(spec.default).__name__}")
    if spec.choices is not None and value not in spec.choices:
        fail(path, value, f"is not one of {spec.choices}")
    if spec.range and not spec.in_range(value):
        fail(path, value, spec.why or f"must be {spec.range}")


def check_keys(c, sections: Iterable) -> None:
    """Every key of every section in ``c``: type, choice, range (each key checked once, in
    section and declaration order); the first bad one raises its one-line ConfigError."""
    for s in sections:
        node = c[s.NAME] if s.NAME else c
        for name, spec in keys(s).items():
            check_value(_path(s, name), spec, node[name])


def flatten(c) -> Dict[str, object]:
    """``{"section.key": value}`` of a (nested) ConfigDict or dict."""
    out = {}
    for k, v in c.items():
        if isinstance(v, (mc.ConfigDict, dict)):
            out.update({f"{k}.{kk}": vv for kk, vv in flatten(v).items()})
        else:
            out[k] = v
    return out


def docs(sections: Iterable) -> Dict[str, str]:
    """``{"section.key": doc}`` in declaration order; a section's own doc under its name (the
    first paragraph of its class docstring)."""
    out = {}
    for s in sections:
        if s.NAME:
            out[s.NAME] = section_doc(s)
        out.update({_path(s, name): k.doc for name, k in keys(s).items()})
    return out


def section_doc(section) -> str:
    """The first paragraph of a section class's docstring, on one line."""
    text = (section.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(text.split())


def choices(sections: Iterable) -> Dict[str, Tuple]:
    """``{"section.key": allowed values}`` of the keys with choices."""
    return {_path(s, n): k.choices for s in sections for n, k in keys(s).items()
            if k.choices is not None}


def ranges(sections: Iterable) -> Dict[str, str]:
    """``{"section.key": range text}`` of the keys with a range (see ``Key.range``)."""
    return {_path(s, n): k.range for s in sections for n, k in keys(s).items() if k.range}


def describe(sections: Sequence, c: Optional[mc.ConfigDict] = None, *,
             extra_docs: Optional[Dict[str, str]] = None, source: str = "") -> str:
    """The ``--help`` text: every key of ``c`` (default: the sections composed), grouped by
    section in declaration order, each with its type, allowed values or range, default and doc.
    ``extra_docs`` documents nested keys no :func:`key` declares (``"a.b.c": doc``; their group
    ``a.b`` is a section of the text, listed after the declared ones)."""
    c = compose(sections) if c is None else c
    doc = {**docs(sections), **(extra_docs or {})}
    allowed = {**{k: ", one of " + "|".join(v) for k, v in choices(sections).items()},
               **{k: f", {v}" for k, v in ranges(sections).items()}}
    declared = {_path(s, n) for s in sections for n in keys(s)}
    values = flatten(c)
    order = {k: i for i, k in enumerate(doc)}
    ordered = sorted(values, key=lambda k: (k not in declared, order.get(k, len(order)), k))
    groups: Dict[str, List[str]] = {}
    for k in ordered:
        parts = k.split(".")
        group = (parts[0] if len(parts) > 1 else "run") if k in declared else ".".join(parts[:-1])
        groups.setdefault(group, []).append(k)
    out = ["Config keys: set any with --config.<key>=<value>; --config=FILE starts from an "
           "experiment file (e.g. experiments/configs/dra_grpo.py), whose values are shown when "
           f"it is given. Types and defaults come from {source or 'the sections'}."]
    for group, ks in groups.items():
        head = doc.get(group, "")
        out.append("")
        out.append(f"[{group}]" + (f"  {head}" if head else ""))
        width = max(len(k) for k in ks)
        for k in ks:
            v = values[k]
            out.append(f"  {k:<{width}}  {type(v).__name__}{allowed.get(k, '')}, default {v!r}: "
                       f"{doc.get(k, '')}")
    return "\n".join(out)


def check_template(path: str, fmt: str, allowed: tuple, required: tuple = ()) -> None:
    """A ``str.format`` template uses only ``allowed`` placeholders (and all of ``required``);
    raises ConfigError naming ``config.<path>`` otherwise."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None]
    except ValueError as e:
        fail(path, fmt, f"not a valid template ({e}); write {{{{ and }}}} for literal braces")
    names = ", ".join("{" + a + "}" for a in allowed)
    for f in fields:
        if f not in allowed:
            fail(path, fmt, f"unknown placeholder {{{f}}}; the placeholders are {names} (write "
                            "{{ and }} for literal braces)")
    for r in required:
        if r not in fields:
            fail(path, fmt, f"has no {{{r}}} placeholder, so the prompt would not contain the "
                            "question")
