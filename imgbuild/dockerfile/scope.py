"""ARG and ENV visibility inside one stage, and instruction expansion.

BuildKit's rules, which we follow:

- ARGs before the first FROM are global: FROM lines can use them, stages
  cannot, unless the stage declares ``ARG NAME`` (without a value) again.
  The platform args (TARGETPLATFORM, BUILDARCH, ...) are global in the same way.
- Inside a stage, ``ARG NAME=default``: a ``--build-arg NAME=...`` wins, else
  the default (expanded with what the stage sees at that point), else — for a
  bare ``ARG NAME`` — the global value, else NAME is declared but unset.
- An ARG with a value is visible to later instructions and to RUN's
  environment, but is not stored in the image. ENV is both.
- ARG and ENV of the same name: the later one wins for later instructions (an
  ENV after an ARG overrides it; an ARG after an ENV overrides it for this
  stage's instructions and RUN, but the image keeps the ENV value).
- Proxy build args (HTTP_PROXY, ...) reach RUN without being declared; they
  are never persisted and BuildKit keeps them out of cache keys.

The build engine creates one ``StageScope`` per stage (``Plan.scope_for``),
walks the stage's instructions and, for each: ``start_step()``, then
``scope.apply(inst)`` for ARG/ENV (which returns the expanded instruction) or
``expanded(inst, scope)`` for the others, then ``args_used()`` to learn which
ARG values the step read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from imgbuild.dockerfile.instructions import (
    Add,
    Arg,
    ArgPair,
    Copy,
    Env,
    Expose,
    From,
    Instruction,
    KeyValue,
    Label,
    Run,
    StopSignal,
    User,
    Volume,
    Workdir,
)
from imgbuild.dockerfile.mounts import MountError, parse_mount
from imgbuild.dockerfile.shell import MAX_VALUE, Lexer, is_too_big_error, value_too_big
from imgbuild.errors import DockerfileError, ExpansionError, SourceLocation

# Bounds on what expansion can make (BuildKit has none; see docs/dockerfile.md):
# all variables of a stage together, and what one instruction's expansions add.
MAX_VARIABLES = 4 << 20  # characters of names and values
MAX_INSTRUCTION_GROWTH = 4 << 20  # characters

PROXY_ARGS = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)
PROXY_KINDS = ("http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy")


class StageScope:
    """The variables one stage sees, updated instruction by instruction.

    ``global_args``: the global ARGs' values for this build (build args already
    applied; None for declared-but-unset), as ``Plan.global_args`` has them.
    ``build_args``: the user's ``--build-arg`` values. ``base_env``: the base
    image's config Env (``K=V`` strings). ``predefined_args``: the platform
    args (``Plan.predefined_args``). ``escape``: the Dockerfile's escape char.
    """

    def __init__(
        self,
        *,
        global_args: Mapping[str, str | None] | None = None,
        build_args: Mapping[str, str] | None = None,
        base_env: Sequence[str] = (),
        predefined_args: Mapping[str, str] | None = None,
        escape: str = "\\",
        filename: str = "Dockerfile",
    ):
        self.escape = escape
        self.filename = filename
        self.build_args = dict(build_args or {})
        self.global_env: dict[str, str] = dict(predefined_args or {})
        for name, value in (global_args or {}).items():
            if value is not None:
                self.global_env[name] = value
        self._env: dict[str, str] = {}  # what expansion and RUN see, in order
        self._env_size = 0  # characters of names and values in _env, kept as it changes
        self._image_env: dict[str, str] = {}  # what the image keeps: base env + ENV
        for entry in base_env:
            key, _, value = entry.partition("=")
            self._set(key, value)
            self._image_env[key] = value
        self._args: dict[str, str | None] = {}  # ARGs declared in this stage
        self._from_arg: set[str] = set()  # names whose current value came from an ARG
        self._reads: set[str] = set()
        self._unmatched: set[str] = set()  # names expansions found unset (UndefinedVar)
        self._growth = 0  # characters this instruction's expansions added so far

    # -- reading ------------------------------------------------------------

    def expand(self, word: str) -> str:
        """Expand one word with what the stage sees now (ProcessWord)."""
        return self._process(word, self._env).result

    def expand_words(self, text: str) -> list[str]:
        """Expand and split into words (ProcessWords), as EXPOSE does."""
        return self._process(text, self._env).words

    def expand_global(self, word: str) -> str:
        """Expand with the global scope only, as FROM lines are."""
        return self._process(word, self.global_env).result

    def expand_raw(self, text: str) -> str:
        """Expand a heredoc body: quotes are not special, ``\\`` is the escape."""
        lexer = Lexer("\\", skip_quotes=True)
        result = lexer.process(text, self._env)
        self._reads |= result.matched
        self._unmatched |= result.unmatched
        self._count_growth(text, result.result)
        return result.result

    def env_for_run(self) -> dict[str, str]:
        """The environment of a RUN step: image env + ENV + ARGs with values.

        Proxy build args are not included; see ``proxy_env``.
        """
        return dict(self._env)

    def proxy_env(self) -> dict[str, str]:
        """Proxy build args not declared as ARG: add them to RUN's environment,
        but not to cache keys (as BuildKit)."""
        # As BuildKit: the build arg's name is matched without case, and RUN gets
        # the value under both spellings (http_proxy=X gives HTTP_PROXY too).
        found: dict[str, str] = {}
        for name in sorted(self.build_args):
            if name.lower() in PROXY_KINDS:
                found[name.lower()] = self.build_args[name]
        env = {}
        for kind, value in found.items():
            for name in (kind.upper(), kind):
                if name not in self._env:
                    env[name] = value
        return env

    def image_env(self) -> list[str]:
        """What goes into the image config's Env: base image env and ENV only."""
        return [f"{key}={value}" for key, value in self._image_env.items()]

    def args_in_scope(self) -> dict[str, str]:
        """ARGs declared in this stage so far that have a value.

        A RUN step's cache key depends on all of them (they are in its
        environment), whether or not the command uses them.
        """
        return {name: value for name, value in self._args.items() if value is not None}

    def names_set_by_args(self) -> list[str]:
        """Names in the environment whose value an ARG set (not ENV or the base image)."""
        return sorted(name for name in self._from_arg if name in self._env)

    def start_step(self) -> None:
        """Forget what earlier steps read; see ``args_used``."""
        self._reads = set()

    def args_used(self) -> dict[str, str]:
        """ARG values read by expansions since ``start_step`` (for cache keys)."""
        return {
            name: self._env[name]
            for name in sorted(self._reads)
            if name in self._from_arg and name in self._env
        }

    def take_unmatched(self) -> set[str]:
        """Names that expansions since the last call found unset (for the
        UndefinedVar build check), and forget them."""
        names, self._unmatched = self._unmatched, set()
        return names

    def is_declared(self, name: str) -> bool:
        return name in self._args

    def inherit_args(self, args: Mapping[str, str]) -> None:
        """Start with the ARGs (and values) of the stage this one is built FROM,
        as BuildKit's dispatch state does (``FROM base AS child``)."""
        for name, value in args.items():
            self._args[name] = value
            self._set(name, value)
            self._from_arg.add(name)
        self._check_variables_size()

    # -- changing -------------------------------------------------------------

    def apply(self, instruction: Instruction) -> Instruction:
        """Apply an ARG or ENV (as parsed, not expanded) and return it expanded.

        Other instructions do not change the scope and are returned expanded.
        Raises ExpansionError with the instruction's location.
        """
        if not isinstance(instruction, (Arg, Env)):
            return expanded(instruction, self)
        self._growth = 0
        try:
            return self._apply(instruction)
        except ExpansionError as error:
            raise _located(error, instruction, self) from None

    def _apply(self, instruction: Arg | Env) -> Instruction:
        if isinstance(instruction, Arg):
            resolved = self._resolve_arg(instruction)
            for pair in resolved.pairs:
                self._args[pair.name] = pair.default
                if pair.default is not None:
                    self._set(pair.name, pair.default)
                    self._from_arg.add(pair.name)
            self._check_variables_size()
            return resolved
        resolved = self._expand_env(instruction)
        for pair in resolved.pairs:
            self._set(pair.key, pair.value)
            self._image_env[pair.key] = pair.value
            self._from_arg.discard(pair.key)
        self._check_variables_size()
        return resolved

    def _set(self, name: str, value: str) -> None:
        old = self._env.get(name)
        self._env_size += len(value) - (len(old) if old is not None else -len(name))
        self._env[name] = value

    def _check_variables_size(self) -> None:
        # Each value is at most MAX_VALUE, but a thousand of them would still add up.
        if self._env_size > MAX_VARIABLES:
            raise ExpansionError(
                f"the variables of this stage (ENV, ARG and the base image's Env) grow beyond "
                f"{MAX_VARIABLES >> 20} MiB, the most imgbuild allows (see docs/dockerfile.md)"
            )

    def _resolve_arg(self, instruction: Arg) -> Arg:
        """The ARG with each pair's ``default`` replaced by the value it takes."""
        env = dict(self._env)  # later names of one ARG see the earlier ones
        pairs = []
        for pair in instruction.pairs:
            if pair.name in self.build_args:
                value: str | None = self.build_args[pair.name]
            elif pair.default is not None:
                value = self._value(pair.name, pair.default, env)
            else:
                value = self.global_env.get(pair.name)
            if value is not None:
                if len(value) > MAX_VALUE:
                    raise value_too_big(pair.name)
                env[pair.name] = value
            pairs.append(ArgPair(pair.name, value, pair.description))
        return dataclasses.replace(instruction, pairs=pairs)

    def _expand_env(self, instruction: Env) -> Env:
        # All pairs see the environment from before the instruction.
        pairs = []
        for pair in instruction.pairs:
            key = self.expand(pair.key)
            pairs.append(KeyValue(key, self._value(key, pair.value, self._env)))
        return dataclasses.replace(instruction, pairs=pairs)

    def _value(self, name: str, word: str, env: Mapping[str, str]) -> str:
        """An ENV or ARG value: at most MAX_VALUE characters, or an error naming it."""
        try:
            return self._process(word, env, max_size=MAX_VALUE).result
        except ExpansionError as error:
            if is_too_big_error(error):
                raise value_too_big(name) from None
            raise

    def _process(self, word: str, env: Mapping[str, str], max_size: int | None = None):
        result = Lexer(self.escape, max_size=max_size).process(word, env)
        self._reads |= result.matched
        self._unmatched |= result.unmatched
        self._count_growth(word, result.result)
        return result

    def _count_growth(self, word: str, result: str) -> None:
        """One instruction's expansions may add MAX_INSTRUCTION_GROWTH in all
        (a LABEL with a thousand references to a large value, say)."""
        self._growth += max(0, len(result) - len(word))
        if self._growth > MAX_INSTRUCTION_GROWTH:
            raise ExpansionError(
                f"the expansions of this instruction grow beyond {MAX_INSTRUCTION_GROWTH >> 20} MiB, "
                "the most imgbuild allows (see docs/dockerfile.md)"
            )


def expanded(instruction: Instruction, scope: StageScope) -> Instruction:
    """A copy of ``instruction`` with the fields BuildKit expands expanded.

    Expanded: FROM (image, --platform; global scope), COPY/ADD (sources, dest,
    --chown, --chmod, ADD --checksum, bodies of heredocs with unquoted names),
    ENV, LABEL, EXPOSE (may split into more ports), VOLUME, WORKDIR, USER,
    STOPSIGNAL, ARG (each ``default`` becomes the value the ARG takes), and the
    values of RUN ``--mount`` options. Not expanded: RUN/CMD/ENTRYPOINT
    commands and RUN heredocs (the shell does that), HEALTHCHECK, ONBUILD,
    SHELL, MAINTAINER, COPY --from and --exclude. Does not change the scope.
    Raises ExpansionError (with the instruction's location).
    """
    scope._growth = 0
    try:
        return _expand(instruction, scope)
    except ExpansionError as error:
        raise _located(error, instruction, scope) from None
    except MountError as error:
        raise DockerfileError(str(error), _location(instruction, scope)) from None


def _located(error: ExpansionError, instruction: Instruction, scope: StageScope) -> ExpansionError:
    located = ExpansionError(error.message, _location(instruction, scope))
    located.unset_variable = getattr(error, "unset_variable", None)
    return located


def _location(instruction: Instruction, scope: StageScope) -> SourceLocation:
    return SourceLocation(scope.filename, instruction.line, instruction.source or instruction.text)


def _expand(instruction: Instruction, scope: StageScope) -> Instruction:
    replace = dataclasses.replace
    if isinstance(instruction, From):
        platform = instruction.platform
        return replace(
            instruction,
            image=scope.expand_global(instruction.image),
            platform=scope.expand_global(platform) if platform is not None else None,
        )
    if isinstance(instruction, Arg):
        return scope._resolve_arg(instruction)
    if isinstance(instruction, Env):
        return scope._expand_env(instruction)
    if isinstance(instruction, Label):
        pairs = [KeyValue(scope.expand(p.key), scope.expand(p.value)) for p in instruction.pairs]
        return replace(instruction, pairs=pairs)
    if isinstance(instruction, (Copy, Add)):
        return _expand_file_copy(instruction, scope)
    if isinstance(instruction, Expose):
        ports = [port for text in instruction.ports for port in scope.expand_words(text)]
        return replace(instruction, ports=ports)
    if isinstance(instruction, Volume):
        return replace(instruction, paths=[scope.expand(p) for p in instruction.paths])
    if isinstance(instruction, Workdir):
        return replace(instruction, path=scope.expand(instruction.path))
    if isinstance(instruction, User):
        return replace(instruction, user=scope.expand(instruction.user))
    if isinstance(instruction, StopSignal):
        return replace(instruction, signal=scope.expand(instruction.signal))
    if isinstance(instruction, Run):
        mounts = [parse_mount(m.text, expand=scope.expand) for m in instruction.mounts]
        return replace(instruction, mounts=mounts)
    return instruction


def _expand_file_copy(instruction: Copy | Add, scope: StageScope) -> Copy | Add:
    def maybe(value: str | None) -> str | None:
        return scope.expand(value) if value is not None else None

    heredocs = [
        dataclasses.replace(h, content=scope.expand_raw(h.content)) if h.expand else h
        for h in instruction.heredocs
    ]
    changes = dict(
        sources=[scope.expand(s) for s in instruction.sources],
        dest=scope.expand(instruction.dest),
        chown=maybe(instruction.chown),
        chmod=maybe(instruction.chmod),
        heredocs=heredocs,
    )
    if isinstance(instruction, Add):
        changes["checksum"] = maybe(instruction.checksum)
    return dataclasses.replace(instruction, **changes)
