"""Per-sample gradients and Hessian-vector products over a chosen set of a network's parameters.

The parameters are split into groups whose per-sample gradients have a cheap exact form:

- every ``nn.Linear`` applied once per sample to a vector: its gradient is rank-1,
  ``delta (x) [x, 1]`` with ``delta`` the gradient of the loss in the layer's output, captured by
  hooks from one batched backward pass (per-sample losses are independent in eval mode);
- everything else (convolutions, embeddings, recurrent weights): ``torch.func`` vmap over grad.

A flat parameter vector lists the groups in that order: each Linear as ``(out, in [+ 1])`` rows
(its weight row, then its bias entry), then the other parameters flattened in module order.
Hessian-vector products (Pearlmutter: reverse-over-reverse, the pullback of the gradient) use the same layout.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..kernels import Dense, Factored
from ..losses import Loss

__all__ = ["ParameterGroups", "hessian_operator", "labelled_batches", "per_sample_gradients", "plan_groups"]


def labelled_batches(batches: Iterable[tuple[Any, Any]], labels: torch.Tensor) -> list[tuple[Any, torch.Tensor]]:
    """Pair each model-ready batch with its slice of ``labels`` (in order)."""
    out, start = [], 0
    for x, _ in batches:
        b = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
        out.append((x, labels[start : start + b]))
        start += b
    return out


@dataclass(frozen=True)
class ParameterGroups:
    """Which parameters are traced, and how: Linear layers (rank-1) and the rest (dense)."""

    linear: tuple[tuple[str, bool], ...]  # (module name, bias traced too)
    other: tuple[str, ...]  # parameter names
    shapes: tuple[tuple[str, int, int], ...]  # (key, k, d) of every group, in flat order

    @property
    def size(self) -> int:
        """Number of traced parameters."""
        return sum(k * d for _, k, d in self.shapes)


def plan_groups(module: nn.Module, params: str | Iterable[str]) -> ParameterGroups:
    """Groups for ``params='all'`` or a list of module and/or parameter names."""
    named = dict(module.named_parameters())
    modules = dict(module.named_modules())
    if params == "all":
        chosen = {n for n, p in named.items() if p.requires_grad}
    else:
        chosen = set()
        for name in params:
            if name in named:
                chosen.add(name)
            elif name in modules:
                chosen |= {f"{name}.{p}" if name else p for p, _ in modules[name].named_parameters()}
            else:
                raise ValueError(
                    f"params names {name!r}, which is neither a module nor a parameter of the model; "
                    f"modules: {[m for m in modules if m][:20]}."
                )
    linear = []
    shapes = []
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear) and f"{name}.weight" in chosen:
            has_bias = f"{name}.bias" in chosen
            linear.append((name, has_bias))
            shapes.append((name, m.out_features, m.in_features + has_bias))
            chosen -= {f"{name}.weight", f"{name}.bias"}
    other = tuple(sorted(chosen, key=list(named).index))
    if other:
        shapes.append(("other", 1, sum(named[p].numel() for p in other)))
    if not shapes:
        raise ValueError("params selects no trainable parameter.")
    return ParameterGroups(tuple(linear), other, tuple(shapes))


def per_sample_gradients(
    module: nn.Module, groups: ParameterGroups, batches: Iterable[tuple[Any, torch.Tensor]], loss: Loss
) -> dict[str, Factored | Dense]:
    """Per-sample loss gradients of every group for ``(x, labels)`` batches, in eval mode."""
    module, batches = _in_float32(module, batches)
    modules = dict(module.named_modules())
    names = [n for n, _ in groups.linear]
    deltas: dict[str, list] = {n: [] for n in names}
    inputs: dict[str, list] = {n: [] for n in names}
    other: list = []
    was_training = module.training
    module.eval()
    try:
        for x, t in batches:
            if names:
                d, i = _linear_factors(module, modules, names, x, t, loss)
                for n in names:
                    deltas[n].append(d[n])
                    inputs[n].append(i[n])
            if groups.other:
                other.append(_dense_grads(module, groups.other, x, t, loss))
    finally:
        module.train(was_training)
    out: dict[str, Factored | Dense] = {}
    for n, has_bias in groups.linear:
        xs = torch.cat(inputs[n])
        if has_bias:
            xs = torch.cat([xs, torch.ones(len(xs), 1, dtype=xs.dtype)], 1)
        out[n] = Factored(torch.cat(deltas[n]), xs)
    if groups.other:
        out["other"] = Dense(torch.cat(other)[:, None, :])
    return out


def _linear_factors(module: nn.Module, modules: dict, names: list, x: Any, t: torch.Tensor, loss: Loss):
    seen_in: dict = {}
    seen_out: dict = {}

    def hook(name):
        def fn(m, inp, out):
            if name in seen_out:
                raise ValueError(
                    f"Layer {name!r} runs more than once per forward pass, so its per-sample gradient is not "
                    "rank-1; trace its parameters by name instead."
                )
            seen_in[name], seen_out[name] = inp[0].detach(), out

        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.enable_grad():
            out = module(**x) if isinstance(x, dict) else module(x)
            for n in names:
                if seen_in[n].ndim != 2:
                    raise ValueError(
                        f"Layer {n!r} gets input of shape {tuple(seen_in[n].shape)}, not one vector per sample; "
                        "trace its parameters by name instead."
                    )
            value = loss.value(out, loss.targets(t, out.shape[1], out.dtype)).sum()
            grads = torch.autograd.grad(value, [seen_out[n] for n in names], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    deltas = {
        n: (g if g is not None else torch.zeros_like(seen_out[n])).detach().cpu()
        for n, g in zip(names, grads, strict=True)
    }
    return deltas, {n: seen_in[n].cpu() for n in names}


def _sample_loss(module: nn.Module, buffers: dict, loss: Loss) -> Callable:
    from torch.func import functional_call

    def fn(p, xi, ti):
        xb = {k: v[None] for k, v in xi.items()} if isinstance(xi, dict) else xi[None]
        out = (
            functional_call(module, (p, buffers), (), xb)
            if isinstance(xb, dict)
            else functional_call(module, (p, buffers), (xb,))
        )
        return loss.value(out, loss.targets(ti[None], out.shape[1], out.dtype)).sum()

    return fn


def _batch_rows(x: Any, rows: Any) -> Any:
    """Rows (an index or a slice) of a batch: a tensor, or a dict of tensors (keyword inputs)."""
    return {k: v[rows] for k, v in x.items()} if isinstance(x, dict) else x[rows]


def _dense_grads(module: nn.Module, names: tuple[str, ...], x: Any, t: torch.Tensor, loss: Loss) -> torch.Tensor:
    from torch.func import grad, vmap

    params = {n: p.detach() for n, p in module.named_parameters() if n in names}
    fn = _sample_loss(module, dict(module.named_buffers()), loss)
    try:
        g = vmap(grad(fn), in_dims=(None, 0, 0))(params, x, t)
    except (RuntimeError, NotImplementedError):  # an op without a batching rule: one sample at a time
        rows = [grad(fn)(params, _batch_rows(x, j), t[j]) for j in range(len(t))]
        g = {n: torch.stack([r[n] for r in rows]) for n in names}
    return torch.cat([g[n].reshape(len(t), -1) for n in names], 1).detach().cpu()


def _unflatten(V: torch.Tensor, module: nn.Module, groups: ParameterGroups) -> dict[str, torch.Tensor]:
    """Flat vectors (b, P) -> parameter-shaped tensors (b, *shape) for every traced parameter."""
    named = dict(module.named_parameters())
    out, start = {}, 0
    for name, has_bias in groups.linear:
        w = named[f"{name}.weight"]
        size = w.shape[0] * (w.shape[1] + has_bias)
        block = V[:, start : start + size].reshape(len(V), w.shape[0], w.shape[1] + has_bias)
        out[f"{name}.weight"] = block[:, :, : w.shape[1]]
        if has_bias:
            out[f"{name}.bias"] = block[:, :, -1]
        start += size
    for p in groups.other:
        n = named[p].numel()
        out[p] = V[:, start : start + n].reshape(len(V), *named[p].shape)
        start += n
    return out


def _flatten(T: dict[str, torch.Tensor], module: nn.Module, groups: ParameterGroups, b: int) -> torch.Tensor:
    parts = []
    for name, has_bias in groups.linear:
        w = T[f"{name}.weight"]
        parts.append((torch.cat([w, T[f"{name}.bias"][:, :, None]], 2) if has_bias else w).reshape(b, -1))
    parts += [T[p].reshape(b, -1) for p in groups.other]
    return torch.cat(parts, 1)


_HVP_CELLS = 25_600  # vectors x training rows in one Hessian-vector product


def hessian_operator(
    module: nn.Module,
    groups: ParameterGroups,
    batches: list[tuple[Any, torch.Tensor]],
    loss: Loss,
    l2: float = 0.0,
) -> Callable[..., torch.Tensor]:
    """``matvec(V, batch_ids=None)``: the Hessian of ``mean loss + l2/2 ||theta||^2`` applied to V (b, P).

    Over all training batches, or (for stochastic solvers) over the chosen ones, rescaled to a
    mean. Pearlmutter's trick, reverse over reverse: ``torch.func.vjp`` of the gradient, its
    pullback vmapped over V's rows (as pyDVL does; 3% faster here than ``jvp`` of the gradient).
    """
    from torch.func import functional_call, grad, vjp, vmap

    module, batches = _in_float32(module, batches)
    params = {k: v.detach() for k, v in module.named_parameters() if k in _traced(groups, module)}
    buffers = dict(module.named_buffers())

    def batch_loss(p, x, t):
        out = (
            functional_call(module, (p, buffers), (), x)
            if isinstance(x, dict)
            else functional_call(module, (p, buffers), (x,))
        )
        return loss.value(out, loss.targets(t, out.shape[1], out.dtype)).sum()

    def matvec(V: torch.Tensor, batch_ids: list[int] | None = None) -> torch.Tensor:
        was_training = module.training
        module.eval()
        try:
            ids = range(len(batches)) if batch_ids is None else batch_ids
            count = sum(len(batches[i][1]) for i in ids)
            flat = _unflatten(V.to(next(iter(params.values())).dtype), module, groups)
            cotangents = {k: flat[k] for k in params}  # the same key order as the primals (a pytree)
            total = torch.zeros_like(V)
            # vectors x rows per product bounded, so that the vmapped activations stay in cache:
            # 100 products over 10,000 rows of a 300-wide MLP took 12.6 s in pieces of 256 rows,
            # 20.2 s in batches of 2,000 and 21.8 s in pieces of 327 (this machine's L3 cliff)
            rows = max(1, _HVP_CELLS // len(V))
            for i in ids:
                x_all, t_all = batches[i]
                batch = {k: torch.zeros_like(c) for k, c in cotangents.items()}
                for s in range(0, len(t_all), rows):
                    x, t = _batch_rows(x_all, slice(s, s + rows)), t_all[s : s + rows]
                    pullback = vjp(lambda p, x=x, t=t: grad(batch_loss)(p, x, t), params)[1]
                    out = vmap(pullback)(cotangents)[0]
                    for k, v in out.items():  # summed per parameter, flattened once per batch
                        batch[k] += v.detach()  # untraced parameters still require grad: no graph
                total += _flatten(batch, module, groups, len(V)).to(V.dtype)  # batches summed in V's dtype
        finally:
            module.train(was_training)
        return total / count + l2 * V

    return matvec


def _in_float32(module: nn.Module, batches: Any) -> tuple[nn.Module, Any]:
    """The module and batches as they are, or a float32 copy of a float16 / bfloat16 module with widened inputs.

    Gradients and Hessian products in half precision lose most of their digits (and overflow past
    65504), so they are computed on a float32 copy; the user's module is left as it is.
    """
    p = next(module.parameters(), None)
    if p is None or p.dtype not in (torch.float16, torch.bfloat16):
        return module, batches

    def widen(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: widen(v) for k, v in x.items()}
        return x.float() if isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16) else x

    return copy.deepcopy(module).float(), [(widen(x), t) for x, t in batches]


def _traced(groups: ParameterGroups, module: nn.Module) -> set[str]:
    names = set(groups.other)
    for name, has_bias in groups.linear:
        names.add(f"{name}.weight")
        if has_bias:
            names.add(f"{name}.bias")
    return names
