"""Each loader on rows shaped like its dataset's real rows (tests/fixtures/<source>/), bad rows included."""
import copy
import json
import logging
import os
from collections import Counter

import pytest

from bdh.data.prepare import SourceReport, Unreachable, convert_rows, source_rows
from bdh.data.records import DEFAULT_MAX_BYTES, Record, invalid_reason
from bdh.metrics import FUNCTION_CALL_RE, score_bash, score_function_call
from bdh.data.sources import SOURCES

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")

# source -> (records expected, skip counts expected)
EXPECTED = {
    "tinystories": (2, {"malformed_json": 1, "malformed_row": 1}),
    "wikitext": (1, {"no_content": 2, "malformed_row": 1}),
    "shakespeare": (3, {}),
    "gsm8k": (2, {"malformed_row": 1}),
    "gsm_symbolic": (1, {"malformed_row": 1}),
    "glaive": (2, {"no_content": 1, "malformed_row": 1}),
    "bfcl": (2, {"malformed_json": 1, "malformed_row": 1}),
    "nl2bash": (2, {"malformed_row": 1}),
    "unix_commands": (2, {"malformed_row": 1}),
    "eg": (3, {"no_content": 1}),
    "cheat": (3, {"no_content": 1}),
    "toolbench": (2, {"malformed_row": 1}),
    "tooltalk": (2, {"malformed_json": 1}),
}


def load(name, rows=None):
    source = SOURCES[name]
    report = SourceReport(name, source.task, source.licence)
    if rows is None:
        rows, _ = source_rows(source, FIXTURES, offline=True, cache_dir=None)
    return convert_rows(source, rows, report, DEFAULT_MAX_BYTES, None, progress=False), report


def by_id(records):
    return {r.id: r for r in records}


def test_every_source_has_a_fixture():
    assert set(EXPECTED) == set(SOURCES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loader_maps_rows_and_counts_bad_ones(name):
    records, report = load(name)
    expected_records, expected_skips = EXPECTED[name]
    assert len(records) == expected_records
    assert dict(report.skipped) == expected_skips
    for record in records:
        assert invalid_reason(record) is None
        assert record.task == SOURCES[name].task and record.source == name
        assert record.prompt.endswith("Assistant: ")
    assert len({r.id for r in records}) == len(records)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_row_missing_its_fields_is_counted_not_fatal(name):
    records, report = load(name, rows=[{}, None, {"unrelated": 1}])
    assert records == [] and report.skipped == Counter(malformed_row=2, malformed_json=1)


def test_text_sources_split_opening_from_continuation():
    records, _ = load("tinystories")
    story = by_id(records)["tinystories:0"]
    assert story.prompt == "User: Continue the story:\nOne day, a little girl named Lily found a needle in her room.\nAssistant: "
    assert story.target.startswith("She knew it was difficult")
    (wiki,), _ = load("wikitext")
    assert "Senjō no Valkyria 3" in wiki.prompt and wiki.target.endswith("Valkyria series .")
    passages, _ = load("shakespeare")
    assert all("Continue this passage from Hamlet, Prince Of Denmark:\n" in p.prompt for p in passages)


def test_gsm8k_target_is_the_worked_solution_without_calculator_annotations():
    records, _ = load("gsm8k")
    natalia = by_id(records)["gsm8k:0"]
    assert natalia.prompt.startswith("User: Natalia sold clips")
    assert natalia.target == ("Natalia sold 48/2 = 24 clips in May.\n"
                              "Natalia sold 48+24 = 72 clips altogether in April and May.\n#### 72")


def test_glaive_calls_follow_the_conversation_with_tool_results():
    records, _ = load("glaive")
    first, second = records
    schema = json.loads(first.prompt.split("\n")[1])
    assert first.schemas == (schema,) and schema["name"] == "get_exchange_rate"
    assert first.target == '<function_call>{"name": "get_exchange_rate", "arguments": {"base_currency": "USD", "target_currency": "EUR"}}</function_call>'
    assert '<tool_result>{"exchange_rate": 0.85}</tool_result>\nAssistant: The current exchange rate' in second.prompt
    assert second.prompt.endswith("User: And from euros to yen?\nAssistant: ")
    assert first.group == second.group == "glaive:0"


def test_bfcl_takes_the_first_possible_answer_and_keeps_parallel_calls():
    records = by_id(load("bfcl")[0])
    simple = records["bfcl:simple_0"]
    assert simple.target == '<function_call>{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "unit": "units"}}</function_call>'
    assert "irrelevance" not in " ".join(records)
    calls = [json.loads(c) for c in FUNCTION_CALL_RE.findall(records["bfcl:parallel_0"].target)]
    assert calls == [{"name": "spotify.play", "arguments": {"artist": "Taylor Swift", "duration": 20}},
                     {"name": "spotify.play", "arguments": {"artist": "Maroon 5", "duration": 15}}]


def test_bash_sources_answer_with_a_bash_block():
    records, _ = load("nl2bash")
    assert records[0].prompt == 'User: Add executable permission to "pretty-print"\nAssistant: '
    assert records[0].target == "```bash\nchmod +x pretty-print\n```"
    eg, _ = load("eg")
    assert eg[0].prompt == "User: files in searchdir named file.txt\nAssistant: "
    assert eg[0].target == "```bash\nfind ./searchdir -name file.txt\n```"
    cheat, _ = load("cheat")
    assert cheat[0].prompt == "User: To extract an uncompressed archive\nAssistant: "
    assert cheat[0].target == "```bash\ntar -xvf /path/to/foo.tar\n```"

def test_unix_commands_rows_ask_for_the_command_that_printed_their_output():
    unix, _ = load("unix_commands")
    assert unix[0].prompt == "User: Which command, typed at the prompt `user@server:~$`, prints this?\n/home/user\nAssistant: "
    assert unix[0].target == "```bash\npwd\n```"
    assert unix[1].prompt.endswith("`root@devbox:/var/log#`, prints this?\nauth.log  dpkg.log  syslog\nAssistant: ")
    assert unix[1].target == "```bash\nls\n```"
    rows = [{"instruction": "act", "input": "cd /tmp", "output": ""},  # prints nothing: which command?
            {"instruction": "act", "input": "date", "output": "Mon Jan  1 00:00:00 UTC 2024"}]
    records, report = load("unix_commands", rows)
    assert report.skipped == Counter(no_content=1)
    assert records[0].prompt == "User: Which command prints this?\nMon Jan  1 00:00:00 UTC 2024\nAssistant: "


@pytest.mark.parametrize("name", sorted(n for n, s in SOURCES.items() if s.task == "bash_command"))
def test_every_bash_target_has_the_format_the_metric_scores(name):
    records, _ = load(name)
    assert records and all(score_bash(r.target, known_commands=[]).format_ok for r in records)


@pytest.mark.parametrize("name", sorted(n for n, s in SOURCES.items() if s.task in ("function_call", "tool_use")))
def test_every_call_target_scores_as_its_own_reference(name):
    calls = [r for r in load(name)[0] if "<function_call>" in r.target]
    assert calls
    for record in calls:  # as bdh.metrics.score_record scores a val record
        assert score_function_call(record.target, record.target, record.schemas).arguments_ok, record.id


def test_toolbench_steps_become_calls_and_final_answers():
    records, _ = load("toolbench")
    final = next(r for r in records if "<tool_result>" in r.prompt)
    step = next(r for r in records if r is not final)
    assert [s["name"] for s in final.schemas] == ["get_joke_for_dad_jokes", "Finish"]
    assert step.target == '<function_call>{"name": "get_joke_for_dad_jokes", "arguments": {}}</function_call>'
    assert "Thought" not in final.prompt and "I should get a joke." not in final.prompt
    assert '\nAssistant: <function_call>{"name": "get_joke_for_dad_jokes", "arguments": {}}</function_call>\n<tool_result>' in final.prompt
    assert final.target == "Here is one: How does a train eat? It goes chew, chew."
    assert final.group == step.group  # steps of one query share a split


def test_tooltalk_calls_leave_out_the_session_token():
    call, reply = load("tooltalk")[0]
    assert call.schemas[0]["name"] == "AddAlarm"
    assert call.schemas[0]["parameters"]["required"] == ["time"]
    assert call.target == '<function_call>{"name": "AddAlarm", "arguments": {"time": "18:30:00"}}</function_call>'
    assert reply.prompt.endswith('<tool_result>{"alarm_id": "5bff-dd80"}</tool_result>\nAssistant: ')
    assert reply.target == "I have set an alarm for you at 6:30 PM"


def test_a_source_with_no_hub_and_no_files_is_unreachable_with_reasons(tmp_path):
    with pytest.raises(Unreachable, match=r"hub \(openai/gsm8k\) skipped: offline; no local files in .*gsm8k"):
        source_rows(SOURCES["gsm8k"], str(tmp_path), offline=True, cache_dir=None)


def test_without_datasets_installed_the_hub_path_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(Unreachable, match=r"pip install datasets"):
        source_rows(SOURCES["tinystories"], str(tmp_path), offline=False, cache_dir=None)


def test_the_hub_path_calls_load_dataset_with_the_dataset_id(monkeypatch, tmp_path):
    calls = []

    class FakeDatasets:
        @staticmethod
        def load_dataset(*args, **kwargs):
            calls.append((args, kwargs))
            return [{"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}]

    monkeypatch.setitem(__import__("sys").modules, "datasets", FakeDatasets)
    rows, origin = source_rows(SOURCES["gsm8k"], str(tmp_path), offline=False, cache_dir="/cache")
    records, report = load("gsm8k", rows)
    assert calls == [(("openai/gsm8k", "main"), {"split": "train", "streaming": True, "cache_dir": "/cache"})]
    assert origin == "hub:openai/gsm8k/main" and records[0].target == "2 + 2 = 4\n#### 4"


def test_a_hub_repo_of_raw_files_is_fetched_then_read_like_local_files(monkeypatch, tmp_path):
    fetched = []

    def snapshot_download(repo_id, **kwargs):
        fetched.append((repo_id, kwargs["repo_type"]))
        return os.path.join(FIXTURES, "bfcl")

    monkeypatch.setitem(__import__("sys").modules, "datasets", object())
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", type("Hub", (), {"snapshot_download": snapshot_download}))
    rows, origin = source_rows(SOURCES["bfcl"], str(tmp_path), offline=False, cache_dir=None)
    records, _ = load("bfcl", rows)
    assert fetched == [("gorilla-llm/Berkeley-Function-Calling-Leaderboard", "dataset")]
    assert origin == "hub:gorilla-llm/Berkeley-Function-Calling-Leaderboard" and len(records) == 2


def tooltalk_row_with_reply(text):
    """The fixture's ToolTalk conversation with its last assistant reply's text replaced."""
    rows, _ = source_rows(SOURCES["tooltalk"], FIXTURES, offline=True, cache_dir=None)
    row = copy.deepcopy(next(r for r in rows if r is not None))
    next(t for t in reversed(row["conversation"]) if t["role"] == "assistant")["text"] = text
    return row


@pytest.mark.parametrize("name, row", [
    ("unix_commands", {"instruction": "act", "input": "$ ls", "output": 5}),
    ("unix_commands", {"instruction": "act", "input": "$ ls", "output": ["a"]}),
    ("gsm8k", {"question": None, "answer": "4\n#### 4"}),
    ("bfcl", {"id": "x", "question": [[{"role": "user", "content": "hi"}]], "ground_truth": [{"f": {}}],
              "function": ["not an object"]}),
])
def test_a_row_with_a_field_of_the_wrong_type_is_skipped_and_counted(name, row):
    records, report = load(name, rows=[row])
    assert records == [] and report.skipped == Counter(malformed_row=1)


def toolbench_row_with_query(text):
    """The fixture's first ToolBench row with its user message replaced."""
    rows, _ = source_rows(SOURCES["toolbench"], FIXTURES, offline=True, cache_dir=None)
    row = copy.deepcopy(next(r for r in rows if r is not None))
    next(m for m in row["conversations"] if m["from"] == "user")["value"] = text
    return row


def tooltalk_row_with_user_text(text):
    rows, _ = source_rows(SOURCES["tooltalk"], FIXTURES, offline=True, cache_dir=None)
    row = copy.deepcopy(next(r for r in rows if r is not None))
    next(t for t in row["conversation"] if t["role"] == "user")["text"] = text
    return row


@pytest.mark.parametrize("name, row", [
    ("gsm8k", {"question": "", "answer": "4\n#### 4"}),
    ("gsm_symbolic", {"question": " \n ", "answer": "4\n#### 4"}),
    ("nl2bash", {"nl": "", "bash": "ls"}),
    ("nl2bash", {"nl": "list the files", "bash": ""}),
    ("nl2bash", {"nl": "list the files", "bash": " \n\t"}),
    ("unix_commands", {"instruction": "act", "input": "user@server:~$ ", "output": "/home/user"}),
    ("bfcl", {"id": "simple_9", "question": [[{"role": "user", "content": " "}]],
              "ground_truth": [{"f": {"a": [1]}}], "function": [{"name": "f"}]}),
    ("glaive", {"system": "SYSTEM: You can call: {\"name\": \"f\", \"parameters\": {}}",
                "chat": 'USER:  ASSISTANT: <functioncall> {"name": "f", "arguments": \'{}\'} <|endoftext|>'}),
    ("toolbench", toolbench_row_with_query("")),
    ("tooltalk", tooltalk_row_with_user_text("  ")),
], ids=["gsm8k_question", "gsm_symbolic_question", "nl2bash_nl", "nl2bash_bash", "nl2bash_blank_bash",
        "unix_commands_command", "bfcl_user", "glaive_user", "toolbench_query", "tooltalk_user"])
def test_a_row_with_an_empty_question_or_command_is_skipped_and_counted(name, row):
    records, report = load(name, rows=[row])
    assert records == [] and report.skipped == Counter(malformed_row=1)


def nested(depth):
    """[[[...]]] depth deep, built without recursion."""
    value = []
    for _ in range(depth):
        value = [value]
    return value


def test_json_nested_too_deep_is_a_malformed_row_not_a_crash(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "a.jsonl").write_text("[" * 100000 + "\n" + '{"question": "What is 2+2?", "answer": "4\\n#### 4"}\n')
    (tmp_path / "gsm8k" / "b.json").write_text("[" * 100000)
    rows, _ = source_rows(SOURCES["gsm8k"], str(tmp_path), offline=True, cache_dir=None)
    records, report = load("gsm8k", rows)
    assert len(records) == 1 and report.skipped == Counter(malformed_json=2)
    row = {"id": "simple_9", "question": [[{"role": "user", "content": "Call f."}]],
           "ground_truth": [{"f": {"a": [nested(100000)]}}], "function": [{"name": "f"}]}
    records, report = load("bfcl", rows=[row])
    assert records == [] and report.skipped == Counter(malformed_row=1)


@pytest.mark.parametrize("reply", [None, 5, {"text": "hi"}])
def test_a_tooltalk_reply_that_is_not_text_is_skipped_and_counted(reply):
    records, report = load("tooltalk", rows=[tooltalk_row_with_reply(reply)])
    assert records == [] and report.skipped == Counter(malformed_row=1)


def test_a_record_rejects_a_field_of_the_wrong_type():
    with pytest.raises(TypeError, match="field 'target' must be a string, got int"):
        Record("x:1", "bash_command", "x", "User: hi\nAssistant: ", 5)
    with pytest.raises(TypeError, match="field 'schemas'"):
        Record("x:1", "function_call", "x", "User: hi\nAssistant: ", "ok", ("f",))


# source -> {file under <local_dir>/<source>/: its bytes}; in each, one row holds a byte that is not UTF-8
BAD_UTF8 = {
    "nl2bash": {"all.nl": b"list files\nfind \xff\xfe things\n", "all.cm": b"ls\nfind .\n"},
    "gsm8k": {"a.jsonl": b'{"question": "What is 1+1 \xff?", "answer": "2\\n#### 2"}\n'
                         b'{"question": "What is 2+2?", "answer": "4\\n#### 4"}\n'},
    "unix_commands": {"a.json": b'[{"instruction": "act", "input": "$ pwd", "output": "/home"},'
                                b' {"instruction": "act", "input": "$ ls", "output": "caf\xe9"}]'},
    "eg": {"ls.md": b"list files\n\n    ls\n\nlist \xff files\n\n    ls -l\n"},
    "cheat": {"cheatsheets/ls": b"# list files\nls\n\n# list \xff files\nls -l\n"},
}


@pytest.mark.parametrize("name", sorted(BAD_UTF8))
def test_a_row_that_is_not_utf8_is_skipped_counted_and_its_file_named(name, tmp_path, caplog):
    for path, data in BAD_UTF8[name].items():
        (tmp_path / name / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name / path).write_bytes(data)
    rows, _ = source_rows(SOURCES[name], str(tmp_path), offline=True, cache_dir=None)
    with caplog.at_level(logging.WARNING, logger="bdh.data"):
        records, report = load(name, rows)
    assert len(records) == 1 and report.skipped == Counter(invalid_utf8=1)
    assert "\ufffd" not in records[0].prompt + records[0].target
    assert "not valid UTF-8" in caplog.text and str(tmp_path / name) in caplog.text


@pytest.mark.parametrize("target, reason", [
    ('<function_call>{"name": "f", "arguments": {"a": 1}}</function_call>', None),
    ("plain text without a call", None),
    ('<function_call>{"name": "f", "arguments": {}, "id": 3}</function_call>', "invalid_function_call"),
    ('<function_call>{"name": "f"}</function_call>', "invalid_function_call"),
    ('<function_call>{"name": "f", "arguments": {}}', "invalid_function_call"),
    ('{"name": "f"}</function_call>', "invalid_function_call"),
    ('</function_call>x<function_call>', "invalid_function_call"),
    ('I should call f.\n<function_call>{"name": "f", "arguments": {}}</function_call>', "invalid_function_call"),
])
def test_function_call_targets_are_checked_as_the_metrics_parse_them(target, reason):
    record = Record(id="x", task="function_call", source="test", prompt="User: call f\nAssistant: ", target=target)
    assert invalid_reason(record) == reason


def test_a_call_target_must_be_calls_only_where_it_is_scored_as_calls():
    target = 'Let me look.\n<function_call>{"name": "f", "arguments": {}}</function_call>'
    for task, reason in (("tool_use", "invalid_function_call"), ("text_completion", None)):
        record = Record(id="x", task=task, source="test", prompt="User: call f\nAssistant: ", target=target)
        assert invalid_reason(record) == reason, task
