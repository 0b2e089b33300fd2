"""A backend is complete when it is built: the HF backend resolves its model, processor and settings itself, says
how to build an equal one (`source()`), and `build_backend` builds it again; the scorer only wraps it. The default
device is one rule for Python and the command line."""

import logging
import pickle

import pytest
import torch
from conftest import noise_image

from vq_reward import VisualQualityScorer, devices
from vq_reward.backends import Backend, BackendSource
from vq_reward.backends.build import build_backend
from vq_reward.backends.hf import HFBackend


def test_the_hf_backend_is_complete_when_loaded(tiny_path):
    backend = HFBackend.load(tiny_path, max_pixels=56 * 56 * 4)
    assert backend.processor.image_processor.size["longest_edge"] == 56 * 56 * 4
    assert backend.concurrent is False and backend.name == "hf" and backend.device == torch.device("cpu")
    assert not backend.model.training and not any(p.requires_grad for p in backend.model.parameters())
    source = backend.source()
    assert source == BackendSource("hf", str(tiny_path.resolve()), {
        "dtype": None, "attn_implementation": "sdpa", "revision": None, "max_pixels": 56 * 56 * 4})  # fmt: skip
    members = set(Backend.__annotations__) | {name for name in vars(Backend) if not name.startswith("_")}
    assert {"processor", "concurrent", "source"} <= members and all(hasattr(backend, name) for name in members)

    scorer = VisualQualityScorer(backend, batch_size=2)  # the processor comes with the backend
    assert scorer.processor is backend.processor and scorer.max_pixels == 56 * 56 * 4
    recipe = scorer.recipe()
    assert (recipe.model, recipe.load, recipe.backend) == (source.model, source.kwargs, "hf")
    assert recipe.settings["batch_size"] == 2

    images = [noise_image(64, 64, seed=1), noise_image(90, 60, seed=2)]
    again = VisualQualityScorer(build_backend(pickle.loads(pickle.dumps(source)), "cpu"), batch_size=2)
    assert torch.equal(again.score(images), scorer.score(images))
    assert torch.equal(recipe.build("cpu").score(images), scorer.score(images))


def test_the_scorer_sets_nothing_on_its_backend_after_construction(tiny_path):
    scorer = VisualQualityScorer.from_pretrained(tiny_path, readout="first-digit")
    assert not hasattr(scorer, "load_source") and not hasattr(scorer, "backend_args")
    assert scorer.recipe().load == scorer.backend.source().kwargs


def test_a_backend_and_a_model_object_are_both_accepted_with_clear_errors(scorer):
    with pytest.raises(TypeError, match=r"a model object needs its processor"):
        VisualQualityScorer(scorer.model)
    with pytest.raises(ValueError, match=r"the hf backend holds its own processor"):
        VisualQualityScorer(scorer.backend, object())
    assert VisualQualityScorer(scorer.backend, scorer.processor).backend is scorer.backend
    handmade = VisualQualityScorer(scorer.model, scorer.processor)
    with pytest.raises(TypeError, match=r"built from a model object, so there is no recipe"):
        handmade.recipe()


def test_build_backend_refuses_an_unknown_backend():
    with pytest.raises(ValueError, match=r"backend must be 'hf', 'vllm' or 'server', got 'tpu'"):
        build_backend(BackendSource("tpu", "tiny"))


def test_one_device_rule_for_python_and_the_cli_said_once(monkeypatch, caplog):
    monkeypatch.setattr(devices, "_announced", False)
    caplog.set_level(logging.WARNING, logger="vq_reward")
    assert devices.choose_device("cpu") == torch.device("cpu") and not caplog.records  # given: nothing to say
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.choose_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.choose_device() == torch.device("cpu")
    assert [record.getMessage() for record in caplog.records] == [
        "vq_reward: no device given, using cuda (CUDA is available); device= (or --device) chooses."
    ]  # once per process


def test_from_pretrained_defaults_to_the_rule(tiny_path, monkeypatch):
    chosen = []
    rule = devices.choose_device
    monkeypatch.setattr(devices, "choose_device", lambda device=None: chosen.append(device) or rule(device))
    scorer = VisualQualityScorer.from_pretrained(tiny_path)
    assert chosen == [None] and scorer.device == torch.device("cpu")  # no CUDA here: the rule's answer


def test_without_a_dtype_cuda_loads_the_checkpoint_s_own_and_cpu_float32(tiny_path):
    # On CUDA "auto" keeps what the checkpoint was saved in: bfloat16 for the released 7B, float32 for the smoke
    # models (the taught model's hand-set front end does not survive bfloat16).
    from vq_reward.devices import default_dtype
    from vq_reward.loading import load_model

    assert default_dtype(torch.device("cpu")) == torch.float32 and default_dtype(torch.device("cuda")) == "auto"
    assert load_model(str(tiny_path), dtype=default_dtype(torch.device("cuda"))).dtype == torch.float32
