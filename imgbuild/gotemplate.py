"""A small evaluator for the Go ``text/template`` syntax that ``docker --format`` takes.

Enough for what people paste from Docker scripts::

    {{.Id}}  {{.Config.Env}}  {{json .Config}}  {{index .Config.Labels "k"}}
    {{range .RepoTags}}{{.}} {{end}}  {{range $k, $v := .Config.Labels}}{{$k}}={{$v}}{{"\\n"}}{{end}}
    {{if .Config.Entrypoint}}...{{else}}...{{end}}  {{with .Config}}{{.User}}{{end}}
    {{.Repository}}:{{.Tag}}  {{join .RepoTags ","}}  {{.Id | printf "%.19s"}}  {{- trim -}}

Values print as Go's ``%v`` prints them (``[a b]``, ``map[k:v]``, ``{a b}``,
``<nil>``, ``<no value>``), ``json`` as ``encoding/json`` writes them. The
functions are Go's builtins that matter here (``index len print printf
println eq ne lt le gt ge not and or``) and Docker's additions (``json join
split upper lower title truncate pad``). Anything else (``template``,
``define``, ``block``, method calls) is refused with a TemplateError naming
what is not supported.

Data is plain JSON-like Python values. A ``Struct`` (a dict subclass) stands
for a Go struct: asking it for a field it lacks is an error, as in Go, where
asking a plain dict (a Go map) gives ``<no value>``. ``NIL_LIST`` and
``NIL_MAP`` are Go's nil slice and map: they print ``[]`` and ``map[]`` and
are ``null`` in JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import field
from typing import Any

from imgbuild.dataclass import dataclass
from imgbuild.errors import UsageError


class TemplateError(UsageError):
    """The --format template cannot be parsed or evaluated. Exit code 2."""


class Struct(dict):
    """A Go struct: fields print in order, a missing field is an error."""


@dataclass(frozen=True)
class GoNil:
    """A nil slice, map or pointer, as Go's templates print it."""

    text: str  # how Go's %v prints it
    omitempty: bool = False  # a Struct field JSON leaves out when it is nil


NIL_LIST = GoNil("[]")
NIL_MAP = GoNil("map[]")
NIL_POINTER = GoNil("<nil>")


class _Missing:
    """A key a map does not have: Go prints ``<no value>``."""

    def __repr__(self) -> str:
        return "<no value>"


MISSING = _Missing()


def render(template: str, data: Any) -> str:
    """Evaluate ``template`` with ``data`` as dot. Raises TemplateError."""
    return Template(template).execute(data)


def to_json(value: Any) -> str:
    """``encoding/json`` output: compact, struct fields in order, map keys sorted,
    with ``<``, ``>`` and ``&`` escaped."""
    text = json.dumps(jsonable(value), separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def jsonable(value: Any) -> Any:
    """Plain JSON values for ``value``: nils become null (or go, when omitempty), maps sorted."""
    if isinstance(value, GoNil | _Missing):
        return None
    if isinstance(value, Struct):
        return {
            key: jsonable(item)
            for key, item in value.items()
            if not (isinstance(item, GoNil) and item.omitempty)
        }
    if isinstance(value, dict):
        return {str(key): jsonable(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


def format_value(value: Any) -> str:
    """Go's ``%v``."""
    if value is None:
        return "<nil>"
    if isinstance(value, GoNil):
        return value.text
    if isinstance(value, _Missing):
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _format_float(value)
    if isinstance(value, list | tuple):
        return "[" + " ".join(format_value(item) for item in value) + "]"
    if isinstance(value, Struct):
        return "{" + " ".join(format_value(item) for item in value.values()) + "}"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: str(item[0]))
        return "map[" + " ".join(f"{format_value(k)}:{format_value(v)}" for k, v in items) + "]"
    return str(value)


def _format_float(value: float) -> str:
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


# --- lexing ---------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\]|\\.)')
  | (?P<declare>:=)
  | (?P<assign>=)
  | (?P<number>-?(?:0x[0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?))
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<variable>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<punct>[|(),])
    """,
    re.VERBOSE,
)


@dataclass
class _Token:
    """A word of a template action: a field, variable, literal, function or punctuation."""

    kind: str
    text: str
    column: int


def _tokens(action: str, column: int) -> list[_Token]:
    tokens, position = [], 0
    while position < len(action):
        match = _TOKEN.match(action, position)
        if not match:
            raise TemplateError(
                f"template: column {column + position}: unexpected {action[position]!r} in {{{{{action}}}}}"
            )
        if match.lastgroup != "space":
            tokens.append(_Token(match.lastgroup, match.group(), column + position))
        position = match.end()
    return tokens


@dataclass
class _Action:
    """A ``{{ ... }}`` of the template, split into tokens."""

    tokens: list[_Token]
    text: str
    column: int


def _split(template: str) -> list[str | _Action]:
    """Text and actions, with ``{{-`` and ``-}}`` trimming the text beside them."""
    parts: list[str | _Action] = []
    position = 0
    trim_next = False
    while True:
        start = template.find("{{", position)
        text = template[position:] if start < 0 else template[position:start]
        if trim_next:
            text = text.lstrip()
        if start < 0:
            parts.append(text)
            return parts
        inner_start = start + 2
        if template.startswith("- ", inner_start) or template.startswith("-\t", inner_start) \
                or template.startswith("-\n", inner_start):
            text = text.rstrip()
            inner_start += 1
        parts.append(text)
        if template[inner_start:].lstrip().startswith("/*"):
            end = _comment_end(template, inner_start)
        else:
            end = _action_end(template, inner_start)
        inner_end, trim_next = end, False
        if template[end - 1] == "-" and end - 2 >= inner_start and template[end - 2].isspace():
            inner_end, trim_next = end - 1, True
        inner = template[inner_start:inner_end]
        if not inner.strip().startswith("/*"):
            parts.append(_Action(_tokens(inner, inner_start), inner.strip(), inner_start))
        position = end + 2


def _comment_end(template: str, position: int) -> int:
    """Where the ``}}`` after a ``/* comment */`` starts (quotes in it mean nothing)."""
    close = template.find("*/", template.index("/*", position) + 2)
    end = -1 if close < 0 else template.find("}}", close + 2)
    if end < 0 or template[close + 2 : end].strip(" -"):
        raise TemplateError(f"template: unclosed comment starting at column {position - 2}: end it with */}}}}")
    return end


def _action_end(template: str, position: int) -> int:
    """Where the ``}}`` closing an action starts; quotes may hold braces."""
    quote = None
    index = position
    while index < len(template):
        char = template[index]
        if quote:
            if char == "\\" and quote != "`":
                index += 1
            elif char == quote:
                quote = None
        elif char in "\"`'":
            quote = char
        elif template.startswith("}}", index):
            return index
        index += 1
    raise TemplateError(f"template: unclosed action starting at column {position - 2}: add '}}}}'")


# --- parsing --------------------------------------------------------------------------


@dataclass
class _Command:
    """One command of a pipeline: its operands."""

    operands: list[Any]  # ('field', names) ('var', name, names) ('lit', value) ('fn', name) ('pipe', _Pipeline)


@dataclass
class _Pipeline:
    """Commands joined by ``|``, with the variables the pipeline declares."""

    declare: list[str]
    commands: list[_Command]


@dataclass
class _Print:
    """An action that prints its pipeline's value."""

    pipeline: _Pipeline


@dataclass
class _Block:
    """An ``if``, ``range`` or ``with`` block, with its ``else`` part."""

    kind: str  # if | range | with
    pipeline: _Pipeline
    body: list = field(default_factory=list)
    otherwise: list = field(default_factory=list)


_UNSUPPORTED = {"template", "define", "block", "break", "continue"}


class Template:
    def __init__(self, text: str):
        self.text = text
        self.nodes = self._parse(_split(text))

    def _parse(self, parts: list[str | _Action]) -> list:
        root: list = []
        stack: list[tuple[_Block, list]] = []
        current = root
        for part in parts:
            if isinstance(part, str):
                if part:
                    current.append(part)
                continue
            tokens = part.tokens
            if not tokens:
                raise TemplateError(f"template: column {part.column}: missing value for command")
            head = tokens[0].text if tokens[0].kind == "word" else ""
            if head in _UNSUPPORTED:
                raise TemplateError(f"template: {{{{{head}}}}} is not supported by imgbuild's --format")
            if head in ("if", "range", "with"):
                block = _Block(head, self._pipeline(tokens[1:], part, head == "range"))
                current.append(block)
                stack.append((block, current))
                current = block.body
            elif head == "else":
                if not stack:
                    raise TemplateError(f"template: column {part.column}: {{{{else}}}} outside if, range or with")
                block = stack[-1][0]
                if len(tokens) > 1 and tokens[1].text == "if" and block.kind == "if":
                    # {{else if X}} is {{else}}{{if X}} ... with one shared {{end}}
                    inner = _Block("if", self._pipeline(tokens[2:], part, False))
                    block.otherwise.append(inner)
                    stack[-1] = (inner, stack[-1][1])
                    current = inner.body
                    continue
                current = block.otherwise
            elif head == "end":
                if not stack:
                    raise TemplateError(f"template: column {part.column}: unexpected {{{{end}}}}")
                _, current = stack.pop()
            else:
                current.append(_Print(self._pipeline(tokens, part, False)))
        if stack:
            raise TemplateError(f"template: unexpected end of template: {{{{{stack[-1][0].kind}}}}} has no {{{{end}}}}")
        return root

    def _pipeline(self, tokens: list[_Token], action: _Action, in_range: bool) -> _Pipeline:
        declare: list[str] = []
        for index, token in enumerate(tokens):
            if token.kind == "declare":
                names = [t.text for t in tokens[:index] if t.text != ","]
                if not names or any(not n.startswith("$") for n in names) or len(names) > (2 if in_range else 1):
                    raise TemplateError(f"template: column {token.column}: bad variable declaration in {{{{{action.text}}}}}")
                declare, tokens = names, tokens[index + 1 :]
                break
            if token.kind == "assign":
                raise TemplateError("template: assigning to a variable (=) is not supported by imgbuild's --format")
        if not tokens:
            raise TemplateError(f"template: column {action.column}: missing value in {{{{{action.text}}}}}")
        commands, position = [], 0
        while position < len(tokens):
            command, position = self._command(tokens, position, action)
            commands.append(command)
        return _Pipeline(declare, commands)

    def _command(self, tokens: list[_Token], position: int, action: _Action) -> tuple[_Command, int]:
        operands = []
        while position < len(tokens):
            token = tokens[position]
            if token.text == "|":
                position += 1
                break
            if token.text == ")":
                raise TemplateError(f"template: column {token.column}: unexpected ')' in {{{{{action.text}}}}}")
            if token.text == "(":
                inner, position = self._parenthesised(tokens, position + 1, action)
                operands.append(("pipe", inner))
                continue
            operands.append(self._operand(token, operands))
            position += 1
        if not operands:
            raise TemplateError(f"template: missing command in {{{{{action.text}}}}}")
        return _Command(operands), position

    def _parenthesised(self, tokens: list[_Token], position: int, action: _Action) -> tuple[_Pipeline, int]:
        depth, end = 1, position
        while end < len(tokens):
            if tokens[end].text == "(":
                depth += 1
            elif tokens[end].text == ")":
                depth -= 1
                if depth == 0:
                    break
            end += 1
        if depth:
            raise TemplateError(f"template: unclosed '(' in {{{{{action.text}}}}}")
        return self._pipeline(tokens[position:end], action, False), end + 1

    def _operand(self, token: _Token, before: list) -> tuple:
        kind, text = token.kind, token.text
        if kind == "field":
            return ("field", [] if text == "." else text[1:].split("."))
        if kind == "variable":
            name, *names = text.split(".")
            return ("var", name, names)
        if kind == "string":
            return ("lit", _unquote(text))
        if kind == "raw":
            return ("lit", text[1:-1])
        if kind == "char":
            return ("lit", ord(_unquote('"' + text[1:-1] + '"')))
        if kind == "number":
            return ("lit", _number(text))
        if kind == "word":
            if text in ("true", "false"):
                return ("lit", text == "true")
            if text == "nil":
                return ("lit", None)
            if text in FUNCTIONS and not before:
                return ("fn", text)
            if text in FUNCTIONS:
                raise TemplateError(f"template: {text} is a function: put it first, or in parentheses ({text} ...)")
            raise TemplateError(
                f'template: function "{text}" not defined; imgbuild\'s --format knows {", ".join(sorted(FUNCTIONS))}'
            )
        raise TemplateError(f"template: column {token.column}: unexpected {text!r}")

    # --- executing --------------------------------------------------------------------

    def execute(self, data: Any) -> str:
        out: list[str] = []
        self._run(self.nodes, data, {"$": data}, out)
        return "".join(out)

    def _run(self, nodes: list, dot: Any, variables: dict, out: list[str]) -> None:
        for node in nodes:
            if isinstance(node, str):
                out.append(node)
            elif isinstance(node, _Print):
                value = self._pipe(node.pipeline, dot, variables)
                if not node.pipeline.declare:
                    out.append(format_value(value))
            elif node.kind == "range":
                self._range(node, dot, variables, out)
            else:
                scope = dict(variables)
                value = self._pipe(node.pipeline, dot, scope)
                if _truth(value):
                    self._run(node.body, value if node.kind == "with" else dot, scope, out)
                else:
                    self._run(node.otherwise, dot, scope, out)

    def _range(self, node: _Block, dot: Any, variables: dict, out: list[str]) -> None:
        scope = dict(variables)
        declare, node.pipeline.declare = node.pipeline.declare, []
        try:
            value = self._pipe(node.pipeline, dot, scope)
        finally:
            node.pipeline.declare = declare
        if isinstance(value, dict):
            items = sorted(value.items(), key=lambda item: str(item[0]))
        elif isinstance(value, list | tuple):
            items = list(enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            items = [(i, i) for i in range(value)]
        elif value is None or isinstance(value, GoNil | _Missing):
            items = []
        else:
            raise TemplateError(f"template: range can't iterate over {format_value(value)}")
        if not items:
            self._run(node.otherwise, dot, scope, out)
            return
        for key, item in items:
            if len(declare) == 2:
                scope[declare[0]], scope[declare[1]] = key, item
            elif declare:
                scope[declare[0]] = item
            self._run(node.body, item, scope, out)

    def _pipe(self, pipeline: _Pipeline, dot: Any, variables: dict) -> Any:
        value: Any = _NOTHING
        for command in pipeline.commands:
            value = self._command_value(command, dot, variables, value)
        if pipeline.declare:
            variables[pipeline.declare[0]] = value
        return value

    def _command_value(self, command: _Command, dot: Any, variables: dict, piped: Any) -> Any:
        first, *rest = command.operands
        if first[0] == "fn":
            args = [self._operand_value(op, dot, variables) for op in rest]
            if piped is not _NOTHING:
                args.append(piped)
            return _call(first[1], args)
        if rest or piped is not _NOTHING:
            raise TemplateError(f"template: can't give arguments to a non-function {_describe(first)}")
        return self._operand_value(first, dot, variables)

    def _operand_value(self, operand: tuple, dot: Any, variables: dict) -> Any:
        kind = operand[0]
        if kind == "lit":
            return operand[1]
        if kind == "field":
            return _fields(dot, operand[1])
        if kind == "var":
            if operand[1] not in variables:
                raise TemplateError(f"template: undefined variable: {operand[1]}")
            return _fields(variables[operand[1]], operand[2])
        if kind == "pipe":
            return self._pipe(operand[1], dot, variables)
        raise TemplateError(f"template: {operand[1]} is a function: put it first in a command")


_NOTHING = object()


def _describe(operand: tuple) -> str:
    if operand[0] == "field":
        return "." + ".".join(operand[1])
    if operand[0] == "lit":
        return repr(operand[1])
    return str(operand[1])


def _fields(value: Any, names: list[str]) -> Any:
    path = ""
    for name in names:
        path += "." + name
        if isinstance(value, dict):
            if name in value:
                value = value[name]
            elif isinstance(value, Struct):
                raise TemplateError(
                    f"template: at <{path}>: can't evaluate field {name} (the fields are {', '.join(value)})"
                )
            else:
                value = MISSING
        elif value is None or isinstance(value, GoNil | _Missing):
            if isinstance(value, _Missing):
                continue
            raise TemplateError(f"template: at <{path}>: nil pointer evaluating {name}")
        else:
            raise TemplateError(f"template: at <{path}>: can't evaluate field {name} in {format_value(value)!r}")
    return value


def _truth(value: Any) -> bool:
    if isinstance(value, GoNil | _Missing) or value is None:
        return False
    if isinstance(value, Struct):
        return True
    return bool(value)


def _unquote(text: str) -> str:
    try:
        return json.loads(text)
    except ValueError:
        # Go escapes JSON lacks: \a \v \' \x..; decode them the Python way.
        return text[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")


def _number(text: str) -> int | float:
    if text.lower().startswith(("0x", "-0x")):
        return int(text, 16)
    return float(text) if any(c in text for c in ".eE") else int(text)


# --- functions ------------------------------------------------------------------------


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, dict):
            # Go gives the zero value for a missing key: "" in Docker's string maps.
            value = value.get(key, "")
        elif isinstance(value, list | tuple | str):
            if not isinstance(key, int) or isinstance(key, bool) or not 0 <= key < len(value):
                raise TemplateError(f"template: index out of range: {key}")
            value = value[key]
        elif value is None or isinstance(value, GoNil):
            raise TemplateError("template: index of a nil value")
        else:
            raise TemplateError(f"template: can't index item of type {type(value).__name__}")
    return value


def _length(value: Any) -> int:
    if isinstance(value, GoNil):
        return 0
    if isinstance(value, str | list | tuple | dict):
        return len(value)
    raise TemplateError(f"template: len of {format_value(value)!r}: not a string, list or map")


def _print(*args: Any) -> str:
    # Go's fmt.Sprint: a space between two operands when neither is a string.
    out = ""
    for index, arg in enumerate(args):
        if index and not isinstance(arg, str) and not isinstance(args[index - 1], str):
            out += " "
        out += format_value(arg)
    return out


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([vsdqxXtf%])")


def _printf(pattern: str, *args: Any) -> str:
    values = list(args)

    def one(match: re.Match) -> str:
        flags, width, precision, verb = match.groups()
        if verb == "%":
            return "%"
        if not values:
            return f"%!{verb}(MISSING)"
        value = values.pop(0)
        if verb == "q":
            text = json.dumps(str(value), ensure_ascii=False)
        elif verb == "d":
            text = str(int(value)) if isinstance(value, int | float) and not isinstance(value, bool) else f"%!d({format_value(value)})"
        elif verb in "xX" and isinstance(value, int) and not isinstance(value, bool):
            text = format(value, verb)
        elif verb == "f" and isinstance(value, int | float):
            text = f"{float(value):.{int(precision or 6)}f}"
            precision = None
        else:
            text = format_value(value)
        if precision is not None and verb in "sv":
            text = text[: int(precision)]
        if width:
            text = text.ljust(int(width)) if "-" in flags else text.rjust(int(width))
        return text

    text = _VERB.sub(one, pattern)
    if values:
        text += "%!(EXTRA " + ", ".join(format_value(v) for v in values) + ")"
    return text


def _compare(name: str):
    def compare(a: Any, b: Any, *more: Any) -> bool:
        if name == "eq":
            return any(a == other for other in (b, *more))
        if more:
            raise TemplateError(f"template: {name} takes two arguments")
        if name == "ne":
            return a != b
        try:
            return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[name]
        except TypeError:
            raise TemplateError(f"template: {name}: incompatible types for comparison") from None

    return compare


def _and(*args: Any) -> Any:
    for arg in args:
        if not _truth(arg):
            return arg
    return args[-1]


def _or(*args: Any) -> Any:
    for arg in args:
        if _truth(arg):
            return arg
    return args[-1]


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TemplateError(f"template: expected a string, got {format_value(value)!r}")
    return value


FUNCTIONS: dict[str, tuple[Any, int, int]] = {
    # name: (function, fewest arguments, most arguments; -1 for any)
    "json": (to_json, 1, 1),
    "index": (_index, 1, -1),
    "len": (_length, 1, 1),
    "print": (_print, 0, -1),
    "println": (lambda *args: " ".join(format_value(a) for a in args) + "\n", 0, -1),
    "printf": (lambda pattern, *args: _printf(_text(pattern), *args), 1, -1),
    "eq": (_compare("eq"), 2, -1),
    "ne": (_compare("ne"), 2, 2),
    "lt": (_compare("lt"), 2, 2),
    "le": (_compare("le"), 2, 2),
    "gt": (_compare("gt"), 2, 2),
    "ge": (_compare("ge"), 2, 2),
    "not": (lambda value: not _truth(value), 1, 1),
    "and": (_and, 1, -1),
    "or": (_or, 1, -1),
    "join": (lambda items, sep: _text(sep).join(format_value(i) for i in _list(items)), 2, 2),
    "split": (lambda text, sep: _text(text).split(_text(sep)), 2, 2),
    "upper": (lambda text: _text(text).upper(), 1, 1),
    "lower": (lambda text: _text(text).lower(), 1, 1),
    "title": (lambda text: re.sub(r"\b[a-z]", lambda m: m.group().upper(), _text(text)), 1, 1),
    "truncate": (lambda text, n: _text(text)[: int(n)], 2, 2),
    "pad": (lambda text, left, right: " " * int(left) + _text(text) + " " * int(right), 3, 3),
}


def _list(value: Any) -> list:
    if isinstance(value, GoNil) or value is None:
        return []
    if not isinstance(value, list | tuple):
        raise TemplateError(f"template: expected a list, got {format_value(value)!r}")
    return list(value)


def _call(name: str, args: list) -> Any:
    function, fewest, most = FUNCTIONS[name]
    if len(args) < fewest or (most >= 0 and len(args) > most):
        wanted = str(fewest) if fewest == most else f"at least {fewest}" if most < 0 else f"{fewest} to {most}"
        raise TemplateError(f"template: wrong number of args for {name}: want {wanted} got {len(args)}")
    if any(isinstance(arg, _Missing) for arg in args) and name not in ("print", "println", "printf", "eq", "ne",
                                                                      "not", "and", "or", "len", "json"):
        args = [("" if isinstance(arg, _Missing) else arg) for arg in args]
    return function(*args)
