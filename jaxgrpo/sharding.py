"""Device meshes, partition rules and sharded model / optimizer state, with JAX's own machinery.

One ``jax.sharding.Mesh`` with three named axes carries every kind of parallelism:

  * ``'data'``   — pure data parallelism: the batch is split, parameters are replicated;
  * ``'fsdp'``   — data parallelism with fully sharded parameters (ZeRO-3): the batch is split
                   *and* one dimension of each weight is split; XLA all-gathers a weight where it
                   is used and reduce-scatters its gradient;
  * ``'tensor'`` — Megatron-style tensor parallelism (arXiv:1909.08053): attention heads and MLP
                   hidden units are split, so a layer's two matmuls need one all-reduce.

Parameters are laid out by an ordered list of ``(regex, PartitionSpec)`` rules matched (first
match wins, ``re.search``) against the ``'/'``-joined path of each array in an ``nnx.State``
(e.g. ``layers/self_attn/q_proj/kernel``). The rules describe ONE layer's shapes: the decoder's
layers are stacked (``[L, ...]`` arrays under ``layers/``, see ``STACKED``), and those get a
leading ``None`` (the layer axis is never split). The same rules lay out optimizer state, whose
paths contain the parameter paths (``0/mu/layers/self_attn/q_proj/kernel``,
``opt_state/0/nu/...`` for ``nnx.Optimizer``). Rank-0 leaves (optax's step ``count``,
``nnx.Optimizer.step``) are always replicated.

Activations are constrained inside the decoder with ``constrain`` (batch over
``('data', 'fsdp')``, attention heads and MLP units over ``'tensor'``, the residual stream
replicated across ``'tensor'``), so XLA all-gathers FSDP-sharded weights where they are used
instead of all-reducing activations. The constraints read the mesh of the surrounding
``with jax.set_mesh(mesh):`` at trace time and are no-ops without one (or on one device): wrap
the calls of jitted functions that run the model in it.

Typical single-host use::

    mesh = make_mesh(data=1, fsdp=-1, tensor=2)          # -1: all remaining devices
    model = sharded_init(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh)   # or shard_model(model, mesh)
    params = nnx.state(model, nnx.Param)
    opt_state = shard_optimizer_state(tx.init(params), mesh)
    batch = jax.device_put(batch, batch_sharding(mesh))
    step = jax.jit(train_step, in_shardings=(state_shardings(params, mesh), ...),
                   out_shardings=...)

Multi-host (several processes, each owning the accelerators of one host): call
``jax.distributed.initialize()`` once per process, at the very start of the program, before
anything touches a JAX backend (before ``jax.devices()``, before creating any array). On SLURM,
Open MPI (``mpirun``), Cloud TPU pods and Kubernetes JobSets it needs no arguments (JAX reads the
coordinator address, process count and process id from the environment); elsewhere pass
``coordinator_address='host0:1234', num_processes=N, process_id=i`` (or set
``JAX_COORDINATOR_ADDRESS``). After it, ``jax.devices()`` lists the devices of *all* hosts and
``make_mesh`` builds a global mesh over them; every process runs the same program (SPMD) and
feeds its own slice of the batch (``global_batch(local, mesh, n)`` with the rows
``process_rows(mesh, n)``, i.e. ``jax.make_array_from_process_local_data``) and reads sharded
outputs back with ``to_host`` (a ``process_allgather``); tests/integration/test_multihost.py runs this with
2 local processes. ``initialize_distributed()`` below is a thin wrapper that calls it only when the
environment (or a flag) says the run is multi-host, so the same entry point runs on a laptop.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from typing import Any, Callable, ClassVar, List, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxgrpo import config
from jaxgrpo.errors import ConfigError

logger = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
# Axes the batch's leading dimension is split over: fsdp is data parallelism too.
BATCH_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig(config.Section):
    """Device mesh; -1 = all remaining devices.

    The ``config.mesh`` section (:func:`make_mesh` and the batch devices).
    """

    NAME: ClassVar[str] = "mesh"
    data: int = config.key(
        -1, 'data-parallel axis size; -1 = the remaining devices', ge=1, also=(-1,))
    fsdp: int = config.key(1, 'parameter-sharding (FSDP) axis size', ge=1, also=(-1,))
    tensor: int = config.key(1, 'tensor-parallel axis size', ge=1, also=(-1,))

    def __post_init__(self):
        mesh = [self.data, self.fsdp, self.tensor]
        if mesh.count(-1) > 1:
            raise ConfigError(f"config.mesh: at most one axis may be -1, got data={mesh[0]}, "
                              f"fsdp={mesh[1]}, tensor={mesh[2]}")


Rules = Sequence[Tuple[str, P]]

# Megatron layout for the Qwen2/Llama decoder (jaxgrpo.models.decoder), kernels are [in, out]:
#   column-parallel (output dim over 'tensor'): q/k/v/gate/up — each device owns whole heads /
#     hidden units when the sizes divide, and their biases split the same way;
#   row-parallel (input dim over 'tensor'): o/down — their outputs are partial sums that XLA
#     all-reduces; their biases (added after the reduction) are replicated;
#   the other dimension of every matrix is split over 'fsdp'.
# Embeddings: vocab over 'tensor' (the largest matrix for small models; the lm_head's logits come
# out vocab-split, as in Megatron's parallel cross-entropy), hidden over 'fsdp'. Norm weights and
# RoPE frequencies are tiny vectors: replicated.
DEFAULT_RULES: Tuple[Tuple[str, P], ...] = (
    (r"embed_tokens/embedding$", P("tensor", "fsdp")),  # [V, E]
    (r"lm_head/kernel$", P("fsdp", "tensor")),  # [E, V]
    (r"self_attn/(q|k|v)_proj/kernel$", P("fsdp", "tensor")),  # [E, H*D]
    (r"self_attn/(q|k|v)_proj/bias$", P("tensor")),  # [H*D]
    (r"self_attn/o_proj/kernel$", P("tensor", "fsdp")),  # [H*D, E]
    (r"self_attn/o_proj/bias$", P()),  # [E]
    (r"mlp/(gate|up)_proj/kernel$", P("fsdp", "tensor")),  # [E, I]
    (r"mlp/(gate|up)_proj/bias$", P("tensor")),  # [I]
    (r"mlp/down_proj/kernel$", P("tensor", "fsdp")),  # [I, E]
    (r"mlp/down_proj/bias$", P()),  # [E]
    (r"(input_layernorm|post_attention_layernorm|norm)/weight$", P()),  # [E]
    (r"inv_freq$", P()),  # [D/2], non-trainable
)


def _lora_rules(rules) -> Tuple[Tuple[str, P], ...]:
    """LoRA adapters (``jaxgrpo.lora``) follow their kernel's layout: A [in, r] takes the
    kernel's input-dimension axes, B [r, out] its output-dimension axes; the rank dimension is
    replicated (it is small)."""
    out = []
    for pattern, spec in rules:
        if pattern.endswith("/kernel$") and len(spec) == 2:
            stem = pattern[: -len("kernel$")]
            out.append((stem + "lora_a$", P(spec[0], None)))
            out.append((stem + "lora_b$", P(None, spec[1])))
    return tuple(out)


DEFAULT_RULES = DEFAULT_RULES + _lora_rules(DEFAULT_RULES)

# Paths of stacked (scanned) layer parameters, [L, *per-layer shape]: the rules' specs describe the
# per-layer shape and get a leading None. ``layers/<digit>`` (a Python list of layers) is not.
STACKED = r"(^|/)layers/(?!\d+(/|$))"

# Activation layouts (``constrain``): [B, T, E] residual stream, [B, T, H, D] heads,
# [B, T, I] MLP units, [B, T, V] logits (vocab-split like the embedding), [L, B, KVH, S, D] cache.
ACT_HIDDEN = P(BATCH_AXES, None, None)
ACT_HEADS = P(BATCH_AXES, None, "tensor", None)
ACT_MLP = P(BATCH_AXES, None, "tensor")
ACT_LOGITS = P(BATCH_AXES, None, "tensor")
ACT_CACHE = P(None, BATCH_AXES, "tensor", None, None)


# ------------------------------------------------------------------------------------ meshes


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A ``Mesh`` of shape (data, fsdp, tensor) with axes ``('data', 'fsdp', 'tensor')``.

    One size may be -1: it takes all the devices the other two leave. ``devices`` defaults to
    ``jax.devices()`` (all hosts' devices after ``jax.distributed.initialize()``). Axis types are
    ``Auto`` (jax>=0.9's ``jax.make_mesh`` defaults to Explicit, under which NNX's embedding
    lookup fails), so shardings are propagated by the compiler from in/out shardings.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = [data, fsdp, tensor]
    for name, s in zip(MESH_AXES, sizes):
        if not isinstance(s, (int, np.integer)) or (s < 1 and s != -1):
            raise ValueError(f"mesh axis {name!r} must be a positive int or -1, got {s!r}")
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data}, fsdp={fsdp}, "
                         f"tensor={tensor}")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if n % known:
            raise ValueError(f"cannot fill mesh axis with -1: {n} devices are not divisible by "
                             f"the other axes' product {known} (data={data}, fsdp={fsdp}, "
                             f"tensor={tensor})")
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise ValueError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} "
            f"devices, but {n} devices are available ({devices[0].platform}); make the product "
            f"equal the device count or use -1 for one axis")
    return jax.make_mesh(tuple(int(s) for s in sizes), MESH_AXES,
                         axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``('data', 'fsdp')``; other axes replicated.

    The batch size must be divisible by ``data * fsdp``.
    """
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (scalars, step counters, RNG keys, metrics)."""
    return NamedSharding(mesh, P())


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """``device_put`` every array of a pytree with ``batch_sharding`` (rank-0 leaves replicated).

    Single-host only: on several hosts build the global arrays from each process's slice with
    ``jax.make_array_from_process_local_data(batch_sharding(mesh), local)``.
    """
    bs, rep = batch_sharding(mesh), replicated(mesh)
    return jax.tree.map(lambda x: jax.device_put(x, rep if np.ndim(x) == 0 else bs), batch)


def active_spec(shape: Tuple[int, ...], spec: P) -> Optional[P]:
    """``spec`` fitted to ``shape`` on the mesh set by ``jax.set_mesh``; None when there is
    nothing to shard over (no mesh, a one-device mesh, or fully inside ``shard_map``).

    Mesh axes the mesh lacks, manual axes (inside ``shard_map``) and axes whose size does not
    divide their dimension are dropped from ``spec`` (that dimension is then replicated over them),
    so any batch size traces.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None
    sizes = dict(mesh.shape)
    skip = set(mesh.manual_axes)
    if skip >= set(sizes):  # fully inside shard_map: nothing left to constrain
        return None
    entries = list(spec) + [None] * (len(shape) - len(spec))
    out = []
    for e, n in zip(entries, shape):
        axes = () if e is None else ((e,) if isinstance(e, str) else tuple(e))
        kept, prod = [], 1
        for a in axes:
            if a in skip or a not in sizes or n % (prod * sizes[a]):
                continue
            kept.append(a)
            prod *= sizes[a]
        out.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
    return P(*out)


def constrain(x: jax.Array, spec: P) -> jax.Array:
    """``with_sharding_constraint(x, spec)`` on the mesh set by ``jax.set_mesh``, else ``x``.

    A no-op without a mesh or on a one-device mesh; ``spec`` is fitted to ``x`` by
    ``active_spec`` (axes that do not divide are dropped), so any batch size traces.
    """
    fitted = active_spec(x.shape, spec)
    return x if fitted is None else jax.lax.with_sharding_constraint(x, fitted)


def process_rows(mesh: Mesh, num_rows: int) -> slice:
    """The rows of a ``num_rows``-row batch (leading axis laid out by ``batch_sharding``) whose
    shards live on this process's devices: the slice of the batch this process feeds to
    ``global_batch``. One process: ``slice(0, num_rows)``.

    Raises ``ValueError`` when they are not one contiguous block (a mesh whose device order
    interleaves the processes along the batch axes).
    """
    index = batch_sharding(mesh).addressable_devices_indices_map((num_rows,))
    spans = sorted({(ix[0].indices(num_rows)[0], ix[0].indices(num_rows)[1])
                    for ix in index.values()})
    lo, hi = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != hi - lo:
        raise ValueError(f"process {jax.process_index()} holds rows {spans} of the batch, not "
                         f"one contiguous block; build the mesh with each process's devices "
                         f"adjacent along ('data', 'fsdp')")
    return slice(lo, hi)


def global_batch(local: Any, mesh: Mesh, num_rows: int) -> Any:
    """Global arrays of ``num_rows`` rows (split over ``('data', 'fsdp')``) from this process's
    rows ``local`` (rows ``process_rows(mesh, num_rows)`` of every leaf), with
    ``jax.make_array_from_process_local_data``. Rank-0 leaves are replicated (the same value on
    every process). With one process ``local`` is the whole batch (as ``shard_batch``).
    """
    bs, rep = batch_sharding(mesh), replicated(mesh)

    def one(x):
        x = np.asarray(x)
        if x.ndim == 0:
            return jax.make_array_from_process_local_data(rep, x, ())
        return jax.make_array_from_process_local_data(bs, x, (num_rows, *x.shape[1:]))

    return jax.tree.map(one, local)


def to_host(tree: Any) -> Any:
    """NumPy copies of the global value of every array of ``tree``, on every process.

    An array with shards on other processes' devices (a batch-sharded sampler output on several
    hosts) is gathered with ``multihost_utils.process_allgather(tiled=True)``: a collective, so
    every process must call it at the same point. Other arrays are copied as they are.
    """
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


# ---------------------------------------------------------------------------- partition rules


@dataclasses.dataclass(frozen=True)
class Fallback:
    """A dimension left replicated because its size is not divisible by its mesh axes' size."""

    path: str
    dim: int
    size: int
    axes: Tuple[str, ...]  # the axes the rule asked for
    kept: Tuple[str, ...]  # the axes actually used (a divisible prefix of ``axes``; may be ())


def is_primary_process() -> bool:
    """Process 0 of a multi-host run (always True with one process): the one that writes host
    files (metrics, samples, evaluations, config.json)."""
    return jax.process_index() == 0


def sync_processes(name: str) -> None:
    """A barrier across the processes of a multi-host run (``multihost_utils.sync_global_devices``);
    nothing with one process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def path_to_str(path: Sequence[Any]) -> str:
    """A ``jax.tree_util`` key path as ``'a/b/0/c'``.

    The ``.value`` attribute of ``nnx.Variable`` leaves is dropped, so the path of a parameter
    reads as in the module tree (``layers/0/self_attn/q_proj/kernel``).
    """
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            if k.name == "value":
                continue
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:
            parts.append(str(k))
    return "/".join(parts)


def _mesh_axis_sizes(mesh) -> dict:
    # Mesh and AbstractMesh both expose .shape as {axis name: size}.
    return dict(mesh.shape)


def _fit_spec(spec: P, shape: Tuple[int, ...], path: str, mesh, fallbacks: List[Fallback]) -> P:
    """Pad ``spec`` to rank and drop mesh axes that do not divide their dimension."""
    entries = list(spec)
    if len(entries) > len(shape):
        raise ValueError(f"partition spec {spec} has {len(entries)} entries but {path!r} has "
                         f"rank {len(shape)} (shape {shape})")
    entries += [None] * (len(shape) - len(entries))
    if mesh is None:
        return P(*entries)
    sizes = _mesh_axis_sizes(mesh)
    out = []
    for dim, (e, n) in enumerate(zip(entries, shape)):
        if e is None:
            out.append(None)
            continue
        axes = (e,) if isinstance(e, str) else tuple(e)
        for a in axes:
            if a not in sizes:
                raise ValueError(f"partition spec {spec} for {path!r} names mesh axis {a!r}; the "
                                 f"mesh has axes {tuple(sizes)}")
        # Keep the longest prefix of the axes whose product divides the dimension.
        kept: Tuple[str, ...] = ()
        prod = 1
        for a in axes:
            if n % (prod * sizes[a]):
                break
            kept += (a,)
            prod *= sizes[a]
        if len(kept) < len(axes) and math.prod(sizes[a] for a in axes[len(kept):]) > 1:
            fb = Fallback(path=path, dim=dim, size=n, axes=axes, kept=kept)
            fallbacks.append(fb)
            logger.info("sharding: %s dim %d (size %d) not divisible by mesh axes %s (size %d): "
                        "using %s", path, dim, n, axes, math.prod(sizes[a] for a in axes),
                        kept or "replication")
        out.append(None if not kept else (kept[0] if len(kept) == 1 else kept))
    return P(*out)


def match_partition_rules(rules: Rules, state: Any, mesh=None, *,
                          fallbacks: Optional[List[Fallback]] = None) -> Any:
    """A pytree of ``PartitionSpec`` shaped like ``state``, one per array leaf.

    ``state`` is any pytree of arrays or ``jax.ShapeDtypeStruct`` (an ``nnx.State``, an optax
    state, a dict). Each leaf's ``'/'``-joined path (see ``path_to_str``) is matched with
    ``re.search`` against the rules in order; the first match gives its spec, padded with
    ``None`` to the leaf's rank; leaves under a stacked ``layers/`` (``STACKED``) get a leading
    ``None`` first, so the rules describe one layer. Rank-0 leaves are replicated without
    consulting the rules.

    With ``mesh`` (a ``Mesh`` or ``AbstractMesh``), a dimension whose size is not divisible by
    its mesh axes' total size keeps only a divisible prefix of those axes (usually: replicated);
    each such case is logged and appended to ``fallbacks`` when a list is given.

    Raises ``ValueError`` listing every leaf (path and shape) no rule matched, or naming a rule
    whose spec has more entries than the leaf's rank or names an axis the mesh lacks.
    """
    compiled = [(re.compile(pattern), spec) for pattern, spec in rules]
    stacked = re.compile(STACKED)
    fallbacks = [] if fallbacks is None else fallbacks
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    specs, unmatched = [], []
    for path, leaf in leaves:
        name = path_to_str(path)
        shape = tuple(np.shape(leaf))
        if len(shape) == 0:
            specs.append(P())
            continue
        for rx, spec in compiled:
            if rx.search(name):
                if stacked.search(name):
                    spec = P(None, *spec)  # the layer axis of a stacked parameter
                specs.append(_fit_spec(spec, shape, name, mesh, fallbacks))
                break
        else:
            unmatched.append(f"{name} {shape}")
            specs.append(None)
    if unmatched:
        raise ValueError(f"no partition rule matched {len(unmatched)} array(s): "
                         + ", ".join(unmatched)
                         + "; add a (regex, PartitionSpec) rule for them")
    return treedef.unflatten(specs)


def _leaf_shardings(state: Any, mesh: Mesh, rules: Rules,
                    fallbacks: Optional[List[Fallback]] = None):
    specs = match_partition_rules(rules, state, mesh, fallbacks=fallbacks)
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    return [NamedSharding(mesh, s) for s in spec_leaves]


def state_shardings(state: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES, *,
                    fallbacks: Optional[List[Fallback]] = None) -> Any:
    """A pytree of ``NamedSharding`` shaped like ``state`` (for ``jax.jit`` in/out shardings)."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    return treedef.unflatten(_leaf_shardings(state, mesh, rules, fallbacks))


def shard_state(state: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES, *,
                fallbacks: Optional[List[Fallback]] = None) -> Any:
    """``device_put`` every array of ``state`` with the sharding its rule gives."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    shardings = _leaf_shardings(state, mesh, rules, fallbacks)
    return treedef.unflatten(jax.device_put(leaves, shardings))


# ------------------------------------------------------------------------------- NNX models


def shard_model(model, mesh: Mesh, rules: Rules = DEFAULT_RULES, *,
                fallbacks: Optional[List[Fallback]] = None):
    """A copy of the NNX ``model`` whose variables are laid out on ``mesh`` by ``rules``.

    ``nnx.split`` -> ``device_put`` with ``NamedSharding``s -> ``nnx.merge``; the argument is left
    as it was. Every variable (parameters and non-trainable ones such as RoPE's ``inv_freq``)
    must match a rule. For a model too large for one device use ``sharded_init``.
    """
    from flax import nnx

    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, shard_state(state, mesh, rules, fallbacks=fallbacks))


def sharded_init(model_factory: Callable[[], Any], mesh: Mesh, rules: Rules = DEFAULT_RULES, *,
                 fallbacks: Optional[List[Fallback]] = None):
    """Build ``model_factory()`` directly in its sharded layout.

    The model's shapes come from ``nnx.eval_shape`` (nothing allocated); its initialisation then
    runs under ``jax.jit`` with ``out_shardings`` from the rules, so each device computes and
    holds only its own shards — no full copy lives on one device. ``model_factory`` takes no
    arguments and must be deterministic (seed its ``nnx.Rngs`` inside), e.g.
    ``lambda: Decoder(cfg, rngs=nnx.Rngs(0))``.
    """
    from flax import nnx

    abstract = nnx.eval_shape(model_factory)
    graphdef, abstract_state = nnx.split(abstract)
    leaves, treedef = jax.tree_util.tree_flatten(abstract_state)
    shardings = _leaf_shardings(abstract_state, mesh, rules, fallbacks)

    # Leaves in, leaves out: the out_shardings list cannot disagree with the state's pytree
    # metadata, and the abstract treedef rebuilds the nnx.State.
    def init_leaves():
        return jax.tree.leaves(nnx.state(model_factory()))

    values = jax.jit(init_leaves, out_shardings=shardings)()
    return nnx.merge(graphdef, treedef.unflatten(values))


# --------------------------------------------------------------------------- optimizer state


def shard_optimizer_state(opt_state: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES, *,
                          fallbacks: Optional[List[Fallback]] = None) -> Any:
    """Lay out an optax state like the parameters it mirrors; scalars (``count``) replicated.

    ``opt_state`` is ``tx.init(params)`` for ``params = nnx.state(model, nnx.Param)`` (or any
    params pytree whose paths the rules match): the moments' paths contain the parameter paths
    (``0/mu/layers/0/mlp/up_proj/kernel``), so the same regexes apply. optax creates its step
    counter on the default device; this puts it on every device of the mesh, which ``jax.jit``
    with shardings requires.
    """
    return shard_state(opt_state, mesh, rules, fallbacks=fallbacks)


def optimizer_state_shardings(opt_state: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """``NamedSharding`` pytree for an optax state (``jax.jit`` in/out shardings)."""
    return state_shardings(opt_state, mesh, rules)


def shard_nnx_optimizer(optimizer, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Lay out an ``nnx.Optimizer``'s state (``step``, ``opt_state/...``) in place; returns it.

    Its parameters' layout is the model's business (``shard_model`` / ``sharded_init``).
    """
    from flax import nnx

    state = nnx.state(optimizer)
    nnx.update(optimizer, shard_state(state, mesh, rules))
    return optimizer


# ------------------------------------------------------------------------------- multi-host

MULTI_HOST_ENV_FLAG = "JAXGRPO_MULTI_HOST"


def _multi_host_from_env(env=os.environ) -> bool:
    """Whether the standard launcher environment describes more than one process."""
    if env.get(MULTI_HOST_ENV_FLAG, "").lower() in ("1", "true", "yes"):
        return True
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_NODELIST" in env:
        return True
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return True
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    return len([h for h in hosts.split(",") if h.strip()]) > 1


PROCESS_ENV = (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID"))


def _process_kwargs_from_env(env=os.environ) -> dict:
    """``num_processes`` / ``process_id`` from ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` (set
    beside ``JAX_COORDINATOR_ADDRESS`` where no cluster manager describes the processes: plain
    ssh, a local test). A value that is not a non-negative int raises ConfigError naming it."""
    out = {}
    for key, name in PROCESS_ENV:
        value = env.get(name, "").strip()
        if value and not value.isdigit():
            raise ConfigError(f"{name}={env[name]!r}: must be an int >= 0")
        if value:
            out[key] = int(value)
    return out


def initialize_distributed(multi_host: Optional[bool] = None, env=os.environ, **kwargs) -> bool:
    """Call ``jax.distributed.initialize(**kwargs)`` when this run spans several processes.

    ``multi_host=None`` decides from the environment: ``JAXGRPO_MULTI_HOST=1``,
    ``JAX_COORDINATOR_ADDRESS``, a SLURM step or Open MPI job with more than one task, or a
    multi-host TPU slice. ``kwargs`` (``coordinator_address``, ``num_processes``,
    ``process_id``, ...) go to JAX unchanged; without them ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` are read (JAX itself reads ``JAX_COORDINATOR_ADDRESS`` but takes the
    other two from a cluster manager only). Call it first thing in the program, before any JAX
    computation. Returns whether JAX's distributed runtime is (now) initialised; a second call
    is a no-op.
    """
    if jax.distributed.is_initialized():
        return True
    if multi_host is None:
        multi_host = bool(kwargs) or _multi_host_from_env(env)
    if not multi_host:
        return False
    if not kwargs:
        kwargs = _process_kwargs_from_env(env)
    jax.distributed.initialize(**kwargs)
    logger.info("jax.distributed initialised: process %d of %d, %d global devices",
                jax.process_index(), jax.process_count(), jax.device_count())
    return True


# ----------------------------------------------------------------------------- preflight


def resolved_mesh_sizes(data: int, fsdp: int, tensor: int, n_devices: int) -> Tuple[int, int, int]:
    """(data, fsdp, tensor) with a -1 axis filled from ``n_devices`` (as ``make_mesh`` does);
    ConfigError naming config.mesh when they do not fit the devices."""
    from jaxgrpo.errors import ConfigError

    sizes = [data, fsdp, tensor]
    desc = f"mesh.data={data} x mesh.fsdp={fsdp} x mesh.tensor={tensor}"
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if n_devices % known:
            raise ConfigError(f"config.mesh: {desc}: {n_devices} devices are not divisible by "
                              f"the other axes' product {known}")
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ConfigError(f"config.mesh: {desc} = {math.prod(sizes)} devices, but {n_devices} "
                          "are available; make the product equal the device count or set one "
                          "axis to -1")
    return tuple(sizes)
