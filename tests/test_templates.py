"""The prompt formats are constants (docs/method.md, section 3): byte-exact strings."""

import pytest

from recycled_datasets.errors import ConfigError
from recycled_datasets.models import load_tokenizer, resolve_student
from recycled_datasets.templates import instruction_target, render_prompt, reverse_request


def test_alpaca_with_and_without_input():
    assert render_prompt("alpaca", "Add the numbers.", "2 and 3") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:"
    )
    assert render_prompt("alpaca", "Name a color.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nName a color.\n\n### Response:"
    )


def test_vicuna_wizardlm_none():
    system = (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )
    assert render_prompt("vicuna", "Hi", "there") == f"{system} USER: Hi\nthere ASSISTANT:"
    assert render_prompt("vicuna", "Hi") == f"{system} USER: Hi ASSISTANT:"
    assert render_prompt("wizardlm", "Hi", "there") == "Hi\nthere\n\n### Response:"
    assert render_prompt("wizardlm", "Hi") == "Hi\n\n### Response:"
    assert render_prompt("none", "Hi") == "Hi\n"
    assert render_prompt("none", "Hi", "there") == "Hi\nthere\n"


def test_chat_uses_the_students_own_template():
    tokenizer = load_tokenizer(resolve_student("smollm2-135m"))
    text = render_prompt("chat", "Hi", "there", tokenizer=tokenizer)
    assert text.endswith("<|im_start|>user\nHi\nthere<|im_end|>\n<|im_start|>assistant\n")
    assert text == tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi\nthere"}], tokenize=False, add_generation_prompt=True
    )
    with pytest.raises(ConfigError, match="tokenizer"):
        render_prompt("chat", "Hi")


def test_reverse_request_wraps_the_response_and_target_joins_input():
    assert "The answer is 5." in reverse_request("The answer is 5.")
    assert "instruction" in reverse_request("x").lower()
    assert instruction_target("Add.", "2 and 3") == "Add.\n2 and 3"
    assert instruction_target("Add.") == "Add."


def test_unknown_template_names_the_choices():
    with pytest.raises(ConfigError, match="alpaca, vicuna, wizardlm, none, chat"):
        render_prompt("llama", "Hi")
