"""The line layer: directives, continuations, comments, heredoc bodies, flags,
JSON vs shell form."""

from __future__ import annotations

import pytest

from imgbuild.dockerfile import parse, parse_lines
from imgbuild.errors import DockerfileError


def lines(text):
    return parse_lines(text).lines


def test_directives_are_read_only_at_the_top():
    parsed = parse_lines("# syntax=docker/dockerfile:1.7\n# CHECK = skip=all\n#escape=`\nFROM x\n")
    assert parsed.directives.syntax == "docker/dockerfile:1.7"
    assert parsed.directives.check == "skip=all"
    assert parsed.directives.escape == "`"
    assert parsed.directives.escape_line == 3
    # after a blank line, an ordinary comment or an unknown key, directives are comments
    for text in (
        "\n# escape=`\nFROM x\n",
        "# hello\n# escape=`\nFROM x\n",
        "# foo=bar\n# escape=`\nFROM x\n",
        "FROM x\n# escape=`\n",
    ):
        assert parse_lines(text).directives.escape == "\\", text


def test_directive_errors():
    with pytest.raises(DockerfileError, match="only one escape parser directive"):
        parse_lines("# escape=`\n# escape=\\\nFROM x\n")
    with pytest.raises(DockerfileError) as caught:
        parse_lines("# escape=?\nFROM x\n")
    assert caught.value.location.line == 1


def test_escape_directive_changes_continuation_and_words():
    node = lines("# escape=`\nFROM x\nENV A=b\\c `\n  D=e` f\n")[1]
    assert node.original == "ENV A=b\\c   D=e` f"
    # ENV/LABEL/ARG words keep quotes and escapes for the expansion step
    assert node.args == ["A", "b\\c", "=", "D", "e` f", "="]


def test_continuations_skip_comments_and_blank_lines_and_warn():
    parsed = parse_lines("FROM x\nRUN a \\\n# comment\n\n  b \\\n  \\\n c\nRUN d\n")
    run = parsed.lines[1]
    assert run.args == ["a   b    c"]
    assert (run.line, run.end_line) == (2, 7)
    assert parsed.lines[2].line == 8
    assert parsed.warnings == ["Empty continuation line found in: RUN a   b    c"]


def test_escaped_escape_at_end_of_line_does_not_continue():
    parsed = lines("FROM x\nENV A=a\\\\\nENV B=b\n")
    assert [node.original for node in parsed] == ["FROM x", "ENV A=a\\\\", "ENV B=b"]


def test_source_keeps_the_original_text():
    node = lines("FROM x\nRUN a \\\n  # inner comment\n  b\nCMD c\n")[1]
    assert node.source == "RUN a \\\n  # inner comment\n  b"


def test_bom_and_crlf():
    parsed = lines("\ufeffFROM x\r\nRUN a \\\r\n b\r\n")
    assert parsed[0].args == ["x"]
    assert parsed[1].args == ["a  b"]


def test_comments_before_an_instruction_are_collected():
    parsed = lines("# syntax=x\n# first\n# second\nFROM x\n#\n# after an empty comment\nARG A\n")
    assert parsed[0].comments == ["first", "second"]
    assert parsed[1].comments == ["after an empty comment"]


def test_flags_are_split_off_with_quotes_removed():
    node = lines('FROM x\nCOPY --from="a b" --chown=1:1 -- --not-a-flag /d\n')[1]
    assert node.flags == ["--from=a b", "--chown=1:1"]
    assert node.args == ["--not-a-flag", "/d"]


@pytest.mark.parametrize(
    "rest,args,is_json",
    [
        ('["a", "b c"]', ["a", "b c"], True),
        ("[ ]", [], True),
        # BuildKit >= 1.9 (json.Unmarshal): text after the array makes it the shell form
        ('["a"] trailing text', ['["a"] trailing text'], False),
        ('["a"] \t', ["a"], True),  # JSON whitespace after it is fine
        ("['single']", ["['single']"], False),
        ('["unterminated"', ['["unterminated"'], False),
        ("[NaN]", ["[NaN]"], False),  # not JSON for Go either
        ("echo hi", ["echo hi"], False),
    ],
)
def test_json_or_shell_form(rest, args, is_json):
    node = lines(f"FROM x\nCMD {rest}\n")[1]
    assert (node.args, node.json) == (args, is_json)


def test_json_with_non_strings_is_an_error():
    for rest in ('["a", 1]', '[["a"]]', '[{"a": "b"}]', "[null]"):
        with pytest.raises(DockerfileError, match="arrays must be comprised of strings"):
            lines(f"FROM x\nRUN {rest}\n")


def test_deeply_nested_json_does_not_crash():
    node = lines("FROM x\nRUN " + "[" * 5000 + "\n")[1]
    assert node.json is False


def test_env_and_label_forms():
    assert lines("FROM x\nENV a b c\n")[1].args == ["a", "b c", ""]
    assert lines('FROM x\nENV a="b c" d=e\n')[1].args == ["a", '"b c"', "=", "d", "e", "="]
    with pytest.raises(DockerfileError, match='can\'t find = in "d"'):
        lines("FROM x\nLABEL a=b d\n")
    with pytest.raises(DockerfileError, match="ENV must have two arguments"):
        lines("FROM x\nENV a\n")


def test_heredoc_bodies_are_read_in_order():
    text = "FROM x\nRUN cat <<A <<-'B'\none\nA\n\ttwo\n\tB\nCMD done\n"
    parsed = lines(text)
    run = parsed[1]
    assert [(h.name, h.content, h.expand, h.chomp) for h in run.heredocs] == [
        ("A", "one\n", True, False),
        ("B", "\ttwo\n", False, True),  # raw here; typed instructions apply chomp
    ]
    assert (run.line, run.end_line) == (2, 6)
    assert parsed[2].args == ["done"]


def test_heredocs_only_for_run_copy_add_in_shell_form():
    parsed = lines('FROM x\nCMD <<EOF\nRUN ["<<EOF"]\nEOF\n')
    assert [node.keyword for node in parsed] == ["FROM", "CMD", "RUN", "EOF"]
    assert all(not node.heredocs for node in parsed)


def test_heredoc_in_onbuild_trigger():
    node = lines("FROM x\nONBUILD RUN <<EOF\necho hi\nEOF\n")[1]
    assert node.trigger.keyword == "RUN"
    assert node.heredocs[0].content == "echo hi\n"


def test_unterminated_heredoc():
    with pytest.raises(DockerfileError) as caught:
        lines("FROM x\nRUN <<EOF\necho\n")
    assert caught.value.location.line == 2
    assert "unterminated heredoc" in caught.value.message


def test_line_with_unbalanced_quote_has_no_heredocs():
    # The heredoc scanner cannot split the line, so (as in BuildKit) the
    # following lines are instructions of their own.
    parsed = lines('FROM x\nRUN echo "<<EOF\nRUN a\n')
    assert [node.args for node in parsed[1:]] == [['echo "<<EOF'], ["a"]]


def test_empty_and_comment_only_files_are_rejected():
    for text in ("", "\n\n", "# just a comment\n", "# syntax=x\n"):
        with pytest.raises(DockerfileError, match="file with no instructions"):
            parse(text)


def test_error_carries_file_line_and_text():
    with pytest.raises(DockerfileError) as caught:
        parse("FROM x\n\nRUN [1]\n", filename="build/Dockerfile.prod")
    assert str(caught.value).splitlines() == [
        "build/Dockerfile.prod:3: when using JSON array syntax, arrays must be comprised of "
        "strings only",
        "     3 | RUN [1]",
    ]


def test_backslash_quoted_heredoc_name_still_expands_like_buildkit():
    (heredoc,) = lines("FROM x\nRUN <<\\EOF\necho $HOME\nEOF\n")[1].heredocs
    assert (heredoc.name, heredoc.expand) == ("EOF", True)
