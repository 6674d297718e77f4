"""Word expansion beyond BuildKit's corpus: the pattern modifiers, the escape
character, word splitting and error messages."""

from __future__ import annotations

import pytest

from imgbuild.dockerfile.shell import Lexer, expand_word, expand_words, go_quote
from imgbuild.errors import ExpansionError

ENV = {"FILE": "/usr/local/lib/app.tar.gz", "EMPTY": "", "X": "a-b-c", "SP": "two  words"}


@pytest.mark.parametrize(
    "word,expected",
    [
        ("${FILE#*/}", "usr/local/lib/app.tar.gz"),
        ("${FILE##*/}", "app.tar.gz"),
        ("${FILE%.*}", "/usr/local/lib/app.tar"),
        ("${FILE%%.*}", "/usr/local/lib/app"),
        ("${FILE#nomatch}", "/usr/local/lib/app.tar.gz"),
        ("${FILE%?z}", "/usr/local/lib/app.tar."),
        ("${X/-/_}", "a_b-c"),
        ("${X//-/_}", "a_b_c"),
        ("${X//?/.}", "....."),
        ("${X/\\-/_}", None),  # only \*, \? and \\ may be escaped in a pattern
        ("${X/b*/Z}", "a-Z"),
        ("${UNSET/a/b}", ""),
        ("${EMPTY-default}", ""),
        ("${EMPTY:-default}", "default"),
        ("${UNSET-default}", "default"),
        ("${EMPTY+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${UNSET+alt}", ""),
        ("${EMPTY?}", ""),
        ("${X:?must be set}", "a-b-c"),
        ("$X$X", "a-b-ca-b-c"),
        ("${X}x", "a-b-cx"),
        ("'$X'", "$X"),
        ('"$X"', "a-b-c"),
        ('"\\$X"', "$X"),
        ("\\$X", "$X"),
    ],
)
def test_modifiers(word, expected):
    if expected is None:
        with pytest.raises(ExpansionError):
            expand_word(word, ENV)
    else:
        assert expand_word(word, ENV) == expected


def test_error_messages_say_what_failed():
    with pytest.raises(ExpansionError) as caught:
        expand_word("${UNSET:?set UNSET first}", ENV)
    assert (
        str(caught.value) == 'failed to process "${UNSET:?set UNSET first}": UNSET: set UNSET first'
    )
    with pytest.raises(ExpansionError) as caught:
        expand_word("${EMPTY:?}", ENV)
    assert caught.value.message.endswith("EMPTY: is not allowed to be empty")
    with pytest.raises(ExpansionError) as caught:
        expand_word("${UNSET?}", ENV)
    assert caught.value.message.endswith("UNSET: is not allowed to be unset")
    with pytest.raises(ExpansionError, match="bad substitution"):
        expand_word("${}", ENV)
    with pytest.raises(ExpansionError, match="missing '}'"):
        expand_word("${X", ENV)
    with pytest.raises(ExpansionError, match=r"unsupported modifier \(:#\)"):
        expand_word("${X:#a}", ENV)


def test_backtick_escape_leaves_backslashes_alone():
    assert expand_word(r"C:\path\to", {}, escape="`") == r"C:\path\to"
    assert expand_word("a` b`$X", ENV, escape="`") == "a b$X"
    assert expand_word('"q`"uote"', {}, escape="`") == 'q"uote'
    # with the default escape the same word means something else
    assert expand_word("a` b", {}) == "a` b"


def test_words_split_unquoted_expansions_only():
    assert expand_words("x$SP y", ENV) == ["xtwo", "words", "y"]
    assert expand_words('"$SP" y', ENV) == ["two  words", "y"]
    assert expand_words("a\\ b c", ENV) == ["a b", "c"]
    assert expand_words('a "" b', ENV) == ["a", "b"]  # BuildKit drops empty quoted words


def test_lexer_records_which_variables_were_read():
    result = Lexer().process("$X ${UNSET:-d} ${EMPTY}", ENV)
    assert result.matched == {"X", "EMPTY"}
    assert result.unmatched == {"UNSET"}


def test_skip_unset_keeps_unknown_references():
    lexer = Lexer(skip_unset=True)
    assert (
        lexer.process("$X $NOPE ${NOPE:-d} ${NOPE}", ENV).result == "a-b-c $NOPE ${NOPE:-d} ${NOPE}"
    )


def test_raw_quotes_and_escapes():
    lexer = Lexer(raw_quotes=True, raw_escapes=True)
    assert lexer.process("'a b' \"c\" \\d", {}).words == ["'a b'", '"c"', "\\d"]


PLAIN_LOOKING = ["k0", "v", "/usr/bin:/bin", "C:\\dir", "a`b", "naïve", "x\x1cy", "a b", "a\u00a0b", "tab\there",
                 "'q'", '"q"', "a\\ b", "a` b", ""]


@pytest.mark.parametrize("escape", ["\\", "`"])
@pytest.mark.parametrize("word", PLAIN_LOOKING)
def test_words_without_expansions_come_out_as_the_full_scan_makes_them(word, escape):
    # A word with nothing to expand, quote, escape or split takes a short cut
    # (most ENV keys and values); an empty ${E} in front forces the full scan.
    env = {"E": ""}
    for skip_quotes in (False, True):
        short = Lexer(escape, skip_quotes=skip_quotes).process(word, env)
        scanned = Lexer(escape, skip_quotes=skip_quotes).process("${E}" + word, env)
        assert (short.result, short.words) == (scanned.result, scanned.words)


def test_large_input_is_linear_enough():
    text = "plain text $X " * 20000
    assert expand_word(text, ENV).count("a-b-c") == 20000


def test_go_quote_matches_strconv_quote():
    assert go_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert go_quote("\t\n\x00\x7f") == '"\\t\\n\\x00\\x7f"'
    assert go_quote("é♥\u00a0") == '"é♥\\u00a0"'


def test_nesting_is_bounded_at_64():
    """``${a:-${a:-...}}`` 64 deep expands; one more is an error naming the bound, not
    a RecursionError (docs/security.md, "Bounds")."""
    def nested(depth: int) -> str:
        return "${a:-" * depth + "x" + "}" * depth

    assert expand_word(nested(64), {}) == "x"
    with pytest.raises(ExpansionError, match="nested more than 64 deep"):
        expand_word(nested(65), {})
