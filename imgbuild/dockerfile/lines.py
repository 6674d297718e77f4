"""Instruction lines: the Dockerfile read into one logical line per instruction.

This is the first layer of the front end and the equivalent of BuildKit's
``parser.Parse``: it finds parser directives, joins continuation lines, drops
comments, reads heredoc bodies, splits off ``--flags`` and splits the arguments
the way each instruction's line parser does (JSON or shell form, ``key=value``
words, ...). It does not check flags or argument counts and does not know which
instructions exist: that is ``instructions.py``. BuildKit's parser corpus
(``tests/conformance``) is checked against this layer, because its ``result``
files dump exactly this stage.

The file is split into physical lines with ``io.StringIO.readlines``, which
is what dockerfile-parse's ``lines`` does: importing dockerfile-parse for that
alone cost every parse ~5 ms, as it loads logging. Its ``structure`` (its
grouping of lines into instructions, which ``imgbuild pin`` uses) is not used
here because it disagrees with BuildKit on 7 of the 33 corpus files: it ends
an instruction at a blank line inside a continuation (``escapes``,
``continueIndent``, ``brimstone-*``), treats a trailing escaped backslash
``\\\\`` as a continuation (``trailing-backslash``), drops a last line
without a newline (``continue-at-eof``, ``env``), and knows neither heredocs
nor the ``# check=`` directive. So the grouping below is ours and
follows BuildKit's rules line by line.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import field

from imgbuild.dataclass import dataclass
from imgbuild.dockerfile.directives import DirectiveError, Directives, DirectiveScanner
from imgbuild.dockerfile.heredoc import Heredoc, heredocs_in_line
from imgbuild.dockerfile.shell import go_quote, is_space
from imgbuild.errors import DockerfileError, ExpansionError, SourceLocation

# Instructions whose shell form may carry heredocs.
HEREDOC_INSTRUCTIONS = ("run", "copy", "add")

# BuildKit splits words of FROM/EXPOSE/... and the keyword on these only.
_WHITESPACE = re.compile(r"[\t\v\f\r ]+")


def _continuation_regex(escape: str) -> re.Pattern[str]:
    """A trailing escape character (then spaces/tabs) that is not itself
    escaped, or one alone on its line: BuildKit's line-continuation rule."""
    esc = re.escape(escape)
    return re.compile(rf"(?:([^{esc}]){esc}|^{esc})[ \t]*\Z")


_CONTINUATION = {escape: _continuation_regex(escape) for escape in ("\\", "`")}


@dataclass
class InstructionLine:
    """One instruction as BuildKit's parser sees it (a node of its AST).

    ``args`` are the arguments after the line parser for the keyword: for
    ENV/LABEL they come in triples (key, value, "=" or ""); for ONBUILD they
    are empty and ``trigger`` holds the inner instruction line.
    """

    keyword: str  # as written, e.g. "RUN" or "run"
    flags: list[str]  # "--name=value" words before the arguments, quotes removed
    args: list[str]
    json: bool  # arguments were a JSON array (exec form)
    original: str  # the logical line: continuation lines joined, comments removed
    line: int  # 1-based first line
    end_line: int  # last line, including heredoc bodies
    source: str  # the physical lines line..end_line, as written
    comments: list[str] = field(default_factory=list)  # comment lines right above
    heredocs: list[Heredoc] = field(default_factory=list)  # raw: chomp not applied
    trigger: InstructionLine | None = None  # for ONBUILD
    # the last line of the instruction when empty lines sat inside its
    # continuation (BuildKit's NoEmptyContinuation check points there)
    empty_continuation_line: int | None = None

    @property
    def command(self) -> str:
        """The keyword in lower case (how instructions are dispatched)."""
        return self.keyword.lower()


@dataclass
class ParsedLines:
    """A Dockerfile read into instruction lines."""

    directives: Directives
    lines: list[InstructionLine]
    warnings: list[str]
    filename: str


def read_physical_lines(text: str) -> list[str]:
    """The file's lines, each with its line ending, split on ``\\n`` only."""
    # StringIO with the default newline="\n" splits on \n only and keeps \r,
    # which is what BuildKit's scanner does.
    return io.StringIO(text).readlines()


def parse_lines(text: str, filename: str = "Dockerfile", escape: str | None = None) -> ParsedLines:
    """Read ``text`` into instruction lines, as BuildKit's parser does.

    ``escape`` presets the escape character (used for ONBUILD triggers, which
    have no directives of their own). Raises DockerfileError.
    """
    return _LineReader(text, filename, escape).read()


class _LineReader:
    def __init__(self, text: str, filename: str, escape: str | None):
        self.physical = read_physical_lines(text)
        self.filename = filename
        self.scanner = DirectiveScanner()
        if escape is not None:
            self.scanner.directives.escape = escape
        self.pos = 0  # index of the next physical line to read
        self.warnings: list[str] = []
        self.empty_continuation_line: int | None = None  # of the instruction being read

    @property
    def escape(self) -> str:
        return self.scanner.directives.escape

    def error(self, message: str, line: int) -> DockerfileError:
        text = self.physical[line - 1] if 0 < line <= len(self.physical) else ""
        return DockerfileError(
            message, SourceLocation(self.filename, max(line, 1), _strip_newline(text))
        )

    def next_line(self) -> str | None:
        if self.pos >= len(self.physical):
            return None
        raw = self.physical[self.pos]
        self.pos += 1
        return raw

    def read(self) -> ParsedLines:
        lines: list[InstructionLine] = []
        comments: list[str] = []
        while (raw := self.next_line()) is not None:
            if self.pos == 1 and raw.startswith("\ufeff"):
                raw = raw[1:]  # byte-order mark
            if _is_comment(raw):
                # BuildKit drops the first character of the raw line, which is
                # the '#' unless the comment is indented.
                comment = go_trim_space(raw[1:])
                comments = (comments + [comment]) if comment else []
            stripped = _lstrip_space(_strip_newline(raw))
            if self._directive(stripped, self.pos):
                comments = comments[:-1]
            if _is_comment(raw):
                continue
            start = self.pos
            self.empty_continuation_line = None
            logical, complete = self.trim_continuation(stripped)
            if complete and logical == "":
                continue
            logical = self.join_continuations(logical, complete)
            lines.append(self.make_line(logical, start, comments))
            comments = []
        if not lines:
            raise self.error("file with no instructions", len(self.physical))
        return ParsedLines(self.scanner.directives, lines, self.warnings, self.filename)

    def _directive(self, stripped: str, line_number: int) -> bool:
        try:
            return self.scanner.feed(stripped, line_number)
        except DirectiveError as error:
            raise self.error(str(error), line_number) from None

    def trim_continuation(self, line: str) -> tuple[str, bool]:
        """Remove a trailing escape character; False if the line continues.

        As in BuildKit, an escape character that is itself escaped (``\\\\``)
        does not continue the line, except when it stands alone on the line.
        """
        match = _CONTINUATION[self.escape].search(line)
        if match is None:
            return line, True
        return line[: match.start()] + (match.group(1) or ""), False

    def join_continuations(self, logical: str, complete: bool) -> str:
        parts = [logical]
        had_empty = False
        while not complete:
            raw = self.next_line()
            if raw is None:
                break  # a continuation at end of file just ends the instruction
            if _is_comment(raw):
                continue
            text = _strip_newline(raw)
            if _lstrip_space(text) == "":
                had_empty = True
                continue
            text, complete = self.trim_continuation(text)
            parts.append(text)
        joined = "".join(parts)
        if had_empty:
            self.empty_continuation_line = self.pos
            self.warnings.append(f"Empty continuation line found in: {joined}")
        return joined

    def make_line(self, logical: str, start: int, comments: list[str]) -> InstructionLine:
        try:
            node = split_instruction(logical, self.escape)
        except _LineError as error:
            raise self.error(str(error), start) from None
        node.line = start
        node.comments = comments
        node.empty_continuation_line = self.empty_continuation_line
        if _can_have_heredocs(node) and "<<" in logical:
            node.heredocs = self.read_heredocs(logical, start)
        node.end_line = self.pos
        node.source = "".join(self.physical[start - 1 : self.pos]).rstrip("\r\n")
        return node

    def read_heredocs(self, logical: str, start: int) -> list[Heredoc]:
        try:
            heredocs = heredocs_in_line(logical)
        except ExpansionError as error:
            raise self.error(error.message, start) from None
        for heredoc in heredocs:
            body: list[str] = []
            while True:
                raw = self.next_line()
                if raw is None:
                    raise self.error(
                        f"unterminated heredoc: no line {go_quote(heredoc.name)} ends it", start
                    )
                candidate = raw.rstrip("\r\n")
                if heredoc.chomp:
                    candidate = candidate.lstrip("\t")
                if candidate == heredoc.name:
                    break
                body.append(raw)
            heredoc.content = "".join(body)
        return heredocs


class _LineError(Exception):
    """A line parser rejected its arguments; the reader adds the location."""


def split_instruction(logical: str, escape: str, depth: int = 0) -> InstructionLine:
    """Split one logical line into keyword, flags and arguments (no location yet)."""
    keyword, flags, rest = _split_command(logical)
    if keyword.lower() == "onbuild":
        # ONBUILD: the rest is an instruction of its own.
        args, is_json, trigger = [], False, None
        if rest:
            if depth >= 2:
                # ONBUILD ONBUILD ONBUILD ...: rejected anyway; do not recurse without end.
                raise _LineError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
            trigger = split_instruction(rest, escape, depth + 1)
    else:
        parse_args = _LINE_PARSERS.get(keyword.lower(), _parse_nothing)
        args, is_json, trigger = parse_args(rest, escape)
    return InstructionLine(
        keyword=keyword,
        flags=flags,
        args=args,
        json=is_json,
        original=logical,
        line=0,
        end_line=0,
        source="",
        trigger=trigger,
    )


def _split_command(line: str) -> tuple[str, list[str], str]:
    parts = _WHITESPACE.split(go_trim_space(line), maxsplit=1)
    if len(parts) < 2:
        return parts[0], [], ""
    rest, flags = _extract_flags(parts[1])
    return parts[0], flags, go_trim_space(rest)


def _extract_flags(line: str) -> tuple[str, list[str]]:
    """Take the leading ``--flag[=value]`` words off ``line``.

    A word starting with ``--`` is a flag; quotes in it are removed and ``\\``
    escapes the next character (always backslash, as in BuildKit). A bare
    ``--`` ends the flags and is dropped. Returns the rest of the line and the
    flags.
    """
    flags: list[str] = []
    pos = 0
    length = len(line)
    while True:
        while pos < length and is_space(line[pos]):
            pos += 1
        if pos >= length:
            return "", flags
        if not line.startswith("--", pos):
            return line[pos:], flags
        word: list[str] = []
        quote: str | None = None
        saw_quote = False
        while pos < length:
            ch = line[pos]
            if quote is None and is_space(ch):
                break
            pos += 1
            if quote is None and ch in ("'", '"'):
                quote = ch
                saw_quote = True
                continue
            if quote is not None and ch == quote:
                quote = None
                continue
            if ch == "\\":
                if pos >= length:
                    continue  # a backslash at the very end is dropped
                ch = line[pos]
                pos += 1
            word.append(ch)
        text = "".join(word)
        if text == "--" and pos < length:
            return line[pos:], flags
        if text != "--" and (saw_quote or text):
            flags.append(text)


# -- the per-instruction line parsers -------------------------------------------
# Each takes the text after the flags and returns (args, is_json, trigger).

LineParse = tuple[list[str], bool, "InstructionLine | None"]


def _parse_nothing(rest: str, escape: str) -> LineParse:
    # Unknown instructions keep no arguments; instructions.py reports them.
    return [], False, None


def _parse_string(rest: str, escape: str) -> LineParse:
    return ([rest] if rest else []), False, None


def _parse_whitespace_list(rest: str, escape: str) -> LineParse:
    return (_WHITESPACE.split(rest) if rest else []), False, None


def _parse_maybe_json(rest: str, escape: str) -> LineParse:
    if rest == "":
        return [], False, None
    parsed = _json_array(rest)
    if parsed is not None:
        return parsed, True, None
    return [rest], False, None


def _parse_maybe_json_list(rest: str, escape: str) -> LineParse:
    parsed = _json_array(rest)
    if parsed is not None:
        return parsed, True, None
    return _parse_whitespace_list(rest, escape)


def _parse_name_value(rest: str, escape: str, keyword: str) -> LineParse:
    """ENV and LABEL: ``key value`` (old form) or ``k=v k2=v2`` (quotes kept)."""
    words = _split_words(rest, escape)
    if not words:
        return [], False, None
    if "=" not in words[0]:
        parts = _WHITESPACE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise _LineError(f"{keyword} must have two arguments")
        return [parts[0], parts[1], ""], False, None
    args: list[str] = []
    for word in words:
        if "=" not in word:
            raise _LineError(
                f"Syntax error - can't find = in {go_quote(word)}. Must be of the form: name=value"
            )
        key, value = word.split("=", 1)
        args += [key, value, "="]
    return args, False, None


def _parse_env(rest: str, escape: str) -> LineParse:
    return _parse_name_value(rest, escape, "ENV")


def _parse_label(rest: str, escape: str) -> LineParse:
    return _parse_name_value(rest, escape, "LABEL")


def _parse_names(rest: str, escape: str) -> LineParse:
    """ARG: words like ``name`` or ``name=value`` (quotes kept)."""
    return _split_words(rest, escape), False, None


def _parse_health(rest: str, escape: str) -> LineParse:
    """HEALTHCHECK: a type word (CMD, NONE, ...) then maybe-JSON."""
    sep = 0
    while sep < len(rest) and not is_space(rest[sep]):
        sep += 1
    if sep == 0:
        return [], False, None
    following = sep
    while following < len(rest) and is_space(rest[following]):
        following += 1
    args, is_json, _ = _parse_maybe_json(rest[following:], escape)
    return [rest[:sep]] + args, is_json, None


_LINE_PARSERS = {
    "add": _parse_maybe_json_list,
    "arg": _parse_names,
    "cmd": _parse_maybe_json,
    "copy": _parse_maybe_json_list,
    "entrypoint": _parse_maybe_json,
    "env": _parse_env,
    "expose": _parse_whitespace_list,
    "from": _parse_whitespace_list,
    "healthcheck": _parse_health,
    "label": _parse_label,
    "maintainer": _parse_string,
    "run": _parse_maybe_json,
    "shell": _parse_maybe_json,
    "stopsignal": _parse_string,
    "user": _parse_string,
    "volume": _parse_maybe_json_list,
    "workdir": _parse_string,
}


def _json_array(rest: str) -> list[str] | None:
    """Parse ``rest`` as a JSON array of strings.

    None means "not JSON": the caller then uses the shell form (BuildKit's
    rule, e.g. ``CMD ['a']`` is a shell command). A JSON array holding
    anything but strings is an error. As with Go's json.Unmarshal (BuildKit
    >= 1.9; older ones used a json.Decoder), text after the closing bracket
    other than JSON whitespace makes it the shell form: ``RUN ["a"] b`` runs
    ``["a"] b`` in the shell.
    """
    rest = _lstrip_space(rest)
    if not rest.startswith("["):
        return None
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    try:
        value, end = decoder.raw_decode(rest)
    except (ValueError, RecursionError):
        # RecursionError: absurdly deep nesting; Go would also give up on it.
        return None
    if rest[end:].strip(_JSON_SPACE):
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(item, str) for item in value):
        raise _LineError("when using JSON array syntax, arrays must be comprised of strings only")
    return [_replace_lone_surrogates(item) for item in value]


_JSON_SPACE = " \t\n\r"  # what Go's JSON allows around a value


def _reject_constant(name: str) -> None:
    # Python accepts NaN/Infinity; Go's JSON does not.
    raise ValueError(f"invalid JSON constant {name}")


def _replace_lone_surrogates(text: str) -> str:
    # Go decodes "\ud800" (a lone surrogate) as U+FFFD.
    return re.sub("[\ud800-\udfff]", "\ufffd", text)


def _split_words(rest: str, escape: str) -> list[str]:
    """Split on spaces, keeping quotes and escapes (BuildKit's parseWords)."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    quote: str | None = None
    blank_ok = False
    i = 0
    length = len(rest)
    while i < length:
        ch = rest[i]
        if quote is None:
            if is_space(ch):
                if in_word and (blank_ok or word):
                    words.append("".join(word))
                word, in_word, blank_ok = [], False, False
                i += 1
                continue
            in_word = True
            if ch in ("'", '"'):
                quote = ch
                blank_ok = True
            elif ch == escape:
                if i + 1 == length:
                    break  # an escape at the end is dropped
                word.append(ch)
                i += 1
                ch = rest[i]
            word.append(ch)
            i += 1
            continue
        if ch == quote:
            quote = None
        elif ch == escape and quote != "'":
            if i + 1 == length:
                quote = None
                break  # an escape at the end is dropped
            word.append(ch)
            i += 1
            ch = rest[i]
        word.append(ch)
        i += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


def _can_have_heredocs(node: InstructionLine) -> bool:
    target = node.trigger if node.command == "onbuild" and node.trigger else node
    return target.command in HEREDOC_INSTRUCTIONS and not target.json


def _is_comment(raw: str) -> bool:
    return _lstrip_space(raw).startswith("#")


def _strip_newline(text: str) -> str:
    return text.rstrip("\r\n")


def _lstrip_space(text: str) -> str:
    i = 0
    while i < len(text) and is_space(text[i]):
        i += 1
    return text[i:]


def go_trim_space(text: str) -> str:
    """Go's strings.TrimSpace: strip Unicode white space at both ends."""
    start, end = 0, len(text)
    while start < end and is_space(text[start]):
        start += 1
    while end > start and is_space(text[end - 1]):
        end -= 1
    return text[start:end]
