"""bdh.metrics on hand-made model outputs: correct, malformed and partly correct calls,
commands, episodes and text, with the scores each must get."""
import json

import pytest

from bdh import metrics as ev
from bdh.metrics import (
    BashSyntaxError, Metric, command_names, coherence, distinct_n, episodes, evaluate_outputs, overall,
    prompts_to_answer, score_bash, score_function_call, score_tool_episode, wilson_interval, word_validity,
)

WEATHER = {"name": "get_weather", "description": "Weather now", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "metric": {"type": "boolean"}}}}
TIME = {"name": "get_time", "description": "Time now", "parameters": {"type": "object", "properties": {}}}
OFFERED = [WEATHER, TIME]
REFERENCE = '<function_call>{"name": "get_weather", "arguments": {"city": "Paris", "metric": true}}</function_call>'


def fc(name, arguments):
    return "<function_call>" + json.dumps({"name": name, "arguments": arguments}) + "</function_call>"


def fc_scores(output, reference=REFERENCE, offered=OFFERED):
    s = score_function_call(output, reference, offered)
    return s.format_ok, s.name_ok, s.arguments_ok


# -- function calls


@pytest.mark.parametrize("output", [
    REFERENCE,
    '  <function_call>{"arguments": {"metric": true, "city": "Paris"}, "name": "get_weather"}</function_call>\n',
    '<function_call>{ "name":"get_weather","arguments":{"city":"Paris","metric":true} }</function_call>',
    REFERENCE + "\x00<tool_result>anything after EOS is not the answer",
])
def test_correct_calls_score_1_1_1(output):
    assert fc_scores(output) == (True, True, True)


@pytest.mark.parametrize("output, expected", [
    (fc("get_weather", {"city": "London", "metric": True}), (True, True, False)),  # wrong value
    (fc("get_weather", {"city": "Paris"}), (True, True, False)),  # missing argument
    (fc("get_weather", {"city": "Paris", "metric": True, "days": 3}), (True, True, False)),  # extra argument
    (fc("get_weather", {"city": "Paris", "metric": 1}), (True, True, False)),  # 1 is not true
    (fc("get_weather", {"city": "paris", "metric": True}), (True, True, False)),  # values are case-sensitive
    (fc("get_time", {}), (True, False, False)),  # an offered function, but not the right one
])
def test_partly_correct_calls(output, expected):
    assert fc_scores(output) == expected


@pytest.mark.parametrize("output, error", [
    ("", "no <function_call> block"),
    ("The weather in Paris is nice.", "no <function_call> block"),
    ('<function_call>{"name": "get_weather", "arguments": {"city": "Paris"}', "unbalanced"),
    ('</function_call>' + REFERENCE[len("<function_call>"):-len("</function_call>")] + "<function_call>", "unbalanced"),
    ('<function_call>{"name": "get_weather", "arguments": {"city": "Paris",}}</function_call>', "not JSON"),
    ("<function_call>{'name': 'get_weather', 'arguments': {}}</function_call>", "not JSON"),
    ('<function_call>{"name": "get_weather", "arguments": {"days": Infinity}}</function_call>', "not JSON"),
    ('<function_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}</function_call>', "arguments an object"),
    ('<function_call>{"name": "get_weather"}</function_call>', 'not {"name"'),
    ('<function_call>{"name": "get_weather", "arguments": {}, "id": 1}</function_call>', 'not {"name"'),
    ('<function_call>["get_weather", {}]</function_call>', 'not {"name"'),
    ("Sure! " + REFERENCE, "text outside"),
    (REFERENCE + " Let me check.", "text outside"),
    (fc("get_forecast", {"city": "Paris"}), "not offered: get_forecast"),
])
def test_malformed_calls_score_0(output, error):
    s = score_function_call(output, REFERENCE, OFFERED)
    assert (s.format_ok, s.name_ok, s.arguments_ok) == (False, False, False)
    assert error in s.error


@pytest.mark.parametrize("output, valid", [
    (REFERENCE, True),
    (fc("get_forecast", {"city": "Paris"}), True),  # a function not offered: still JSON
    ("Sure! " + REFERENCE + " Let me check.", True),  # text around the blocks: still JSON
    ('<function_call>{"name": "get_weather"}</function_call>', True),  # wrong keys: still a JSON object
    (REFERENCE + fc("get_time", {}), True),
    (REFERENCE + "\x00<function_call>{broken", True),  # after EOS is not the answer
    ("", False),
    ("The weather in Paris is nice.", False),
    ('<function_call>{"name": "get_weather", "arguments": {"city": "Paris"}', False),  # unbalanced
    ('<function_call>{"name": "get_weather", "arguments": {"city": "Paris",}}</function_call>', False),
    ("<function_call>{'name': 'get_weather', 'arguments': {}}</function_call>", False),
    ('<function_call>["get_weather", {}]</function_call>', False),  # JSON, but not an object
    (REFERENCE + "<function_call>{</function_call>", False),  # one bad block of two
    (REFERENCE + '</function_call><function_call>{"name": "x", "argu', False),  # tags counted equal, one block open
    ('<function_call>{"name": "get_weather", "arguments": {"x": NaN}}</function_call>', False),  # NaN is not JSON
    ("<function_call>" + "[" * 100000 + "]" * 100000 + "</function_call>", False),  # too deep to parse
])
def test_json_validity(output, valid):
    assert ev.json_valid(output) is valid
    assert score_function_call(output, REFERENCE, OFFERED).json_ok is valid


def test_numbers_are_compared_as_json_values():
    reference = fc("get_weather", {"city": "Paris", "days": 2, "ratio": 0.5, "tags": ["a", {"b": None}]})
    same = '<function_call>{"name": "get_weather", "arguments": {"ratio": 0.50, "days": 2.0, "city": "Paris", "tags": ["a", {"b": null}]}}</function_call>'
    assert fc_scores(same, reference) == (True, True, True)
    reordered = fc("get_weather", {"city": "Paris", "days": 2, "ratio": 0.5, "tags": [{"b": None}, "a"]})
    assert fc_scores(reordered, reference) == (True, True, False)  # list order matters


def test_parallel_calls_are_a_multiset():
    a, b = fc("get_weather", {"city": "Paris", "metric": True}), fc("get_time", {})
    reference = a + "\n" + b
    assert fc_scores(b + "\n" + a, reference) == (True, True, True)
    assert fc_scores(a, reference) == (True, False, False)  # one call missing
    assert fc_scores(a + b + b, reference) == (True, False, False)  # one too many


def test_reference_may_be_call_dicts_and_offered_may_be_names_or_empty():
    call = {"name": "get_weather", "arguments": {"city": "Paris", "metric": True}}
    assert fc_scores(REFERENCE, call, ["get_weather"]) == (True, True, True)
    assert fc_scores(REFERENCE, [call], ()) == (True, True, True)  # nothing offered: any name
    with pytest.raises(ValueError, match="reference"):
        score_function_call(REFERENCE, "not a call", OFFERED)


def test_every_starter_reference_call_scores_1(starter_val):
    records = [r for r in starter_val["function_call"] + starter_val["tool_use"] if "<function_call>" in r.target]
    assert len(records) > 200
    for r in records:
        assert fc_scores(r.target, r.target, r.schemas) == (True, True, True), r.id


# -- tool-use episodes


def test_episode_all_steps_right():
    refs = [fc("get_weather", {"city": "Paris"}), fc("get_time", {})]
    result = score_tool_episode(list(refs), refs, OFFERED)
    assert (result.steps, result.correct, result.all_correct, result.first_error) == (2, 2, True, None)
    assert result.step_accuracy == 1.0


def test_episode_with_one_wrong_step_is_wrong():
    refs = [fc("get_weather", {"city": "Paris"}), fc("get_time", {}), fc("get_weather", {"city": "Rome"})]
    outputs = [refs[0], "<function_call>{broken</function_call>", refs[2]]
    result = score_tool_episode(outputs, refs, OFFERED)
    assert (result.correct, result.all_correct, result.first_error) == (2, False, 1)
    assert result.step_scores == [True, False, True] and result.step_accuracy == pytest.approx(2 / 3)


@pytest.mark.parametrize("outputs, correct, first_error", [
    (["A"], 1, 1),  # a step missing
    (["A", "B", "B"], 2, 2),  # an extra call
    (["B", "A"], 0, 0),  # the right calls in the wrong order
])
def test_episode_missing_extra_or_reordered_steps(outputs, correct, first_error):
    calls = {"A": fc("get_weather", {"city": "Paris"}), "B": fc("get_time", {})}
    result = score_tool_episode([calls[o] for o in outputs], [calls["A"], calls["B"]])
    assert (result.correct, result.all_correct, result.first_error) == (correct, False, first_error)


def test_episode_as_one_transcript():
    a, b = fc("get_weather", {"city": "Paris"}), fc("get_time", {})
    transcript = a + '\n<tool_result>{"temp_c": 18}</tool_result>\nAssistant: ' + b + "\n<tool_result>12:00</tool_result>"
    assert score_tool_episode(transcript, [a, b]).all_correct
    assert not score_tool_episode(transcript, [b, a]).all_correct
    assert score_tool_episode(a, [a, b]).correct == 1


def test_episodes_group_and_order_starter_tool_use(starter_val):
    eps = episodes(reversed(starter_val["tool_use"]))
    assert len(eps) == len({r.group for r in starter_val["tool_use"]})
    for e in eps:
        prompts = [r.prompt for r in e.steps]
        assert all(later.startswith(earlier[:-len("Assistant: ")]) for earlier, later in zip(prompts, prompts[1:]))
        assert e.call_steps and all("<function_call>" in r.target for r in e.call_steps)


# -- bash


@pytest.mark.parametrize("parser", ["bashlex", "simple"])
@pytest.mark.parametrize("command", [
    "ls -la",
    "find . -name '*.py' | xargs grep -n TODO",
    "tar -czf backup.tar.gz ~/docs && echo done",
    'for f in *.txt; do mv "$f" "${f%.txt}.md"; done',
    "find /tmp -name '*.tmp' -exec rm {} \\; -print",
    "awk -F: '{print $1}' /etc/passwd | sort | uniq -c",
    "if [ -f config.yaml ]; then cat config.yaml; else echo missing >&2; fi",
    "echo \"today is $(date +%A)\"",
    "cat <<EOF > notes.txt\nit's a heredoc: | ; && are text here\nEOF",
    "FOO=1 make -j4 > build.log 2>&1",
    "./configure --prefix=/usr/local",
    "sudo apt-get install -y curl",
    "ls \\\n  -la  # a comment",
    "[[ -d build ]] && rm -r build",
    "echo $((2 + 3))",
    "`which python3` --version",  # a command chosen at run time, like $(which python3)
    "x=5",  # assignments only: a command without a command word
    "x=5; echo $x",
    "count=0 total=3 && echo $count",
])
def test_valid_commands(parser, command):
    pytest.importorskip("bashlex") if parser == "bashlex" else None
    s = score_bash(f"```bash\n{command}\n```", parser=parser)
    assert (s.format_ok, s.valid) == (True, True), s.error


@pytest.mark.parametrize("parser", ["bashlex", "simple"])
@pytest.mark.parametrize("command, error", [
    ("ls 'unterminated", "does not parse"),
    ('echo "unterminated', "does not parse"),
    ("ls |", "does not parse"),
    ("| grep x", "does not parse"),
    ("ls && && pwd", "does not parse"),
    ("if [ -f x ]; then cat x", "does not parse"),
    ("for f in *; do echo $f", "does not parse"),
    ("cat <file>", "does not parse"),  # a template placeholder, not a command
    ("echo hi >", "does not parse"),
    ("(cd /tmp && ls", "does not parse"),
    ("frobnicate-xyz --all", "unknown command: frobnicate-xyz"),
    ("ls | frobnicate-xyz", "unknown command: frobnicate-xyz"),
    ("echo $(frobnicate-xyz)", "unknown command: frobnicate-xyz"),
    ("Use the find command to search", "unknown command: Use"),
])
def test_invalid_commands_keep_format_credit(parser, command, error):
    pytest.importorskip("bashlex") if parser == "bashlex" else None
    s = score_bash(f"```bash\n{command}\n```", parser=parser)
    assert (s.format_ok, s.valid) == (True, False)
    assert error in s.error


@pytest.mark.parametrize("output, error", [
    ("ls -la", "no ```bash block"),
    ("```\nls -la\n```", "no ```bash block"),
    ("```sh\nls -la\n```", "no ```bash block"),
    ("```bash\nls -la", "no ```bash block"),
    ("```bash\n\n```", "empty command"),
    ("```bash\n   \n```", "empty command"),
    ("Run this:\n```bash\nls -la\n```", "text outside"),
    ("```bash\nls\n```\n```bash\npwd\n```", "text outside"),
])
def test_malformed_bash_scores_0(output, error):
    s = score_bash(output)
    assert (s.format_ok, s.valid) == (False, False) and error in s.error


def test_bash_output_ends_at_eos_and_known_commands_make_it_machine_independent():
    assert score_bash("```bash\nls\n```\x00garbage").valid
    assert not score_bash("```bash\nmytool --go\n```", known_commands=()).valid
    assert score_bash("```bash\nmytool --go\n```", known_commands={"mytool"}).valid
    assert score_bash("```bash\ngrep -r x .\n```", known_commands=()).valid  # COMMON_COMMANDS
    assert score_bash("```bash\ncd /tmp && pwd\n```", known_commands=()).valid  # builtins


def test_parsers_find_the_same_commands():
    pytest.importorskip("bashlex")
    script = "cd /srv && git pull | tee log; (make test || echo failed) && echo $(whoami) `hostname`"
    assert command_names(script, "bashlex") == command_names(script, "simple") == [
        "cd", "git", "tee", "make", "echo", "echo", "whoami", "hostname"]
    with pytest.raises(BashSyntaxError):
        command_names("ls 'x", "simple")


@pytest.mark.parametrize("parser", ["bashlex", "simple"])
def test_a_block_of_comments_only_has_no_command(parser):
    pytest.importorskip("bashlex") if parser == "bashlex" else None
    s = score_bash("```bash\n# list the files\n  # here\n```", parser=parser)
    assert (s.format_ok, s.valid, s.error) == (True, False, "no command in the block")


@pytest.mark.parametrize("text", ["</function_call>x<function_call>", '</function_call>{"name": "f", "arguments": {}}<function_call>'])
def test_a_closing_tag_before_its_opening_is_unbalanced(text):
    for whole in (True, False):
        assert ev.parse_function_calls(text, whole=whole) == ([], "unbalanced <function_call> tags")


def test_without_bashlex_the_simple_parser_decides(monkeypatch):
    monkeypatch.setattr(ev, "_bashlex", lambda: None)
    assert ev.shell_parser() == "simple"
    assert score_bash("```bash\nls | wc -l\n```").valid
    assert "does not parse" in score_bash("```bash\nls |\n```").error
    with pytest.raises(RuntimeError, match="pip install bashlex"):
        command_names("ls", "bashlex")


# -- coherence


def test_coherence_with_a_given_vocabulary_is_the_product_of_its_two_parts():
    vocab = ev.build_vocabulary(["The cat sat on the mat."])
    assert vocab == {"the", "cat", "sat", "on", "mat"}
    text = "The cat sat on the hat, 3 times."
    assert word_validity(text, vocab) == pytest.approx(6 / 8)  # hat and times are unknown; 3 is a number
    assert distinct_n(text) == 1.0
    assert coherence(text, vocab) == pytest.approx(0.75)
    loop = "the cat the cat the cat the cat"
    assert word_validity(loop, vocab) == 1.0
    assert distinct_n(loop) == pytest.approx(2 / 6)
    assert coherence(loop, vocab) == pytest.approx(1 / 3)
    assert coherence("", vocab) == coherence("  ... !! ", vocab) == 0.0


def test_coherence_separates_real_text_from_noise_and_loops(starter_val):
    real = [r.target for r in starter_val["text_completion"][:40] + starter_val["chain_of_thought"][:40]]
    scores = [coherence(t) for t in real]  # the default vocabulary: the starter train split
    assert sum(scores) / len(scores) > 0.85
    import random
    rng = random.Random(0)
    noise = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz      .,'") for _ in range(600))
    assert coherence(noise) < 0.15
    assert coherence("And the king said to the king, " * 20) < 0.15


# -- intervals and the overall score


def test_wilson_interval_known_values():
    # 95% Wilson intervals as tabulated (z = 1.96): 0/10 -> [0, 0.2775], 5/10 -> [0.2366, 0.7634]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(1, 5) == pytest.approx((0.0362, 0.6245), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_overall_weights_each_capability_the_same():
    assert overall({"coherence": 0.6, "function_format_accuracy": 1.0, "argument_accuracy": 0.5}) == pytest.approx(
        (0.6 + 0.75) / 2)
    full = {"coherence": 0.5, "function_format_accuracy": 0.8, "argument_accuracy": 0.4,
            "bash_format_accuracy": 1.0, "command_validity": 0.6, "multi_step_accuracy": 0.2}
    assert overall(full) == pytest.approx((0.5 + 0.6 + 0.8 + 0.2) / 4)
    assert overall({"coherence": Metric("coherence", 0.3, 10, 0.1, 0.5)}) == 0.3
    assert overall({"step_accuracy": 1.0}) is None


# -- over val records, with a stand-in for the model


@pytest.fixture(scope="module")
def starter_val():
    from bdh.data import load_splits
    return {task: split.val for task, split in load_splits(None).items()}


def test_evaluate_outputs_with_reference_answers(starter_val):
    answers = {r.prompt: r.target for rs in starter_val.values() for r in rs}
    report = evaluate_outputs(starter_val, answers.__getitem__, max_samples=30)
    m = {name: metric["value"] for name, metric in report["metrics"].items()}
    assert m["function_format_accuracy"] == m["argument_accuracy"] == m["function_name_accuracy"] == 1.0
    assert m["json_validity"] == 1.0
    assert m["bash_format_accuracy"] == 1.0
    assert m["multi_step_accuracy"] == 1.0 and report["metrics"]["multi_step_accuracy"]["n"] == 5
    assert m["coherence"] > 0.85
    # the starter bash references include cheat-sheet placeholders (<file>): not all are valid shell
    assert 0.4 < m["command_validity"] < 1.0
    ci = report["metrics"]["multi_step_accuracy"]
    assert (ci["low"], ci["high"]) == pytest.approx(wilson_interval(5, 5))
    assert report["tasks"]["tool_use"]["step_accuracy"]["value"] == 1.0
    assert 0.8 < report["overall"] <= 1.0
    assert len(report["samples"]) == 30 * 4 + report["tasks"]["tool_use"]["step_accuracy"]["n"]
    json.dumps(report)


def test_evaluate_outputs_with_a_model_that_writes_nothing(starter_val):
    report = evaluate_outputs(starter_val, lambda prompt: "", max_samples=5)
    assert all(metric["value"] == 0.0 for metric in report["metrics"].values())
    assert report["overall"] == 0.0
    assert report["metrics"]["argument_accuracy"]["high"] == pytest.approx(wilson_interval(0, 5)[1])


@pytest.mark.parametrize("max_samples", [None, 3])
def test_prompts_to_answer_are_the_prompts_evaluate_outputs_asks(starter_val, max_samples):
    asked = []
    evaluate_outputs(starter_val, lambda p: asked.append(p) or "", max_samples)
    assert prompts_to_answer(starter_val, max_samples) == asked
