"""The VisualQuality-R1 prompts, verbatim, and the chat messages built from them.

The strings are the ones the official code trains and infers with (the problem text of its training JSONL, the
`<think>` template of `qwen_module.py` and the non-thinking template of its README). They live here once, so the
scorer and the training rewards can never drift apart.
"""

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
