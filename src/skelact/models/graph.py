"""The 3-subset skeleton adjacency of ST-GCN's "spatial" partition, built from any :class:`Layout`.

Convention: a graph convolution computes ``out[..., u] = sum_v A[k, u, v] * x[..., v]``, i.e. row ``u``
of ``A[k]`` says from which joints ``u`` gathers. The layout's edges are ``(child, parent)``; the
*inward* direction is child -> parent (towards the centre joint).

- ``A[0] = I`` (self links);
- ``A[1] = norm(E_in)`` with ``E_in[parent, child] = 1``: every joint gathers from its children;
- ``A[2] = norm(E_out)`` with ``E_out = E_in.T``: every joint gathers from its parent;

where ``norm(E) = E @ diag(1 / colsum(E))`` divides column ``v`` by the number of joints that gather
from ``v`` in that subset (columns with sum 0 stay 0). This is the column normalisation of the
reference CTR-GCN graph code (``strategy="ctrgcn"``, the default). For a tree, ``norm(E_in) = E_in``
(each child has one parent) and ``norm(E_out)[child, parent] = 1 / #children(parent)``.

``strategy="stgcn"`` is the original ST-GCN "spatial" partition (root / centripetal / centrifugal by
distance to the centre): the same three neighbour sets, but every entry of row ``u`` is divided by the
degree of ``u`` counting itself, ``d_u = 1 + #children(u) + [u has a parent]``, i.e. the weights of the
three subsets together average over ``u``'s neighbourhood.
"""

from __future__ import annotations

import numpy as np

from ..layouts import Layout, get_layout


def column_normalise(e: np.ndarray) -> np.ndarray:
    """(V, V) -> (V, V): divide every column by its sum (zero columns stay zero)."""
    s = e.sum(0)
    return e * np.where(s > 0, 1.0 / np.maximum(s, 1e-12), 0.0)[None, :]


def adjacency(layout: Layout | str, strategy: str = "ctrgcn") -> np.ndarray:
    """The (3, V, V) float32 stack ``[self, inward, outward]`` for a layout (see module doc)."""
    layout = get_layout(layout)
    v = layout.num_joints
    e_in = np.zeros((v, v), dtype=np.float64)
    for child, parent in layout.edges:
        e_in[parent, child] = 1.0
    if strategy == "ctrgcn":
        a = np.stack([np.eye(v), column_normalise(e_in), column_normalise(e_in.T)])
    elif strategy == "stgcn":
        a = np.stack([np.eye(v), e_in, e_in.T])
        a /= a.sum((0, 2))[None, :, None]  # row u / degree of u (itself included)
    else:
        raise ValueError(f"unknown adjacency strategy {strategy!r}; known: ctrgcn, stgcn")
    return a.astype(np.float32)
