"""Generation metrics for the Hatching model: pure functions on the text a model wrote.

Each metric reads the byte-level formats of bdh.data (see bdh/data/records.py) exactly, and needs
no model; ``evaluate_outputs(records, generate)`` runs them over val records with any
``generate(prompt) -> text`` function, which is all a checkpoint-driven evaluator has to supply.

Function calls (function_call task, and each call step of a tool_use episode)
    ``score_function_call(output, reference, offered_schemas)``:

    * **function format accuracy**: the whole output (surrounding whitespace aside) is one or more
      ``<function_call>{"name": str, "arguments": {...}}</function_call>`` blocks, each body JSON with
      exactly those two keys, and every name is one of the functions the prompt offered.
    * **argument accuracy**: format correct, and the calls equal the reference's after JSON
      normalisation (parsed, keys sorted, 2.0 == 2, true != 1). Several calls in one answer (BFCL's
      parallel calls) are compared as a multiset: their order does not matter.
    * function name accuracy (a diagnostic between the two): format correct and the called names
      equal the reference's names (a multiset).
    * JSON validity (the training guide's early stage-2 signal, weaker than format accuracy): the
      output holds at least one balanced ``<function_call>`` block and every block's body parses as
      a JSON object, whatever its keys, the names called or the text around the blocks.

Bash (bash_command task) ``score_bash(output)``:

    * **bash format accuracy**: the whole output is one fenced block ```` ```bash\\n...\\n``` ```` whose
      command is not blank.
    * **command validity**: format correct, the command parses as shell, and the first word of
      every simple command in it (pipelines, lists, ``$(...)``, loop and if bodies) is a real
      command: a shell builtin or keyword (BASH_BUILTINS), one of COMMON_COMMANDS, or one on this
      machine's PATH (``shutil.which``; pass ``known_commands`` for numbers that do not depend on
      the machine). ``./script``-style paths and words starting with ``$`` or a backquote (chosen
      at run time) cannot be checked and are accepted; a wrapper's argument (``sudo X``) is not
      checked. A command of assignments only (``x=5``) has no command word and is valid; a block of
      nothing but comments is not. The parser is ``bashlex`` (a bash parser; ``pip install bashlex``
      or the ``eval`` extra; optional because it is GPL-licensed) when installed, else
      ``_simple_command_names`` here, a small quote-aware tokeniser that checks the grammar's outline
      (see its docstring). The two give the same validity on all 204 of the starter set's val answers
      and all 1699 of its train answers.

Tool use (tool_use task) ``score_tool_episode(outputs, reference_calls)``:

    * **multi-step accuracy**: an episode counts when every call step is right (argument accuracy,
      in order); step accuracy (the fraction of call steps right) is reported beside it.

Text (text_completion, chain_of_thought) ``coherence(text)``:

    * **coherence** = word validity x distinct-3. *Word validity*: the fraction of the text's
      whitespace-separated words (lowercased, surrounding punctuation stripped, hyphenated parts
      each) that are numbers or occur in a vocabulary built from the training text (by default the
      bundled starter set's text_completion and chain_of_thought train split). *Distinct-3*: unique
      word trigrams / all word trigrams (1 below three words). The first factor measures what a
      byte-level model learns first, spelling real words (random bytes score 0; the starter val
      answers 0.96 for text, 0.91 for chain of thought); the second catches the commonest failure
      of greedy decoding, looping ("the king the king the king" scores low although every word is
      real). Both are counts, in [0, 1], need no model, and are defined the same for every
      checkpoint. Empty text scores 0.

Overall score ``overall(metrics)``: the mean over the capabilities present, each weighing the
same: text (coherence), function calling (format and argument accuracy, half each), bash (format
accuracy and command validity, half each), tool use (multi-step accuracy). See OVERALL_WEIGHTS.

Confidence intervals: every rate comes with its Wilson score interval (95%), which stays inside
[0, 1] and is honest for the small samples of a quick evaluation (5 episodes, 20 prompts);
``wilson_interval(successes, n)``. Coherence, a mean of scores in [0, 1], gets a normal-approximation
interval clipped to [0, 1].
"""
import collections
import dataclasses
import functools
import json
import math
import os
import re
import shutil
import string
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

FUNCTION_CALL_RE = re.compile(r"<function_call>(.*?)</function_call>", re.DOTALL)
BASH_BLOCK_RE = re.compile(r"```bash[ \t]*\n(.*?)\n?```", re.DOTALL)
EOS_CHAR = "\x00"  # bdh.data.tokens.EOS: generation stops there

# ---------------------------------------------------------------------------------------------
# Function calls


@dataclasses.dataclass
class FunctionCallScore:
    """The scores of one answer that should be function call(s). error: why the format failed."""

    format_ok: bool
    name_ok: bool
    arguments_ok: bool
    calls: list
    error: Optional[str] = None
    json_ok: bool = False


def _strip_output(text: str) -> str:
    return text.split(EOS_CHAR, 1)[0].strip()


def parse_function_calls(text: str, whole: bool = True) -> Tuple[list, Optional[str]]:
    """The calls in text, as [{"name": str, "arguments": dict}, ...], and None; or the calls that
    parsed and the reason the text is not well-formed calls.

    whole: the text must be nothing but call blocks (and whitespace); otherwise other text may
    surround them (tool results, replies).
    """
    text = _strip_output(text) if whole else text
    if "<function_call>" not in text:
        return [], "no <function_call> block"
    outside = FUNCTION_CALL_RE.sub("", text)
    if "<function_call>" in outside or "</function_call>" in outside:  # also a closing tag before its opening
        return [], "unbalanced <function_call> tags"
    if whole and outside.strip():
        return [], "text outside the <function_call> blocks"
    calls = []
    for body in FUNCTION_CALL_RE.findall(text):
        try:
            call = strict_json(body)
        except (ValueError, RecursionError) as e:
            return calls, f"call body is not JSON ({e})"
        if not isinstance(call, dict) or set(call) != {"name", "arguments"}:
            return calls, 'call body is not {"name": ..., "arguments": {...}}'
        if not isinstance(call["name"], str) or not isinstance(call["arguments"], dict):
            return calls, "name must be a string and arguments an object"
        calls.append(call)
    return calls, None


def strict_json(text: str):
    """``json.loads`` without the non-standard NaN / Infinity / -Infinity it accepts by default."""
    def reject(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=reject)


def json_valid(text: str) -> bool:
    """JSON validity: text (up to EOS) holds at least one <function_call> block, no tag outside a
    complete block, and every block's body is a JSON object."""
    text = _strip_output(text)
    bodies = FUNCTION_CALL_RE.findall(text)
    leftover = FUNCTION_CALL_RE.sub("", text)
    if not bodies or "<function_call>" in leftover or "</function_call>" in leftover:
        return False
    try:
        return all(isinstance(strict_json(body), dict) for body in bodies)
    except (ValueError, RecursionError):
        return False


def _reference_calls(reference) -> list:
    """Reference call(s) as a list of dicts, from a target string, one call dict or a list of them."""
    if isinstance(reference, str):
        calls, error = parse_function_calls(reference)
        if error:
            raise ValueError(f"reference is not well-formed function call(s): {error}")
        return calls
    if isinstance(reference, Mapping):
        return [dict(reference)]
    return [dict(c) for c in reference]


def _offered_names(offered_schemas) -> set:
    names = set()
    for schema in offered_schemas or ():
        if isinstance(schema, str):
            names.add(schema)
        elif isinstance(schema, Mapping) and isinstance(schema.get("name"), str):
            names.add(schema["name"])
        else:
            raise ValueError(f"offered_schemas: expected schema dicts with a 'name' or names, got {schema!r}")
    return names


def _plain(value):
    """JSON value with integral floats as ints (so 2.0 == 2) and bools kept apart from numbers."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def canonical(value) -> str:
    """The JSON normal form used to compare calls: keys sorted, no spaces, 2.0 written as 2."""
    return json.dumps(_plain(value), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def score_function_call(output: str, reference, offered_schemas=()) -> FunctionCallScore:
    """Score one answer against the reference call(s).

    output:          the model's text after ``Assistant: `` (anything after EOS is ignored).
    reference:       the reference target string (Record.target), a call dict or a list of them.
    offered_schemas: the schemas the prompt offered (Record.schemas) or their names; empty means
                     any name passes the format check.
    """
    reference = _reference_calls(reference)
    calls, error = parse_function_calls(output)
    offered = _offered_names(offered_schemas)
    if error is None and offered:
        unknown = [c["name"] for c in calls if c["name"] not in offered]
        if unknown:
            error = f"calls a function that was not offered: {', '.join(unknown)}"
    json_ok = json_valid(output)
    if error is not None:
        return FunctionCallScore(False, False, False, calls, error, json_ok)
    name_ok = sorted(c["name"] for c in calls) == sorted(c["name"] for c in reference)
    arguments_ok = sorted(map(canonical, calls)) == sorted(map(canonical, reference))
    return FunctionCallScore(True, name_ok, arguments_ok, calls, json_ok=json_ok)


# ---------------------------------------------------------------------------------------------
# Tool-use episodes


@dataclasses.dataclass
class EpisodeScore:
    """One tool-use episode: steps = reference call steps, correct = steps right (in order);
    all_correct is the multi-step accuracy of this episode; first_error the first wrong step."""

    steps: int
    correct: int
    all_correct: bool
    first_error: Optional[int]
    step_scores: list

    @property
    def step_accuracy(self) -> float:
        return self.correct / self.steps if self.steps else 0.0


def score_tool_episode(outputs: Union[str, Sequence[str]], reference_calls: Sequence,
                       offered_schemas=()) -> EpisodeScore:
    """Score a tool-use episode.

    outputs:         one model output per call step, in order (each step generated from the
                     episode so far, as the tool_use records lay it out); or one string holding the
                     whole episode, in which case its calls are taken in order from among the other
                     turns (tool results, replies) and compared position by position.
    reference_calls: per step, the reference target (a string with the call(s)), a call dict or a
                     list of call dicts.
    A step is right when its call(s) equal the reference's, arguments included (argument
    accuracy); the episode is right when every step is, and there are no missing or extra steps.
    """
    if not reference_calls:
        raise ValueError("reference_calls: an episode needs at least one call step")
    if isinstance(outputs, str):
        calls, _ = parse_function_calls(outputs, whole=False)
        flat = [call for step in reference_calls for call in _reference_calls(step)]
        step_scores = [i < len(calls) and canonical(calls[i]) == canonical(ref) and
                       (not offered_schemas or calls[i]["name"] in _offered_names(offered_schemas))
                       for i, ref in enumerate(flat)]
        extra = len(calls) > len(flat)
    else:
        outputs = list(outputs)
        step_scores = [i < len(outputs) and score_function_call(outputs[i], ref, offered_schemas).arguments_ok
                       for i, ref in enumerate(reference_calls)]
        extra = len(outputs) > len(reference_calls)
    step_scores = [bool(s) for s in step_scores]
    wrong = [i for i, ok in enumerate(step_scores) if not ok]
    return EpisodeScore(len(step_scores), sum(step_scores), not wrong and not extra,
                        wrong[0] if wrong else (len(step_scores) if extra else None), step_scores)


@dataclasses.dataclass
class Episode:
    """The records of one tool-use conversation (one ``group``), in order."""

    group: str
    steps: list

    @property
    def call_steps(self) -> list:
        return [r for r in self.steps if "<function_call>" in r.target]


def episodes(records: Iterable) -> List[Episode]:
    """Group tool_use records into episodes (by ``group``, first-seen order); within an episode the
    steps are ordered by prompt length (each step's prompt holds the ones before it)."""
    groups = collections.OrderedDict()
    for record in records:
        groups.setdefault(record.group or record.id, []).append(record)
    return [Episode(g, sorted(rs, key=lambda r: len(r.prompt))) for g, rs in groups.items()]


# ---------------------------------------------------------------------------------------------
# Bash


BASH_BUILTINS = frozenset("""
: . [ [[ ]] alias bg bind break builtin caller cd command compgen complete compopt continue declare
dirs disown echo enable eval exec exit export false fc fg getopts hash help history jobs kill let
local logout mapfile popd printf pushd pwd read readarray readonly return set shift shopt source
suspend test times trap true type typeset ulimit umask unalias unset wait
""".split())

BASH_KEYWORDS = frozenset("if then else elif fi case esac for select while until do done in function time { } ! "
                          "coproc".split())

# Common commands of Linux and macOS systems and their usual tools, so that the validity of the
# usual answers does not depend on what the evaluating machine has installed.
COMMON_COMMANDS = frozenset("""
awk base64 basename bash bc bunzip2 bzip2 cal cat chgrp chmod chown chroot cksum clear cmp column
comm cp crontab csplit curl cut date dd df diff diff3 dig dirname dmesg du egrep env expand expr
factor fgrep file find fmt fold free fuser gawk getent grep groups gunzip gzip head hexdump host
hostname hostnamectl htop iconv id ifconfig install ip iptables jobs join journalctl kill killall
last less ln locale locate logger login look ls lsattr lsblk lscpu lsof lspci lsusb man md5sum
mkdir mkfifo mknod mktemp more mount mv nc netcat netstat nice nl nohup nproc nslookup od passwd
paste patch pgrep pidof ping ping6 pkill pr printenv ps pstree pv pwd readlink realpath renice
reset rev rm rmdir route rsync scp screen script sed seq service sftp sh sha1sum sha256sum
sha512sum shred shuf shutdown sleep sort split ss ssh ssh-add ssh-agent ssh-copy-id ssh-keygen stat
strings stty su sudo sum swapoff swapon sync sysctl systemctl tac tail tar tee telnet time timeout
tmux top touch tr traceroute tree truncate tsort tty umount uname unexpand uniq unlink unxz unzip
uptime useradd userdel usermod users vi vim view w watch wc wget whatis whereis which who whoami
xargs xxd xz yes zcat zip zsh dash ksh fish csh tcsh
apt apt-get apt-cache aptitude dpkg dnf yum rpm zypper pacman apk brew port snap flatpak
pip pip3 pipx python python3 python2 conda npm npx node yarn pnpm gem ruby perl php go cargo rustc
rustup java javac mvn gradle dotnet make cmake gcc g++ cc clang ld gdb strace ltrace valgrind
git svn hg docker docker-compose podman kubectl helm minikube terraform ansible vagrant aws gcloud
az heroku
nano emacs code open xdg-open pbcopy pbpaste xclip say osascript defaults launchctl diskutil
networksetup softwareupdate mdfind sw_vers caffeinate
jq yq sqlite3 mysql psql mongo redis-cli openssl gpg ffmpeg convert identify youtube-dl yt-dlp
pandoc lynx links w3m nmap tcpdump whois arp ethtool iwconfig nmcli ufw firewall-cmd
adb fastboot lsmod modprobe insmod rmmod chkconfig update-rc.d sysctl visudo crontab at batch
useradd groupadd groupdel gpasswd chpasswd newgrp fdisk parted mkfs mkswap fsck blkid e2fsck
tune2fs resize2fs losetup cryptsetup lvcreate pvcreate vgcreate mdadm hdparm smartctl sfdisk
http socat ncat mysqldump virtualenv xrandr ldconfig rename cpio rpm2cpio ncdu keytool pdftk zfs
zpool brctl snmpwalk sbatch squeue scancel ab
""".split())


class BashSyntaxError(ValueError):
    """The command does not parse as shell."""


def _bashlex():
    try:
        import bashlex
    except ImportError:
        return None
    return bashlex


def shell_parser() -> str:
    """The parser command validity uses: "bashlex" when installed, else "simple"."""
    return "bashlex" if _bashlex() is not None else "simple"


def _bashlex_command_names(script: str) -> List[str]:
    """Command names from bashlex's parse tree. bashlex does not implement some of bash (``[[ ]]``,
    ``case``, ``select``, ``time``, ``coproc``, ``$((...))``): for a script using them (bashlex raises
    NotImplementedError, or the script has ``[[`` or ``((``) the simple parser decides instead."""
    bashlex = _bashlex()
    if "[[" in script or "((" in script:
        return _simple_command_names(script)
    try:
        trees = bashlex.parse(script)
    except NotImplementedError:
        return _simple_command_names(script)
    except Exception as e:  # bashlex's ParsingError / MatchedPairError, and others on odd input
        raise BashSyntaxError(str(e)) from e
    names = []

    def walk(node):
        if node.kind == "command":
            words = [p for p in node.parts if p.kind == "word"]
            if words:
                names.append(words[0].word)
        for attr in ("parts", "list"):
            for child in getattr(node, attr, None) or ():
                walk(child)
        for attr in ("command", "output"):
            child = getattr(node, attr, None)
            if child is not None and hasattr(child, "kind"):
                walk(child)

    for tree in trees:
        walk(tree)
    return names


# The fallback parser: a small quote-aware tokeniser and a checker of the shell grammar's outline.
_OPERATORS = ("<<<", "<<-", "&>>", "$((", "&&", "||", ";;", "|&", "<<", ">>", "&>", ">&", "<&", ">|", "<>",
              "$(", "<(", ">(", ";", "&", "|", "<", ">", "(", ")", "\n")
_REDIRECTS = {"<", ">", ">>", "<<", "<<-", "<<<", ">&", "<&", "&>", "&>>", ">|", "<>"}
_CONTROL = {";", "&", "&&", "||", "|", "|&", ";;"}
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=")


def _closing(script: str, i: int, quote: str) -> int:
    """Index just past the quote that closes the one at script[i] (backslash escapes count, except
    in single quotes); BashSyntaxError when there is none."""
    j = i + 1
    while j < len(script):
        if script[j] == "\\" and quote != "'":
            j += 2
            continue
        if script[j] == quote:
            return j + 1
        j += 1
    raise BashSyntaxError(f"no closing {quote}")


def _matching(script: str, i: int, open_: str, close: str) -> int:
    """Index just past the bracket that closes the one at script[i] (quotes skipped)."""
    depth, j = 0, i
    while j < len(script):
        c = script[j]
        if c in "'\"`":
            j = _closing(script, j, c)
            continue
        if c == "\\":
            j += 2
            continue
        depth += c == open_
        depth -= c == close
        j += 1
        if depth == 0:
            return j
    raise BashSyntaxError(f"no closing {close}")


def _tokens(script: str) -> List[Tuple[str, str]]:
    """("word", text) and ("op", operator) tokens: quotes, escapes, ${...} and $((...)) stay inside
    words, comments are dropped, and heredoc bodies are skipped. Operators inside quotes or escaped
    (``\\;`` in ``find -exec``) are word characters, as in the shell."""
    tokens, word, heredocs, i, n = [], [], [], 0, len(script)

    def end_word():
        if word:
            tokens.append(("word", "".join(word)))
            word.clear()

    while i < n:
        c = script[i]
        if c == "\\":
            if script.startswith("\\\n", i):  # line continuation
                i += 2
                continue
            word.append(script[i:i + 2])
            i += 2
        elif c in "'\"`":
            j = _closing(script, i, c)
            word.append(script[i:j])
            i = j
        elif script.startswith("${", i):
            j = _matching(script, i + 1, "{", "}")
            word.append(script[i:j])
            i = j
        elif script.startswith("$((", i) or script.startswith("((", i) and not word:
            j = _matching(script, i + (c == "$"), "(", ")")
            word.append(script[i:j])
            i = j
        elif c == "#" and not word:
            while i < n and script[i] != "\n":
                i += 1
        elif c in " \t\r":
            end_word()
            i += 1
        else:
            op = next((o for o in _OPERATORS if script.startswith(o, i)), None)
            if op is None or op == "$((":
                word.append(c)
                i += 1
                continue
            if op in _REDIRECTS and word and "".join(word).isdigit():
                word.clear()  # a file-descriptor number: 2>&1
            end_word()
            tokens.append(("op", op))
            i += len(op)
            if op in ("<<", "<<-"):
                m = re.match(r"[ \t]*(['\"]?)([^\s'\";&|()<>]+)\1", script[i:])
                if not m:
                    raise BashSyntaxError(f"heredoc {op!r} without a delimiter")
                tokens.append(("word", m.group(2)))
                heredocs.append((m.group(2), op == "<<-"))
                i += m.end()
            elif op == "\n" and heredocs:
                for delimiter, strip_tabs in heredocs:  # skip each body, up to its delimiter line
                    while True:
                        end = script.find("\n", i)
                        line = script[i:] if end < 0 else script[i:end]
                        i = n if end < 0 else end + 1
                        if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                            break
                        if end < 0:
                            raise BashSyntaxError(f"heredoc without its {delimiter!r} line")
                heredocs = []
    end_word()
    if heredocs:
        raise BashSyntaxError("heredoc without a body")
    return tokens


def _substitution_names(word: str) -> List[str]:
    """Command names inside the $(...) and `...` substitutions of a word (not in single quotes)."""
    names, i = [], 0
    while i < len(word):
        c = word[i]
        if c == "\\":
            i += 2
        elif c == "'" and (i == 0 or word[i - 1] != "$"):
            i = _closing(word, i, "'")
        elif c == "`":
            j = _closing(word, i, "`")
            names += _simple_command_names(word[i + 1:j - 1])
            i = j
        elif word.startswith("$((", i):
            i = _matching(word, i + 1, "(", ")")
        elif word.startswith("$(", i):
            j = _matching(word, i + 1, "(", ")")
            names += _simple_command_names(word[i + 2:j - 1])
            i = j
        else:
            i += 1
    return names


def _simple_command_names(script: str) -> List[str]:
    """Command names found by the fallback parser, with these checks of the grammar's outline: quotes
    and brackets closed; every control operator (; & && || | |&) between commands; redirections
    followed by a word; ( ), $( ), if/fi, do/done, { } and case/esac balanced. for/select/case
    headers and case branches are skipped, as are the insides of [[ ]] and (( )); the commands in
    $(...) and `...` substitutions are found, also inside double quotes. A command of assignments
    only (``x=5;``) has no name but is a command."""
    names, closers, at_command, skip_to = [], [], True, None
    assigned = False  # the command so far is assignments: the name may follow, or an operator end it
    tokens = _tokens(script)
    k = 0
    while k < len(tokens):
        kind, tok = tokens[k]
        k += 1
        if skip_to is not None:  # `for x in ...; do`, `case ... esac`: no command words until skip_to
            if kind == "word" and tok == skip_to:
                skip_to = None
                if tok == "do":
                    closers.append("done")
                at_command = tok == "do"
            continue
        if kind == "op":
            if tok in _REDIRECTS:
                if k >= len(tokens) or tokens[k][0] != "word":
                    raise BashSyntaxError(f"redirection {tok!r} without a target")
                k += 1
            elif tok in ("(", "$(", "<(", ">("):  # a subshell; a command or process substitution
                if tok == "(" and not at_command:
                    raise BashSyntaxError("unexpected '('")
                closers.append(")" if tok == "(" else "$)")
                at_command = True
            elif tok == ")":
                if not closers or closers[-1] not in (")", "$)"):
                    raise BashSyntaxError("unexpected ')'")
                closers.pop()
                at_command = False
            elif tok in _CONTROL:
                if at_command and not assigned:
                    raise BashSyntaxError(f"{tok!r} without a command before it")
                at_command = True
            else:  # a newline ends a command (and may follow | && || inside one)
                at_command = True
            assigned = assigned and tok in _REDIRECTS
            continue
        names += _substitution_names(tok)
        if not at_command:
            continue  # an argument
        if tok == "[[":  # a conditional expression: its && || ( ) are not operators
            names.append(tok)
            while k < len(tokens) and tokens[k] != ("word", "]]"):
                k += 1
            if k == len(tokens):
                raise BashSyntaxError("missing ']]'")
            k += 1
            at_command = False
            continue
        if tok == "function" or tokens[k:k + 2] == [("op", "("), ("op", ")")]:  # a function definition
            k += 1 if tok == "function" else 0
            if tokens[k:k + 2] == [("op", "("), ("op", ")")]:
                k += 2
            continue  # its body, a compound command, follows
        if tok.startswith("(("):
            at_command = False  # an arithmetic command
            continue
        if tok in ("for", "select"):
            skip_to = "do"
        elif tok == "case":
            skip_to = "esac"
        elif tok in ("if", "{", "do"):
            closers.append({"if": "fi", "{": "}", "do": "done"}[tok])
        elif tok in ("fi", "done", "}"):
            if not closers or closers[-1] != tok:
                raise BashSyntaxError(f"unexpected {tok!r}")
            closers.pop()
            at_command = False
        elif tok in ("then", "else", "elif", "while", "until", "!", "time"):
            pass
        elif _ASSIGNMENT.match(tok):
            assigned = True
        else:
            names.append(tok)
            at_command = False
    if skip_to is not None:
        raise BashSyntaxError(f"missing {skip_to!r}")
    if closers:
        raise BashSyntaxError(f"missing {closers[-1].lstrip('$')!r}")
    last = next((t for t in reversed(tokens) if t != ("op", "\n")), None)
    if last is not None and last[0] == "op" and last[1] in ("&&", "||", "|", "|&"):
        raise BashSyntaxError(f"ends with {last[1]!r}")
    return names


def command_names(script: str, parser: Optional[str] = None) -> List[str]:
    """The command word of every simple command in script; BashSyntaxError if it does not parse.
    parser: "bashlex", "simple" (the fallback below), or None for bashlex when installed."""
    parser = parser or shell_parser()
    if parser == "bashlex":
        if _bashlex() is None:
            raise RuntimeError("parser='bashlex' needs the bashlex package: pip install bashlex")
        return _bashlex_command_names(script)
    if parser == "simple":
        return _simple_command_names(script)
    raise ValueError(f"parser must be 'bashlex' or 'simple', got {parser!r}")


def is_known_command(name: str, known_commands: Optional[Iterable[str]] = None) -> bool:
    """A shell builtin or keyword, a command in COMMON_COMMANDS (or known_commands when given, which
    then replaces the PATH look-up), or on PATH. Paths like ./run.sh, and $VAR, $(...) and `...`
    words (the command is chosen at run time; the substitution's own commands are checked) pass."""
    if not name:
        return False
    if name.startswith(("$", "`", "./", "../", "~/")):
        return True
    base = name.rsplit("/", 1)[-1] if "/" in name else name
    if base in BASH_BUILTINS or base in BASH_KEYWORDS or base in COMMON_COMMANDS:
        return True
    if known_commands is not None:
        return base in set(known_commands)
    if "/" in name:
        return os.path.isfile(name) and os.access(name, os.X_OK) or shutil.which(base) is not None
    return shutil.which(name) is not None


@dataclasses.dataclass
class BashScore:
    """format_ok: bash format accuracy; valid: command validity; command: the block's text;
    commands: the command words found; error: why a check failed."""

    format_ok: bool
    valid: bool
    command: Optional[str]
    commands: list
    error: Optional[str] = None


def score_bash(output: str, known_commands: Optional[Iterable[str]] = None, parser: Optional[str] = None) -> BashScore:
    """Score one answer that should be a fenced bash block (see the module docstring)."""
    text = _strip_output(output)
    blocks = list(BASH_BLOCK_RE.finditer(text))
    if not blocks:
        return BashScore(False, False, None, [], "no ```bash block")
    if len(blocks) > 1 or blocks[0].start() != 0 or blocks[0].end() != len(text):
        return BashScore(False, False, None, [], "text outside the ```bash block")
    command = blocks[0].group(1)
    if not command.strip():
        return BashScore(False, False, command, [], "empty command")
    if all(not line.strip() or line.lstrip().startswith("#") for line in command.split("\n")):
        return BashScore(True, False, command, [], "no command in the block")
    try:
        names = command_names(command, parser)  # none for assignments only (x=5) or arithmetic ((...))
    except BashSyntaxError as e:
        return BashScore(True, False, command, [], f"does not parse: {e}")
    unknown = [n for n in names if not is_known_command(n, known_commands)]
    if unknown:
        return BashScore(True, False, command, names, f"unknown command: {', '.join(unknown)}")
    return BashScore(True, True, command, names)


# ---------------------------------------------------------------------------------------------
# Coherence

_PUNCTUATION = string.punctuation + "\u2018\u2019\u201c\u201d\u00ab\u00bb\u2013\u2014\u2026"
_NUMBER = re.compile(r"[+-]?(\d+([.,:/]\d+)*|\d*\.\d+)(st|nd|rd|th|s|%|x)?")


def words(text: str) -> List[str]:
    """Whitespace-separated words, lowercased, with surrounding punctuation stripped; words that
    are only punctuation are dropped."""
    out = []
    for raw in _strip_output(text).split():
        word = raw.strip(_PUNCTUATION).lower()
        if word:
            out.append(word)
    return out


def build_vocabulary(texts: Iterable[str], min_count: int = 1) -> frozenset:
    """The words (and hyphenated parts) of texts seen at least min_count times."""
    counts = collections.Counter()
    for text in texts:
        for word in words(text):
            counts[word] += 1
            if "-" in word:
                counts.update(p for p in word.split("-") if p)
    return frozenset(w for w, c in counts.items() if c >= min_count)


@functools.lru_cache(maxsize=None)
def default_vocabulary() -> frozenset:
    """The vocabulary of the bundled starter set's text_completion and chain_of_thought train split
    (prompts and targets): what the model was trained to write in stage 1."""
    from bdh.data import load_splits  # imports torch: only when a default vocabulary is needed

    splits = load_splits(None)
    texts = [text for task in ("text_completion", "chain_of_thought") for r in splits[task].train
             for text in (r.prompt, r.target)]
    return build_vocabulary(texts)


def _known(word: str, vocabulary) -> bool:
    if word in vocabulary or _NUMBER.fullmatch(word):
        return True
    parts = [p for p in word.split("-") if p]
    return len(parts) > 1 and all(p in vocabulary or _NUMBER.fullmatch(p) for p in parts)


def word_validity(text: str, vocabulary=None) -> float:
    """The fraction of words that are numbers or in the vocabulary (0 for no words)."""
    vocabulary = default_vocabulary() if vocabulary is None else vocabulary
    ws = words(text)
    return sum(_known(w, vocabulary) for w in ws) / len(ws) if ws else 0.0


def distinct_n(text: str, n: int = 3) -> float:
    """Unique word n-grams / all word n-grams (1.0 when there are fewer than n words)."""
    ws = words(text)
    grams = [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def coherence(text: str, vocabulary=None, n: int = 3) -> float:
    """word_validity(text) x distinct_n(text, 3), in [0, 1]; 0 for empty text (module docstring)."""
    if not words(text):
        return 0.0
    return word_validity(text, vocabulary) * distinct_n(text, n)


# ---------------------------------------------------------------------------------------------
# Aggregation


def wilson_interval(successes: float, n: int, z: float = 1.96) -> Tuple[float, float]:
    """Wilson score interval for a proportion (95% for z=1.96); (0, 1) when n is 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: Sequence[float], z: float = 1.96) -> Tuple[float, float]:
    """Normal-approximation interval of the mean of scores in [0, 1], clipped to [0, 1]."""
    n = len(values)
    if n == 0:
        return 0.0, 1.0
    mean = sum(values) / n
    if n == 1:
        return 0.0, 1.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return max(0.0, mean - half), min(1.0, mean + half)


@dataclasses.dataclass
class Metric:
    """One aggregated metric: its value, the sample size and the 95% interval (low, high)."""

    name: str
    value: float
    n: int
    low: float
    high: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def rate(name: str, flags: Sequence[bool]) -> Metric:
    """A proportion with its Wilson interval."""
    k, n = sum(bool(f) for f in flags), len(flags)
    low, high = wilson_interval(k, n)
    return Metric(name, k / n if n else 0.0, n, low, high)


def mean(name: str, values: Sequence[float]) -> Metric:
    low, high = mean_interval(values)
    return Metric(name, sum(values) / len(values) if values else 0.0, len(values), low, high)


OVERALL_WEIGHTS = {
    "coherence": 1.0,  # text: text_completion and chain_of_thought
    "function_format_accuracy": 0.5,  # function calling: format and arguments, half each
    "argument_accuracy": 0.5,
    "bash_format_accuracy": 0.5,  # bash: format and validity, half each
    "command_validity": 0.5,
    "multi_step_accuracy": 1.0,  # tool use
}


def overall(metrics: Mapping, weights: Mapping[str, float] = OVERALL_WEIGHTS) -> Optional[float]:
    """The weighted mean of the metrics present (values or Metric objects) with OVERALL_WEIGHTS:
    each capability the same weight; weights of absent metrics are left out, the rest renormalised.
    None if no weighted metric is present."""
    total = weight = 0.0
    for name, w in weights.items():
        value = metrics.get(name)
        if value is None:
            continue
        value = value.value if isinstance(value, Metric) else float(value)
        total += w * value
        weight += w
    return total / weight if weight else None


# ---------------------------------------------------------------------------------------------
# Running over val records (what the checkpoint evaluator calls with the model's generate)


def score_record(record, output: str, vocabulary=None, known_commands=None) -> Dict[str, float]:
    """The per-answer metrics of one record's output, by task (a tool_use record is scored as a
    function call step when its target is a call, as text otherwise)."""
    task = record.task
    if task in ("function_call", "tool_use") and "<function_call>" in record.target:
        s = score_function_call(output, record.target, record.schemas)
        return {"function_format_accuracy": s.format_ok, "function_name_accuracy": s.name_ok,
                "argument_accuracy": s.arguments_ok, "json_validity": s.json_ok}
    if task == "bash_command":
        s = score_bash(output, known_commands)
        return {"bash_format_accuracy": s.format_ok, "command_validity": s.valid}
    return {"coherence": coherence(output, vocabulary)}


def prompts_to_answer(records_by_task: Mapping[str, Sequence], max_samples: Optional[int] = None) -> List[str]:
    """Every prompt that evaluate_outputs(records_by_task, generate, max_samples) asks ``generate``, in
    order: so a caller can answer them all first (in batches) and then hand over a lookup."""
    prompts = []
    for task, records in records_by_task.items():
        if task == "tool_use":
            prompts += [r.prompt for episode in episodes(records)[:max_samples] for r in episode.call_steps]
        else:
            prompts += [r.prompt for r in list(records)[:max_samples]]
    return prompts


def evaluate_outputs(records_by_task: Mapping[str, Sequence], generate: Callable[[str], str],
                     max_samples: Optional[int] = None, vocabulary=None, known_commands=None) -> dict:
    """Generate an answer for each val record and score it.

    records_by_task: {task: [Record, ...]} (e.g. ``{t: s.val for t, s in load_splits(d).items()}``).
    generate:        prompt -> the model's text (stopping at EOS); a model, or a stub in tests.
    max_samples:     at most this many records per task (tool_use: episodes), the first ones.
    Returns {"tasks": {task: {metric: Metric.to_dict()}}, "metrics": {metric: Metric.to_dict()},
    "overall": float | None, "samples": [per-answer rows]}: "metrics" pools each metric over tasks
    (function-call metrics over function_call records only; tool_use's step scores stay in its task).
    """
    per_task: Dict[str, Dict[str, list]] = {}
    samples = []
    for task, records in records_by_task.items():
        scores = per_task.setdefault(task, collections.defaultdict(list))
        if task == "tool_use":
            for episode in episodes(records)[:max_samples]:
                calls = episode.call_steps
                if not calls:
                    continue
                outputs = [generate(r.prompt) for r in calls]
                result = score_tool_episode(outputs, [r.target for r in calls], calls[0].schemas)
                scores["multi_step_accuracy"].append(result.all_correct)
                scores["step_accuracy"].extend(result.step_scores)
                samples += [{"task": task, "id": r.id, "output": o, "step_ok": ok}
                            for r, o, ok in zip(calls, outputs, result.step_scores)]
            continue
        for record in list(records)[:max_samples]:
            output = generate(record.prompt)
            row = score_record(record, output, vocabulary, known_commands)
            for name, value in row.items():
                scores[name].append(value)
            samples.append({"task": task, "id": record.id, "output": output, **row})

    def aggregate(name, values):
        return mean(name, values) if name == "coherence" else rate(name, values)

    tasks = {task: {name: aggregate(name, vals).to_dict() for name, vals in scores.items()}
             for task, scores in per_task.items()}
    pooled = collections.defaultdict(list)
    for task, scores in per_task.items():
        for name, vals in scores.items():
            if task == "tool_use" and name != "multi_step_accuracy":
                continue
            pooled[name] += vals
    metrics = {name: aggregate(name, vals) for name, vals in pooled.items()}
    return {"tasks": tasks, "metrics": {n: m.to_dict() for n, m in metrics.items()},
            "overall": overall(metrics), "samples": samples}
