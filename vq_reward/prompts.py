"""The prompts of both model families, verbatim, the chat messages built from them, and each family's style.

VisualQuality-R1: the problem text of its training JSONL, the `<think>` template of `qwen_module.py` and the
non-thinking template of its README. Q-Insight (bytedance/Q-Insight): one system prompt for every task, a question
per task, and the answer vocabulary its degradation and comparison tasks use. Inference (`VisualQualityScorer`,
`vq_reward.qinsight`) and training (`vq_reward.train.dataset`) build their prompts from these strings only.
"""

from dataclasses import dataclass, field


QUALITY_QUESTION = (
    "You are doing the image quality assessment task. Here is the question: "
    "What is your overall rating on the quality of this picture? The rating should be a float between 1 and 5, "
    "rounded to two decimal places, with 1 representing very poor quality and 5 representing excellent quality."
)

THINKING_TEMPLATE = (
    "{Question} First output the thinking process in <think> </think> tags and then output the final answer with "
    "only one score in <answer> </answer> tags."
)
NON_THINKING_TEMPLATE = (
    "{Question} Please only output the final answer with only one score in <answer> </answer> tags."
)

# Q-Insight (bytedance/Q-Insight): one system prompt for every task, then one question per task.
QINSIGHT_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant "
    "first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think><answer> answer here </answer>"
)
QINSIGHT_SCORE_QUESTION = (
    "What is your overall rating on the quality of this picture? The rating should be a float between 1 and 5, "
    "rounded to two decimal places, with 1 representing very poor quality and 5 representing excellent quality. "
    'Return the final answer in JSON format with the following keys: "rating": The score.'
)
QINSIGHT_DEGRADATION_QUESTION = (
    'Analyze the given image and determine if it contains any of the following distortions: "noise", '
    '"compression", "blur", or "darken". If a distortion is present, classify its severity as "slight", '
    '"moderate", "obvious", "serious", or "catastrophic". Return the result in JSON format with the following '
    'keys: "distortion_class": The detected distortion (or "null" if none). and "severity": The severity level '
    '(or "null" if none).'
)
QINSIGHT_COMPARE_INTRO = "Given a low-quality reference image and two enhanced outputs. Reference Image:"
QINSIGHT_COMPARE_QUESTION = (
    "Decide which enhanced image is superior or if they are comparable. Evaluate based on: 1) fidelity and "
    "consistency with the reference image; 2) overall perceptual quality. Return **exactly one** of: Image A, "
    "Image B, or Similar."
)

# Q-Insight's answer vocabulary (named in its degradation question and comparison prompt).
QINSIGHT_DEGRADATION_CLASSES = ("noise", "compression", "blur", "darken")
QINSIGHT_SEVERITIES = ("slight", "moderate", "obvious", "serious", "catastrophic")
QINSIGHT_NONE = "null"  # class and severity of an image without distortion
QINSIGHT_COMPARISON_RESULTS = ("Image A", "Image B", "Similar")

# Q-Insight always reasons first; readouts force an empty thought (its format needs the newlines) and the answer.
QINSIGHT_ANSWER_PREFIX = "<think>\n\n</think>\n<answer>\n"

# What the single-token readout appends after the assistant turn starts: the next token is the first digit.
ANSWER_PREFIX = "<answer>"


def quality_prompt(thinking: bool, question: str = QUALITY_QUESTION) -> str:
    """The user text of a VisualQuality-R1 request.

    Example:
        >>> quality_prompt(thinking=False).endswith("in <answer> </answer> tags.")
        True
    """
    template = THINKING_TEMPLATE if thinking else NON_THINKING_TEMPLATE
    return template.format(Question=question)


def image_message(text: str, system: str | None = None) -> list[dict]:
    """One conversation: an optional system turn, then a user turn with the image first and the text after it.

    The image comes first, as in the official training data. Without a system turn the Qwen2.5-VL chat template
    inserts its default one ("You are a helpful assistant."), which is what the official model was trained with.
    """
    messages: list[dict] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
    return messages


def degradation_messages() -> list[dict]:
    """Q-Insight's degradation request: its system prompt, then the image and the question."""
    return image_message(QINSIGHT_DEGRADATION_QUESTION, system=QINSIGHT_SYSTEM)


def comparison_messages() -> list[dict]:
    """Q-Insight's comparison request: reference, image A and image B, each introduced by its label.

    Example:
        >>> [part["type"] for part in comparison_messages()[1]["content"]].count("image")
        3
    """
    content = [
        {"type": "text", "text": QINSIGHT_COMPARE_INTRO},
        {"type": "image"},
        {"type": "text", "text": "Image A:"},
        {"type": "image"},
        {"type": "text", "text": "Image B:"},
        {"type": "image"},
        {"type": "text", "text": QINSIGHT_COMPARE_QUESTION},
    ]
    return [
        {"role": "system", "content": [{"type": "text", "text": QINSIGHT_SYSTEM}]},
        {"role": "user", "content": content},
    ]


@dataclass(frozen=True)
class PromptStyle:
    """What a model family is asked and how it answers.

    Attributes:
        name: "visualquality-r1" or "q-insight".
        question: the default score question.
        system: the system prompt; `None` lets the chat template insert its default one.
        answer_prefix: text forced after the assistant turn starts, so the next token is the score's first digit.
        generation: the official sampling settings of the family's inference code (`model.generate` keywords);
            `max_new_tokens` is the non-thinking length, `max_new_tokens_thinking` the thinking one.
    """

    name: str
    question: str
    system: str | None
    answer_prefix: str
    generation: dict = field(default_factory=dict)

    def user_text(self, question: str, thinking: bool) -> str:
        """The user turn's text: VisualQuality-R1 wraps the question in its answer template; Q-Insight uses it as is.

        Example:
            >>> STYLES["visualquality-r1"].user_text(QUALITY_QUESTION, thinking=False).endswith("</answer> tags.")
            True
        """
        return quality_prompt(thinking, question) if self.name == "visualquality-r1" else question

    def generation_settings(self, thinking: bool) -> dict:
        """`model.generate` keywords for one call: the family's sampling defaults and the length for the mode."""
        settings = {k: v for k, v in self.generation.items() if k != "max_new_tokens_thinking"}
        if thinking:
            settings["max_new_tokens"] = self.generation["max_new_tokens_thinking"]
        return settings


STYLES: dict[str, PromptStyle] = {
    # Official README: sampling with top_k=50, top_p=1 and the checkpoint's temperature; 2048 new tokens with
    # thinking, 512 for batches without.
    "visualquality-r1": PromptStyle(
        name="visualquality-r1",
        question=QUALITY_QUESTION,
        system=None,
        answer_prefix=ANSWER_PREFIX,
        generation={
            "do_sample": True,
            "top_k": 50,
            "top_p": 1.0,
            "max_new_tokens": 512,
            "max_new_tokens_thinking": 2048,
        },  # fmt: skip
    ),
    # Official demos: temperature 1, top_k 50, top_p 0.95, 1024 new tokens; the model always reasons first.
    "q-insight": PromptStyle(
        name="q-insight",
        question=QINSIGHT_SCORE_QUESTION,
        system=QINSIGHT_SYSTEM,
        answer_prefix=QINSIGHT_ANSWER_PREFIX + '{"rating": ',
        generation={
            "do_sample": True,
            "temperature": 1.0,
            "top_k": 50,
            "top_p": 0.95,
            "max_new_tokens": 1024,
            "max_new_tokens_thinking": 1024,
        },  # fmt: skip
    ),
}
