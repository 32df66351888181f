"""Named advantage transforms and their composition by configuration.

Three kinds of transform (``diag`` is a flat dict of scalar jnp values):

* ``baseline``:  rollout -> ``(advantages [P, G], diag)`` -- ``"grpo"``, ``"dr_grpo"``,
  ``"rloo"``, ``"dagrpo"``.
* ``reward``:    rollout -> ``(rewards [P, G], diag)``, applied BEFORE the baseline (the new
  rewards replace ``rollout.rewards``) -- ``"dra"``.
* ``advantage``: (rollout, advantages) -> ``(advantages [P, G], diag)``, applied AFTER the
  baseline -- ``"progrpo"``.

Each method is ONE public function with its options typed once (``grpo``, ``dr_grpo``,
``rloo``, ``dra_reweight``, ``dagrpo``, ``arm_reweight``); :func:`register_transform` generates
the rollout-level call from its signature:

* a parameter before ``*`` named ``rollout`` receives the :class:`~jaxgrpo.rollout.Rollout`;
  ``advantages`` receives the chain's current advantages (advantage transforms); any other
  name receives the Rollout field of that name (``rewards``, ``member_mask``, ``embeddings``,
  ...);
* keyword-only parameters are the options (``config.advantage.options.<name>``), except
  ``return_diagnostics``, which the chain sets to True; a function without it returns
  ``(out, diag)`` itself.

Each registration also DECLARES what the transform needs from the rollout beyond the always
present fields (:data:`ROLLOUT_INPUTS`), as a set or a function of the options;
:func:`required_inputs` gives the union for a chain, so the loop computes exactly that.

:func:`make_advantage_fn` chains transforms into one pure, jit-able ``fn(rollout) -> (adv,
diag)``; option dicts are validated against each transform's keyword-only parameters at
construction.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import (AbstractSet, Any, Callable, ClassVar, Dict, FrozenSet, Mapping, Optional,
                    Sequence, Tuple, Union)

import jax
import jax.numpy as jnp

from jaxgrpo import config
from jaxgrpo.data import split_names
from jaxgrpo.errors import ConfigError

# Import functions, not modules: the package re-exports functions named like its modules
# (``jaxgrpo.advantages.grpo`` is the function), so module attributes would be shadowed.
from jaxgrpo.advantages.dagrpo import dagrpo
from jaxgrpo.advantages.dagrpo import required_inputs as _dagrpo_needs
from jaxgrpo.advantages.dra import dra_reweight
from jaxgrpo.advantages.grpo import dr_grpo, grpo, rloo
from jaxgrpo.advantages.progrpo import arm_reweight
from jaxgrpo.advantages.progrpo import required_inputs as _progrpo_needs
from jaxgrpo.metrics import masked_stats
from jaxgrpo.rollout import Rollout

KINDS = ("baseline", "reward", "advantage")
# Rollout fields a transform may need that the loop computes only on demand.
ROLLOUT_INPUTS = ("embeddings", "fine_scores", "prompt_logprobs", "question_mask")
_FIELDS = frozenset(f.name for f in dataclasses.fields(Rollout))
_RETURN_DIAG = "return_diagnostics"

Needs = Union[AbstractSet[str], Callable[[Dict[str, Any]], AbstractSet[str]]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdvantageConfig(config.Section):
    """Advantage estimation: baseline + optional reward re-weightings (before) and advantage
    re-weightings (after).

    The ``config.advantage`` section: the transform chain by name (this registry's names) and
    every transform's options.
    """

    NAME: ClassVar[str] = "advantage"
    baseline: str = config.key('grpo', 'group baseline: a registered "baseline" transform')
    reward_transforms: str = config.key('', 'comma-separated, e.g. "dra"')
    advantage_transforms: str = config.key('', 'comma-separated, e.g. "progrpo"')
    # Options of every registered transform, named and typed exactly as the transform's
    # keyword arguments (jaxgrpo/advantages); only the transforms in the chain are used. Not
    # config.key fields: they come from the registry (see nested()).
    options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    @classmethod
    def nested(cls) -> Dict[str, Dict[str, Any]]:
        """``advantage.options``: ``{transform: {option: default}}`` of every registered
        transform, so one registered before the config is composed has typed options."""
        return {"options": {name: dict(get_transform(name).defaults)
                            for name in available_transforms()}}

    @classmethod
    def nested_docs(cls) -> Dict[str, str]:
        """The ``--help`` docs of the transform options and their groups."""
        out = {}
        for name in available_transforms():
            t = get_transform(name)
            out[f"advantage.options.{name}"] = f"options of the {name!r} advantage transform"
            for opt in t.defaults:
                out[f"advantage.options.{name}.{opt}"] = (
                    f"keyword option {opt!r} of {t.fn.__module__}.{t.fn.__name__}")
        return out

    def __post_init__(self):
        for name, kind in (("baseline", "baseline"), ("reward_transforms", "reward"),
                           ("advantage_transforms", "advantage")):
            allowed = available_transforms(kind)
            value = getattr(self, name)
            names = split_names(value)
            if kind == "baseline" and len(names) != 1:
                config.fail(f"advantage.{name}", value, f"must name one baseline of {allowed}")
            for n in names:
                if n not in allowed:
                    raise ConfigError(f"config.advantage.{name}: {n!r} is not one of {allowed}")


@dataclasses.dataclass(frozen=True)
class Transform:
    """A registered transform: its name, kind, function and declared rollout needs.

    Call it as ``t(rollout, **options)`` (baseline / reward) or ``t(rollout, advantages,
    **options)`` (advantage); it returns ``(out [P, G], diag)``.
    """
    name: str
    kind: str
    fn: Callable[..., Any]
    needs: Needs = frozenset()

    @property
    def _params(self):
        return inspect.signature(self.fn).parameters

    @property
    def inputs(self) -> Tuple[str, ...]:
        """The array parameters (before ``*``), filled from the rollout by name."""
        return tuple(k for k, p in self._params.items()
                     if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                   inspect.Parameter.POSITIONAL_OR_KEYWORD))

    @property
    def defaults(self) -> Dict[str, Any]:
        """Keyword-only options of ``fn`` and their defaults."""
        return {k: p.default for k, p in self._params.items()
                if p.kind == inspect.Parameter.KEYWORD_ONLY and k != _RETURN_DIAG}

    def required_inputs(self, options: Optional[Mapping[str, Any]] = None) -> FrozenSet[str]:
        """Rollout fields (of :data:`ROLLOUT_INPUTS`) this transform needs under ``options``
        (omitted options take their defaults)."""
        opts = {**self.defaults, **dict(options or {})}
        need = self.needs(opts) if callable(self.needs) else self.needs
        return frozenset(need)

    def __call__(self, rollout, advantages=None, **options) -> Tuple[jax.Array, Dict]:
        args = {}
        for k in self.inputs:
            if k == "rollout":
                args[k] = rollout
            elif k == "advantages":
                args[k] = advantages
            else:
                args[k] = getattr(rollout, k)
        if _RETURN_DIAG in self._params:
            options = {**options, _RETURN_DIAG: True}
        return self.fn(**args, **options)


_REGISTRY: Dict[str, Transform] = {}


def register_transform(name: str, kind: str, fn: Callable,
                       needs: Optional[Needs] = None) -> Transform:
    """Registers ``fn`` under ``name`` (see the module docstring for the calling convention).

    Args:
      name: the config name (``config.advantage.baseline`` etc.).
      kind: ``"baseline"``, ``"reward"`` or ``"advantage"``.
      fn: the function; its options must be keyword-only parameters.
      needs: the Rollout fields of :data:`ROLLOUT_INPUTS` it needs, as a set or as a function
        of the full option dict. Default: those of its array parameters that are in
        :data:`ROLLOUT_INPUTS` (none for a function of the whole ``rollout``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}.")
    if name in _REGISTRY:
        raise ValueError(f"an advantage transform named {name!r} is already registered.")
    t = Transform(name, kind, fn)
    allowed = _FIELDS | {"rollout"} | ({"advantages"} if kind == "advantage" else set())
    bad = [k for k in t.inputs if k not in allowed]
    if bad:
        raise ValueError(f"transform {name!r}: parameters {bad} before `*` are neither 'rollout'"
                         f"{', advantages' if kind == 'advantage' else ''} nor Rollout fields; "
                         "make options keyword-only.")
    if kind == "advantage" and "advantages" not in t.inputs:
        raise ValueError(f"advantage transform {name!r} must take `advantages`.")
    if needs is None:
        needs = frozenset(k for k in t.inputs if k in ROLLOUT_INPUTS)
    elif not callable(needs):
        unknown = sorted(set(needs) - set(ROLLOUT_INPUTS))
        if unknown:
            raise ValueError(f"transform {name!r}: needs {unknown} are not among "
                             f"{ROLLOUT_INPUTS}.")
        needs = frozenset(needs)
    t = dataclasses.replace(t, needs=needs)
    _REGISTRY[name] = t
    return t


def get_transform(name: str) -> Transform:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown advantage transform {name!r}; known: {sorted(_REGISTRY)}.") from None


def available_transforms(kind: Optional[str] = None) -> Tuple[str, ...]:
    return tuple(sorted(n for n, t in _REGISTRY.items() if kind is None or t.kind == kind))


register_transform("grpo", "baseline", grpo)
register_transform("dr_grpo", "baseline", dr_grpo)
register_transform("rloo", "baseline", rloo)
register_transform("dagrpo", "baseline", dagrpo, needs=_dagrpo_needs)
register_transform("dra", "reward", dra_reweight, needs={"embeddings"})
register_transform("progrpo", "advantage", arm_reweight, needs=_progrpo_needs)


def _check_kind(name: str, kind: str) -> Transform:
    t = get_transform(name)
    if t.kind != kind:
        raise ValueError(f"transform {name!r} is a {t.kind} transform, not a {kind} transform; "
                         f"{kind} transforms: {list(available_transforms(kind))}.")
    return t


def _chain(baseline, reward_transforms, advantage_transforms, options):
    """Validated [(Transform, options)] in call order."""
    options = dict(options or {})
    chain = ([_check_kind(n, "reward") for n in reward_transforms]
             + [_check_kind(baseline, "baseline")]
             + [_check_kind(n, "advantage") for n in advantage_transforms])
    names = [t.name for t in chain]
    if len(set(names)) != len(names):
        raise ValueError(f"a transform appears twice in the chain {names}.")
    for name, opts in options.items():
        if name not in names:
            raise ValueError(f"options given for {name!r}, which is not in the chain {names} "
                             f"(known transforms: {sorted(_REGISTRY)}).")
        allowed = get_transform(name).defaults
        unknown = sorted(set(opts) - set(allowed))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for advantage transform {name!r}; "
                             f"allowed: {sorted(allowed)}.")
    return [(t, dict(options.get(t.name, {}))) for t in chain]


def required_inputs(
    baseline: str,
    reward_transforms: Sequence[str] = (),
    advantage_transforms: Sequence[str] = (),
    options: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> FrozenSet[str]:
    """The Rollout fields (of :data:`ROLLOUT_INPUTS`: ``"embeddings"``, ``"fine_scores"``,
    ``"prompt_logprobs"``, ``"question_mask"``) the chain needs, from each transform's
    declaration and its options (same arguments as :func:`make_advantage_fn`).

    E.g. ``required_inputs("dagrpo", options={"dagrpo": {"distinctiveness": "embedding"}})``
    is ``{"embeddings", "fine_scores"}``; ``required_inputs("grpo", ("dra",), ("progrpo",))``
    is ``{"embeddings", "prompt_logprobs"}``.
    """
    need = frozenset()
    for t, opts in _chain(baseline, reward_transforms, advantage_transforms, options):
        need = need | t.required_inputs(opts)
    return need


def make_advantage_fn(
    baseline: str,
    reward_transforms: Sequence[str] = (),
    advantage_transforms: Sequence[str] = (),
    options: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Callable[[Any], Tuple[jax.Array, Dict[str, jax.Array]]]:
    """Composes reward transforms -> baseline -> advantage transforms by name.

    Example (DRA-GRPO followed by ProGRPO's ARM)::

        fn = make_advantage_fn("grpo", ("dra",), ("progrpo",),
                               options={"grpo": {"eps": 1e-6}, "progrpo": {"alpha": 0.5}})
        adv, diag = jax.jit(fn)(rollout)   # adv [P, G]; diag {"dra/weight_mean": ..., ...}

    Args:
      baseline: a baseline name (``"grpo"``, ``"dr_grpo"``, ``"rloo"``, ``"dagrpo"``).
      reward_transforms: reward transforms applied in order before the baseline (``"dra"``).
      advantage_transforms: advantage transforms applied in order after it (``"progrpo"``).
      options: ``{transform name: {option: value}}``; omitted options take the defaults.

    Returns:
      A pure function ``rollout -> (advantages [P, G], diagnostics)``. Diagnostic keys are
      ``"<transform>/<name>"`` plus the final advantages' statistics over group members, each
      reported once, here: ``"adv/mean"``, ``"adv/abs_mean"``, ``"adv/std"``, ``"adv/min"``,
      ``"adv/max"`` (one value per completion, not token-weighted).

    Raises:
      ValueError: unknown transform name, a transform of the wrong kind, a name used twice,
        options for a transform not in the chain, or an unknown option key.
    """
    bound = _chain(baseline, reward_transforms, advantage_transforms, options)
    options = dict(options or {})
    if (baseline == "dagrpo" and reward_transforms
        and options.get("dagrpo", {}).get("score", "fine") == "fine"):
        raise ValueError(
            f"reward transforms {list(reward_transforms)} would have no effect: DaGRPO with "
            "score='fine' ranks by correct + alpha * fine_scores, not by rollout.rewards; set "
            "options={'dagrpo': {'score': 'reward'}} to apply them.")

    def advantage_fn(rollout) -> Tuple[jax.Array, Dict[str, jax.Array]]:
        diag: Dict[str, jax.Array] = {}
        adv = None
        for t, opts in bound:
            if t.kind == "reward":
                rewards, d = t(rollout, **opts)
                rollout = rollout.replace(rewards=rewards)
            elif t.kind == "baseline":
                adv, d = t(rollout, **opts)
            else:
                adv, d = t(rollout, adv, **opts)
            diag.update({f"{t.name}/{k}": v for k, v in d.items()})
        a = adv.astype(jnp.float32)
        diag.update({f"adv/{k}": v for k, v in masked_stats(a, rollout.member_mask).items()})
        diag["adv/abs_mean"] = masked_stats(jnp.abs(a), rollout.member_mask)["mean"]
        return adv, diag

    return advantage_fn
