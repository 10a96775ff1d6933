"""SMORE (Ong & Khong: "Spectrum-based Modality Representation Fusion Graph Convolutional Network for
Multimodal Recommendation", WSDM 2025, arXiv 2412.14978).

1. Spectral modality fusion: each modality's feature is projected to the embedding size and
   moved to the frequency domain (rFFT over the feature axis, orthonormal). A learnable complex filter per
   modality denoises its spectrum (uni-modal views); the element-wise product of the filtered spectra times
   a learnable fused filter is the cross-modal view (a circular convolution of the modalities in feature
   space); the inverse rFFT returns both to the feature domain. See :func:`spectral_fusion`.
2. Modality-specific gating of the ID embeddings: item view v = e_i * sigmoid(W_v x_v + b_v) per modality
   and for the fused feature.
3. Item-item graphs: per modality each item's ``knn_k`` most cosine-similar items, weighted
   by the cosine, normalised D^-1/2 S D^-1/2; the fusion graph is their element-wise maximum. Each view
   is convolved ``item_layers`` times over its graph; user views are the normalised user-item matrix
   times the item views. The behavioural view is LightGCN over the user-item graph.
4. Modality-aware preference: each uni-modal view is weighted by a softmax attention over
   the embedding axis computed from the fusion view; a sigmoid preference gate from the behavioural view
   (with ``dropout``) scales every view; side = mean of the gated views; final = behavioural + side.
5. Loss: BPR on the final embeddings + ``l2`` * the L2 term of the batch's final embeddings (as the
   reference code) + ``cl_weight`` * (InfoNCE(side, behavioural) over the batch's positive items + the
   same over its users), temperature ``temperature``.

Deliberate simplifications: the features are fixed L2-normalised inputs (the reference code fine-tunes
the raw feature tables); one ``knn_k`` for every modality (the reference tunes image and text k
separately); an item is not its own neighbour (the reference top-k includes the item itself); filters
start at the identity (the reference draws them from N(0, 1)); the InfoNCE terms use the first
:data:`INFO_NCE_ROWS` triples of each (shuffled) batch, the reference batch size, so that they see as many
in-batch negatives as in the paper while batches here are larger; the fused spectrum multiplies the
filtered spectra (the reference code multiplies the unfiltered ones; with element-wise filters the two
differ only in how the product filter is parameterised), and the filters have no imaginary part at the
two bins that are real for a real signal (see :func:`real_signal_filter`), so that the fusion is exactly a
circular convolution. Any number of modalities works; with one, the fusion view is a second filtered copy
of it on the same graph.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from vlm4rec.multimodal.graphs import GraphOperator, knn_graph, max_fusion
from vlm4rec.multimodal.lightgcn import LightGCN, LightGCNModel
from vlm4rec.multimodal.training import ContentFeatures, bpr_loss, dropout, info_nce, l2_penalty, linear, rows

INFO_NCE_ROWS = 2048


def identity_filters(count: int, dim: int) -> torch.Tensor:
    """``count`` complex filters for a ``dim``-long real signal, all 1 + 0j, stored as real (count, F, 2)."""
    filters = torch.zeros(count, dim // 2 + 1, 2)
    filters[..., 0] = 1.0
    return filters


def real_signal_filter(weights: torch.Tensor, dim: int) -> torch.Tensor:
    """The complex filter stored as real (..., dim // 2 + 1, 2), with no imaginary part at the bins that are
    real for every real signal (frequency 0 and, for even ``dim``, dim / 2). Filtered spectra then stay
    spectra of real signals, so that a product of them is the spectrum of a circular convolution (irfft
    would drop those imaginary parts of one filtered spectrum, but not their cross terms in a product)."""
    imaginary = torch.ones(weights.shape[-2], dtype=weights.dtype, device=weights.device)
    imaginary[0] = 0.0
    if dim % 2 == 0:
        imaginary[-1] = 0.0
    return torch.complex(weights[..., 0], weights[..., 1] * imaginary)


def spectral_fusion(features: list[torch.Tensor], modality_filters: torch.Tensor,
                    fused_filter: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Denoised modalities and their spectral fusion (SMORE's spectrum fusion).

    ``features``: M tensors (n, d); ``modality_filters``: (M, d // 2 + 1, 2) real view of complex filters;
    ``fused_filter``: (d // 2 + 1, 2). Returns ([irfft(W_m rfft(x_m))], irfft(W_f prod_m W_m rfft(x_m))),
    orthonormal transforms: each filter is a circular convolution with the kernel irfft(W) and the fusion
    is the circular convolution of the denoised modalities and the fused kernel, divided by sqrt(d)^(M - 1).
    Identity filters leave the modalities unchanged.
    """
    dim = features[0].shape[-1]
    spectra = [torch.fft.rfft(x, dim=-1, norm="ortho") * real_signal_filter(w, dim)
               for x, w in zip(features, modality_filters)]
    denoised = [torch.fft.irfft(s, n=dim, dim=-1, norm="ortho") for s in spectra]
    product = spectra[0]
    for spectrum in spectra[1:]:
        product = product * spectrum
    fused = torch.fft.irfft(product * real_signal_filter(fused_filter, dim), n=dim, dim=-1, norm="ortho")
    return denoised, fused


def gate(dim: int, generator: torch.Generator) -> nn.Sequential:
    """sigmoid(W x + b)."""
    return nn.Sequential(linear(dim, dim, generator), nn.Sigmoid())


def attention_query(dim: int, generator: torch.Generator) -> nn.Sequential:
    """W_2 tanh(W_1 x + b_1), the modality-aware preference query."""
    return nn.Sequential(linear(dim, dim, generator), nn.Tanh(), linear(dim, dim, generator, bias=False))


class SmoreModel(LightGCNModel):
    """Behavioural LightGCN view plus gated, spectrally fused modality views over item-item graphs."""

    def __init__(self, history: sp.csr_matrix, features: ContentFeatures, dim: int, layers: int,
                 item_layers: int, knn_k: int, l2: float, cl_weight: float, temperature: float, dropout: float,
                 generator: torch.Generator, device: torch.device):
        super().__init__(history, dim, layers, l2, generator, device)
        self.features, self.generator = features, generator
        self.item_layers, self.cl_weight, self.temperature, self.dropout = item_layers, cl_weight, temperature, dropout
        n_views = len(features) + 1  # every modality, then the fusion
        graphs = [knn_graph(x.numpy(), knn_k, weighted=True) for x in features.matrices()]
        self.item_graphs = [GraphOperator(g, device) for g in graphs] + [GraphOperator(max_fusion(graphs), device)]
        self.user_items = GraphOperator(self.adjacency.matrix[:self.n_users, self.n_users:], device)
        self.projections = nn.ModuleList(linear(x.shape[1], dim, generator) for x in features.matrices())
        self.modality_filters = nn.Parameter(identity_filters(len(features), dim))
        self.fused_filter = nn.Parameter(identity_filters(1, dim)[0])
        self.id_gates = nn.ModuleList(gate(dim, generator) for _ in range(n_views))
        self.queries = nn.ModuleList(attention_query(dim, generator) for _ in features.matrices())
        self.preference_gates = nn.ModuleList(gate(dim, generator) for _ in range(n_views))

    def views(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(behavioural, side) embeddings of all users then all items."""
        behavioural = torch.cat(self.propagate(self.adjacency))
        denoised, fused = spectral_fusion(self.features.projected(self.projections), self.modality_filters,
                                          self.fused_filter)
        item_ids = self.ego[self.n_users:]
        item_views = []
        for feature, id_gate, graph in zip(denoised + [fused], self.id_gates, self.item_graphs):
            items = item_ids * id_gate(feature)
            for _ in range(self.item_layers):
                items = graph @ items
            item_views.append(items)
        user_views = (self.user_items @ torch.cat(item_views, dim=1)).split(item_ids.shape[1], dim=1)  # one pass
        *modal, fusion = [torch.cat(pair) for pair in zip(user_views, item_views)]
        attended = [torch.softmax(query(fusion), dim=-1) * view for query, view in zip(self.queries, modal)]
        preferences = [dropout(g(behavioural), self.dropout, self.generator, self.training)
                       for g in self.preference_gates]
        side = torch.stack([p * v for p, v in zip(preferences, attended + [fusion])]).mean(dim=0)
        return behavioural, side

    def loss(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        behavioural, side = self.views()
        final = behavioural + side
        batch = [rows(final, users), rows(final, self.n_users + positives), rows(final, self.n_users + negatives)]
        loss = bpr_loss(*batch) + self.l2 * l2_penalty(*batch)
        if self.cl_weight > 0:
            u, i = users[:INFO_NCE_ROWS], self.n_users + positives[:INFO_NCE_ROWS]
            loss = loss + self.cl_weight * (info_nce(rows(side, i), rows(behavioural, i), self.temperature)
                                            + info_nce(rows(side, u), rows(behavioural, u), self.temperature))
        return loss

    def vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        behavioural, side = self.views()
        final = behavioural + side
        return final[:self.n_users], final[self.n_users:]


class SMORE(LightGCN):
    """SMORE with one or more modalities ``{name: (n_items, d) float32}`` (the paper: text and image).

    ``layers``       user-item LightGCN layers (reference grid: 3, 4)
    ``item_layers``  item-item graph convolutions per view (reference: 1)
    ``knn_k``        neighbours per item in each modality graph (reference grid: 10, 15, 20, 40)
    ``cl_weight``    weight of the InfoNCE terms (reference: 0.01)
    ``temperature``  InfoNCE temperature (reference: 0.2)
    ``dropout``      dropout on the preference gates (reference grid: 0, 0.1)
    Training parameters: :class:`~vlm4rec.multimodal.training.BPRRecommender` (``l2``: on the final
    embeddings of the batch, the reference's ``reg_weight``).
    """

    name = "smore"

    def __init__(self, modalities: Mapping[str, np.ndarray], layers: int = 3, item_layers: int = 1, knn_k: int = 10,
                 cl_weight: float = 0.01, temperature: float = 0.2, dropout: float = 0.1, **training):
        super().__init__(layers=layers, **training)
        if not modalities:
            raise ValueError("SMORE needs at least one modality")
        if item_layers < 1 or knn_k < 1 or cl_weight < 0 or temperature <= 0 or not 0 <= dropout < 1:
            raise ValueError(f"need item_layers >= 1, knn_k >= 1, cl_weight >= 0, temperature > 0, "
                             f"0 <= dropout < 1; got {item_layers}, {knn_k}, {cl_weight}, {temperature}, {dropout}")
        self.modalities = dict(modalities)
        self.item_layers, self.knn_k, self.cl_weight, self.temperature, self.dropout = (
            item_layers, knn_k, cl_weight, temperature, dropout)

    def build(self, history: sp.csr_matrix, generator: torch.Generator, device: torch.device) -> SmoreModel:
        features = ContentFeatures(self.modalities, history.shape[1])
        return SmoreModel(history, features, self.dim, self.layers, self.item_layers, self.knn_k, self.l2,
                          self.cl_weight, self.temperature, self.dropout, generator, device).to(device)
