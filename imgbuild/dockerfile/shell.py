"""Docker's word expansion: quotes, escapes and ``$variables``, as BuildKit does it.

This is a port of the *behaviour* of BuildKit's shell lexer
(``frontend/dockerfile/shell/lex.go``), checked against BuildKit's own
``envVarTest`` and ``wordsTest`` corpora in ``tests/conformance``. It is not a
shell: there is no command substitution, globbing or arithmetic. What it does:

- ``'single'`` quotes keep everything literal; ``"double"`` quotes keep
  everything but ``$`` and the escape character (which there only escapes
  ``"``, ``$`` and itself);
- outside quotes the escape character (``\\`` or, with ``# escape=```, a
  backtick) makes the next character literal;
- ``$name``, ``${name}`` and the modifiers ``:-  -  :+  +  :?  ?  #  ##  %  %%
  /  //``; positional and special parameters (``$1``, ``$@``, ...) are never
  set.

The lexer also has the switches BuildKit's parser uses internally (keep quotes,
keep escapes, skip quote processing, leave unset variables as written); the
functions ``expand_word`` and ``expand_words`` are what the rest of imgbuild
calls.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import field

from imgbuild.dataclass import dataclass
from imgbuild.errors import ExpansionError

# Go's unicode.IsSpace: the Latin-1 spaces plus the Unicode White_Space set.
# Python's str.isspace() differs (it counts \x1c-\x1f), so the set is explicit.
_GO_SPACES = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def is_space(ch: str) -> bool:
    """True for the characters Go's ``unicode.IsSpace`` accepts."""
    return ch in _GO_SPACES


def go_quote(text: str) -> str:
    """Quote ``text`` the way Go's ``strconv.Quote`` does (used in messages and dumps)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ch in _GO_SHORT_ESCAPES:
            out.append(_GO_SHORT_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")  # Go turns invalid runes into U+FFFD
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def go_parse_bool(value: str) -> bool:
    """Go's ``strconv.ParseBool``, which BuildKit uses for boolean options;
    raises ValueError for anything else."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(value)


_GO_SHORT_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


_PLAIN_RUNS: dict[tuple[str, bool, str | None], re.Pattern[str]] = {}
MAX_NESTING = 64  # ${...} inside ${...}; far beyond any real Dockerfile
# Expansion can grow a word exponentially (ENV a=$a$a, forty times over), and
# BuildKit sets no limit. Ours: a word may grow by 1 MiB over its text as
# written, and an ENV or ARG value (see scope.py) is at most 1 MiB.
MAX_EXPANSION_GROWTH = 1 << 20  # characters
MAX_VALUE = 1 << 20  # characters of one ENV or ARG value


def _size_text(characters: int) -> str:
    return f"{characters // (1 << 20)} MiB" if characters % (1 << 20) == 0 else f"{characters} characters"


class _LexError(Exception):
    """Internal: a lexing error, wrapped into ExpansionError with the source word.

    ``variable`` is set for ``${name?}``/``${name:?}`` failures: those depend on
    the values in scope, every other error is in the text itself.
    """

    def __init__(self, message: str, variable: str | None = None):
        super().__init__(message)
        self.variable = variable


class _TooBig(_LexError):
    """Internal: the result outgrew the lexer's limit."""


@dataclass
class ProcessResult:
    """What one pass of the lexer produced."""

    result: str  # the whole input, expanded, spaces kept (BuildKit's ProcessWord)
    words: list[str]  # the input split into words after expansion (ProcessWords)
    matched: set[str] = field(default_factory=set)  # variable names that were set
    unmatched: set[str] = field(default_factory=set)  # variable names that were not


class _Scanner:
    """Peek/next over the characters of one string; ``None`` is end of input."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def peek(self) -> str | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def next(self) -> str | None:
        ch = self.peek()
        if ch is not None:
            self.pos += 1
        return ch


class _Words:
    """Collects words while scanning; mirrors BuildKit's word-splitting rules."""

    def __init__(self):
        self.words: list[str] = []
        self.current: list[str] = []
        self.length = 0  # characters in ``current``; "" parts do not count
        self.in_word = False

    def add_char(self, ch: str) -> None:
        # An unquoted, unescaped space ends the current word; other spaces vanish.
        if is_space(ch):
            if self.in_word and self.length:
                self._end_word()
        else:
            self.add_raw_string(ch)

    def add_raw_char(self, ch: str) -> None:
        self.add_raw_string(ch)

    def add_string(self, text: str) -> None:
        # Expanded variable values are split on spaces, like unquoted text.
        for ch in text:
            self.add_char(ch)

    def add_raw_string(self, text: str) -> None:
        # Quoted text never splits (but "" alone does not make an empty word,
        # exactly as in BuildKit).
        self.current.append(text)
        self.length += len(text)
        self.in_word = True

    def finish(self) -> list[str]:
        if self.length:
            self._end_word()
        return self.words

    def _end_word(self) -> None:
        self.words.append("".join(self.current))
        self.current = []
        self.length = 0
        self.in_word = False


class Lexer:
    """BuildKit's shell lexer with its switches.

    ``raw_quotes`` keeps quote characters in the output, ``raw_escapes`` keeps
    escape characters, ``skip_quotes`` treats quotes as ordinary characters and
    ``skip_unset`` leaves references to unset variables as written. The default
    (all off) is what Dockerfile instructions use.
    """

    def __init__(
        self,
        escape: str = "\\",
        *,
        raw_quotes: bool = False,
        raw_escapes: bool = False,
        skip_quotes: bool = False,
        skip_unset: bool = False,
        max_size: int | None = None,
    ):
        if escape not in ("\\", "`"):
            raise ValueError(f"escape must be \\ or `, not {escape!r}")
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_quotes = skip_quotes
        self.skip_unset = skip_unset
        self.max_size = max_size  # None: the text's length plus MAX_EXPANSION_GROWTH
        self._limit = 0
        self._scanner = _Scanner("")
        self._env: Mapping[str, str] = {}
        self._raw_escapes_now = raw_escapes
        self._matched: set[str] = set()
        self._unmatched: set[str] = set()
        self._depth = 0

    def process(self, text: str, env: Mapping[str, str]) -> ProcessResult:
        """Expand ``text`` against ``env``; raise ExpansionError on bad syntax.

        A result longer than ``max_size`` is an ExpansionError whose
        ``too_big`` is true, raised as soon as it is, before the memory goes.
        """
        if self._plain_run(None).fullmatch(text):
            # Nothing to expand, quote or split (most keys and values): the scan
            # below would give the same, three times slower.
            return ProcessResult(text, [text])
        self._limit = self.max_size if self.max_size is not None else len(text) + MAX_EXPANSION_GROWTH
        self._scanner = _Scanner(text)
        self._env = env
        self._raw_escapes_now = self.raw_escapes
        self._matched = set()
        self._unmatched = set()
        self._depth = 0
        try:
            result, words = self._process_until(None, self.raw_escapes)
        except _TooBig as error:
            shown = go_quote(text if len(text) <= 200 else text[:200] + "...")
            wrapped = ExpansionError(f"failed to process {shown}: {error}")
            wrapped.too_big = True
            raise wrapped from None
        except _LexError as error:
            wrapped = ExpansionError(f"failed to process {go_quote(text)}: {error}")
            wrapped.unset_variable = error.variable  # see is_unset_variable_error
            raise wrapped from None
        return ProcessResult(result, words, self._matched, self._unmatched)

    # -- the scanner proper ---------------------------------------------------

    def _process_until(self, stop: str | None, raw_escapes: bool) -> tuple[str, list[str]]:
        """Scan to ``stop`` (consumed) or to the end of input when ``stop`` is None."""
        saved = self._raw_escapes_now
        self._raw_escapes_now = raw_escapes
        try:
            return self._scan(stop)
        finally:
            self._raw_escapes_now = saved

    def _scan(self, stop: str | None) -> tuple[str, list[str]]:
        scanner = self._scanner
        result: list[str] = []
        size = 0  # of the expanded values in ``result``; the rest is bounded by the text
        words = _Words()
        while scanner.peek() is not None:
            ch = scanner.peek()
            if stop is not None and ch == stop:
                scanner.next()
                return "".join(result), words.finish()
            if ch == "$":
                value = self._dollar()
                size = self._grown(size, value)
                result.append(value)
                words.add_string(value)
                continue
            if ch in ("'", '"') and not self.skip_quotes:
                value = self._single_quoted() if ch == "'" else self._double_quoted()
                size = self._grown(size, value)
                result.append(value)
                words.add_raw_string(value)
                continue
            run = self._plain_run(stop).match(scanner.text, scanner.pos)
            if run:
                # A run of ordinary characters: same as taking them one by one.
                result.append(run.group())
                words.add_raw_string(run.group())
                scanner.pos = run.end()
                continue
            ch = scanner.next()
            if ch == self.escape:
                if self._raw_escapes_now:
                    words.add_raw_char(ch)
                    result.append(ch)
                ch = scanner.next()
                if ch is None:
                    break  # an escape at the very end is dropped
                words.add_raw_char(ch)
            else:
                words.add_char(ch)
            result.append(ch)
        if stop is not None:
            raise _LexError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.finish()

    def _grown(self, size: int, value: str) -> int:
        size += len(value)
        if size > self._limit:
            raise _TooBig(f"the expansion grows beyond {_size_text(self._limit)}")
        return size

    def _plain_run(self, stop: str | None) -> re.Pattern[str]:
        """Regex for characters that need no special handling (a speed-up only)."""
        # Keyed by the switches that decide the set, not by the set itself:
        # working the set out costs as much as the run it saves (per word).
        key = (self.escape, self.skip_quotes, stop)
        if key not in _PLAIN_RUNS:
            _PLAIN_RUNS[key] = _plain_run_pattern(self.escape, self.skip_quotes, stop)
        return _PLAIN_RUNS[key]

    def _single_quoted(self) -> str:
        # Everything up to the next ' is literal; ' cannot be escaped inside.
        scanner = self._scanner
        out: list[str] = []
        quote = scanner.next()
        if self.raw_quotes:
            out.append(quote)
        while True:
            ch = scanner.next()
            if ch is None:
                raise _LexError(
                    "unexpected end of statement while looking for matching single-quote"
                )
            if ch == "'":
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def _double_quoted(self) -> str:
        # Literal except $ (expanded) and the escape character, which escapes
        # only ", $ and itself; before anything else it stays as written.
        scanner = self._scanner
        out: list[str] = []
        size = 0
        quote = scanner.next()
        if self.raw_quotes:
            out.append(quote)
        while True:
            ch = scanner.peek()
            if ch is None:
                raise _LexError(
                    "unexpected end of statement while looking for matching double-quote"
                )
            if ch == '"':
                scanner.next()
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                value = self._dollar()
                size = self._grown(size, value)
                out.append(value)
                continue
            ch = scanner.next()
            if ch == self.escape:
                if self._raw_escapes_now:
                    out.append(ch)
                following = scanner.peek()
                if following is None:
                    continue  # the loop then reports the missing quote
                if following in ('"', "$", self.escape):
                    ch = scanner.next()
            out.append(ch)

    def _dollar(self) -> str:
        # ${a:-${b:-...}} nests; Python's stack is not Go's, so cap the depth.
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise _LexError(f"variable references nested more than {MAX_NESTING} deep")
            return self._dollar_unguarded()
        finally:
            self._depth -= 1

    def _dollar_unguarded(self) -> str:
        scanner = self._scanner
        scanner.next()  # the $
        if scanner.peek() != "{":
            name = self._name()
            if name == "":
                return "$"
            value, found = self._lookup(name)
            if not found and self.skip_unset:
                return "$" + name
            return value

        scanner.next()  # the {
        first = scanner.peek()
        if first is None:
            raise _LexError("syntax error: missing '}'")
        if first in ("{", "}", ":"):
            raise _LexError("syntax error: bad substitution")
        name = self._name()
        ch = scanner.next()
        if ch is None:
            # BuildKit says "unsupported modifier" here; this is clearer.
            raise _LexError("syntax error: missing '}'")
        if ch == "}":
            value, found = self._lookup(name)
            if not found and self.skip_unset:
                return "${" + name + "}"
            return value
        if ch == "/":
            return self._substitute(name)
        modifier = _rune_text(ch)
        null_is_unset = False
        if ch == ":":
            # ${name:X...}: X is read whatever it is and checked below, as in BuildKit.
            null_is_unset = True
            ch = scanner.next()
            modifier += _rune_text(ch)
        elif ch not in ("+", "-", "?", "#", "%"):
            raise _LexError(f"unsupported modifier ({modifier}) in substitution")
        return self._modified(name, ch, modifier, null_is_unset)

    def _modified(self, name: str, op: str | None, modifier: str, null_is_unset: bool) -> str:
        """``${name[:]op word}`` after the operator has been read."""
        is_pattern = op in ("#", "%")
        if null_is_unset and is_pattern:
            raise _LexError(f"unsupported modifier ({modifier}) in substitution")
        word = self._word_to_brace(raw_escapes=is_pattern)
        value, is_set = self._lookup(name)
        if self.skip_unset and not is_set:
            return "${" + name + modifier + word + "}"
        empty = not is_set or (null_is_unset and value == "")
        if op == "-":
            return word if empty else value
        if op == "+":
            return "" if empty else word
        if op == "?":
            if not is_set:
                raise _LexError(f"{name}: {word or 'is not allowed to be unset'}", name)
            if null_is_unset and value == "":
                raise _LexError(f"{name}: {word or 'is not allowed to be empty'}", name)
            return value
        if op in ("#", "%"):
            greedy = word.startswith(op)
            if greedy:
                word = word[1:]
            if op == "%":
                return _trim_suffix(word, value, greedy)
            return _trim_prefix(word, value, greedy)
        raise _LexError(f"unsupported modifier ({modifier}) in substitution")

    def _word_to_brace(self, raw_escapes: bool) -> str:
        try:
            word, _ = self._process_until("}", raw_escapes)
        except _LexError:
            if self._scanner.peek() is None:
                raise _LexError("syntax error: missing '}'") from None
            raise
        return word

    def _substitute(self, name: str) -> str:
        """``${name/pattern/replacement}`` and ``${name//pattern/replacement}``."""
        scanner = self._scanner
        replace_all = scanner.peek() == "/"
        if replace_all:
            scanner.next()
        try:
            pattern, _ = self._process_until("/", True)
        except _LexError:
            if scanner.peek() is None:
                raise _LexError("syntax error: missing '/' in ${}") from None
            raise
        replacement = self._word_to_brace(raw_escapes=True)
        value, is_set = self._lookup(name)
        if self.skip_unset and not is_set:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        regex = _pattern_regex(pattern, greedy=True, anchored=False)
        if replace_all:
            return _go_replace_all(regex, value, replacement, self._grown)
        match = regex.search(value)
        if match is None:
            return value
        return value[: match.start()] + replacement + value[match.end() :]

    def _name(self) -> str:
        """Read a variable name: letters/digits/_, or all digits, or one special char."""
        scanner = self._scanner
        name: list[str] = []
        while scanner.peek() is not None:
            ch = scanner.peek()
            if not name and ch.isdecimal():
                while scanner.peek() is not None and scanner.peek().isdecimal():
                    name.append(scanner.next())
                return "".join(name)
            if not name and ch in "@*#?-$!0":
                return scanner.next()
            if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            name.append(scanner.next())
        return "".join(name)

    def _lookup(self, name: str) -> tuple[str, bool]:
        if name in self._env:
            self._matched.add(name)
            return self._env[name], True
        self._unmatched.add(name)
        return "", False


def _rune_text(ch: str | None) -> str:
    # Go prints the end-of-input marker as the replacement character.
    return "\ufffd" if ch is None else ch


def _pattern_regex(pattern: str, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A shell pattern (``*``, ``?``, ``\\`` escapes; no brackets) as a regex."""
    star = ".*" if greedy else ".*?"
    out = ["^"] if anchored else []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(star)
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            following = pattern[i] if i < len(pattern) else None
            if following in ("}", "/"):
                continue  # escaped so they do not end ${...}; not part of the pattern
            if following not in ("*", "?", "\\"):
                raise _LexError(
                    f"invalid pattern ({pattern}) in substitution: "
                    f"invalid escape '\\{_rune_text(following)}'"
                )
            out.append(re.escape(following))
            i += 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    match = _pattern_regex(pattern, greedy, anchored=True).search(value)
    return value[match.end() :] if match else value


def _reverse_pattern(pattern: str) -> str:
    """Reverse a pattern but keep each escape in front of what it escapes."""
    tokens: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            tokens.append(pattern[i : i + 2])
            i += 2
        else:
            tokens.append(pattern[i])
            i += 1
    return "".join(reversed(tokens))


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # A regex cannot find the shortest match at the end, so search the
    # reversed value with the reversed pattern from the start instead.
    trimmed = _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)
    return trimmed[::-1]


def _go_replace_all(regex: re.Pattern[str], value: str, replacement: str, grown) -> str:
    """Go's Regexp.ReplaceAllString: empty matches right after a match are
    skipped, and ``$name`` in the replacement refers to (absent) groups.

    ``grown(size, piece)`` checks the size as the result grows: replacing
    every character of a long value by a long replacement multiplies them.
    """
    replacement = _go_expand_template(replacement)
    size = 0
    out: list[str] = []
    last_end = 0
    search_pos = 0
    while search_pos <= len(value):
        match = regex.search(value, search_pos)
        if match is None:
            break
        start, end = match.span()
        out.append(value[last_end:start])
        size = grown(size, out[-1])
        if end > last_end or start == 0:
            out.append(replacement)
            size = grown(size, replacement)
        last_end = end
        search_pos = end if end > search_pos else search_pos + 1
    out.append(value[last_end:])
    return "".join(out)


_GO_TEMPLATE_NAME = re.compile(r"\{([^}]*)\}|([A-Za-z0-9_]+)")


def _go_expand_template(template: str) -> str:
    # The pattern has no groups, so every valid $name / ${name} becomes empty;
    # $$ is a literal $ and a $ not followed by a name stays as written.
    out: list[str] = []
    i = 0
    while i < len(template):
        ch = template[i]
        if ch != "$" or i + 1 >= len(template):
            out.append(ch)
            i += 1
            continue
        if template[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        match = _GO_TEMPLATE_NAME.match(template, i + 1)
        if match is None or (match.group(1) is not None and not match.group(1)):
            out.append("$")
            i += 1
            continue
        i = match.end()
    return "".join(out)


def is_too_big_error(error: Exception) -> bool:
    """True for an expansion that outgrew its limit (see ``Lexer.process``)."""
    return getattr(error, "too_big", False)


def value_too_big(name: str) -> ExpansionError:
    """The error for an ENV or ARG value longer than MAX_VALUE."""
    error = ExpansionError(
        f"the value of {name} grows beyond {_size_text(MAX_VALUE)}, the most imgbuild allows "
        "for one ENV or ARG value (see docs/dockerfile.md); keep large data in files, not variables"
    )
    error.too_big = True
    return error


def is_unset_variable_error(error: Exception) -> bool:
    """True for a ``${name?}``/``${name:?}`` failure (which depends on the
    variables in scope, unlike syntax errors, which depend only on the text)."""
    return getattr(error, "unset_variable", None) is not None


def expand_word(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Expand one word (quotes removed, spaces kept), as BuildKit's ProcessWord."""
    return Lexer(escape).process(word, env).result


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Expand and split into words, as BuildKit's ProcessWords."""
    return Lexer(escape).process(text, env).words


def did_you_mean(word: str, choices) -> str:
    """``": did you mean X?"`` for the choice closest to a mistyped ``word``, or "",
    as BuildKit's suggestions in its error messages."""
    close = closest(word, choices)
    return f": did you mean {close}?" if close else ""


def closest(word: str, choices) -> str | None:
    """The choice most like ``word``, if one is close enough to be a typo of it."""
    import difflib  # only for error messages: a cache hit never loads it

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _plain_run_pattern(escape: str, skip_quotes: bool, stop: str | None) -> re.Pattern[str]:
    special = {"$", escape} | _GO_SPACES
    if not skip_quotes:
        special |= {"'", '"'}
    if stop is not None:
        special.add(stop)
    return re.compile("[^" + "".join(re.escape(c) for c in sorted(special)) + "]+")
