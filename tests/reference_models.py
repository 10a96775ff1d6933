"""The authors' FREEDOM and SMORE classes, imported unmodified from local checkouts, for
``test_multimodal_reference.py`` (nothing of their code is in this repository).

Where the checkouts are: ``$VLM4REC_REFERENCE_DIR/FREEDOM`` and ``$VLM4REC_REFERENCE_DIR/SMORE``, or
``$VLM4REC_REFERENCE_DIR/MMRec`` for either model (it holds both, the same files); each model is imported from
the first of its folders whose ``src/models/<model>.py`` exists. Their code imports its own top-level packages
``common``, ``utils`` and ``models`` from ``src/``: they are importable only while a class is loaded, and
removed from ``sys.modules`` afterwards, so that the two checkouts never mix.

What their constructors need, and nothing more:

- a config (a plain dict: they index it by key) with the features' folder and file names;
- a stand-in for MMRec's training data loader (:class:`HistoryLoader`): the numbers of users and items and
  the interaction matrix;
- their own base class ``GeneralRecommender``, unmodified: it loads the feature tables from ``.npy`` files,
  so the test writes ours there;
- shims (:func:`install_shims`) for what current SciPy dropped, for the ``torch_scatter`` extension this
  project does not install and for ``.cuda()`` on the CPU, installed by monkeypatching for one test, never by
  editing their files.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

REFERENCE_DIR = "VLM4REC_REFERENCE_DIR"
LAYOUT = (f"${REFERENCE_DIR}/FREEDOM (a clone of https://github.com/enoche/FREEDOM) and ${REFERENCE_DIR}/SMORE "
          f"(of https://github.com/kennethorq/SMORE), or ${REFERENCE_DIR}/MMRec (of https://github.com/enoche/MMRec) "
          f"for either")
REPOSITORIES = {"FREEDOM": ("FREEDOM", "MMRec"), "SMORE": ("SMORE", "MMRec")}
THEIR_PACKAGES = ("common", "utils", "models")
FEATURE_FILES = {"image": "image_feat.npy", "text": "text_feat.npy"}


def reference_dir() -> Path | None:
    """The folder named by the environment variable, or None where it is unset or empty."""
    value = os.environ.get(REFERENCE_DIR, "")
    return Path(value) if value else None


def source_folder(model: str) -> Path:
    """The ``src`` folder of the first checkout holding ``models/<model>.py``; a one-line error otherwise."""
    root = Path(os.environ[REFERENCE_DIR])
    candidates = [root / repository / "src" for repository in REPOSITORIES[model]]
    for src in candidates:
        if (src / "models" / f"{model.lower()}.py").is_file():
            return src
    raise FileNotFoundError(f"{REFERENCE_DIR}={root}: no models/{model.lower()}.py under "
                            f"{' or '.join(map(str, candidates))}; expected layout: {LAYOUT}")


def _drop_their_packages() -> dict[str, types.ModuleType]:
    """Remove (and return) every loaded module of the top-level packages their code imports."""
    names = [name for name in sys.modules if name.split(".")[0] in THEIR_PACKAGES]
    return {name: sys.modules.pop(name) for name in names}


def reference_class(model: str) -> type:
    """The class ``model`` ("FREEDOM" or "SMORE") from ``models/<model>.py`` of its checkout, unmodified."""
    src = source_folder(model)
    shadowed = _drop_their_packages()
    sys.path.insert(0, str(src))
    try:
        return getattr(importlib.import_module(f"models.{model.lower()}"), model)
    finally:
        sys.path.remove(str(src))
        _drop_their_packages()
        sys.modules.update(shadowed)


def scatter_add(src: torch.Tensor, index: torch.Tensor, dim: int = -1, dim_size: int | None = None) -> torch.Tensor:
    """``torch_scatter.scatter_add`` for a 1-d ``src``: sums of ``src`` grouped by ``index``."""
    assert src.dim() == 1 and dim in (0, -1), "the shim covers the 1-d case SMORE's get_sparse_laplacian uses"
    size = int(index.max()) + 1 if dim_size is None else dim_size
    return torch.zeros(size, dtype=src.dtype, device=src.device).index_add_(0, index, src)


def dok_update(matrix: sp.dok_matrix, entries: dict) -> None:
    """``dok_matrix._update`` (a private method SciPy removed): store every (row, col) -> value."""
    for key, value in entries.items():
        matrix[key] = value


def install_shims(monkeypatch: pytest.MonkeyPatch) -> None:
    """For one test: SciPy's ``dok_matrix._update`` (FREEDOM's ``get_norm_adj_mat``), the ``torch_scatter``
    extension (SMORE's ``get_sparse_laplacian`` imports it; not a dependency of this project) and a no-op
    ``Tensor.cuda`` (SMORE moves its item graphs with ``.cuda()`` unconditionally; the comparison runs on
    the CPU, where every other tensor of both models is)."""
    monkeypatch.setattr(sp.dok_matrix, "_update", dok_update, raising=False)
    monkeypatch.setitem(sys.modules, "torch_scatter", types.SimpleNamespace(scatter_add=scatter_add))
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)


class HistoryLoader:
    """What their base class and models read from MMRec's ``TrainDataLoader`` (``loader.dataset``, a
    ``RecDataset``): the numbers of users and items and the training interactions as a scipy matrix."""

    def __init__(self, history: sp.csr_matrix):
        self.history = history
        self.dataset = self

    def get_user_num(self) -> int:
        return self.history.shape[0]

    def get_item_num(self) -> int:
        return self.history.shape[1]

    def inter_matrix(self, form: str = "coo") -> sp.spmatrix:
        assert form == "coo", f"their models ask for form='coo', got {form!r}"
        return self.history.tocoo()


def reference_model(model: str, history: sp.csr_matrix, features: dict[str, np.ndarray], data_dir: Path,
                    batch_size: int, **options) -> torch.nn.Module:
    """Their ``model`` on ``history``, its feature tables ``{"image": ..., "text": ...}`` loaded by their base
    class from ``data_dir`` (which also receives the item-graph files they cache), ``options`` their model
    config keys (e.g. ``knn_k``), on the CPU. Call :func:`install_shims` first."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for role, table in features.items():
        np.save(data_dir / FEATURE_FILES[role], np.asarray(table, dtype=np.float32))
    config = {"USER_ID_FIELD": "user_id:token", "ITEM_ID_FIELD": "item_id:token", "NEG_PREFIX": "neg__",
              "train_batch_size": batch_size, "device": torch.device("cpu"), "end2end": False,
              "is_multimodal_model": True, "data_path": f"{data_dir.parent}{os.sep}", "dataset": data_dir.name,
              "vision_feature_file": FEATURE_FILES["image"], "text_feature_file": FEATURE_FILES["text"], **options}
    return reference_class(model)(config, HistoryLoader(history))


def copy_weights(reference: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy ``weights`` (their parameter name -> our tensor) into ``reference``; every parameter of theirs
    must be named, with its shape."""
    parameters = dict(reference.named_parameters())
    assert sorted(weights) == sorted(parameters), f"mapping {sorted(weights)} != theirs {sorted(parameters)}"
    with torch.no_grad():
        for name, value in weights.items():
            assert parameters[name].shape == value.shape, f"{name}: theirs {parameters[name].shape}, ours {value.shape}"
            parameters[name].copy_(value)
