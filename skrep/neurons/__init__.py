"""Explanations by internal neurons: distributional influence (Leino et al. 2018).

A *slice* names where the neurons are, a *quantity of interest* what is explained, a
*distribution of interest* where the gradients are averaged; :class:`NeuronInfluence` composes the
three into per-neuron influences, class experts (compressed models) and input visualizations.
"""

from .distributions import ClassDoI, GaussianDoI, LinearPathDoI, PointDoI, PointwiseDoI
from .experts import ClassExpert, binary_logits, expert_precision_recall
from .influence import NeuronInfluence
from .plotting import plot_image_grid
from .quantities import ClassQoI, ComparativeQoI
from .slices import Slice

__all__ = [
    "ClassDoI",
    "ClassExpert",
    "ClassQoI",
    "ComparativeQoI",
    "GaussianDoI",
    "LinearPathDoI",
    "NeuronInfluence",
    "PointDoI",
    "PointwiseDoI",
    "Slice",
    "binary_logits",
    "expert_precision_recall",
    "plot_image_grid",
]
