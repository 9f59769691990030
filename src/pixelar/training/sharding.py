"""Training a model sharded over torchrun's processes (FSDP2, `torch.distributed.fsdp.fully_shard`): for models
whose weights, gradients and Adam state do not fit one device.

Each unit the model lists (`model.shard_units()`, a method of the model contract: by default the blocks of its
top-level module lists and its other top-level children with parameters) becomes an FSDP group: its
parameters, gradients and optimizer state live as 1/N shards (DTensors) on the N processes, are gathered for
its forward and backward and freed after, and its gradients are reduce-scattered. The wrapper that calls
`model.objective` is the root group, holding every parameter no unit has (gathered for the whole step). Under
bf16 the groups gather bf16 weights and reduce fp32 gradients (`MixedPrecisionPolicy(param_dtype=bfloat16,
reduce_dtype=float32)`), over fp32 master shards, with the same autocast as unsharded bf16 training.

The EMA is sharded like the parameters: its entries are clones of the model's (DTensor) state dict and update
shard by shard, so it costs 1/N of the weights per process too.

Checkpoints are those of an unsharded run: `model`, `ema` and `optimizer` are gathered into full CPU tensors
on rank 0 (`get_model_state_dict` / `get_optimizer_state_dict` with full_state_dict=True, cpu_offload=True;
the EMA tensor by tensor), and the optimizer state is keyed by parameter index as torch.optim's own. So a
sharded run resumes unsharded, on any number of processes, and the other way round, and model.safetensors
loads with pixelar.load_model. Loading shards the full tensors every process reads from the checkpoint.

After the last step, evaluation and sampling run on an unsharded copy of the model holding the full EMA
weights on every process: they need the weights on one device (a quarter of Adam training's memory).
"""

from __future__ import annotations

import torch

from .. import distributed
from ..errors import ArgumentValueError


def check_can_shard() -> None:
    """Sharding splits the model over the processes of a torchrun job: refuse it in one process."""
    if not distributed.active():
        raise ArgumentValueError(
            "shard",
            "shard=True",
            "",
            " splits the model over the processes of a torchrun job (N processes per node); "
            "in one process train without it",
        )


def setup(model: torch.nn.Module, device: torch.device, cfg, root: torch.nn.Module) -> torch.nn.Module:
    """Shard `model` for training under the settings cfg (a TrainConfig); root is the module whose forward
    runs model.objective (the training objective) and that holds the model as `root.model`. Returns root, sharded."""
    check_can_shard()
    if cfg.compile:
        raise ArgumentValueError(
            "compile", "compile=True", "sharded training does not support ", " yet: train without it"
        )
    shard(root, model, device, cfg.precision)
    return root


def shard(root: torch.nn.Module, model: torch.nn.Module, device: torch.device, precision: str) -> None:
    """fully_shard each of model.shard_units(), then `root` (the module whose forward runs model.objective and
    that holds model), in place; works in any process group (also of one process)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kw = {"mesh": mesh}
    if precision == "bf16":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    units = list(model.shard_units())
    inside = {id(m) for m in model.modules()}
    if any(id(u) not in inside or u is model for u in units):
        raise ValueError(f"{type(model).__name__}.shard_units() must list submodules of the model, not itself")
    for unit in (*units, root):
        # registered before fully_shard's own hook, so that FSDP hooks the fresh tensors for the backward
        unit.register_forward_hook(_no_views)
        fully_shard(unit, **kw)


def _no_views(module: torch.nn.Module, args, output):
    """A forward hook: the output with each tensor that is a view of another (a crop, a matmul's result
    reshaped) replaced by a copy. FSDP2 hooks a unit's outputs to gather its weights again for the backward,
    and since an in-place op on a view would drop that hook, it warns at every view output. The copy changes no
    value, and the tensor it was cut from, which the backward does not keep, is freed."""
    return _copied_views(output)


def _copied_views(out):
    """out (a tensor, or tuples, lists and dicts of them) with the views that require grad copied."""
    if isinstance(out, torch.Tensor):
        return out.clone() if out.requires_grad and out._base is not None else out
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # a named tuple
        return type(out)(*map(_copied_views, out))
    if isinstance(out, (tuple, list)):
        return type(out)(map(_copied_views, out))
    if isinstance(out, dict):
        return {k: _copied_views(v) for k, v in out.items()}
    return out


def is_sharded(t) -> bool:
    """Whether t is a DTensor (a shard of a tensor); imported here, so that torch < 2.4 loads this module."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full CPU tensors of a state dict whose entries may be DTensor shards, on rank 0 ({} elsewhere);
    gathered one tensor at a time, so a device holds at most one full tensor more. Every process must call it."""
    out = {}
    for k, v in state.items():
        full = v.full_tensor() if is_sharded(v) else v
        if distributed.is_main():
            out[k] = full.detach().cpu().clone()
    return out


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value on every process (a plain tensor as it is), e.g. the gradient norm."""
    return t.full_tensor() if is_sharded(t) else t


def unsharded_copy(model: torch.nn.Module, ema_state: dict, device: torch.device) -> torch.nn.Module:
    """A new, unsharded model like `model` (rebuilt from its config) holding the full EMA weights, on device, on
    every process: what evaluation and sampling use after sharded training."""
    from ..models.persistence import model_from_config

    state = {k: full(v).detach() for k, v in ema_state.items()}
    copy = model_from_config(model.config(), "the model being trained")
    copy.load_state_dict(state)
    return copy.to(device)


def full_states(root: torch.nn.Module, optimizer, ema_state: dict) -> tuple[dict, dict, dict]:
    """(model state, EMA state, optimizer "state" keyed by parameter index) as full CPU tensors on rank 0
    ({} elsewhere), in the layout of an unsharded run's checkpoint. Every process must call it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = {_strip(k): v for k, v in get_model_state_dict(root, options=opts).items()}
    optim = get_optimizer_state_dict(root, optimizer, options=opts)
    ema = full_tensors(ema_state)
    if not distributed.is_main():
        return {}, {}, {}
    # the optimizer's state by parameter name ("model.<name>" under the root) -> by index, as torch.optim keys it
    names = [_strip(n) for n, _ in root.named_parameters()]
    state = optim.get("state", {})
    return weights, ema, {i: state[f"model.{n}"] for i, n in enumerate(names) if f"model.{n}" in state}


def _strip(name: str) -> str:
    return name[len("model.") :] if name.startswith("model.") else name


def load_full_states(root: torch.nn.Module, optimizer, ema, weights: dict, ema_state: dict, optim: dict) -> None:
    """Load full state dicts (an unsharded run's checkpoint layout, optimizer state keyed by index) into the
    sharded model, optimizer and EMA: each process keeps its shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(root, {f"model.{k}": v for k, v in weights.items()}, options=opts)
    names = [_strip(n) for n, _ in root.named_parameters()]
    groups = optimizer.state_dict()["param_groups"]
    if set(optim) - set(range(len(names))):
        raise KeyError(f"optimizer state for parameter indices {sorted(set(optim) - set(range(len(names))))[:5]}")
    full = {
        "state": {f"model.{names[i]}": s for i, s in optim.items()},
        "param_groups": [{**g, "params": [f"model.{names[i]}" for i in g["params"]]} for g in groups],
    }
    set_optimizer_state_dict(root, optimizer, full, options=opts)
    ema.load_state_dict(shard_like(ema.state_dict(), ema_state))


def shard_like(like: dict[str, torch.Tensor], full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full tensors laid out as the entries of `like` (DTensor shards where those are; missing or extra keys
    are left for the caller's check)."""
    from torch.distributed.tensor import distribute_tensor

    out = {}
    for k, v in full.items():
        ref = like.get(k)
        if is_sharded(ref):
            if tuple(v.shape) != tuple(ref.shape):
                raise ValueError(f"{k!r} has shape {tuple(v.shape)}, the model {tuple(ref.shape)}")
            v = distribute_tensor(v.to(ref.dtype).to(ref.device_mesh.device_type), ref.device_mesh, ref.placements)
        out[k] = v
    return out
