"""Named advantage transforms and their composition by configuration.

Three kinds of transform, one call shape each (``rollout`` is a :class:`jaxgrpo.rollout.Rollout`,
``diag`` a flat dict of scalar jnp values):

* ``baseline``:  ``fn(rollout, **options) -> (advantages [P, G], diag)``
  -- ``"grpo"``, ``"dr_grpo"``, ``"dagrpo"``.
* ``reward``:    ``fn(rollout, **options) -> (rewards [P, G], diag)``, applied BEFORE the baseline
  (the new rewards replace ``rollout.rewards``) -- ``"dra"``.
* ``advantage``: ``fn(rollout, advantages, **options) -> (advantages [P, G], diag)``, applied
  AFTER the baseline -- ``"progrpo"``.

:func:`make_advantage_fn` chains them into one pure, jit-able ``fn(rollout) -> (adv, diag)``;
option dicts are validated against each transform's keyword-only parameters at construction.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

# Import functions, not modules: the package re-exports functions named like its modules
# (``jaxgrpo.advantages.grpo`` is the function), so module attributes would be shadowed.
from jaxgrpo.advantages.dagrpo import dagrpo_transform
from jaxgrpo.advantages.dra import dra_transform
from jaxgrpo.advantages.grpo import dr_grpo_transform, grpo_transform
from jaxgrpo.advantages.progrpo import progrpo_transform

KINDS = ("baseline", "reward", "advantage")


@dataclasses.dataclass(frozen=True)
class Transform:
    """A registered transform: its name, kind, function and option defaults."""
    name: str
    kind: str
    fn: Callable[..., Tuple[jax.Array, Dict[str, jax.Array]]]

    @property
    def defaults(self) -> Dict[str, Any]:
        """Keyword-only options of ``fn`` and their defaults."""
        return {
            k: p.default
            for k, p in inspect.signature(self.fn).parameters.items()
            if p.kind == inspect.Parameter.KEYWORD_ONLY
        }


_REGISTRY: Dict[str, Transform] = {}


def register_transform(name: str, kind: str, fn: Callable) -> Transform:
    """Registers ``fn`` under ``name``; its options must be keyword-only parameters."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}.")
    if name in _REGISTRY:
        raise ValueError(f"an advantage transform named {name!r} is already registered.")
    t = Transform(name, kind, fn)
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


register_transform("grpo", "baseline", grpo_transform)
register_transform("dr_grpo", "baseline", dr_grpo_transform)
register_transform("dagrpo", "baseline", dagrpo_transform)
register_transform("dra", "reward", dra_transform)
register_transform("progrpo", "advantage", progrpo_transform)


def _check_kind(name: str, kind: str) -> Transform:
    t = get_transform(name)
    if t.kind != kind:
        raise ValueError(f"transform {name!r} is a {t.kind} transform, not a {kind} transform; "
                         f"{kind} transforms: {list(available_transforms(kind))}.")
    return t


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
      baseline: a baseline name (``"grpo"``, ``"dr_grpo"``, ``"dagrpo"``).
      reward_transforms: reward transforms applied in order before the baseline (``"dra"``).
      advantage_transforms: advantage transforms applied in order after it (``"progrpo"``).
      options: ``{transform name: {option: value}}``; omitted options take the defaults.

    Returns:
      A pure function ``rollout -> (advantages [P, G], diagnostics)``. Diagnostic keys are
      ``"<transform>/<name>"`` plus ``"adv/abs_mean"``, ``"adv/mean"`` over members.

    Raises:
      ValueError: unknown transform name, a transform of the wrong kind, a name used twice,
        options for a transform not in the chain, or an unknown option key.
    """
    options = dict(options or {})
    chain = ([(_check_kind(n, "reward"), "reward") for n in reward_transforms]
             + [(_check_kind(baseline, "baseline"), "baseline")]
             + [(_check_kind(n, "advantage"), "advantage") for n in advantage_transforms])
    names = [t.name for t, _ in chain]
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
    if (baseline == "dagrpo" and reward_transforms
        and options.get("dagrpo", {}).get("score", "fine") == "fine"):
        raise ValueError(
            f"reward transforms {list(reward_transforms)} would have no effect: DaGRPO with "
            "score='fine' ranks by correct + alpha * fine_scores, not by rollout.rewards; set "
            "options={'dagrpo': {'score': 'reward'}} to apply them.")
    bound = [(t, dict(options.get(t.name, {}))) for t, _ in chain]

    def advantage_fn(rollout) -> Tuple[jax.Array, Dict[str, jax.Array]]:
        diag: Dict[str, jax.Array] = {}
        adv = None
        for t, opts in bound:
            if t.kind == "reward":
                rewards, d = t.fn(rollout, **opts)
                rollout = rollout.replace(rewards=rewards)
            elif t.kind == "baseline":
                adv, d = t.fn(rollout, **opts)
            else:
                adv, d = t.fn(rollout, adv, **opts)
            diag.update({f"{t.name}/{k}": v for k, v in d.items()})
        m = rollout.member_mask.astype(jnp.float32)
        nm = jnp.maximum(jnp.sum(m), 1.0)
        a = adv.astype(jnp.float32)
        diag["adv/abs_mean"] = jnp.sum(jnp.abs(a) * m) / nm
        diag["adv/mean"] = jnp.sum(a * m) / nm
        return adv, diag

    return advantage_fn
