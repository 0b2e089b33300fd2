"""The reward adapters on the tiny real scorer: call conventions, inputs, threads, pickling, lazy loading."""

import inspect
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import noise_image
from PIL import Image

from vq_reward import ImageInputError, VisualQualityScorer
from vq_reward.rewards import QualityReward, TrlQualityReward, completion_text, default_device


def pil_batch(count: int, seed: int = 0) -> list[Image.Image]:
    return [noise_image(56 + 28 * (i % 3), 56, seed=seed + i) for i in range(count)]


def unit_tensor(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 for image in images])


def test_as_reward_follows_the_ddpo_flow_grpo_convention(scorer):
    images = [noise_image(64, 64, seed=s) for s in range(3)]
    reward_fn = scorer.as_reward()
    scores, info = reward_fn(unit_tensor(images), ["a prompt"] * 3, [{}] * 3)
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32 and scores.shape == (3,)
    np.testing.assert_array_equal(scores, scorer.score(images).numpy())
    assert info["probs"].shape == (3, 5) and info["digit_mass"].shape == (3,)
    assert list(inspect.signature(reward_fn).parameters) == ["images", "prompts", "metadata"]
    assert reward_fn.__name__ == "visual_quality" and not isinstance(reward_fn, torch.nn.Module)


def test_as_reward_takes_every_loop_s_image_format(scorer):
    images = [noise_image(64, 64, seed=s) for s in range(2)]
    expected = scorer.score(images).numpy()
    unit = unit_tensor(images)
    formats = {
        "torch [0,1] (output_type='pt')": (scorer.as_reward(), unit),
        "torch [-1,1] (raw VAE decode)": (scorer.as_reward(input_range=(-1, 1)), unit * 2 - 1),
        "numpy NHWC [0,1] (output_type='np')": (scorer.as_reward(), unit.permute(0, 2, 3, 1).numpy()),
        "PIL list (output_type='pil')": (scorer.as_reward(), images),
    }
    for name, (reward_fn, batch) in formats.items():
        scores, _ = reward_fn(batch, None, None)
        assert np.abs(scores - expected).max() <= 1e-4, name


def test_undeclared_minus_one_to_one_input_is_refused_with_the_fix(scorer):
    with pytest.raises(ImageInputError, match=r"input_range=\(-1, 1\) for raw VAE output"):
        scorer.as_reward()(torch.rand(1, 3, 56, 56) * 2 - 1, None, None)


def test_rescale_maps_one_to_five_onto_zero_to_one(scorer):
    batch = unit_tensor([noise_image(64, 64, seed=s) for s in range(2)])
    raw, _ = scorer.as_reward()(batch, None, None)
    unit, _ = scorer.as_reward(rescale=True)(batch, None, None)
    np.testing.assert_allclose(unit, (raw - 1) / 4, rtol=1e-6)
    assert unit.dtype == np.float32 and ((unit >= 0) & (unit <= 1)).all()


def test_concurrent_calls_from_worker_threads_give_the_sequential_results(scorer):
    # Flow-GRPO and DDPO submit reward calls to a thread pool while sampling goes on.
    batches = [pil_batch(3, seed=10 * i) for i in range(8)]
    reward_fn = scorer.as_reward()
    sequential = [reward_fn(batch, None, None)[0] for batch in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda batch: reward_fn(batch, None, None)[0], batches))
    for alone, together in zip(sequential, concurrent, strict=True):
        np.testing.assert_array_equal(alone, together)


def test_rewards_pickle_without_weights_and_load_lazily(scorer, tiny_path):
    weights = (tiny_path / "model.safetensors").stat().st_size
    images = pil_batch(2)
    for reward in (scorer.as_reward(rescale=True), scorer.as_trl_reward(), scorer.as_differentiable_reward()):
        blob = pickle.dumps(reward)
        assert len(blob) < 4096 < weights  # the recipe (model id, load arguments), not the weights
        copy = pickle.loads(blob)
        assert copy.source.loaded is None  # nothing loaded until the first call
        assert copy.__name__ == "visual_quality"
    trl_copy = pickle.loads(pickle.dumps(scorer.as_trl_reward()))
    assert trl_copy([None] * 2, ["a", "b"], image=images) == pytest.approx(scorer.score(images).tolist(), abs=1e-6)
    loaded = trl_copy.source.loaded
    assert loaded is not scorer and loaded.device == default_device() == torch.device("cpu")
    reward_copy = pickle.loads(pickle.dumps(scorer.as_reward(rescale=True)))
    assert reward_copy.rescale and reward_copy.input_range == (0.0, 1.0)


def test_from_pretrained_records_the_load_recipe_without_the_device(tiny_path):
    scorer = VisualQualityScorer.from_pretrained(tiny_path, max_pixels=56 * 56 * 4, batch_size=3)
    recipe = scorer.recipe()
    assert recipe.model == str(tiny_path.resolve())
    assert recipe.load["dtype"] is None  # resolved per device when a copy loads: bf16 on CUDA
    assert recipe.load["max_pixels"] == 56 * 56 * 4 and recipe.settings["batch_size"] == 3
    assert "device" not in recipe.load and "device" not in recipe.settings
    copy = pickle.loads(pickle.dumps(scorer.as_reward())).source.get()
    assert (copy.max_pixels, copy.batch_size) == (scorer.max_pixels, 3)


def test_a_scorer_built_from_objects_says_why_its_reward_cannot_pickle(scorer):
    handmade = VisualQualityScorer(scorer.model, scorer.processor)
    with pytest.raises(TypeError, match=r"built from a model object, so there is no recipe.*from_pretrained"):
        pickle.dumps(handmade.as_reward())


def test_a_reward_built_from_a_model_id_loads_on_first_call(tiny_path, scorer):
    reward = TrlQualityReward(tiny_path, image_key="image")
    assert reward.source.loaded is None
    images = pil_batch(2)
    assert reward(["p", "q"], ["a", "b"], image=images) == pytest.approx(scorer.score(images).tolist(), abs=1e-6)
    assert reward.source.loaded is not None
    budgeted = pickle.loads(pickle.dumps(QualityReward(tiny_path, load_kwargs={"max_pixels": 56 * 56 * 2})))
    assert budgeted.source.get().max_pixels == 56 * 56 * 2  # the load arguments survive pickling
    with pytest.raises(ValueError, match="only apply when the reward loads the scorer from a model name"):
        QualityReward(scorer, load_kwargs={"max_pixels": 56 * 56 * 2})


def test_trl_reward_scores_an_image_column_in_trl_s_calling_convention(scorer):
    reward = scorer.as_trl_reward(image_key="image")
    assert not isinstance(reward, torch.nn.Module) and reward.__name__ == "visual_quality"
    images = pil_batch(3)
    completions = [[{"role": "assistant", "content": f"answer {i}"}] for i in range(4)]
    logged: dict[str, float] = {}
    rewards = reward(
        prompts=[[{"role": "user", "content": "rate"}]] * 4,
        completions=completions,
        completion_ids=[[1, 2]] * 4,
        image=[images[0], None, images[1], [images[2]]],  # None: no image; [image]: an "images"-style row
        trainer_state=None,
        log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    expected = scorer.score(images).tolist()
    assert rewards[1] is None and all(isinstance(value, float) for i, value in enumerate(rewards) if i != 1)
    assert [rewards[0], rewards[2], rewards[3]] == pytest.approx(expected, abs=1e-6)
    assert 0 < logged["visual_quality/digit_mass"] < 1


def test_trl_reward_renders_completions_with_image_fn(scorer):
    seen: dict = {}

    def render(completions: list[str], **kwargs) -> list[Image.Image | None]:
        seen.update(completions=completions, keys=sorted(kwargs))
        return [None if not text else noise_image(56, 56, seed=len(text)) for text in completions]

    reward = scorer.as_trl_reward(image_fn=render)
    completions = [[{"role": "assistant", "content": "a red fox"}], "", "plain text completion"]
    rewards = reward(["p1", "p2", "p3"], completions, None, mos=[1, 2, 3])
    assert seen == {"completions": ["a red fox", "", "plain text completion"], "keys": ["mos", "prompts"]}
    assert rewards[1] is None
    expected = scorer.score([noise_image(56, 56, seed=9), noise_image(56, 56, seed=21)]).tolist()
    assert [rewards[0], rewards[2]] == pytest.approx(expected, abs=1e-6)


def test_trl_reward_explains_a_missing_column_and_a_wrong_count(scorer):
    with pytest.raises(KeyError, match=r"image_key='image' is not among .*\['mos', 'picture'\]"):
        scorer.as_trl_reward()(["p"], ["c"], picture=[None], mos=[3.0], log_metric=print)
    with pytest.raises(ValueError, match="image_fn 'two' gave 2 images for 1 completions"):

        def two(completions, **kwargs):
            return [None, None]

        scorer.as_trl_reward(image_fn=two)(["p"], ["c"])
    with pytest.raises(ImageInputError, match="holds 2 images; .* image_fn="):
        scorer.as_trl_reward(image_key="images")(["p"], ["c"], images=[pil_batch(2)])
    with pytest.raises(ValueError, match="needs image_key .* or image_fn"):
        scorer.as_trl_reward(image_key=None)


def test_trl_reward_with_nothing_to_score_returns_nones_without_loading(tiny_path):
    reward = TrlQualityReward(tiny_path)
    assert reward(["p", "q"], ["a", "b"], image=[None, None]) == [None, None]
    assert reward.source.loaded is None


def test_completion_text_reads_every_completion_shape():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "chat"}]) == "chat"
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]}]
    assert completion_text(parts) == "a b"


def test_offload_and_onload_keep_scores_and_restore_placement(tiny_path):
    scorer = VisualQualityScorer.from_pretrained(tiny_path)
    images = pil_batch(2)
    before = scorer.score(images)
    assert scorer.offload() is scorer and scorer.device.type == "cpu"  # on CPU already: nothing to move
    assert scorer.onload() is scorer and scorer.device.type == "cpu"
    assert torch.equal(scorer.onload("cpu").score(images), before)
    scorer.backend._onload_device = torch.device("cpu")  # as offload() records it from an accelerator
    scorer.onload()
    assert scorer.backend._onload_device is None  # consumed: a second onload() leaves the model where it is


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_offload_frees_the_gpu_and_onload_brings_it_back(tiny_path):
    scorer = VisualQualityScorer.from_pretrained(tiny_path, device="cuda")
    images = pil_batch(2)
    before = scorer.score(images)
    assert scorer.model.dtype == torch.bfloat16  # bf16 by default on CUDA
    scorer.offload()
    assert scorer.device.type == "cpu" and scorer.model.dtype == torch.bfloat16
    scorer.onload()
    assert scorer.device.type == "cuda"
    assert torch.equal(scorer.score(images), before)


def test_rewards_reject_an_empty_range():
    with pytest.raises(ValueError, match=r"input_range=\(1, 1\) must be finite \(low, high\) with low < high"):
        QualityReward("unused-model-id", input_range=(1, 1))


def test_a_pickled_reward_scores_exactly_like_the_original(tiny_path, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(tiny_path, tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    original = VisualQualityScorer.from_pretrained("model")  # a relative path
    original.question = "How sharp is this photo?"  # settings changed after loading travel with the copy
    original.max_input_pixels = 10**6
    reward = original.as_reward()
    blob = pickle.dumps(reward)
    monkeypatch.chdir("/")  # the copy is loaded from another folder
    copy = pickle.loads(blob)
    images = pil_batch(3)
    assert np.array_equal(copy(images)[0], reward(images)[0])
    loaded = copy.source.get()
    assert (loaded.question, loaded.max_input_pixels) == ("How sharp is this photo?", 10**6)
