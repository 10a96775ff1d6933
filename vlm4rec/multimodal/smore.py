"""SMORE (Ong & Khong: "Spectrum-based Modality Representation Fusion Graph Convolutional Network for
Multimodal Recommendation", WSDM 2025, arXiv 2412.14978). Follows the authors' code (kennethorq/SMORE, the
same as MMRec's ``src/models/smore.py`` and ``src/configs/model/SMORE.yaml``): one image and one text
modality.

1. Spectral modality fusion: each modality's feature is projected to the embedding size and moved to the
   frequency domain (rFFT over the feature axis, orthonormal). A learnable complex filter per modality
   denoises its spectrum (uni-modal views); the element-wise product of the (unfiltered) spectra times a
   learnable fused filter is the cross-modal view (a circular convolution of the modalities in feature
   space); the inverse rFFT returns both to the feature domain. See :func:`spectral_fusion`.
2. Modality-specific gating of the ID embeddings: item view v = e_i * sigmoid(W_v x_v + b_v) per modality
   and for the fused feature.
3. Item-item graphs: per modality each item's ``image_knn_k`` / ``text_knn_k`` most cosine-similar items,
   the item itself among them (the reference's top-k), weighted by the cosine, normalised D^-1/2 S D^-1/2;
   the fusion graph is their element-wise maximum. Each view is convolved ``item_layers`` times over its
   graph; user views are the normalised user-item matrix times the item views. The behavioural view is
   LightGCN over the user-item graph. New items (``unseen_items="content"``): the graphs are built from
   every item's features (``content_graph="transductive"``, the reference's form) or from the warm items'
   only, each new item inserted at scoring by its nearest warm items (``"inductive"``).
4. Modality-aware preference: each uni-modal view is weighted by a softmax attention over the embedding
   axis computed from the fusion view; a sigmoid preference gate from the behavioural view (with
   ``dropout``) scales every view; side = mean of the gated views; final = behavioural + side.
5. Loss: BPR on the final embeddings + ``l2`` * the L2 term of the batch's final embeddings (the
   reference's ``reg_weight``, 0.5 * squared norms / batch) + ``cl_weight`` * (InfoNCE(side, behavioural)
   over the batch's positive items + the same over its users), temperature ``temperature``.
6. Learning rate decayed by 0.96^(epoch / 50) (``lr_decay``, the reference's ``learning_rate_scheduler``).
7. ``init="reference"``: Xavier-uniform user and item tables, torch's default for every linear layer,
   filters drawn from N(0, 1); ``init="normal"`` (fast regime): N(0, 0.1^2) tables, Xavier-uniform linear
   layers with zero bias, identity filters.

Roles: the modality named ``image_modality`` (the study's ``image`` representation) is the image, the
other one the text; SMORE takes exactly these two (a one-modality cell is not SMORE).

Deviations from the reference code: the features are L2-normalised rows, fixed inputs unless
``finetune_features`` (the reference fine-tunes the raw tables: ``from_pretrained(freeze=False)``); a
non-positive cosine among an item's top-k is dropped (the reference keeps it as a negative weight, which
can make a degree non-positive) and an item without the modality has no edges; the InfoNCE terms use the
first :data:`INFO_NCE_ROWS` triples of each (shuffled) batch, the reference batch size, so that they see as
many in-batch negatives as in the paper when batches are larger (the fast regime); the filters have no
imaginary part at the two bins that are real for a real signal (see :func:`real_signal_filter`; the
inverse rFFT ignores those parts, so the views are the reference's); the L2 term is divided by the batch's
own length, where the reference divides by the configured batch size also for an epoch's shorter last
batch.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from vlm4rec.methods import L2Norm, SMOREConfig
from vlm4rec.multimodal.graphs import GraphOperator, knn_graph, max_fusion, warm_items, warm_rows
from vlm4rec.multimodal.lightgcn import LightGCN, LightGCNModel
from vlm4rec.layers import LinearInit, linear, rows
from vlm4rec.multimodal.bpr import ContentFeatures, Init, bpr_rows_loss, dropout, info_nce, l2_penalty

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
    ``fused_filter``: (d // 2 + 1, 2). Returns ([irfft(W_m rfft(x_m))], irfft(W_f prod_m rfft(x_m))),
    orthonormal transforms, as the reference's ``spectrum_convolution``: each filter is a circular
    convolution with the kernel irfft(W) and the fusion is the circular convolution of the (unfiltered)
    modalities and the fused kernel, divided by sqrt(d)^(M - 1). Identity filters leave the modalities
    unchanged.
    """
    dim = features[0].shape[-1]
    spectra = [torch.fft.rfft(x, dim=-1, norm="ortho") for x in features]
    denoised = [torch.fft.irfft(s * real_signal_filter(w, dim), n=dim, dim=-1, norm="ortho")
                for s, w in zip(spectra, modality_filters)]
    product = spectra[0]
    for spectrum in spectra[1:]:
        product = product * spectrum
    fused = torch.fft.irfft(product * real_signal_filter(fused_filter, dim), n=dim, dim=-1, norm="ortho")
    return denoised, fused


def gate(dim: int, generator: torch.Generator, init: LinearInit) -> nn.Sequential:
    """sigmoid(W x + b)."""
    return nn.Sequential(linear(dim, dim, generator, init=init), nn.Sigmoid())


def attention_query(dim: int, generator: torch.Generator, init: LinearInit) -> nn.Sequential:
    """W_2 tanh(W_1 x + b_1), the modality-aware preference query."""
    return nn.Sequential(linear(dim, dim, generator, init=init), nn.Tanh(),
                         linear(dim, dim, generator, bias=False, init=init))


def view_graphs(graphs: list[sp.csr_matrix], device: torch.device) -> list[GraphOperator]:
    """The item-item graph of each modality and their max-fusion graph, as operators."""
    return [GraphOperator(g, device) for g in graphs] + [GraphOperator(max_fusion(graphs), device)]


class SmoreModel(LightGCNModel):
    """Behavioural LightGCN view plus gated, spectrally fused modality views over item-item graphs."""

    def __init__(self, history: sp.csr_matrix, features: ContentFeatures, dim: int, layers: int,
                 item_layers: int, knn_ks: list[int], l2: float, cl_weight: float, temperature: float,
                 dropout: float, generator: torch.Generator, device: torch.device, init: Init,
                 l2_norm: L2Norm = "squared", warm: np.ndarray | None = None):
        super().__init__(history, dim, layers, l2, generator, device, init, l2_norm)
        self.features, self.generator = features, generator
        self.item_layers, self.cl_weight, self.temperature, self.dropout = item_layers, cl_weight, temperature, dropout
        n_views = len(features) + 1  # every modality, then the fusion
        graphs = [knn_graph(x, k, weighted=True, self_loops=True, warm=warm)
                  for x, k in zip(features.initial(), knn_ks)]
        self.scoring_item_graphs = view_graphs(graphs, device)
        self.item_graphs = self.scoring_item_graphs if warm is None else view_graphs(
            [warm_rows(g, warm) for g in graphs], device)
        self.user_items = GraphOperator(self.adjacency.matrix[:self.n_users, self.n_users:], device)
        linear_init: LinearInit = "torch" if init == "reference" else "xavier_uniform"
        self.projections = nn.ModuleList(linear(x.shape[1], dim, generator, init=linear_init)
                                         for x in features.matrices())
        if init == "reference":  # the reference draws its complex weights from N(0, 1)
            self.modality_filters = nn.Parameter(torch.randn((len(features), dim // 2 + 1, 2), generator=generator))
            self.fused_filter = nn.Parameter(torch.randn((dim // 2 + 1, 2), generator=generator))
        else:
            self.modality_filters = nn.Parameter(identity_filters(len(features), dim))
            self.fused_filter = nn.Parameter(identity_filters(1, dim)[0])
        self.id_gates = nn.ModuleList(gate(dim, generator, linear_init) for _ in range(n_views))
        self.queries = nn.ModuleList(attention_query(dim, generator, linear_init) for _ in features.matrices())
        self.preference_gates = nn.ModuleList(gate(dim, generator, linear_init) for _ in range(n_views))

    def views(self, item_graphs: list[GraphOperator]) -> tuple[torch.Tensor, torch.Tensor]:
        """(behavioural, side) embeddings of all users then all items, the item views over ``item_graphs``."""
        behavioural = torch.cat(self.propagate(self.adjacency))
        denoised, fused = spectral_fusion(self.features.projected(self.projections), self.modality_filters,
                                          self.fused_filter)
        item_ids = self.ego[self.n_users:]
        item_views = []
        for feature, id_gate, graph in zip(denoised + [fused], self.id_gates, item_graphs):
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
        behavioural, side = self.views(self.item_graphs)
        final = behavioural + side
        items = (self.n_users + positives, self.n_users + negatives)
        loss = bpr_rows_loss(final, final, users, *items) + self.l2 * l2_penalty(final, users, *items,
                                                                                 norm=self.l2_norm)
        if self.cl_weight > 0:
            u, i = users[:INFO_NCE_ROWS], self.n_users + positives[:INFO_NCE_ROWS]
            loss = loss + self.cl_weight * (info_nce(rows(side, i), rows(behavioural, i), self.temperature)
                                            + info_nce(rows(side, u), rows(behavioural, u), self.temperature))
        return loss

    def vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        behavioural, side = self.views(self.scoring_item_graphs)
        final = behavioural + side
        return final[:self.n_users], final[self.n_users:]


class SMORE(LightGCN):
    """SMORE with one image and one text modality ``{name: (n_items, d) float32}``.

    ``layers``             user-item LightGCN layers (reference grid: 3, 4)
    ``item_layers``        item-item graph convolutions per view (reference: 1)
    ``image_knn_k``        neighbours per item in the image graph, itself included (reference grid: 10, 15, 20, 40)
    ``text_knn_k``         the same in the text graph (reference grid: 10, 15, 20, 40)
    ``cl_weight``          weight of the InfoNCE terms (reference: 0.01)
    ``temperature``        InfoNCE temperature (reference: 0.2)
    ``dropout``            dropout on the preference gates (reference grid: 0, 0.1)
    ``image_modality``     the name of the image modality; the other modality is the text
    ``finetune_features``  train the normalised feature tables too (the reference does)
    Training parameters: :class:`~vlm4rec.multimodal.bpr.BPRRecommender` (``l2``: on the final
    embeddings of the batch, the reference's ``reg_weight``, grid 1e-5, 1e-4; ``lr_decay`` 0.96 by default).
    """

    name = "smore"
    Config = SMOREConfig

    def __init__(self, modalities: Mapping[str, np.ndarray], **settings: Any):
        super().__init__(**settings)
        image_modality = self.image_modality
        if len(modalities) != 2 or image_modality not in modalities:
            raise ValueError(f"SMORE takes one image modality (named {image_modality!r}) and one text modality, "
                             f"got {sorted(modalities)}")
        text = next(name for name in modalities if name != image_modality)
        self.modalities = {image_modality: modalities[image_modality], text: modalities[text]}  # image first

    def build(self, history: sp.csr_matrix, generator: torch.Generator, device: torch.device) -> SmoreModel:
        features = ContentFeatures(self.modalities, history.shape[1], trainable=self.finetune_features)
        return SmoreModel(history, features, self.dim, self.layers, self.item_layers,
                          [self.image_knn_k, self.text_knn_k], self.l2, self.cl_weight, self.temperature,
                          self.dropout, generator, device, self.init, self.l2_norm,
                          warm_items(history, self.content_graph)).to(device)
