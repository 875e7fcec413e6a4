"""Teacher prompt files with a system message and a form for rows with an input, taken by ``reflect``, ``build``
and the builders' config, and the default output budget (the server's context minus the prompt, at most 2048).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from teacher_server import TeacherServer

from recycled_datasets.cli import main
from recycled_datasets.errors import ConfigError
from recycled_datasets.teacher.prompts import default_prompts, load_prompts

SAMPLE = Path(__file__).resolve().parents[1] / "recycled_datasets" / "data" / "sample.jsonl"

# Our own wording, shaped like the reference's prompts: a system message, and for the response reflection a
# second system message and template for rows with an input.
INSTRUCTION_TOML = '''
system = "You check training instructions, and little pleases you."
user = """[Instruction]
{instruction}

[Answer]
{response}

Criticise both, then write a harder instruction as [New Instruction] the instruction [End]
and answer it as [New Answer] the answer [End]
"""
'''
RESPONSE_TOML = '''
system = "You check answers, and little pleases you."
system_with_input = "You check answers to an instruction with an input, and little pleases you."
user = """[Instruction]
{instruction}

[Answer]
{response}

Criticise the answer, then write a better one as [Better Answer] the answer [End]
"""
user_with_input = """[Instruction]
{instruction}

[Input]
{input}

[Answer]
{response}

Criticise the answer to the instruction and its input, then write a better one as [Better Answer] the answer [End]
"""
'''
INSTRUCTION_SYSTEM = "You check training instructions, and little pleases you."
RESPONSE_SYSTEM = "You check answers, and little pleases you."
RESPONSE_SYSTEM_WITH_INPUT = "You check answers to an instruction with an input, and little pleases you."


@pytest.fixture
def prompt_files(tmp_path: Path) -> tuple[Path, Path]:
    instruction, response = tmp_path / "instruction.toml", tmp_path / "response.toml"
    instruction.write_text(INSTRUCTION_TOML, encoding="utf-8")
    response.write_text(RESPONSE_TOML, encoding="utf-8")
    return instruction, response


def write_rows(path: Path) -> Path:
    rows = [
        {"instruction": "Name a colour of the rainbow.", "input": "", "output": "Green."},
        {"instruction": "Add the two numbers.", "input": "14 and 29", "output": "43"},
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def chats(server: TeacherServer) -> list[list[dict[str, str]]]:
    return [body["messages"] for route, body in server.bodies if route == "/v1/chat/completions"]


# ---- the file forms ------------------------------------------------------------------------------------------


def test_a_toml_prompt_file_gives_a_system_message_and_a_form_for_rows_with_an_input(prompt_files):
    prompts = load_prompts(*prompt_files)
    plain = prompts.response_request("Name a colour.", "", "Green.")
    with_input = prompts.response_request("Add the two numbers.", "14 and 29", "43")
    assert plain.system == RESPONSE_SYSTEM and "[Input]" not in plain.user
    assert with_input.system == RESPONSE_SYSTEM_WITH_INPUT
    assert "[Input]\n14 and 29\n" in with_input.user and "and its input" in with_input.user
    # the instruction prompt has one form: rows with an input use it too
    assert prompts.instruction_request("Add.", "14 and 29", "43").system == INSTRUCTION_SYSTEM
    assert prompts.version.startswith("custom-")
    # the scaffold gate knows the system message: a reply that echoes it is refused
    assert any("little pleases you" in phrase for phrase in prompts.scaffold().phrases)


def test_a_plain_text_prompt_file_is_the_user_template_as_before(tmp_path: Path):
    plain = tmp_path / "response.txt"
    plain.write_text(default_prompts().response.user, encoding="utf-8")
    prompts = load_prompts(response_file=plain)
    request = prompts.response_request("Say hi.", "", "hi")
    assert request.system == "" and request.user == default_prompts().render_response("Say hi.", "", "hi")
    # the version is the hash of the files' text, as before system messages existed: stored answers stay valid
    both = default_prompts().instruction.user + "\x1e" + plain.read_text(encoding="utf-8")
    assert prompts.version == f"custom-{hashlib.sha256(both.encode()).hexdigest()[:12]}"


def test_a_changed_system_message_is_a_new_prompt_version(tmp_path: Path, prompt_files):
    instruction, response = prompt_files
    first = load_prompts(instruction, response).version
    response.write_text(RESPONSE_TOML.replace("little pleases you", "few things please you"), encoding="utf-8")
    assert load_prompts(instruction, response).version != first


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('user = "[Better Answer] x [End] {instruction} {response}"\nsystm = "typo"\n', "unknown key(s) systm"),
        ('user = "[Better Answer] x [End] {instruction} {response}"\nsystem = 3\n', "'system' must be a string"),
        ('system = "only a system message"\n', "has no 'user' template"),
        ('user = "unclosed\n', "is not valid TOML"),
        ('user = "[Better Answer] x [End] {response}"\n', "placeholders {instruction} and {response}"),
        (
            'user = "[Better Answer] x [End] {instruction} {response}"\n'
            'user_with_input = "{instruction} {response}"\n',
            "marker [Better Answer]",
        ),
    ],
)
def test_a_malformed_prompt_file_is_one_line_naming_it(tmp_path: Path, content: str, message: str):
    path = tmp_path / "response.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_prompts(response_file=path)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_a_prompt_file_that_is_not_utf8_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    path = tmp_path / "response.txt"
    path.write_bytes(b"\xff\xfe[Better Answer] {instruction} {response}")
    with pytest.raises(SystemExit) as exc:
        main(["reflect", str(write_rows(tmp_path / "rows.json")), "--teacher", "http://127.0.0.1:9", "--output",
              str(tmp_path / "out.parquet"), "--prompt-response", str(path), "--quiet"])  # fmt: skip
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "response.txt is not UTF-8" in err and err.count("\n") == 1


# ---- the system message on the wire --------------------------------------------------------------------------


def test_the_system_message_reaches_the_chat_route(tmp_path: Path, prompt_files):
    instruction, response = prompt_files
    rows = write_rows(tmp_path / "rows.json")
    with TeacherServer() as server:
        main(["reflect", str(rows), "--teacher", server.v1, "--output", str(tmp_path / "out.parquet"),
              "--prompt-instruction", str(instruction), "--prompt-response", str(response), "--quiet"])  # fmt: skip
        messages = chats(server)
    assert len(messages) == 6  # ins, res, both for two rows
    assert all([m["role"] for m in chat] == ["system", "user"] for chat in messages)
    by_system: dict[str, list[str]] = {}
    for system, user in messages:
        by_system.setdefault(system["content"], []).append(user["content"])
    assert len(by_system[INSTRUCTION_SYSTEM]) == 2
    # res of the row without input, and both of each row (the new instruction has no input)
    assert len(by_system[RESPONSE_SYSTEM]) == 3
    (with_input,) = by_system[RESPONSE_SYSTEM_WITH_INPUT]
    assert "[Input]\n14 and 29" in with_input


def test_the_default_prompts_send_no_system_message(tmp_path: Path):
    rows = write_rows(tmp_path / "rows.json")
    with TeacherServer() as server:
        main(["reflect", str(rows), "--teacher", server.v1, "--output", str(tmp_path / "out.parquet"), "--quiet"])
        assert all([m["role"] for m in chat] == ["user"] for chat in chats(server))


def test_the_system_message_is_rendered_by_the_chat_template_for_tgi_generate(tmp_path: Path, prompt_files):
    instruction, response = prompt_files
    rows = write_rows(tmp_path / "rows.json")
    with TeacherServer() as server:
        main(["reflect", str(rows), "--teacher", server.url, "--api", "generate", "--tokenizer", "smollm2-135m",
              "--output", str(tmp_path / "out.parquet"), "--prompt-instruction", str(instruction),
              "--prompt-response", str(response), "--quiet"])  # fmt: skip
        inputs = [body["inputs"] for route, body in server.bodies if route in ("/", "/generate")]
    assert len(inputs) == 6
    # SmolLM2's template: <|im_start|>system ... <|im_end|> then the user turn
    assert all(text.startswith("<|im_start|>system\n") for text in inputs)
    assert sum(f"<|im_start|>system\n{RESPONSE_SYSTEM_WITH_INPUT}<|im_end|>" in text for text in inputs) == 1


def test_build_takes_prompt_files(tmp_path: Path, prompt_files):
    instruction, response = prompt_files
    workdir = tmp_path / "w"
    with TeacherServer() as server:
        main(["build", "--workdir", str(workdir), "--source", str(write_rows(tmp_path / "rows.json")),
              "--teacher", server.v1, "--student", "smollm2-135m", "--keep-unreflected",
              "--prompt-instruction", str(instruction), "--prompt-response", str(response), "--quiet"])  # fmt: skip
        systems = {chat[0]["content"] for chat in chats(server)}
    assert systems == {INSTRUCTION_SYSTEM, RESPONSE_SYSTEM, RESPONSE_SYSTEM_WITH_INPUT}
    meta = json.loads((workdir / "reflections.json").read_text())
    assert meta["prompt_version"] == load_prompts(instruction, response).version


def test_the_builders_config_takes_prompt_files(tmp_path: Path, prompt_files):
    from builders import SRecycledConfig
    from builders.stages import run_reflections

    instruction, response = prompt_files
    with TeacherServer() as server:
        config = SRecycledConfig(
            name="reflections",
            workdir=str(tmp_path / "w"),
            source=str(write_rows(tmp_path / "rows.json")),
            teacher=server.v1,
            prompt_instruction=str(instruction),
            prompt_response=str(response),
            prompt_version="mine-v1",
        )
        assert run_reflections(config) == 2
        systems = {chat[0]["content"] for chat in chats(server)}
    assert systems == {INSTRUCTION_SYSTEM, RESPONSE_SYSTEM, RESPONSE_SYSTEM_WITH_INPUT}
    assert json.loads((tmp_path / "w" / "reflections.json").read_text())["prompt_version"] == "mine-v1"
    with pytest.raises(ConfigError, match="does not exist"):
        SRecycledConfig(name="reflections", workdir=str(tmp_path / "w"), prompt_response=str(tmp_path / "nope.toml"))


# ---- the default output budget -------------------------------------------------------------------------------


def budgets(server: TeacherServer) -> list[int]:
    return [body["max_tokens"] for route, body in server.bodies if route == "/v1/chat/completions"]


@pytest.mark.parametrize("context", [None, 100_000])
def test_the_default_budget_is_the_reference_cap_of_2048(tmp_path: Path, context: int | None):
    rows = write_rows(tmp_path / "rows.json")
    with TeacherServer(max_total_tokens=context) as server:
        main(["reflect", str(rows), "--teacher", server.v1, "--output", str(tmp_path / "out.parquet"), "--quiet"])
        assert set(budgets(server)) == {2048}
    meta = json.loads((tmp_path / "out.json").read_text())
    assert meta["max_new_tokens"] == 2048


def test_the_default_budget_is_what_the_context_leaves_after_the_prompt(tmp_path: Path):
    rows = write_rows(tmp_path / "rows.json")
    context = 2000
    with TeacherServer(max_total_tokens=context) as server:
        main(["reflect", str(rows), "--teacher", server.url, "--output", str(tmp_path / "out.parquet"), "--quiet"])
        sent = [(body["messages"][-1]["content"], body["max_tokens"]) for _, body in server.bodies]
    assert len(sent) == 6
    for prompt, budget in sent:
        # no tokenizer given: the prompt's length is a safe over-estimate (3 bytes a token, plus the chat frame)
        assert budget == context - (len(prompt.encode()) // 3 + 32) < 2048


def test_new_rows_of_a_workdir_are_asked_with_the_budget_its_rows_were_asked_with(tmp_path: Path):
    from builders import SRecycledConfig
    from builders.stages import run_reflections

    rows = str(write_rows(tmp_path / "rows.json"))
    common = {"name": "reflections", "workdir": str(tmp_path / "w"), "source": rows}
    with TeacherServer() as server:
        run_reflections(SRecycledConfig(**common, teacher=server.v1, limit=1, max_new_tokens=1024))
        server.bodies.clear()
        # a later build names no budget: its new row is asked with the workdir's, so that a re-judge of every
        # row later finds each stored answer under one budget
        assert run_reflections(SRecycledConfig(**common, teacher=server.v1)) == 2
        assert set(budgets(server)) == {1024} and len(budgets(server)) == 3
    assert json.loads((tmp_path / "w" / "reflections.json").read_text())["max_new_tokens"] == 1024
