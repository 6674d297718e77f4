"""Heredocs: ``<<EOF``, ``<<-EOF``, quoted delimiters, several per line.

BuildKit's rules, which we follow:

- Only RUN, COPY and ADD (also as ONBUILD triggers) in shell form take
  heredocs. Each word of the instruction line that looks like ``<<NAME`` or
  ``<<-NAME`` starts one; their bodies follow the instruction line in order,
  each ending at a line that is exactly NAME (``<<-``: after leading tabs).
- The words are found with the shell lexer using ``\\`` as escape character
  whatever ``# escape=`` says. A line the lexer cannot split (an unterminated
  quote, say) has no heredocs at all.
- If any part of NAME is quoted (``<<"EOF"``, ``<<'EOF'``, ``<<E"O"F``) the
  body is not expanded; otherwise ``expand`` is true.
- ``<<-`` strips leading tabs from every body line ("chomp").
"""

from __future__ import annotations

import re

from imgbuild.dataclass import dataclass
from imgbuild.dockerfile.shell import Lexer
from imgbuild.errors import ExpansionError

_HEREDOC_WORD = re.compile(r"([0-9]*)<<(-?)([^<]*)\Z")
_LEADING_TABS = re.compile(r"^\t+", re.MULTILINE)


@dataclass
class Heredoc:
    """One here-document.

    In parsed instructions ``content`` is final: for ``<<-`` (``chomp``) the
    leading tabs are already removed. It ends with the newline of its last line.
    ``expand`` says whether ``$variables`` in it are expanded (unquoted name).
    """

    name: str
    content: str
    expand: bool = True
    chomp: bool = False


def parse_heredoc_word(word: str) -> Heredoc | None:
    """The heredoc a word like ``<<EOF`` or ``<<-'EOF'`` starts, else None.

    The content is empty; the caller reads it from the following lines. Raises
    ExpansionError if the name cannot be lexed.
    """
    match = _HEREDOC_WORD.match(word)
    if match is None or match.group(3) == "":
        return None
    chomp = match.group(2) == "-"
    rest = match.group(3)
    words = Lexer("\\", skip_unset=True).process(rest, {}).words
    if len(words) != 1:
        return None
    raw_words = Lexer("\\", skip_unset=True, raw_quotes=True).process(rest, {}).words
    if len(raw_words) != len(words):
        # Possible only for odd names such as <<'' ''x; BuildKit rejects them too.
        raise ExpansionError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    # Quotes that the plain lexing removed mean part of the name was quoted.
    expand = _count_quotes(words[0]) == _count_quotes(raw_words[0])
    return Heredoc(name=words[0], content="", expand=expand, chomp=chomp)


def heredocs_in_line(line: str) -> list[Heredoc]:
    """The heredocs an instruction line starts, in order (contents empty)."""
    lexer = Lexer("\\", raw_quotes=True, raw_escapes=True, skip_unset=True)
    try:
        words = lexer.process(line, {}).words
    except ExpansionError:
        return []
    found = []
    for word in words:
        heredoc = parse_heredoc_word(word)
        if heredoc is not None:
            found.append(heredoc)
    return found


def chomp(content: str) -> str:
    """Remove the leading tabs of every line (``<<-``)."""
    return _LEADING_TABS.sub("", content)


def _count_quotes(text: str) -> int:
    return text.count("'") + text.count('"')
