"""A score is a finite number in [1, 5] or an error naming the input and the cause: a checkpoint whose lm_head is
NaN, and a server answering NaN log-probabilities, raise `NonFiniteScoreError` from the scorer and every adapter
(0.2 returned nan)."""

import copy
import json
import pickle
import warnings

import pytest
import torch
from conftest import noise_image
from test_server_client import Peer, plain, reply

from vq_reward import VisualQualityScorer
from vq_reward.scorer import NonFiniteScoreError


@pytest.fixture(scope="module")
def broken(scorer):
    """The tiny checkpoint with a NaN lm_head, built from the model object."""
    model = copy.deepcopy(scorer.model)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    return VisualQualityScorer(model, scorer.processor)


def test_score_and_details_raise_naming_every_input_and_the_cause(broken, tmp_path):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        noise_image(56 + 28 * i, 56, seed=i).save(paths[-1])
    with pytest.raises(NonFiniteScoreError) as caught:
        broken.score(paths, batch_size=2)
    error = caught.value
    assert error.indices == [0, 1, 2] and isinstance(error, ValueError)
    message = str(error)
    assert all(f"images[{i}] {path!r}" in message for i, path in enumerate(paths))
    assert "not finite" in message and "NaN lm_head" in message and "float16 overflow" in message
    assert "\n" not in message
    assert error.details is not None and error.details.scores.shape == (3,)
    again = pickle.loads(pickle.dumps(error))  # crosses process boundaries (Ray, multiprocessing) whole
    assert again.indices == error.indices and str(again) == message
    with pytest.raises(NonFiniteScoreError, match=r"^image: its score is not a finite number \(NaN or inf\)\. "):
        broken.score_details(noise_image(56, 56), readout="first-digit")


def test_every_adapter_raises_instead_of_returning_nan(broken):
    images = [noise_image(56, 56, seed=1), noise_image(84, 56, seed=2)]
    with pytest.raises(NonFiniteScoreError):
        broken.as_reward()(images, None, None)
    with pytest.raises(NonFiniteScoreError):
        broken.as_trl_reward(image_key="image")(["p", "q"], ["a", "b"], image=images)
    pixels = torch.rand(2, 3, 56, 56, requires_grad=True)
    with pytest.raises(NonFiniteScoreError, match=r"images\[0\], images\[1\]"):
        broken.as_differentiable_reward()(pixels)


def test_a_finite_model_is_unaffected(scorer):
    scores = scorer.score([noise_image(56, 56, seed=s) for s in range(3)])
    assert torch.isfinite(scores).all() and ((scores >= 1) & (scores <= 5)).all()


def test_a_server_answering_nan_log_probabilities_is_refused(tiny_path):
    def nan_logprobs(handler, body):
        top = [{"token": f"token_id:{i}", "logprob": float("nan")} for i in body["logprob_token_ids"]]
        answer = {"choices": [{"index": 0, "logprobs": {"content": [{"top_logprobs": top}]}}]}
        reply(handler, 200, json.dumps(answer).encode())  # json writes NaN, as a broken server would

    peer = Peer(plain(tiny_path), nan_logprobs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a plain server's "publishes no weights fingerprint"
            scorer = VisualQualityScorer.from_server(peer.url, retries=0)
        with pytest.raises(NonFiniteScoreError, match=r"server backend.*a server answering NaN") as caught:
            scorer.score([noise_image(56, 56), noise_image(56, 56, seed=1)], readout="first-digit")
        assert caught.value.indices == [0, 1]
    finally:
        peer.close()
