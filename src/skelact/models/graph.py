"""The 3-subset skeleton adjacency of ST-GCN's "spatial" partition, built from any :class:`Layout`.

Convention: a graph convolution computes ``out[..., u] = sum_v A[k, u, v] * x[..., v]``, i.e. row ``u``
of ``A[k]`` says from which joints ``u`` gathers. The layout's edges are ``(child, parent)``; the
*inward* direction is child -> parent (towards the centre joint).

- ``A[0] = I`` (self links);
- ``A[1] = norm(E_in)`` with ``E_in[parent, child] = 1``: every joint gathers from its children;
- ``A[2] = norm(E_out)`` with ``E_out = E_in.T``: every joint gathers from its parent;

where ``norm(E) = E @ diag(1 / colsum(E))`` divides column ``v`` by the number of joints that gather
from ``v`` in that subset (columns with sum 0 stay 0). This is the column normalisation of the
reference CTR-GCN / ST-GCN graph code. For a tree, ``norm(E_in) = E_in`` (each child has one parent)
and ``norm(E_out)[child, parent] = 1 / #children(parent)``.
"""

from __future__ import annotations

import numpy as np

from ..layouts import Layout, get_layout


def column_normalise(e: np.ndarray) -> np.ndarray:
    """(V, V) -> (V, V): divide every column by its sum (zero columns stay zero)."""
    s = e.sum(0)
    return e * np.where(s > 0, 1.0 / np.maximum(s, 1e-12), 0.0)[None, :]


def adjacency(layout: Layout | str) -> np.ndarray:
    """The (3, V, V) float32 stack ``[I, norm(E_in), norm(E_out)]`` for a layout (see module doc)."""
    layout = get_layout(layout)
    v = layout.num_joints
    e_in = np.zeros((v, v), dtype=np.float64)
    for child, parent in layout.edges:
        e_in[parent, child] = 1.0
    return np.stack([np.eye(v), column_normalise(e_in), column_normalise(e_in.T)]).astype(np.float32)
