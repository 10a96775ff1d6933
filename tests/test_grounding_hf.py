"""HFGrounder on tiny random-weight LLaVA and Qwen2-VL checkpoints, saved and loaded like a user's weights."""
import importlib.util

import pytest
from PIL import Image
from skimage import data

from random_models import TINY_LLAVA, TINY_QWEN2_VL, save_random_vlm
from study_params import section
from vlm4rec.errors import StudyError
from vlm4rec.grounding.hf import HFGrounder

# Different sizes (Qwen2-VL: different image-token counts) and prompt lengths, so the batch needs padding.
IMAGES = [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee()), Image.fromarray(data.rocket())]
PROMPTS = ["Describe.", "Describe what is visible in this movie poster, in two sentences please.", "Colours?"]


@pytest.fixture(scope="module", params=[TINY_LLAVA, TINY_QWEN2_VL], ids=lambda spec: spec.name)
def checkpoint(request, tmp_path_factory):
    return save_random_vlm(request.param, tmp_path_factory.mktemp(request.param.name), seed=0)


def hf_params(checkpoint, **changes):
    """``ground.hf`` for the local ``checkpoint``, never contacting the hub, with ``changes``."""
    return section("ground.hf", model=str(checkpoint), local_files_only=True, **changes)


@pytest.fixture(scope="module")
def grounder(checkpoint):
    return HFGrounder(hf_params(checkpoint, max_new_tokens=6, batch_size=3))


def test_batched_generation_equals_one_by_one(grounder):
    batched = grounder.describe(IMAGES, PROMPTS)
    single = [grounder.describe([image], [prompt])[0] for image, prompt in zip(IMAGES, PROMPTS)]
    assert batched == single
    assert len(batched) == 3 and all(isinstance(text, str) for text in batched)
    assert grounder.tokenizer.padding_side == "left"


def test_right_padding_would_corrupt_the_batch(grounder):
    """The equivalence test above can fail: with right padding the padded prompts' outputs change."""
    single = [grounder.describe([image], [prompt])[0] for image, prompt in zip(IMAGES, PROMPTS)]
    grounder.tokenizer.padding_side = "right"
    try:
        assert grounder.describe(IMAGES, PROMPTS) != single
    finally:
        grounder.tokenizer.padding_side = "left"


def test_identity_settings_and_chat_template(grounder, checkpoint):
    assert grounder.model_id.startswith(f"{checkpoint.resolve()}@local-")
    assert grounder.settings() == {"decoding": "greedy", "max_new_tokens": 6, "min_new_tokens": 0,
                                   "dtype": "torch.float32", "load_in_4bit": False}
    text = grounder.chat_text("Describe.")
    assert text.startswith("user: ") and text.endswith("Describe.\nassistant:")


def test_min_new_tokens_fixes_output_length(checkpoint):
    fixed = HFGrounder(hf_params(checkpoint, max_new_tokens=5), min_new_tokens=5)
    inputs = fixed.processor(images=[[IMAGES[0]]], text=[fixed.chat_text("x")], return_tensors="pt")
    output = fixed.model.generate(**inputs, do_sample=False, max_new_tokens=5, min_new_tokens=5)
    assert output.shape[1] - inputs["input_ids"].shape[1] == 5
    with pytest.raises(ValueError, match="min_new_tokens=6 > max_new_tokens=5"):
        HFGrounder(hf_params(checkpoint, max_new_tokens=5), min_new_tokens=6)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_4bit_without_bitsandbytes_is_a_clear_error(checkpoint):
    with pytest.raises(ImportError, match="bitsandbytes"):
        HFGrounder(hf_params(checkpoint, load_in_4bit=True))


def test_a_model_must_be_named():
    with pytest.raises(StudyError, match=r"^the hf grounder needs ground.hf.model"):
        HFGrounder(section("ground.hf"))
