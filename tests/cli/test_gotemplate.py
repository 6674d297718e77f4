"""The Go-template evaluator behind ``--format``: Go's printing and the parts of the syntax scripts use."""

from __future__ import annotations

import pytest

from imgbuild.gotemplate import NIL_LIST, NIL_MAP, GoNil, Struct, TemplateError, render, to_json

DATA = Struct(
    Id="sha256:abc",
    Tags=["a:1", "b:2"],
    Config=Struct(Env=["A=1"], Entrypoint=NIL_LIST, Labels={"z": "1", "a": "<&>"}, Volumes=NIL_MAP,
                  Stop=GoNil("", omitempty=True)),
    Size=1500,
    Ratio=0.5,
    Flag=True,
)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{.Id}}", "sha256:abc"),
        ("x {{- .Id -}} y", "xsha256:abcy"),
        ("{{.Tags}} {{.Config.Entrypoint}} {{.Config.Volumes}}", "[a:1 b:2] [] map[]"),
        ("{{.Config.Labels}}", "map[a:<&> z:1]"),
        ("{{.Config.Labels.missing}}", "<no value>"),
        ("{{index .Config.Labels \"missing\"}}|", "|"),
        ("{{index .Tags 1}}", "b:2"),
        ("{{len .Tags}} {{len .Config.Labels}}", "2 2"),
        ("{{.Flag}} {{.Ratio}} {{.Size}}", "true 0.5 1500"),
        ("{{range $i, $t := .Tags}}{{$i}}:{{$t}},{{end}}", "0:a:1,1:b:2,"),
        ("{{range .Config.Entrypoint}}x{{else}}empty{{end}}", "empty"),
        ("{{with .Config}}{{.Env}}{{end}}", "[A=1]"),
        ("{{if not .Config.Labels}}no{{else if .Flag}}flag{{else}}other{{end}}", "flag"),
        ("{{if and .Flag (eq .Size 1500)}}yes{{end}}", "yes"),
        ("{{.Id | printf \"%.8s\"}}", "sha256:a"),
        ("{{printf \"%-6s|%5d\" \"ab\" .Size}}", "ab    | 1500"),
        ("{{join .Tags \", \"}} {{upper \"x\"}} {{lower \"Y\"}} {{title \"ab cd\"}}", "a:1, b:2 X y Ab Cd"),
        ("{{split \"a,b\" \",\"}}", "[a b]"),
        ("{{$x := .Size}}{{$x}}", "1500"),
        ("{{/* a comment */}}ok", "ok"),
        ("a {{- /* it's {{ here */ -}} b", "ab"),
        ("{{\"{{braces}}\"}}", "{{braces}}"),
        ("{{json .Config}}", '{"Env":["A=1"],"Entrypoint":null,"Labels":{"a":"\\u003c\\u0026\\u003e","z":"1"},"Volumes":null}'),
    ],
)
def test_templates_print_as_go_prints(template, expected):
    assert render(template, DATA) == expected


def test_json_keeps_struct_order_and_sorts_maps():
    assert to_json(Struct(b=1, a={"y": 2, "x": NIL_MAP})) == '{"b":1,"a":{"x":null,"y":2}}'


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{.Nope}}", "can't evaluate field Nope"),
        ("{{.Tags.Foo}}", "can't evaluate field Foo"),
        ("{{$nope}}", "undefined variable"),
        ("{{end}}", "unexpected {{end}}"),
        ("{{else}}", "outside if"),
        ("{{define \"x\"}}{{end}}", "not supported"),
        ("{{.Id 1}}", "non-function"),
        ("{{index .Tags 9}}", "out of range"),
        ("{{len}}", "wrong number of args"),
        ("{{ @ }}", "unexpected '@'"),
        ("{{/* open", "unclosed comment"),
    ],
)
def test_what_it_cannot_do_is_a_clear_error(template, message):
    with pytest.raises(TemplateError, match=None) as raised:
        render(template, DATA)
    assert message in str(raised.value)
    assert raised.value.exit_code == 2
