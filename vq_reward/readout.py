"""The one place that reads a Qwen2.5-VL scorer: prompt text, token inputs, the score readouts, candidate
log-probabilities over a closed answer set, and generation.

Everything that reads the model goes through these functions: `VisualQualityScorer.score()` and `generate()`, the
differentiable reward, the Q-Insight readouts and training's closed-set rollouts.

Score readouts (`readout=` of the scorer):

- "first-digit": softmax over the tokens "1".."5" right after the prompt and its forced answer prefix, and its
  expectation. One position of one forward.
- "number": the exact expected value of the model's two-decimal answer in [1, 5]. p1(d1) over "1".."5" after the
  prefix; p2(d2 | d1) over "0".."9" after prefix + d1 + "."; p3(d3 | d1, d2) after prefix + d1 + "." + d2;
  score = sum_d1 p1(d1) v(d1) with v(5) = 5 and v(d1) = d1 + sum_d2 p2 (d2/10 + sum_d3 p3 d3/100). Answers above 5
  count as 5. Read in the same single forward as the prompt (below).

Reading continuations in the prompt's forward pass (`tree_logits`): the continuations (the 48 answer branches of
the number readout, or every answer of a closed set) form a trie that is appended to each prompt as extra tokens.
A 4D attention mask lets each appended token see the prompt and its own ancestors only, and explicit M-RoPE
positions put a token at depth k at the prompt's last position + k, so each branch reads exactly what the separate
sequence "prompt + branch" would, without copying the prompt's keys and values. The tree's 4D mask needs an
attention that takes one: with `attn_implementation="flash_attention_2"` (or any other but "sdpa" and "eager") the
language model runs the tree call with SDPA, for that call only; the vision tower and every other call keep the
model's own attention.

What is read (`token_logprobs`): per position only the few ids a readout uses and, where it needs it, the
log-normaliser over the vocabulary (the number readout: at the first digits and "." only). The model
runs without its lm_head, and the lm_head is applied to the kept positions in chunks of at most `LOGITS_PER_CHUNK`
logits (recomputed in the backward pass under autograd), so the number readout's 49 positions per image never
become a (batch, 49, vocabulary) tensor: with Qwen's 152,064-row vocabulary that would be 30 MB per image.
"""

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from PIL import Image
from torch.utils.checkpoint import checkpoint
from transformers import BatchFeature, PretrainedConfig, PreTrainedModel, ProcessorMixin


FIRST_DIGITS = ("1", "2", "3", "4", "5")
DECIMALS = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
READOUTS = ("number", "first-digit")

# The most logits that exist at once while log-probabilities are read (16 MiB in float32): 27 positions of Qwen's
# 152,064-row vocabulary.
LOGITS_PER_CHUNK = 1 << 22


# -- prompt text and token inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What one batch asks the model, in both forms a backend may need.

    Attributes:
        messages: the chat (system and user turns, one `{"type": "image"}` per image), for chat APIs.
        text: the same chat rendered by the processor's template with the assistant turn opened.
        answer_prefix: text forced at the start of the answer ("" when the model writes its whole answer).
    """

    messages: list[dict]
    text: str
    answer_prefix: str = ""


def chat_text(processor: ProcessorMixin, messages: list[dict], add_vision_id: bool = False) -> str:
    """The chat-templated prompt with the assistant turn opened (`add_generation_prompt=True`)."""
    return processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, add_vision_id=add_vision_id
    )


def token_inputs(processor: ProcessorMixin, texts: Sequence[str], image_grid_thw: torch.Tensor) -> BatchFeature:
    """The token side of a batch: what the processor returns besides the pixels, built from the image grids alone.

    Each text holds one `<|image_pad|>` per image; the grids (`(total images, 3)`, row by row in order) expand each
    to `t * h * w / merge_size**2` pads. Rows are left-padded with the pad token; `mm_token_type_ids` marks image
    pads with 1 (transformers 5 needs it for the M-RoPE positions and silently computes wrong ones without it).
    Because it needs only the grids, the same function serves PIL images (grids from the image processor) and
    pixel tensors (grids from the torch preprocessing).

    Example:
        >>> sorted(token_inputs(processor, [prompt], torch.tensor([[1, 4, 4]])))
        ['attention_mask', 'input_ids', 'mm_token_type_ids']
    """
    tokenizer = processor.tokenizer
    qwen = cast(Any, processor)  # a Qwen2.5-VL processor: image_token and image_token_id are its own attributes
    image_token_id = int(qwen.image_token_id)
    merge_length = int(processor.image_processor.merge_size) ** 2
    pads = [int(grid.prod()) // merge_length for grid in image_grid_thw]
    rows, used = [], 0
    for text in texts:
        row = []
        for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
            if token != image_token_id:
                row.append(token)
                continue
            if used == len(pads):
                raise ValueError(f"the prompts hold more {qwen.image_token} than the {len(pads)} images given.")
            row.extend([image_token_id] * pads[used])
            used += 1
        rows.append(row)
    if used != len(pads):
        raise ValueError(f"{len(pads)} images for {used} {qwen.image_token} in the prompts; give one per image.")
    length = max(len(row) for row in rows)
    pad_id = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad_id] * (length - len(row)) + row for row in rows], dtype=torch.long)
    attention_mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows], dtype=torch.long)
    mm_token_type_ids = (input_ids == image_token_id).long() * attention_mask
    return BatchFeature(
        {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": mm_token_type_ids}
    )


def model_inputs(
    processor: ProcessorMixin, texts: Sequence[str], images: Sequence[Image.Image | Sequence[Image.Image]]
) -> BatchFeature:
    """Everything the model takes for a batch of PIL images: one text per row, one image (or a list) per row.

    Images must already have their model size (`vq_reward.images.resize_for_model`); the image processor then only
    normalises and patchifies them.
    """
    flat = [image for row in images for image in (row if isinstance(row, (list, tuple)) else [row])]
    pixels = processor.image_processor(images=flat, return_tensors="pt")
    tokens = token_inputs(processor, texts, pixels["image_grid_thw"])
    return BatchFeature({**tokens, "pixel_values": pixels["pixel_values"], "image_grid_thw": pixels["image_grid_thw"]})


def single_token_ids(tokenizer, texts: Sequence[str]) -> list[int]:
    """The id of each text, which must be exactly one token (digits and "." are, in Qwen2/Qwen2.5 tokenizers)."""
    ids = []
    for text in texts:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(
                f"The tokenizer splits {text!r} into {len(encoded)} tokens; the readouts need each digit and '.' to "
                "be one token, as in Qwen2/Qwen2.5 tokenizers. Use a Qwen2.5-VL based checkpoint."
            )
        ids.extend(encoded)
    return ids


@dataclass(frozen=True)
class NumberTokens:
    """Token ids of the answer grammar "d.dd": the first digits "1".."5", the decimals "0".."9" and "."."""

    first: tuple[int, ...]
    decimals: tuple[int, ...]
    dot: int

    @classmethod
    def of(cls, tokenizer) -> "NumberTokens":
        return cls(
            first=tuple(single_token_ids(tokenizer, FIRST_DIGITS)),
            decimals=tuple(single_token_ids(tokenizer, DECIMALS)),
            dot=single_token_ids(tokenizer, ["."])[0],
        )


# -- the score readouts --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreDetails:
    """A batch's score readout, in input order (tensors of the dtype they were computed in, on their device).

    Attributes:
        scores: `(N,)` expected score in [1, 5].
        std: `(N,)` standard deviation of the score under the same distribution (the model's own uncertainty).
        probs: `(N, 5)` softmax over the logits of "1".."5" at the first answer position.
        digit_mass: `(N,)` probability of those five tokens among *all* tokens there (a health figure: a fine-tuned
            checkpoint puts nearly all its mass on them).
        dot_mass: `(N, 4)` "number" only: probability of "." among all tokens after each first digit 1..4 (health).
        readout: "number" or "first-digit", the readout that produced these figures.
    """

    scores: torch.Tensor
    std: torch.Tensor
    probs: torch.Tensor
    digit_mass: torch.Tensor
    dot_mass: torch.Tensor | None = None
    readout: str = "first-digit"


def first_digit_from_logprobs(first: torch.Tensor) -> ScoreDetails:
    """The "first-digit" readout from the log-probabilities `(N, 5)` of "1".."5" at the first answer position.

    They must be log-probabilities over the whole vocabulary (log-softmax values, as a vLLM engine or server returns
    them): their softmax is the score's distribution and the sum of their exponentials is `digit_mass`.

    Example:
        >>> details = first_digit_from_logprobs(torch.tensor([[0.1, 0.2, 0.3, 0.2, 0.1]]).log())
        >>> round(details.scores.item(), 3), round(details.digit_mass.item(), 3)
        (3.0, 0.9)
    """
    first = first.to(torch.promote_types(first.dtype, torch.float32))
    probs = first.softmax(-1)
    values = torch.arange(1.0, first.shape[-1] + 1.0, dtype=probs.dtype, device=probs.device)
    scores = probs @ values
    std = (probs @ values.square() - scores.square()).clamp(min=0).sqrt()
    return ScoreDetails(scores=scores, std=std, probs=probs, digit_mass=first.exp().sum(-1))


def first_digit_logits(model: PreTrainedModel, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Logits `(N, vocab)` at the last prompt position (the first answer position), from one forward."""
    return model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1]


@dataclass(frozen=True)
class AnswerTree:
    """Continuations of a prompt as a trie: node i is token `tokens[i]` under node `parents[i]` (-1: the prompt)."""

    tokens: tuple[int, ...]
    parents: tuple[int, ...]

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[int]]) -> tuple["AnswerTree", list[list[int]]]:
        """The trie of token sequences, and each sequence's path of node indices (shared prefixes share nodes)."""
        tokens: list[int] = []
        parents: list[int] = []
        children: dict[tuple[int, int], int] = {}
        paths = []
        for sequence in sequences:
            if not sequence:
                raise ValueError("every continuation needs at least one token.")
            node, path = -1, []
            for token in sequence:
                key = (node, int(token))
                if key not in children:
                    children[key] = len(tokens)
                    tokens.append(int(token))
                    parents.append(node)
                node = children[key]
                path.append(node)
            paths.append(path)
        return cls(tuple(tokens), tuple(parents)), paths

    def __len__(self) -> int:
        return len(self.tokens)

    def depths(self) -> list[int]:
        """1 for a child of the prompt, 2 for its children, and so on."""
        depth: list[int] = []
        for parent in self.parents:
            depth.append(1 if parent < 0 else depth[parent] + 1)
        return depth

    def ancestry(self) -> torch.Tensor:
        """`(M, M)` booleans: entry (i, j) is True when node j is node i or one of its ancestors."""
        allowed = torch.eye(len(self), dtype=torch.bool)
        for node, parent in enumerate(self.parents):
            if parent >= 0:
                allowed[node] |= allowed[parent]
        return allowed


def tree_logits(model: PreTrainedModel, inputs: Mapping[str, torch.Tensor], tree: AnswerTree) -> torch.Tensor:
    """Logits `(N, 1 + M, vocab)` at the prompt's last position and at every node of `tree`, from one forward.

    Every logit of every node: for reading a few ids, `token_logprobs` holds far less. `inputs` is a left-padded
    batch (`model_inputs` or `token_inputs` plus pixels); see the module docstring for the mask and the positions.
    """
    return qwen_parts(model)[1](_tree_hidden(model, inputs, tree))


def _tree_hidden(model: PreTrainedModel, inputs: Mapping[str, torch.Tensor], tree: AnswerTree) -> torch.Tensor:
    """The last hidden states `(N, 1 + M, hidden)` at the prompt's last position and at every node of `tree`."""
    input_ids, padding = inputs["input_ids"], inputs["attention_mask"].bool()
    batch, length = input_ids.shape
    device = input_ids.device
    size = len(tree)
    nodes = torch.tensor(tree.tokens, dtype=input_ids.dtype, device=device)
    ids = torch.cat([input_ids, nodes.expand(batch, size)], dim=1)

    # Who may attend to whom: the prompt is causal over its real tokens (a padding query sees itself, so no row is
    # fully masked); a node sees every real prompt token and its own ancestors.
    total = length + size
    allowed = torch.zeros(batch, total, total, dtype=torch.bool, device=device)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    allowed[:, :length, :length] = causal & padding[:, None, :]
    allowed[:, :length, :length] |= torch.eye(length, dtype=torch.bool, device=device)
    allowed[:, length:, :length] = padding[:, None, :]
    allowed[:, length:, length:] = tree.ancestry().to(device)

    body, _ = qwen_parts(model)
    positions, _ = body.get_rope_index(
        input_ids,
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        attention_mask=inputs["attention_mask"],
    )
    depth = torch.tensor(tree.depths(), dtype=positions.dtype, device=positions.device)
    node_positions = positions[:, :, -1:] + depth  # text after the image: the three M-RoPE rows are equal
    position_ids = torch.cat([positions, node_positions], dim=2)

    extra = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
    extra["mm_token_type_ids"] = torch.cat(
        [
            inputs["mm_token_type_ids"],
            torch.zeros(batch, size, dtype=inputs["mm_token_type_ids"].dtype, device=device),
        ],
        dim=1,
    )
    with _attention_for_4d_masks(body.language_model.config) as attention:
        mask = allowed  # SDPA takes the booleans as they are; eager adds its mask to the scores
        if attention == "eager":
            dtype = next(model.parameters()).dtype
            mask = torch.zeros_like(allowed, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        output = body(input_ids=ids, attention_mask=mask[:, None], position_ids=position_ids, use_cache=False, **extra)
    return output.last_hidden_state[:, length - 1 :]


# -- reading only what a readout uses ------------------------------------------------------------------------------


def qwen_parts(model: torch.nn.Module) -> tuple[Any, torch.nn.Module]:
    """The Qwen2.5-VL body (vision tower and language model, without the lm_head; found by its `get_rope_index`)
    and the lm_head inside `model` (a plain, PEFT- or DeepSpeed-wrapped `Qwen2_5_VLForConditionalGeneration`); the
    readouts call these two."""
    for module in model.modules():
        body, head = getattr(module, "model", None), getattr(module, "lm_head", None)
        if body is not None and hasattr(body, "get_rope_index") and isinstance(head, torch.nn.Module):
            return body, head
    raise TypeError(
        f"{type(model).__name__} has no Qwen2.5-VL model inside (no model.get_rope_index and lm_head); it cannot be "
        "read. Pass a Qwen2.5-VL based checkpoint."
    )


def token_logprobs(
    model: PreTrainedModel,
    inputs: Mapping[str, torch.Tensor],
    ids: Sequence[int],
    tree: AnswerTree | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Full-vocabulary log-probabilities `(N, 1 + M, K)` of the token ids `ids`, read at the prompt's last position
    and at every node of `tree` (`(N, 1, K)` without a tree), from one forward; logits are divided by `temperature`.

    Only these K values and each position's normaliser are computed from the logits, `LOGITS_PER_CHUNK` at a time
    (see the module docstring). Works under autograd (the differentiable reward).
    """
    return _read_ids(qwen_parts(model)[1], _hidden_states(model, inputs, tree), ids, temperature)


def _hidden_states(
    model: PreTrainedModel, inputs: Mapping[str, torch.Tensor], tree: AnswerTree | None
) -> torch.Tensor:
    if tree is not None:
        return _tree_hidden(model, inputs, tree)
    body, _ = qwen_parts(model)
    return body(**inputs, use_cache=False).last_hidden_state[:, -1:]


def _read_ids(
    head: torch.nn.Module, hidden: torch.Tensor, ids: Sequence[int], temperature: float = 1.0, normalise: bool = True
) -> torch.Tensor:
    """The lm_head's values of `ids` `(N, P, K)` at hidden states `(N, P, hidden)`, chunk by chunk: log-probabilities,
    or with `normalise=False` the logits (for a softmax over `ids` alone, which needs no normaliser)."""
    rows = hidden.flatten(0, 1)
    step = max(1, LOGITS_PER_CHUNK // cast(int, head.out_features))  # the vocabulary's size
    wanted = torch.tensor(list(ids), device=hidden.device)
    parts = []
    for chunk in rows.split(step):
        if torch.is_grad_enabled():  # keep no chunk's logits for the backward pass: recompute them there
            parts.append(checkpoint(_read_chunk, head, chunk, wanted, temperature, normalise, use_reentrant=False))
        else:
            parts.append(_read_chunk(head, chunk, wanted, temperature, normalise))
    return torch.cat(parts).unflatten(0, hidden.shape[:2])


def _read_chunk(
    head: torch.nn.Module, hidden: torch.Tensor, ids: torch.Tensor, temperature: float, normalise: bool
) -> torch.Tensor:
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        logits = logits / temperature
    return logits.log_softmax(-1)[:, ids] if normalise else logits[:, ids]


_ROUTING_LOCK = threading.Lock()
_ROUTED: dict[int, list] = {}  # id(text config) -> [its own attention implementation, tree calls running]


@contextlib.contextmanager
def _attention_for_4d_masks(config: PretrainedConfig) -> Iterator[str]:
    """The language model's attention (its text `config`) as SDPA while a call with a 4D mask runs, when its own one
    takes only 2D padding masks (flash-attention and the like); "sdpa" and "eager" are kept. Yields the one in use.
    Thread-safe: the last of overlapping calls restores the model's own implementation."""
    with _ROUTING_LOCK:
        entry = _ROUTED.get(id(config))
        if entry is None and config._attn_implementation not in ("sdpa", "eager"):
            entry = _ROUTED[id(config)] = [config._attn_implementation, 0]
            config._attn_implementation = "sdpa"
        if entry is not None:
            entry[1] += 1
    try:
        yield config._attn_implementation
    finally:
        if entry is not None:
            with _ROUTING_LOCK:
                entry[1] -= 1
                if entry[1] == 0:
                    config._attn_implementation = entry[0]
                    del _ROUTED[id(config)]


def number_tree(tokens: NumberTokens) -> AnswerTree:
    """The 48 branches of the number readout as one trie: each first digit 1..4, its ".", and the ten first decimals
    under it (the continuations of `branch_continuations(tokens, "number")`, in that order of first appearance)."""
    tree, _ = AnswerTree.from_sequences(branch_continuations(tokens, "number")[1:])
    return tree


def number_from_logprobs(
    first: torch.Tensor, dot: torch.Tensor, second: torch.Tensor, third: torch.Tensor
) -> ScoreDetails:
    """The "number" readout from the log-probabilities read on its branches; every backend computes it here.

    Args:
        first: `(N, 5)` log-probabilities of "1".."5" after the prompt and its answer prefix.
        dot: `(N, 4)` log-probability of "." after each first digit 1..4.
        second: `(N, 4, 10)` log-probabilities of "0".."9" after each "d1.".
        third: `(N, 4, 10, 10)` log-probabilities of "0".."9" after each "d1.d2".

    `first` and `dot` must be log-probabilities over the whole vocabulary (`digit_mass` and `dot_mass` are their
    exponentials); for `second` and `third` any per-position constant drops out (only their softmax over the ten
    decimals is used), so logits do as well.

    Example (every digit equally likely: the expectation of a uniform d1.d2d3 in [1, 5), and 5 with p = 1/5):
        >>> first, dot = torch.full((1, 5), -5.0), torch.zeros(1, 4)
        >>> details = number_from_logprobs(first, dot, torch.zeros(1, 4, 10), torch.zeros(1, 4, 10, 10))
        >>> round(details.scores.item(), 4)
        3.396
    """
    dtype = torch.promote_types(first.dtype, torch.float32)
    first, dot, second, third = (x.to(dtype) for x in (first, dot, second, third))
    probs = first.softmax(-1)  # p1, [N, 5]
    second = second.softmax(-1)  # p2(d2 | d1), [N, 4, 10]
    third = third.softmax(-1)  # p3(d3 | d1, d2), [N, 4, 10, 10]

    values = torch.arange(10, dtype=probs.dtype, device=probs.device)
    number = (
        torch.arange(1.0, 5.0, dtype=probs.dtype, device=probs.device)[:, None, None]
        + values[None, :, None] / 10
        + values[None, None, :] / 100
    )  # d1 + d2/10 + d3/100, [4, 10, 10]
    joint = second[..., None] * third  # p2 * p3, [N, 4, 10, 10]
    given_first = (joint * number).sum((-1, -2))  # E[X | d1], [N, 4]
    square_given_first = (joint * number.square()).sum((-1, -2))  # E[X^2 | d1]
    scores = (probs[:, :4] * given_first).sum(-1) + probs[:, 4] * 5.0
    second_moment = (probs[:, :4] * square_given_first).sum(-1) + probs[:, 4] * 25.0
    std = (second_moment - scores.square()).clamp(min=0).sqrt()
    return ScoreDetails(
        scores=scores, std=std, probs=probs, digit_mass=first.exp().sum(-1), dot_mass=dot.exp(), readout="number"
    )


# -- the readouts as separate requests (vLLM engine and server) ----------------------------------------------------


def branch_continuations(tokens: NumberTokens, readout: str) -> list[tuple[int, ...]]:
    """The token ids each request appends after the prompt and its answer prefix, for engines that read one
    position per request (vLLM: prefix caching makes the shared prompt cheap).

    "first-digit": one request, nothing appended. "number": 49 requests, in the order `details_from_branches`
    expects: the prefix itself, each first digit 1..4 (the "." after it), each "d1." and each "d1.d2".

    Example:
        >>> len(branch_continuations(scorer.tokens, "number")), branch_continuations(scorer.tokens, "first-digit")
        (49, [()])
    """
    if readout == "first-digit":
        return [()]
    if readout != "number":
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}.")
    firsts = tokens.first[:4]
    return (
        [()]
        + [(d1,) for d1 in firsts]
        + [(d1, tokens.dot) for d1 in firsts]
        + [(d1, tokens.dot, d2) for d1 in firsts for d2 in tokens.decimals]
    )


def branch_token_ids(tokens: NumberTokens) -> list[int]:
    """The ids whose log-probabilities each branch request returns: the ten decimals (which hold "1".."5") and "."."""
    return [*tokens.decimals, tokens.dot]


def details_from_branches(logprobs: torch.Tensor, tokens: NumberTokens, readout: str) -> ScoreDetails:
    """A readout from the branch requests' log-probabilities.

    Args:
        logprobs: `(N, B, 11)` full-vocabulary log-probabilities of `branch_token_ids(tokens)` at the position after
            each of the `B` continuations of `branch_continuations(tokens, readout)`, for N images. After "d1." and
            "d1.d2" (continuations 5..48) only their softmax over the decimals is used, so logits do as well.
    """
    ids = branch_token_ids(tokens)
    first = [ids.index(t) for t in tokens.first]
    decimals = [ids.index(t) for t in tokens.decimals]
    dot = ids.index(tokens.dot)
    if readout == "first-digit":
        return first_digit_from_logprobs(logprobs[:, 0, first])
    n = len(logprobs)
    return number_from_logprobs(
        first=logprobs[:, 0, first],
        dot=logprobs[:, 1:5, dot],
        second=logprobs[:, 5:9][..., decimals],
        third=logprobs[:, 9:49][..., decimals].reshape(n, 4, 10, 10),
    )


def candidate_logprobs(
    model: PreTrainedModel,
    inputs: Mapping[str, torch.Tensor],
    candidates: Sequence[Sequence[int]],
    temperature: float = 1.0,
) -> torch.Tensor:
    """log p(candidate | prompt) of every candidate continuation, `(N, K)`, all read in one forward.

    Each candidate's log-likelihood is the sum of its tokens' teacher-forced log-probabilities (logits divided by
    `temperature`); candidates sharing a token prefix share its nodes in the trie.
    """
    tree, paths = AnswerTree.from_sequences(candidates)
    ids = sorted(set(tree.tokens))
    logprobs = token_logprobs(model, inputs, ids, tree, temperature)  # [N, 1 + M, len(ids)]
    # Node i's token is predicted at its parent's position (index 0: the prompt's last position).
    predictor = [0 if parent < 0 else parent + 1 for parent in tree.parents]
    per_node = logprobs[:, predictor, [ids.index(token) for token in tree.tokens]]  # [N, M]
    return torch.stack([per_node[:, path].sum(-1) for path in paths], dim=1)


def continuation_ids(tokenizer, prefix: str, answers: Sequence[str]) -> list[list[int]]:
    """Each answer's own token ids after `prefix`, refusing a tokenizer that merges tokens across the boundary.

    A merge would make the answer's tokens depend on the prefix, so reading them after the prefix's own tokens
    would score a sequence the model never sees.
    """
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    out = []
    for answer in answers:
        ids = tokenizer(prefix + answer, add_special_tokens=False)["input_ids"]
        if ids[: len(prefix_ids)] != prefix_ids:
            raise ValueError(
                f"the tokenizer merges the prefix {prefix!r} with the answer {answer!r} into one token, so the answer "
                "has no token boundary of its own and cannot be read after the prefix."
            )
        out.append(ids[len(prefix_ids) :])
    return out


# -- generation ----------------------------------------------------------------------------------------------------


def generate_texts(
    model: PreTrainedModel, processor: ProcessorMixin, inputs: Mapping[str, torch.Tensor], settings: Mapping
) -> list[str]:
    """Generate a completion per row (`settings`: `model.generate` keywords) and decode it without special tokens."""
    output = cast(Any, model).generate(**inputs, **settings)  # GenerationMixin's, which PreTrainedModel lacks
    completions = output[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(completions, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def read_scores(
    model: PreTrainedModel, inputs: Mapping[str, torch.Tensor], tokens: NumberTokens, readout: str
) -> ScoreDetails:
    """The score readout `readout` ("number" or "first-digit") of a batch, from one forward."""
    ids = branch_token_ids(tokens)
    if readout == "first-digit":
        return details_from_branches(token_logprobs(model, inputs, ids), tokens, readout)
    if readout == "number":
        tree, paths = AnswerTree.from_sequences(branch_continuations(tokens, "number")[1:])
        positions = [0] + [path[-1] + 1 for path in paths]  # where the token after each branch is read
        hidden = _hidden_states(model, inputs, tree)[:, positions]
        head = qwen_parts(model)[1]
        # The first digits and "." need full-vocabulary log-probabilities (digit_mass, dot_mass); the decimals, read
        # at the other 44 positions, only their softmax among themselves: no normaliser over the vocabulary there.
        logprobs = torch.cat(
            [_read_ids(head, hidden[:, :5], ids), _read_ids(head, hidden[:, 5:], ids, normalise=False)], 1
        )
        return details_from_branches(logprobs, tokens, readout)
    raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}.")
