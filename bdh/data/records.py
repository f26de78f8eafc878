"""The one record format every task uses, the byte-level prompt format, and validation.

A record is what the model reads (``prompt``) and what it must write next (``target``); the loss
covers the target only. The prompt is already laid out in the prompt format below, so training
text is always ``prompt + target``:

    Functions:                                   (function_call / tool_use only: one schema per line)
    {"name": "get_weather", "description": ..., "parameters": {...}}
    User: What's the weather in Paris?
    Assistant: <function_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</function_call>
    <tool_result>{"temp_c": 18}</tool_result>
    Assistant: It is 18 degrees in Paris.

Function calls are ``<function_call>{"name": ..., "arguments": {...}}</function_call>``, bash
commands a fenced ```bash block, tool results ``<tool_result>...</tool_result>`` turns. Every
target starts right after ``"Assistant: "``.
"""
import dataclasses
import gzip
import json
import os
import re
import shutil
import tempfile
import zlib
from collections import Counter
from typing import Callable, Iterable, Iterator, Optional, TypeVar

from bdh.metrics import parse_function_calls

TASKS = ("text_completion", "chain_of_thought", "function_call", "bash_command", "tool_use")

# The tasks whose targets that hold a <function_call> are scored as calls (bdh.metrics.score_record):
# such a target must be nothing but call blocks.
CALL_TASKS = ("function_call", "tool_use")

# Longest record (prompt + target, in UTF-8 bytes) accepted on load unless told otherwise.
DEFAULT_MAX_BYTES = 8192

# Text cannot hold a lone surrogate unless it came from bytes that were not UTF-8 (read with
# errors="surrogateescape") or from a "\udcxx" JSON escape; such text cannot be encoded.
SURROGATE_RE = re.compile("[\ud800-\udfff]")

TEXT_FIELDS = ("id", "task", "source", "prompt", "target", "group")


@dataclasses.dataclass(frozen=True)
class Record:
    """One training example.

    id:      stable identifier, ``"<source>:<id in that source>"`` (logged with bad batches).
    task:    one of TASKS.
    source:  the loader that made it (see bdh.data.sources.SOURCES).
    prompt:  the text the model reads, in the prompt format, ending where the target starts.
    target:  what the model must produce; the only bytes that carry loss.
    schemas: the function schemas offered in the prompt (function_call, tool_use), else empty.
    group:   records with the same group always land in the same split (the steps of one
             conversation); empty means the record's normalised prompt.
    """

    id: str
    task: str
    source: str
    prompt: str
    target: str
    schemas: tuple = ()
    group: str = ""

    def __post_init__(self):
        """Reject a field of the wrong type (TypeError naming it): a converter given a number or null
        where text belongs then fails like on any other malformed row, and the row is skipped."""
        for name in TEXT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"field {name!r} must be a string, got {type(value).__name__}")
        if not isinstance(self.schemas, tuple) or not all(isinstance(s, dict) for s in self.schemas):
            raise TypeError("field 'schemas' must be a tuple of objects")

    def to_json(self) -> str:
        row = dataclasses.asdict(self)
        row["schemas"] = list(self.schemas)
        return json.dumps(row, ensure_ascii=False)

    @property
    def split_key(self) -> str:
        return self.group or normalise(self.prompt)


# ---------------------------------------------------------------------------------------------
# The prompt format


def normalise(text: str) -> str:
    """Case- and whitespace-insensitive form of a prompt, used for dedupe and split assignment."""
    return " ".join(text.lower().split())


def function_call(name: str, arguments: dict) -> str:
    return "<function_call>" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "</function_call>"


def tool_result(result) -> str:
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
    return "<tool_result>" + text + "</tool_result>"


def bash_block(command: str) -> str:
    """command in a fenced ```bash block; ValueError for a blank command (the scorer's "empty command")."""
    if not command.strip():
        raise ValueError("the command is empty")
    return "```bash\n" + command.strip("\n") + "\n```"


def schema_block(schemas: Iterable[dict]) -> str:
    """The schemas as the model sees them: a ``Functions:`` line, then one JSON object per line."""
    lines = [json.dumps(s, ensure_ascii=False) for s in schemas]
    return "Functions:\n" + "\n".join(lines) + "\n" if lines else ""


def chat_prompt(turns: Iterable[tuple], schemas: Iterable[dict] = ()) -> str:
    """Lay out a conversation so far and open the assistant's next turn.

    turns: (role, text) pairs; role is "system", "user", "assistant" or "tool" (a tool result,
    already wrapped by tool_result()). The result ends with ``"Assistant: "``. A blank user turn is a
    ValueError: a row with an empty question is no example (its converter's caller skips it).
    """
    prefix = {"system": "System: ", "user": "User: ", "assistant": "Assistant: ", "tool": ""}
    lines = []
    for n, (role, text) in enumerate(turns):
        if role not in prefix:
            raise ValueError(f"turns: unknown role {role!r}; expected one of {sorted(prefix)}")
        lines.append(prefix[role] + text)
        if role == "user" and not text.strip():
            raise ValueError(f"turns[{n}]: the user turn is empty")
    return schema_block(schemas) + "".join(line + "\n" for line in lines) + "Assistant: "


# ---------------------------------------------------------------------------------------------
# Validation


def check_function_calls(text: str, whole: bool = False) -> Optional[str]:
    """None if text has no <function_call> tag or every block is a call bdh.metrics can score (JSON
    {"name": str, "arguments": {...}} and nothing else), else why not: the same parser as the scoring.
    whole: the text must also be nothing but call blocks, as the scorer reads a reference call."""
    if "<function_call>" not in text and "</function_call>" not in text:
        return None
    return parse_function_calls(text, whole=whole)[1]


def invalid_reason(record: Record, max_bytes: int = DEFAULT_MAX_BYTES) -> Optional[str]:
    """The reason a record must be skipped, or None if it is fine. Reasons are short stable names."""
    if record.task not in TASKS:
        return "unknown_task"
    if not record.target.strip():
        return "empty_target"
    if check_function_calls(record.target, whole=record.task in CALL_TASKS) is not None:
        return "invalid_function_call"
    if "\x00" in record.prompt or "\x00" in record.target:
        return "nul_byte"  # byte 0 is the end-of-target token (bdh.data.tokens.EOS)
    if any(has_bad_bytes(getattr(record, name)) for name in TEXT_FIELDS):
        return "invalid_utf8"
    if len(record.prompt.encode()) + len(record.target.encode()) > max_bytes:
        return "too_long"
    return None


def has_bad_bytes(text: str) -> bool:
    """True if text holds bytes that were not UTF-8 (see SURROGATE_RE)."""
    return SURROGATE_RE.search(text) is not None


def record_from_row(row) -> Record:
    """A Record from a parsed JSON line; raises ValueError or TypeError naming the bad field."""
    if not isinstance(row, dict):
        raise ValueError("a record must be a JSON object")
    schemas = row.get("schemas", [])
    if not isinstance(schemas, list):
        raise ValueError("field 'schemas' must be a list of objects")
    fields = {name: row.get(name, "" if name == "group" else None) for name in TEXT_FIELDS}
    return Record(schemas=tuple(schemas), **fields)


def open_text(path: str):
    """Open a text file for reading, gzip-compressed when its name ends in .gz. Bytes that are not
    UTF-8 are kept as lone surrogates, so the records holding them are skipped as invalid_utf8."""
    opener = gzip.open if path.endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8", errors="surrogateescape")


def file_lines(path: str) -> Iterator[str]:
    """The lines of a text file (open_text); a .gz file that is truncated or not gzip data raises
    ValueError naming it, where gzip raises EOFError, BadGzipFile or zlib.error part-way through."""
    try:
        with open_text(path) as f:
            yield from f
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path}: truncated or not gzip data ({type(e).__name__}: {e})") from None


def read_records(path: str, skipped: Counter, max_bytes: int = DEFAULT_MAX_BYTES,
                 task: Optional[str] = None) -> Iterator[Record]:
    """Yield the valid records of a JSON-lines file (.jsonl or .jsonl.gz); count each skipped line
    in skipped[reason]. With task given (the folder the file is in), a record of another task is
    skipped as wrong_task. A .gz file that is truncated or not gzip data is a ValueError naming it.
    """
    for line in file_lines(path):
        if not line.strip():
            continue
        try:
            record = record_from_row(json.loads(line))
        except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deep to parse
            skipped["malformed_json"] += 1
            continue
        except (ValueError, TypeError):
            skipped["missing_field"] += 1
            continue
        reason = invalid_reason(record, max_bytes)
        if not reason and task is not None and record.task != task:
            reason = "wrong_task"
        if reason:
            skipped[reason] += 1
            continue
        yield record


def format_counts(counts: Counter) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items())) or "none"


# ---------------------------------------------------------------------------------------------
# Atomic writes

T = TypeVar("T")


def file_mode(mode: int) -> int:
    """mode less the process's umask: what an ordinary open() or mkdir() would give."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def fsync_dir(directory: str) -> None:
    """Make a folder's entries (renames into it) durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path: str, text: str) -> None:
    """Write text to path (gzip-compressed if it ends in .gz) so that readers see the old file or the
    whole new one, never a part: a temporary file beside it, fsync, rename, fsync the folder."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    data = text.encode()
    if path.endswith(".gz"):
        data = gzip.compress(data, mtime=0)  # mtime 0: the same text gives the same bytes
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode(0o666))  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def replace_dir(path: str, build: Callable[[str], T]) -> T:
    """Replace the folder at path as a whole: build(folder) fills a new temporary folder beside it,
    which is then renamed into place (swap_in), so that readers never see a mix of old and new files
    and a failed or interrupted build leaves the old folder as it was. A symlink at path is kept: the
    folder it points to is replaced. Returns what build returned."""
    path = os.path.realpath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    new = tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(path) + ".", suffix=".new")
    try:
        os.chmod(new, file_mode(0o777))  # mkdtemp makes it private; give it a normal folder's mode
        result = build(new)
        swap_in(new, path)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return result


def swap_in(new: str, path: str) -> None:
    """Rename the folder new to path. A folder already at path is first renamed aside (and put back
    if the second rename fails), then removed; between the two renames, path is briefly absent."""
    if not os.path.lexists(path):
        os.rename(new, path)
    else:
        old = new + ".old"
        os.rename(path, old)
        try:
            os.rename(new, path)
        except BaseException:
            os.rename(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)  # the new folder is in place: a leftover is only litter
    fsync_dir(os.path.dirname(path))
