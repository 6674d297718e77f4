"""Typed instructions: one dataclass per Dockerfile instruction, and the
conversion from instruction lines (``lines.py``) to them.

This is the equivalent of BuildKit's ``instructions.Parse``: flags are checked
against what each instruction accepts, argument counts are checked, and
``--mount``, HEALTHCHECK durations, heredoc sources and so on are parsed.
Nothing is expanded here: every field holds the words as written (quotes
included where BuildKit keeps them, e.g. ENV values and ARG defaults), because
what a variable means depends on the stage being built (see ``scope.py``).

Shell form vs exec form: ``command`` is a list of strings in both; in shell
form (``exec_form`` false) it holds the whole command text as its single
element (empty list for a bare ``CMD``).
"""

from __future__ import annotations

import re
from dataclasses import field
from typing import ClassVar

from imgbuild.dataclass import dataclass
from imgbuild.dockerfile.heredoc import Heredoc, chomp, parse_heredoc_word
from imgbuild.dockerfile.lines import InstructionLine, go_trim_space
from imgbuild.dockerfile.mounts import MountError, MountSpec, parse_mount
from imgbuild.dockerfile.shell import did_you_mean, expand_word, go_quote
from imgbuild.errors import DockerfileError, ExpansionError, SourceLocation

NETWORK_MODES = ("default", "none", "host")
SECURITY_MODES = ("sandbox", "insecure")


# -- the instruction dataclasses -------------------------------------------------


@dataclass(kw_only=True)
class Instruction:
    """What every instruction has.

    ``text`` is the instruction as one line (continuations joined, trimmed):
    what BuildKit shows in progress output and records in the image history.
    ``source`` is the original text, continuation and heredoc lines included.
    """

    keyword: ClassVar[str] = ""

    line: int  # 1-based first line
    end_line: int  # last line (heredoc bodies included)
    source: str
    text: str
    comments: list[str] = field(default_factory=list)  # comment lines directly above
    # Facts only the build checks (checks.py) need: the keyword as written
    # ("run", "Copy"), and where an empty line inside a continuation ended it.
    keyword_as_written: str = field(default="", compare=False)
    empty_continuation_line: int | None = field(default=None, compare=False)


@dataclass
class KeyValue:
    """One ``key=value`` of ENV or LABEL, as written.

    ``legacy`` is the old ``ENV key value`` form (no ``=``).
    """

    key: str
    value: str
    legacy: bool = field(default=False, compare=False)


@dataclass
class ArgPair:
    """One name of an ARG instruction.

    ``default`` is the value as written (None: no ``=``). ``description`` is
    the text of a comment line ``# NAME text`` right above the ARG, which is
    how BuildKit's outline finds descriptions.
    """

    name: str
    default: str | None = None
    description: str = ""


@dataclass(kw_only=True)
class From(Instruction):
    """FROM IMAGE [AS NAME], with ``--platform``."""

    keyword: ClassVar[str] = "FROM"
    image: str  # as written, e.g. "${BASE}:1" or the name of an earlier stage
    stage_name: str | None = None  # lower-cased, as BuildKit compares stage names
    platform: str | None = None  # --platform, as written
    stage_name_as_written: str | None = field(default=None, compare=False)  # "Build" for "build"
    as_keyword: str | None = field(default=None, compare=False)  # "AS", "as", "As" as written


@dataclass(kw_only=True)
class _CommandLine(Instruction):
    """What RUN, CMD and ENTRYPOINT share: a command in exec or shell form."""

    command: list[str]
    exec_form: bool
    heredocs: list[Heredoc] = field(default_factory=list)


@dataclass
class InlineScript:
    """What a RUN whose command is a heredoc executes (see ``Run.inline_script``).

    Either ``shell_command`` is set (pass it to the shell as usual) or
    ``script_name``/``script`` are: write ``script`` to
    ``/dev/pipes/<script_name>`` with mode 0755 (read-only mount) and execute
    that path directly, without the shell.
    """

    shell_command: str | None = None
    script_name: str | None = None
    script: str | None = None


@dataclass(kw_only=True)
class Run(_CommandLine):
    """RUN, with its ``--mount``, ``--network`` and ``--security`` flags."""

    keyword: ClassVar[str] = "RUN"
    mounts: list[MountSpec] = field(default_factory=list)
    network: str | None = None  # default | none | host
    security: str | None = None  # sandbox | insecure

    def inline_script(self) -> InlineScript | None:
        """How BuildKit runs this RUN's heredocs; None when it has none.

        - ``RUN <<EOF`` whose body starts with ``#!``: the body is a script
          file, executed directly;
        - ``RUN <<EOF`` otherwise: the body is the shell command;
        - anything else (``RUN python3 <<EOF``, several heredocs): the command
          line followed by each body and its terminator is given to the
          shell, which handles the heredocs itself.
        """
        if not self.heredocs or self.exec_form or len(self.command) != 1:
            return None
        first = self.heredocs[0]
        if parse_heredoc_word(self.command[0]) is not None:
            if first.content.startswith("#!"):
                return InlineScript(script_name=first.name, script=first.content)
            return InlineScript(shell_command=first.content)
        full = self.command[0]
        for heredoc in self.heredocs:
            full += "\n" + heredoc.content + heredoc.name
        return InlineScript(shell_command=full)


@dataclass(kw_only=True)
class Cmd(_CommandLine):
    """CMD: the image's default command or arguments."""

    keyword: ClassVar[str] = "CMD"


@dataclass(kw_only=True)
class Entrypoint(_CommandLine):
    """ENTRYPOINT: the image's command."""

    keyword: ClassVar[str] = "ENTRYPOINT"


@dataclass(kw_only=True)
class _FileCopy(Instruction):
    """What COPY and ADD share: sources, destination and the flags both take."""

    sources: list[str]  # paths/URLs as written (heredoc sources are in ``heredocs``)
    dest: str
    heredocs: list[Heredoc] = field(default_factory=list)  # inline files, named by heredoc
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    exclude: list[str] = field(default_factory=list)
    exec_form: bool = False


@dataclass(kw_only=True)
class Copy(_FileCopy):
    """COPY, from the context, a stage (``--from``) or an image."""

    keyword: ClassVar[str] = "COPY"
    from_stage: str | None = None  # --from: a stage name, a stage index or an image
    parents: bool = False


@dataclass(kw_only=True)
class Add(_FileCopy):
    """ADD: COPY plus URLs, git sources, archive unpacking and ``--checksum``."""

    keyword: ClassVar[str] = "ADD"
    checksum: str | None = None
    keep_git_dir: bool = False
    unpack: bool | None = None  # --unpack; None when not given (BuildKit's default applies)


@dataclass(kw_only=True)
class Env(Instruction):
    """ENV KEY=VALUE ... (or the legacy ``ENV KEY VALUE``)."""

    keyword: ClassVar[str] = "ENV"
    pairs: list[KeyValue]


@dataclass(kw_only=True)
class Label(Instruction):
    """LABEL KEY=VALUE ..."""

    keyword: ClassVar[str] = "LABEL"
    pairs: list[KeyValue]


@dataclass(kw_only=True)
class Arg(Instruction):
    """ARG NAME[=DEFAULT] ..."""

    keyword: ClassVar[str] = "ARG"
    pairs: list[ArgPair]


@dataclass(kw_only=True)
class Expose(Instruction):
    """EXPOSE PORT[/PROTOCOL] ..."""

    keyword: ClassVar[str] = "EXPOSE"
    ports: list[str]  # as written: "80", "53/udp", "8000-8010"


@dataclass(kw_only=True)
class Volume(Instruction):
    """VOLUME PATH ..., in JSON or plain form."""

    keyword: ClassVar[str] = "VOLUME"
    paths: list[str]
    exec_form: bool = False


@dataclass(kw_only=True)
class Workdir(Instruction):
    """WORKDIR PATH."""

    keyword: ClassVar[str] = "WORKDIR"
    path: str


@dataclass(kw_only=True)
class User(Instruction):
    """USER NAME[:GROUP] or UID[:GID]."""

    keyword: ClassVar[str] = "USER"
    user: str


@dataclass(kw_only=True)
class Shell(Instruction):
    """SHELL ["executable", "parameters"]: the shell for shell-form commands."""

    keyword: ClassVar[str] = "SHELL"
    shell: list[str]


@dataclass(kw_only=True)
class StopSignal(Instruction):
    """STOPSIGNAL SIGNAL, as a name or a number."""

    keyword: ClassVar[str] = "STOPSIGNAL"
    signal: str


@dataclass(kw_only=True)
class Healthcheck(Instruction):
    """HEALTHCHECK; ``test`` is None for ``HEALTHCHECK NONE``.

    ``test`` is ``["CMD", arg...]`` (exec form) or ``["CMD-SHELL", command]``.
    Durations are nanoseconds; None when the flag was not given (0 when given
    as 0, which in the image config also means "default").
    """

    keyword: ClassVar[str] = "HEALTHCHECK"
    test: list[str] | None
    interval: int | None = None
    timeout: int | None = None
    start_period: int | None = None
    start_interval: int | None = None
    retries: int | None = None


@dataclass(kw_only=True)
class Onbuild(Instruction):
    """ONBUILD; ``expression`` is what goes into the image config's OnBuild list."""

    keyword: ClassVar[str] = "ONBUILD"
    trigger: Instruction
    expression: str


@dataclass(kw_only=True)
class Maintainer(Instruction):
    """MAINTAINER NAME (deprecated; kept in the config's author field)."""

    keyword: ClassVar[str] = "MAINTAINER"
    maintainer: str


INSTRUCTION_TYPES: dict[str, type[Instruction]] = {
    cls.keyword: cls
    for cls in (
        From,
        Run,
        Cmd,
        Entrypoint,
        Copy,
        Add,
        Env,
        Arg,
        Label,
        Expose,
        Volume,
        Workdir,
        User,
        Shell,
        StopSignal,
        Healthcheck,
        Onbuild,
        Maintainer,
    )
}


# -- conversion -----------------------------------------------------------------


class _InstructionError(Exception):
    """A problem with one instruction; converted to DockerfileError at its line."""


def to_instruction(node: InstructionLine, filename: str, escape: str = "\\") -> Instruction:
    """Convert one instruction line to its typed instruction; raise DockerfileError."""
    try:
        return _convert(node, escape)
    except (_InstructionError, MountError) as error:
        raise DockerfileError(str(error), _location(node, filename)) from None


def _location(node: InstructionLine, filename: str) -> SourceLocation:
    # every line it spans: the error snippet quotes them all
    return SourceLocation(filename, node.line, node.source or node.original)


def _convert(node: InstructionLine, escape: str) -> Instruction:
    keyword = node.keyword.upper()
    converter = _CONVERTERS.get(keyword)
    if converter is None:
        raise _InstructionError(_unknown_instruction(node.keyword))
    common = dict(
        line=node.line,
        end_line=node.end_line,
        source=node.source,
        text=go_trim_space(node.original),
        comments=list(node.comments),
        keyword_as_written=node.keyword,
        empty_continuation_line=node.empty_continuation_line,
    )
    return converter(node, common, escape)


def _unknown_instruction(keyword: str) -> str:
    import difflib  # only for this error: a cache hit never loads it

    message = f"unknown instruction: {keyword}"
    close = difflib.get_close_matches(keyword.upper(), list(INSTRUCTION_TYPES), n=1, cutoff=0.6)
    if close:
        message += f" (did you mean {close[0]}?)"
    return message


class _Flags:
    """The ``--name[=value]`` words of one instruction, checked like BuildKit's BFlags."""

    def __init__(self, words: list[str], keyword: str):
        self.words = words
        self.keyword = keyword

    def parse(self, kinds: dict[str, str]) -> dict[str, object]:
        """``kinds`` maps flag name to "bool", "string" or "strings".

        Returns every flag's value by name: None when not given (a list for
        "strings" flags, True/False for given bool flags).
        """
        values: dict[str, object] = {}
        for word in self.words:
            name, has_value, value = word[2:].partition("=")
            kind = kinds.get(name)
            if kind is None:
                raise _InstructionError(self._unknown(name, kinds))
            if name in values and kind != "strings":
                raise _InstructionError(f"Duplicate flag specified: --{name}")
            if kind == "bool":
                if has_value and value == "":
                    raise _InstructionError(f"Missing a value on flag: --{name}")
                if value.lower() not in ("", "true", "false"):
                    raise _InstructionError(
                        f"Expecting boolean value for flag --{name}, not: {value}"
                    )
                values[name] = value.lower() != "false"
            elif not has_value:
                raise _InstructionError(f"Missing a value on flag: --{name} (use --{name}=VALUE)")
            elif kind == "strings":
                values.setdefault(name, []).append(value)
            else:
                values[name] = value
        return {name: values.get(name) for name in kinds}

    def _unknown(self, name: str, kinds: dict[str, str]) -> str:
        if not kinds:
            return f"unknown flag: --{name} ({self.keyword} takes no flags)"
        valid = ", ".join("--" + k for k in sorted(kinds))
        return f"unknown flag: --{name}{did_you_mean(name, kinds)} ({self.keyword} accepts {valid})"


def _flags(node: InstructionLine, kinds: dict[str, str] | None = None) -> dict[str, object]:
    return _Flags(node.flags, node.keyword.upper()).parse(kinds or {})


def _exactly_one(node: InstructionLine) -> str:
    if len(node.args) != 1:
        raise _InstructionError(f"{node.keyword.upper()} requires exactly one argument")
    return node.args[0]


def _at_least_one(node: InstructionLine) -> None:
    if not node.args:
        raise _InstructionError(f"{node.keyword.upper()} requires at least one argument")


_STAGE_NAME = re.compile(r"[a-z][a-z0-9\-_.]*\Z")


def _from(node: InstructionLine, common: dict, escape: str) -> From:
    args = node.args
    stage_name = as_keyword = written_name = None
    if len(args) == 3 and args[1].lower() == "as":
        as_keyword, written_name = args[1], args[2]
        stage_name = args[2].lower()
        if not _STAGE_NAME.match(stage_name):
            raise _InstructionError(
                f"invalid name for build stage: {go_quote(args[2])}, "
                "name can't start with a number or contain symbols"
            )
    elif len(args) != 1:
        raise _InstructionError(
            "FROM requires either one or three arguments (FROM image [AS name])"
        )
    flags = _flags(node, {"platform": "string"})
    return From(
        image=args[0],
        stage_name=stage_name,
        platform=flags["platform"],
        stage_name_as_written=written_name,
        as_keyword=as_keyword,
        **common,
    )


def _command_line(node: InstructionLine) -> tuple[list[str], bool]:
    if not node.args:
        return [], node.json
    if node.json:
        return list(node.args), True
    return [" ".join(node.args)], False


def _final_heredocs(node: InstructionLine) -> list[Heredoc]:
    return [
        Heredoc(h.name, chomp(h.content) if h.chomp else h.content, h.expand, h.chomp)
        for h in node.heredocs
    ]


def _run(node: InstructionLine, common: dict, escape: str) -> Run:
    flags = _flags(node, {"mount": "strings", "network": "string", "security": "string"})
    network, security = flags["network"], flags["security"]
    if network is not None and network not in NETWORK_MODES:
        raise _InstructionError(
            f"unsupported network mode {go_quote(network)} (use one of {', '.join(NETWORK_MODES)})"
        )
    if security is not None and security not in SECURITY_MODES:
        raise _InstructionError(
            f"unsupported security mode {go_quote(security)} "
            f"(use one of {', '.join(SECURITY_MODES)})"
        )
    mounts = [parse_mount(text) for text in flags["mount"] or []]
    command, exec_form = _command_line(node)
    return Run(
        command=command,
        exec_form=exec_form,
        heredocs=_final_heredocs(node),
        mounts=mounts,
        network=network,
        security=security,
        **common,
    )


def _cmd(node: InstructionLine, common: dict, escape: str) -> Cmd:
    _flags(node)
    command, exec_form = _command_line(node)
    return Cmd(command=command, exec_form=exec_form, **common)


def _entrypoint(node: InstructionLine, common: dict, escape: str) -> Entrypoint:
    _flags(node)
    command, exec_form = _command_line(node)
    return Entrypoint(command=command, exec_form=exec_form, **common)


def _check_has_dest(node: InstructionLine) -> None:
    if len(node.args) < 2:
        raise _InstructionError(
            f"{node.keyword.upper()} requires at least two arguments, but only one was provided. "
            "Destination could not be determined"
        )


def _sources_and_dest(node: InstructionLine) -> tuple[list[str], str, list[Heredoc]]:
    keyword = node.keyword.upper()
    *sources, dest = node.args
    if parse_heredoc_word(dest) is not None:
        raise _InstructionError(f"{keyword} cannot accept a heredoc as a destination")
    bodies = {h.name: h for h in _final_heredocs(node)}
    paths: list[str] = []
    inline: list[Heredoc] = []
    for source in sources:
        heredoc = parse_heredoc_word(source)
        if heredoc is None:
            paths.append(source)
            continue
        # Content comes from the body read after the line (chomped if <<-).
        body = bodies.get(heredoc.name)
        content = body.content if body is not None else ""
        inline.append(Heredoc(heredoc.name, content, heredoc.expand, heredoc.chomp))
    return paths, dest, inline


def _copy(node: InstructionLine, common: dict, escape: str) -> Copy:
    _check_has_dest(node)
    flags = _flags(
        node,
        {
            "exclude": "strings",
            "parents": "bool",
            "chown": "string",
            "from": "string",
            "chmod": "string",
            "link": "bool",
        },
    )
    sources, dest, heredocs = _sources_and_dest(node)
    from_stage = flags["from"]
    if from_stage is not None and _uses_variables(from_stage, escape):
        raise _InstructionError(
            "variable expansion is not supported for --from, define a new stage with FROM "
            "using ARG from global scope as a workaround"
        )
    return Copy(
        sources=sources,
        dest=dest,
        heredocs=heredocs,
        from_stage=from_stage,
        chown=flags["chown"],
        chmod=flags["chmod"],
        link=bool(flags["link"]),
        parents=bool(flags["parents"]),
        exclude=flags["exclude"] or [],
        exec_form=node.json,
        **common,
    )


def _uses_variables(word: str, escape: str) -> bool:
    # BuildKit's test: does expanding with no variables at all change the word?
    try:
        return expand_word(word, {}, escape) != word
    except ExpansionError:
        return True


def _add(node: InstructionLine, common: dict, escape: str) -> Add:
    _check_has_dest(node)
    flags = _flags(
        node,
        {
            "exclude": "strings",
            "chown": "string",
            "chmod": "string",
            "link": "bool",
            "keep-git-dir": "bool",
            "checksum": "string",
            "unpack": "bool",
        },
    )
    sources, dest, heredocs = _sources_and_dest(node)
    return Add(
        sources=sources,
        dest=dest,
        heredocs=heredocs,
        chown=flags["chown"],
        chmod=flags["chmod"],
        link=bool(flags["link"]),
        keep_git_dir=bool(flags["keep-git-dir"]),
        checksum=flags["checksum"],
        unpack=flags["unpack"],
        exclude=flags["exclude"] or [],
        exec_form=node.json,
        **common,
    )


def _key_values(node: InstructionLine) -> list[KeyValue]:
    keyword = node.keyword.upper()
    if not node.args:
        raise _InstructionError(f"{keyword} requires at least one argument")
    pairs = []
    for i in range(0, len(node.args), 3):
        key, value = node.args[i], node.args[i + 1]
        if key == "":
            raise _InstructionError(f"{keyword} names can not be blank")
        pairs.append(KeyValue(key, value, legacy=node.args[i + 2] == ""))
    return pairs


def _env(node: InstructionLine, common: dict, escape: str) -> Env:
    _flags(node)
    return Env(pairs=_key_values(node), **common)


def _label(node: InstructionLine, common: dict, escape: str) -> Label:
    _flags(node)
    return Label(pairs=_key_values(node), **common)


def _arg(node: InstructionLine, common: dict, escape: str) -> Arg:
    _at_least_one(node)
    _flags(node)
    pairs = []
    for word in node.args:
        name, has_value, value = word.partition("=")
        if has_value and name == "":
            raise _InstructionError("ARG names can not be blank")
        pairs.append(ArgPair(name, value if has_value else None, description(node.comments, name)))
    return Arg(pairs=pairs, **common)


def description(comments: list[str], name: str) -> str:
    """BuildKit's rule: the comment line ``NAME text`` above a name describes it."""
    if not name:
        return ""
    for comment in comments:
        if comment.startswith(name + " "):
            return comment[len(name) + 1 :]
    return ""


def _expose(node: InstructionLine, common: dict, escape: str) -> Expose:
    _at_least_one(node)
    _flags(node)
    return Expose(ports=list(node.args), **common)


def _volume(node: InstructionLine, common: dict, escape: str) -> Volume:
    _at_least_one(node)
    _flags(node)
    paths = [go_trim_space(path) for path in node.args]
    if "" in paths:
        raise _InstructionError("VOLUME specified can not be an empty string")
    return Volume(paths=paths, exec_form=node.json, **common)


def _workdir(node: InstructionLine, common: dict, escape: str) -> Workdir:
    path = _exactly_one(node)
    _flags(node)
    return Workdir(path=path, **common)


def _user(node: InstructionLine, common: dict, escape: str) -> User:
    user = _exactly_one(node)
    _flags(node)
    return User(user=user, **common)


def _maintainer(node: InstructionLine, common: dict, escape: str) -> Maintainer:
    name = _exactly_one(node)
    _flags(node)
    return Maintainer(maintainer=name, **common)


def _stopsignal(node: InstructionLine, common: dict, escape: str) -> StopSignal:
    # BuildKit does not check STOPSIGNAL's flags; neither do we (see docs).
    return StopSignal(signal=_exactly_one(node), **common)


def _shell(node: InstructionLine, common: dict, escape: str) -> Shell:
    _flags(node)
    if not node.args:
        raise _InstructionError("SHELL requires at least one argument")
    if not node.json:
        raise _InstructionError(
            'SHELL requires the arguments to be in JSON form, e.g. SHELL ["/bin/sh", "-c"]'
        )
    return Shell(shell=list(node.args), **common)


def _healthcheck(node: InstructionLine, common: dict, escape: str) -> Healthcheck:
    _at_least_one(node)
    kind = node.args[0].upper()
    rest = node.args[1:]
    if kind == "NONE":
        # BuildKit ignores flags here.
        if rest:
            raise _InstructionError("HEALTHCHECK NONE takes no arguments")
        return Healthcheck(test=None, **common)
    flags = _flags(
        node,
        {
            "interval": "string",
            "timeout": "string",
            "start-period": "string",
            "start-interval": "string",
            "retries": "string",
        },
    )
    if kind != "CMD":
        raise _InstructionError(f"Unknown type {go_quote(kind)} in HEALTHCHECK (try CMD)")
    if not rest:
        raise _InstructionError("Missing command after HEALTHCHECK CMD")
    test = ["CMD"] + rest if node.json else ["CMD-SHELL", " ".join(rest)]
    return Healthcheck(
        test=test,
        interval=_interval("interval", flags["interval"]),
        timeout=_interval("timeout", flags["timeout"]),
        start_period=_interval("start-period", flags["start-period"]),
        start_interval=_interval("start-interval", flags["start-interval"]),
        retries=_retries(flags["retries"]),
        **common,
    )


def _interval(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    if value == "":
        return 0
    try:
        nanoseconds = parse_go_duration(value)
    except ValueError as error:
        raise _InstructionError(f"--{name}: {error}") from None
    if nanoseconds != 0 and nanoseconds < 1_000_000:
        raise _InstructionError(f'Interval "{name}" cannot be less than 1ms')
    return nanoseconds


def _retries(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not re.fullmatch(r"[+-]?[0-9]+", value) or not -(2**31) <= int(value) < 2**31:
        raise _InstructionError(
            f"--retries: invalid value {go_quote(value)} (expected a whole number)"
        )
    retries = int(value)
    if retries < 0:
        raise _InstructionError(f"--retries cannot be negative ({retries})")
    return retries


_ONBUILD_PREFIX = re.compile(r"^\s*ONBUILD\s*", re.IGNORECASE)


def _onbuild(node: InstructionLine, common: dict, escape: str) -> Onbuild:
    if node.trigger is None:
        raise _InstructionError("ONBUILD requires at least one argument")
    _flags(node)
    trigger_keyword = node.trigger.keyword.upper()
    if trigger_keyword == "ONBUILD":
        raise _InstructionError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger_keyword in ("MAINTAINER", "FROM"):
        raise _InstructionError(f"{trigger_keyword} isn't allowed as an ONBUILD trigger")
    trigger_node = _trigger_node(node)
    trigger = _convert(trigger_node, escape)
    expression = _ONBUILD_PREFIX.sub("", node.original, count=1)
    for heredoc in node.heredocs:
        expression += "\n" + heredoc.content + heredoc.name
    return Onbuild(trigger=trigger, expression=expression, **common)


def _trigger_node(node: InstructionLine) -> InstructionLine:
    """The ONBUILD's inner line, with the outer line's position and heredocs."""
    inner = node.trigger
    return InstructionLine(
        keyword=inner.keyword,
        flags=inner.flags,
        args=inner.args,
        json=inner.json,
        original=inner.original,
        line=node.line,
        end_line=node.end_line,
        source=node.source,
        comments=[],
        heredocs=node.heredocs,
        trigger=inner.trigger,
    )


_CONVERTERS = {
    "FROM": _from,
    "RUN": _run,
    "CMD": _cmd,
    "ENTRYPOINT": _entrypoint,
    "COPY": _copy,
    "ADD": _add,
    "ENV": _env,
    "LABEL": _label,
    "ARG": _arg,
    "EXPOSE": _expose,
    "VOLUME": _volume,
    "WORKDIR": _workdir,
    "USER": _user,
    "SHELL": _shell,
    "STOPSIGNAL": _stopsignal,
    "HEALTHCHECK": _healthcheck,
    "ONBUILD": _onbuild,
    "MAINTAINER": _maintainer,
}


# -- Go's time.ParseDuration -----------------------------------------------------

_DURATION_UNITS = {
    "ns": 1,
    "us": 10**3,
    "\u00b5s": 10**3,
    "\u03bcs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_MAX_DURATION = 2**63 - 1


def parse_go_duration(text: str) -> int:
    """A duration like ``1h30m`` or ``2.5s`` in nanoseconds; ValueError if invalid."""
    quoted = go_quote(text)
    rest = text
    negative = rest[:1] == "-"
    if rest[:1] in ("-", "+"):
        rest = rest[1:]
    if rest == "0":
        return 0
    if rest == "":
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0
    while rest:
        whole, rest = _leading_digits(rest)
        fraction = ""
        if rest.startswith("."):
            fraction, rest = _leading_digits(rest[1:])
        if whole == "" and fraction == "":
            raise ValueError(f"time: invalid duration {quoted}")
        unit_length = 0
        while unit_length < len(rest) and rest[unit_length] not in ".0123456789":
            unit_length += 1
        if unit_length == 0:
            raise ValueError(f"time: missing unit in duration {quoted}")
        unit_name, rest = rest[:unit_length], rest[unit_length:]
        unit = _DURATION_UNITS.get(unit_name)
        if unit is None:
            raise ValueError(f"time: unknown unit {go_quote(unit_name)} in duration {quoted}")
        value = int(whole or "0") * unit
        if fraction:
            digits, scale = _fraction_digits(fraction)
            # Go computes the fractional part in floating point; so do we.
            value += int(float(digits) * (unit / scale))
        total += value
        if total > 2**63:
            raise ValueError(f"time: invalid duration {quoted}")
    if negative:
        return -total
    if total > _MAX_DURATION:
        raise ValueError(f"time: invalid duration {quoted}")
    return total


def _leading_digits(text: str) -> tuple[str, str]:
    i = 0
    while i < len(text) and "0" <= text[i] <= "9":
        i += 1
    return text[:i], text[i:]


def _fraction_digits(fraction: str) -> tuple[int, int]:
    # Digits that would overflow an int64 are dropped, as in Go.
    value, scale = 0, 1
    for ch in fraction:
        if value > _MAX_DURATION // 10:
            break
        value = value * 10 + int(ch)
        scale *= 10
    return value, scale
