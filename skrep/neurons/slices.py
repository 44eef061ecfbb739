"""Slices: which internal tensor of a network holds the neurons (Leino et al. 2018, section 2.3).

A slice ``<g, h>`` splits a network ``f = g o h`` so that ``z = h(x)`` are the neurons. skrep
slices at a named module: its output (or input) is captured with a forward hook, so any network
is sliced without rewriting it, and two j-equivalent slicings (e.g. the output of a ReLU and of an
``nn.Identity`` right after it) see the same tensor and give the same influences (Axiom 4).

Neurons. A ``(batch, d)`` activation has d neurons. A convolutional ``(batch, C, ...)`` activation
has one neuron per channel: its gradient and activation are *summed over positions*, so a
channel's influence is the derivative of the quantity when the whole feature map is shifted by
the same amount (``sum_{h,w} d q / d z[c, h, w]``). A sequence's ``(batch, T, E)`` activation (an
embedding, a recurrent module's every-step output) has one neuron per feature, summed over time
steps; a recurrent module's final states ``h_n`` / ``c_n`` one per (layer x direction, hidden unit).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

__all__ = ["Slice"]

_RECURRENT_SELECT = ("output", "h_n", "c_n")


class Slice:
    """The neurons of a network at one named module.

    Parameters
    ----------
    module_name : str or None, default=None
        A module of the model, as ``model.named_modules()`` names it (``''`` is the whole model).
        None: the model's input itself (its first positional argument).
    at : {'output', 'input'}, default='output'
        Whether the neurons are the module's output or its input (e.g. ``Slice('fc', at='input')``
        is the penultimate representation a final ``fc`` layer reads, however the model computes
        it). Leave it unset with ``module_name=None``.
    select : None, int, tuple of int or {'output', 'h_n', 'c_n'}, default=None
        Which tensor, when the module returns (or, with ``at='input'``, receives) several: an index
        into the tuple, or a path of indices into nested tuples. For ``nn.LSTM`` / ``nn.GRU`` /
        ``nn.RNN`` outputs: ``'output'`` (every step's hidden state), ``'h_n'`` (the final hidden
        state, what a classifier on the last state reads) or ``'c_n'`` (LSTM cell state). None:
        the tensor itself (or the first positional input with ``at='input'``).
    neuron_axis : 'auto', int or None, default='auto'
        The axis (counted with the batch first) that indexes neurons; the other non-batch axes
        are summed over. 'auto': axis 1 of ``(batch, d)`` and of image-like ``(batch, C, H, ...)``
        activations (channels); for 3-D activations, axis 1 after convolutions, normalizations and
        pooling (``(batch, C, L)``), the last axis after ``nn.Embedding``, ``nn.Linear``,
        ``nn.LayerNorm`` and transformer layers (``(batch, T, E)``) and for a recurrent
        ``'output'``, and an error asking for the axis elsewhere; every element of ``h_n`` /
        ``c_n``. None: every element is a neuron.

    Notes
    -----
    The hook replaces the captured tensor by a copy for the rest of the forward pass, so in-place
    operations after the slice (``nn.ReLU(inplace=True)``) cannot change what is differentiated.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> s = Slice("1").bind(net)
    >>> with s.capture() as captured:
    ...     out = net(torch.randn(5, 4))
    >>> s.neurons(captured.tensor).shape
    torch.Size([5, 8])
    """

    def __init__(
        self,
        module_name: str | None = None,
        *,
        at: str = "output",
        select: Any = None,
        neuron_axis: Any = "auto",
    ):
        if module_name is not None and not isinstance(module_name, str):
            raise TypeError(f"module_name must be a module's name (str) or None; got {type(module_name).__name__}.")
        if at not in ("output", "input"):
            raise ValueError(f"at must be 'output' or 'input'; got {at!r}.")
        if module_name is None and at != "output":
            raise ValueError("Slice(None) is the model's input already; leave at= unset (or name a module).")
        if not _valid_select(select):
            raise ValueError(
                f"select must be None, an int, a tuple of ints or one of {_RECURRENT_SELECT}; got {select!r}."
            )
        if not (neuron_axis is None or neuron_axis == "auto" or _is_int(neuron_axis)):
            raise ValueError(f"neuron_axis must be 'auto', an int or None; got {neuron_axis!r}.")
        self.module_name = module_name
        self.at = at
        self.select = select
        self.neuron_axis = neuron_axis

    def __repr__(self) -> str:
        options = {"at": (self.at, "output"), "select": (self.select, None), "neuron_axis": (self.neuron_axis, "auto")}
        extra = "".join(f", {k}={v!r}" for k, (v, default) in options.items() if v != default)
        return f"Slice({self.module_name!r}{extra})"

    def bind(self, model: nn.Module) -> BoundSlice:
        """The slice resolved on ``model``: its hooks, neuron reduction and masks."""
        return BoundSlice(self, model)


class _Capture:
    """What a forward pass left at the slice."""

    def __init__(self, where: str):
        self.where = where
        self.tensors: list[torch.Tensor] = []

    @property
    def tensor(self) -> torch.Tensor:
        if len(self.tensors) != 1:
            raise ValueError(
                f"{self.where} ran {len(self.tensors)} times in one forward pass; a slice must run exactly "
                "once per pass (name a module that is not shared or skipped)."
            )
        return self.tensors[0]


class BoundSlice:
    """A :class:`Slice` resolved on a model (made by :meth:`Slice.bind`)."""

    def __init__(self, spec: Slice, model: nn.Module):
        modules = dict(model.named_modules())
        name = "" if spec.module_name is None else spec.module_name
        if name not in modules:
            names = [n for n in modules if n]
            raise ValueError(
                f"Slice({spec.module_name!r}): the model has no module of that name; its modules are "
                f"{names[:30]}{' ...' if len(names) > 30 else ''}."
            )
        self.module = modules[name]
        self.at = "input" if spec.module_name is None else spec.at
        self.where = "the model's input" if spec.module_name is None else f"the {self.at} of {name!r}"
        self.neuron_axis = spec.neuron_axis
        self.batch_axis = 0
        self.layout = _layout(self.module) if spec.module_name is not None else None
        select = spec.select
        self.path: tuple[int, ...] | None
        if isinstance(select, str):
            self.path, self.batch_axis, self.layout = self._recurrent(select)
        elif select is None:
            self.path = (0,) if self.at == "input" else None
            if self.at == "input" and isinstance(self.module, nn.RNNBase):  # the sequence a recurrent module reads
                self.batch_axis, self.layout = (0 if self.module.batch_first else 1), "last"
        else:
            self.path = (select,) if _is_int(select) else tuple(select)

    def _recurrent(self, select: str) -> tuple[tuple[int, ...], int, str]:
        m = self.module
        if not isinstance(m, nn.RNNBase) or self.at != "output":
            raise ValueError(
                f"select={select!r} names a recurrent module's output; {self.where} is not that of an "
                "nn.LSTM, nn.GRU or nn.RNN. Pass an index (or tuple of indices) instead."
            )
        is_lstm = isinstance(m, nn.LSTM)
        if select == "output":
            return (0,), 0 if m.batch_first else 1, "last"
        if select == "c_n" and not is_lstm:
            raise ValueError(f"select='c_n' is the cell state of an nn.LSTM; {type(m).__name__} has none.")
        path = (1, 0 if select == "h_n" else 1) if is_lstm else (1,)
        return path, 1, "flatten"  # h_n / c_n are (layers x directions, batch, hidden)

    # ---- hooks ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def capture(self, edit: Any = None) -> Iterator[_Capture]:
        """Hook the slice for the forward passes run inside the block.

        Yields a capture whose ``tensor`` is the slice's tensor (made a leaf that requires grad when
        nothing upstream does, so that gradients at the slice always exist). ``edit(t)``, if given,
        returns what the rest of the network sees instead of ``t`` (e.g. ``t * mask``).
        """
        captured = _Capture(self.where)

        def swap(value: Any) -> Any:
            t = _get(value, self.path, self.where)
            if t.is_floating_point() and torch.is_grad_enabled() and not t.requires_grad:
                t = t.detach().requires_grad_(True)
            captured.tensors.append(t)
            return _put(value, self.path, edit(t) if edit is not None else t.clone())

        if self.at == "input":
            handle = self.module.register_forward_pre_hook(lambda m, args: swap(args))
        else:
            handle = self.module.register_forward_hook(lambda m, args, out: swap(out))
        try:
            yield captured
        finally:
            handle.remove()

    # ---- neurons ----------------------------------------------------------------------------------
    def _axis(self, ndim: int) -> int | None:
        """The neuron axis of the batch-first tensor, None to flatten every element."""
        axis = self.neuron_axis
        if axis == "auto":
            if self.layout == "flatten":
                return None
            if self.layout == "last":
                return ndim - 1
            if ndim == 3 and self.layout is None:
                raise ValueError(
                    f"{self.where} is 3-D, (batch, channels, length) or (batch, steps, features); say which: "
                    "neuron_axis=1 for channels, neuron_axis=-1 for a sequence's features."
                )
            return 1
        if axis is None:
            return None
        if not -ndim < axis < ndim or axis % ndim == 0:
            raise ValueError(
                f"neuron_axis={axis} is not a non-batch axis of {self.where}, which has {ndim} axes "
                "(batch first); pass 1 to ndim - 1, a negative index, None or 'auto'."
            )
        return axis % ndim

    def neurons(self, t: torch.Tensor) -> torch.Tensor:
        """Per-neuron values ``(batch, n_neurons)`` of a slice-shaped tensor (activation or gradient)."""
        z = t.movedim(self.batch_axis, 0)
        axis = self._axis(z.ndim)
        if axis is None:
            return z.flatten(1)
        return z.movedim(axis, 1).reshape(len(z), z.shape[axis], -1).sum(2)

    def expand(self, values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-neuron ``values`` (n_neurons,) broadcast to the layout of the slice tensor ``t``."""
        z_shape = t.movedim(self.batch_axis, 0).shape
        axis = self._axis(len(z_shape))
        if axis is None:
            full = values.reshape(1, *z_shape[1:])
        else:
            shape = [1] * len(z_shape)
            shape[axis] = z_shape[axis]
            full = values.reshape(shape)
        return full.movedim(0, self.batch_axis)


# modules whose activations lay neurons out as (batch, C, ...) channels, or as features last
_CHANNELS = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)
_FEATURES_LAST = (nn.Embedding, nn.Linear, nn.LayerNorm, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def _layout(module: nn.Module) -> str | None:
    if isinstance(module, _CHANNELS):
        return "channels"
    if isinstance(module, _FEATURES_LAST):
        return "last"
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _valid_select(select: Any) -> bool:
    if select is None or _is_int(select) or select in _RECURRENT_SELECT:
        return True
    return isinstance(select, tuple) and len(select) > 0 and all(_is_int(i) for i in select)


def _get(value: Any, path: tuple[int, ...] | None, where: str) -> torch.Tensor:
    if path is None:
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{where} is a {type(value).__name__}, not one tensor; pass select= to choose one "
                "(an index, or 'output' / 'h_n' / 'c_n' for a recurrent module)."
            )
        return value
    for depth, i in enumerate(path):
        if not isinstance(value, (tuple, list)) or not -len(value) <= i < len(value):
            raise ValueError(f"select={path[: depth + 1]} does not index {where} (a {type(value).__name__}).")
        value = value[i]
    if isinstance(value, PackedSequence):
        raise TypeError(f"{where} is a PackedSequence; slice the final state h_n (select='h_n') instead.")
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"select={path} picks a {type(value).__name__} from {where}, not a tensor.")
    return value


def _put(value: Any, path: tuple[int, ...] | None, new: torch.Tensor) -> Any:
    if not path:
        return new
    items = list(value)
    items[path[0]] = _put(items[path[0]], path[1:], new)
    if hasattr(value, "_fields"):  # a namedtuple keeps its type
        return type(value)(*items)
    return type(value)(items)
