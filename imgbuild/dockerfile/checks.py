"""Build checks: BuildKit's Dockerfile lint rules, as a pass over a parsed Dockerfile.

``check(dockerfile, plan, ...)`` returns the warnings of every rule that is
not skipped, each with BuildKit's rule name, message, description and URL
(``docker build --check`` prints the same). The rules and when they fire
follow BuildKit (``frontend/dockerfile/linter`` and ``dockerfile2llb``):

- parse-time rules look at every instruction of the file: StageNameCasing,
  FromAsCasing, MaintainerDeprecated, NoEmptyContinuation,
  ConsistentInstructionCasing, DuplicateStageName, ReservedStageName,
  InvalidDefaultArgInFrom, InvalidDefinitionDescription (experimental);
- FROM rules look at every stage's FROM line: UndefinedArgInFrom,
  RedundantTargetPlatform, FromPlatformFlagConstDisallowed;
- the rest look at the stages being built (all of them for ``imgbuild
  check``), instruction by instruction with the variables each one sees:
  UndefinedVar, LegacyKeyValueFormat, SecretsUsedInArgOrEnv,
  WorkdirRelativePath, JSONArgsRecommended, MultipleInstructionsDisallowed,
  ExposeProtoCasing, ExposeInvalidFormat, CopyIgnoredFile;
- InvalidBaseImagePlatform needs the base image: a build reports it with
  the images it resolved, ``imgbuild check`` with those in the local store
  (``base_image_platform``).

Which rules run comes from ``# check=skip=A,B;error=true;experimental=C``
at the top of the file, or, replacing it, the ``BUILDKIT_DOCKERFILE_CHECK``
build arg; a ``# check=...`` comment right above an instruction adds to it
for that instruction only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import field, replace
from typing import TYPE_CHECKING

from imgbuild.dataclass import dataclass
from imgbuild.dockerfile import parse, parse_onbuild_trigger
from imgbuild.dockerfile.instructions import (
    Add,
    Arg,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    Expose,
    From,
    Healthcheck,
    Instruction,
    Label,
    Maintainer,
    Onbuild,
    Shell,
    Workdir,
)
from imgbuild.dockerfile.plan import platform_args
from imgbuild.dockerfile.shell import Lexer, go_parse_bool, go_quote
from imgbuild.errors import (
    CheckFailed,
    DockerfileError,
    ExpansionError,
    SourceLocation,
    format_located,
)
from imgbuild.gopath import go_clean

if TYPE_CHECKING:
    from imgbuild.context.dockerignore import IgnoreMatcher
    from imgbuild.dockerfile import Dockerfile
    from imgbuild.dockerfile.plan import Plan, Stage  # noqa: F401

CHECK_BUILD_ARG = "BUILDKIT_DOCKERFILE_CHECK"
_DOCS = "https://docs.docker.com/go/dockerfile/rule/"


@dataclass(frozen=True)
class Rule:
    """A build check BuildKit names, with the page that explains it."""

    name: str
    description: str
    url: str
    experimental: bool = False


def _rule(name: str, slug: str | None, description: str, experimental: bool = False) -> Rule:
    return Rule(name, description, _DOCS + slug + "/" if slug else "", experimental)


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        _rule("StageNameCasing", "stage-name-casing", "Stage names should be lowercase"),
        _rule("FromAsCasing", "from-as-casing", "The 'as' keyword should match the case of the 'from' keyword"),
        _rule(
            "NoEmptyContinuation",
            "no-empty-continuation",
            "Empty continuation lines will become errors in a future release",
        ),
        _rule(
            "ConsistentInstructionCasing",
            "consistent-instruction-casing",
            "All commands within the Dockerfile should use the same casing (either upper or lower)",
        ),
        _rule("DuplicateStageName", "duplicate-stage-name", "Stage names should be unique"),
        _rule("ReservedStageName", "reserved-stage-name", "Reserved words should not be used as stage names"),
        _rule(
            "JSONArgsRecommended",
            "json-args-recommended",
            "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals",
        ),
        _rule(
            "MaintainerDeprecated",
            "maintainer-deprecated",
            "The MAINTAINER instruction is deprecated, use a label instead to define an image author",
        ),
        _rule("UndefinedArgInFrom", "undefined-arg-in-from", "FROM command must use declared ARGs"),
        _rule(
            "WorkdirRelativePath",
            "workdir-relative-path",
            "Relative workdir without an absolute workdir declared within the build can have "
            "unexpected results if the base image changes",
        ),
        _rule("UndefinedVar", "undefined-var", "Variables should be defined before their use"),
        _rule(
            "MultipleInstructionsDisallowed",
            "multiple-instructions-disallowed",
            "Multiple instructions of the same type should not be used in the same stage",
        ),
        _rule(
            "LegacyKeyValueFormat",
            "legacy-key-value-format",
            "Legacy key/value format with whitespace separator should not be used",
        ),
        _rule(
            "InvalidBaseImagePlatform", None, "Base image platform does not match expected target platform"
        ),
        _rule(
            "RedundantTargetPlatform",
            "redundant-target-platform",
            "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior",
        ),
        _rule(
            "SecretsUsedInArgOrEnv",
            "secrets-used-in-arg-or-env",
            "Sensitive data should not be used in the ARG or ENV commands",
        ),
        _rule(
            "InvalidDefaultArgInFrom",
            "invalid-default-arg-in-from",
            "Default value for global ARG results in an empty or invalid base image name",
        ),
        _rule(
            "FromPlatformFlagConstDisallowed",
            "from-platform-flag-const-disallowed",
            "FROM --platform flag should not use a constant value",
        ),
        _rule("CopyIgnoredFile", "copy-ignored-file", "Attempting to Copy file that is excluded by .dockerignore"),
        _rule(
            "InvalidDefinitionDescription",
            "invalid-definition-description",
            "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. "
            "If this is not intended to be a description comment, add an empty line or comment between the "
            "instruction and the comment.",
            experimental=True,
        ),
        _rule("ExposeProtoCasing", "expose-proto-casing", "Protocol in EXPOSE instruction should be lowercase"),
        _rule(
            "ExposeInvalidFormat",
            "expose-invalid-format",
            "IP address and host-port mapping should not be used in EXPOSE instruction. "
            "This will become an error in a future release",
        ),
    )
}


# -- what a check found ----------------------------------------------------------


@dataclass
class CheckWarning:
    """One thing a build check found, at a Dockerfile line."""

    rule: str
    message: str
    filename: str
    line: int
    text: str = ""  # the offending line as written

    @property
    def description(self) -> str:
        return RULES[self.rule].description

    @property
    def url(self) -> str:
        return RULES[self.rule].url

    def format(self) -> str:
        """``Dockerfile:LINE: Rule: message`` and the line, as errors are shown."""
        return format_located(SourceLocation(self.filename, self.line, self.text), f"{self.rule}: {self.message}")

    def to_json(self) -> dict:
        return {
            "rule": self.rule,
            "file": self.filename,
            "line": self.line,
            "message": self.message,
            "description": self.description,
            "url": self.url,
        }


@dataclass
class CheckResult:
    """The warnings of all checks, with the ``# check=`` config they ran under."""

    warnings: list[CheckWarning]
    config: CheckConfig

    def error(self) -> CheckFailed | None:
        """With ``error=true``, any warning fails the build (BuildKit's message)."""
        if not self.config.error or not self.warnings:
            return None
        rules = ", ".join(sorted({w.rule for w in self.warnings}))
        first = self.warnings[0]
        return CheckFailed(
            f"lint violation found for rules: {rules} (error=true in the check directive or "
            f"{CHECK_BUILD_ARG}; fix them or skip them with # check=skip=RULE)",
            SourceLocation(first.filename, first.line, first.text),
        )


# -- which rules run -------------------------------------------------------------


@dataclass
class CheckConfig:
    """BuildKit's lint options: ``skip=all|A,B;experimental=all|C;error=true``."""

    skip: frozenset[str] = frozenset()
    skip_all: bool = False
    experimental: frozenset[str] = frozenset()
    experimental_all: bool = False
    error: bool = False

    def enabled(self, rule: Rule) -> bool:
        if rule.experimental:
            return self.experimental_all or rule.name in self.experimental
        return not self.skip_all and rule.name not in self.skip

    def merged(self, other: CheckConfig) -> CheckConfig:
        """Add another config's skips and experiments (``error`` stays as it is)."""
        return replace(
            self,
            skip=self.skip | other.skip,
            skip_all=self.skip_all or other.skip_all,
            experimental=self.experimental | other.experimental,
            experimental_all=self.experimental_all or other.experimental_all,
        )


def parse_check_options(text: str) -> CheckConfig:
    """Parse ``skip=...;error=...;experimental=...``; ValueError says what is wrong."""
    text = text.strip()
    if not text:
        return CheckConfig()
    config = CheckConfig()
    for part in text.split(";", 2):
        key, has_value, value = part.partition("=")
        if not has_value:
            raise ValueError(f'invalid check option "{part}"')
        key, value = key.strip(), value.strip()
        if key in ("skip", "experimental"):
            names = frozenset(name.strip() for name in value.split(","))
            if key == "skip":
                config = replace(config, skip_all=value == "all", skip=frozenset() if value == "all" else names)
            else:
                all_ = value == "all"
                config = replace(config, experimental_all=all_, experimental=frozenset() if all_ else names)
        elif key == "error":
            config = replace(config, error=_go_bool(value, part))
        else:
            raise ValueError(f'invalid check option "{key}"')
    return config


def _go_bool(value: str, part: str) -> bool:
    try:
        return go_parse_bool(value)
    except ValueError:
        raise ValueError(f'failed to parse check option "{part}": invalid syntax') from None


def check_config(dockerfile: Dockerfile, build_args: Mapping[str, str] | None = None) -> CheckConfig:
    """The build's config: the ``BUILDKIT_DOCKERFILE_CHECK`` build arg if given
    (it replaces the directive, as in BuildKit), else the ``# check=`` directive."""
    build_args = build_args or {}
    if CHECK_BUILD_ARG in build_args:
        text, where = build_args[CHECK_BUILD_ARG], f"--build-arg {CHECK_BUILD_ARG}"
    else:
        text, where = dockerfile.directives.check or "", "the # check= directive"
    try:
        return parse_check_options(text)
    except ValueError as error:
        raise DockerfileError(
            f"{dockerfile.filename}: failed to parse check options in {where}: {error} "
            "(use skip=RULE1,RULE2 or skip=all, error=true|false, experimental=RULE, separated by ;)"
        ) from None


_COMMENT_DIRECTIVE = re.compile(r"check[\t\n\f\r ]*=[\t\n\f\r ]*(.*)\Z", re.IGNORECASE | re.DOTALL)


def _with_comments(config: CheckConfig, comments: list[str]) -> CheckConfig:
    """A ``# check=...`` comment right above an instruction adds to the config
    for that instruction (text after a space is a remark); a bad one is ignored."""
    for comment in comments:
        match = _COMMENT_DIRECTIVE.match(comment.strip())
        if match is None:
            continue
        try:
            return config.merged(parse_check_options(match.group(1).split(" ", 1)[0]))
        except ValueError:
            return config
    return config


# -- running the rules -----------------------------------------------------------


BaseConfig = Callable[["Stage"], "dict | None"]


def check(
    dockerfile: Dockerfile,
    plan: Plan | None,
    *,
    build_args: Mapping[str, str] | None = None,
    stages: list[int] | None = None,
    ignore: IgnoreMatcher | None = None,
    base_config: BaseConfig | None = None,
    base_platforms: bool = False,
    parse_only: bool = False,
) -> CheckResult:
    """Run the rules the config enables.

    ``plan`` gives the stages, global ARGs and build args (None when the
    Dockerfile cannot be planned: then only the rules that need no plan run,
    with ``build_args``); ``stages`` are the
    stages whose instructions are checked (default: all, as ``--check``);
    ``ignore`` is the context's .dockerignore (None: no CopyIgnoredFile);
    ``base_config`` gives the image config of a stage's base image, or None
    when it is not known (then only ``PATH`` is assumed in its environment);
    ``base_platforms``: ``base_config`` gives the images the build would
    use, so InvalidBaseImagePlatform compares their platforms (a build, and
    ``imgbuild check`` with the images in the local store); ``parse_only``: only the
    rules BuildKit runs while it reads each instruction (for the lines before
    a parse error, see ``warnings_before``).
    """
    config = check_config(dockerfile, plan.build_args if plan is not None else build_args)
    checker = _Checker(dockerfile, plan, config, ignore, base_config)
    checker.base_platforms = base_platforms
    if parse_only:
        checker.parse_time_rules()
    else:
        checker.run(stages)
    warnings = sorted(checker.warnings, key=lambda w: w.line)
    return CheckResult(warnings, config)


def warnings_before(text: str, error: DockerfileError, build_args: Mapping[str, str] | None = None) -> CheckResult:
    """The warnings of the instructions before the one ``error`` (a parse
    error) is about, as BuildKit reports them before the error
    (``testWarningsBeforeError``): the per-instruction rules only."""
    line = error.location.line if error.location is not None else 0
    filename = error.location.filename if error.location is not None else "Dockerfile"
    prefix = "".join(text.splitlines(keepends=True)[: max(line - 1, 0)])
    try:
        parsed = parse(prefix, filename)
        return check(parsed, None, build_args=build_args, parse_only=True)
    except DockerfileError:  # nothing before it parses on its own (or a bad # check=)
        return CheckResult([], CheckConfig())


def base_image_platform(name: str, expected: str, actual: str) -> str | None:
    """InvalidBaseImagePlatform's message when a base image's OS or
    architecture is not the build's (a variant does not count), else None."""
    if expected.split("/")[:2] == actual.split("/")[:2]:
        return None
    return f"Base image {name} was pulled with platform {go_quote(actual)}, expected {go_quote(expected)} for current build"


_RESERVED_STAGE_NAMES = ("context", "scratch")
_NON_ENV_ARGS = ("BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SECRET = re.compile(
    r"(?:_|^)(?:apikey|auth|credential|credentials|key|password|pword|passwd|secret|token)(?:_|$)", re.IGNORECASE
)
_NOT_SECRET = re.compile(r"(?:_|^)(?:public|file|version)(?:_|$)", re.IGNORECASE)


@dataclass
class _StageFacts:
    """What a stage built FROM another stage takes over from it."""

    env: list[str]
    args: dict[str, str]  # ARGs with a value
    workdir_set: bool
    shell_set: bool
    declared: set[str] = field(default_factory=set)  # every ARG name, with a value or not
    triggers: list[Instruction] = field(default_factory=list)  # ONBUILD, for stages built on it


@dataclass
class _Once:
    """Where CMD, ENTRYPOINT or HEALTHCHECK was last set in this stage."""

    last: Instruction | None = None


class _Checker:
    def __init__(self, dockerfile, plan, config, ignore, base_config):
        self.dockerfile = dockerfile
        self.plan = plan
        self.config = config
        self.ignore = ignore
        self.base_config = base_config
        self.filename = dockerfile.filename
        self.escape = dockerfile.directives.escape
        self.warnings: list[CheckWarning] = []
        self.facts: dict[int, _StageFacts] = {}
        self.base_platforms = False

    def warn(self, rule_name: str, instruction: Instruction | None, message: str, *, line: int | None = None,
             config: CheckConfig | None = None) -> None:
        rule = RULES[rule_name]
        if not (config or self.config).enabled(rule):
            return
        text = ""
        if instruction is not None:
            line = line or instruction.line
            physical = (instruction.source or instruction.text).split("\n")
            index = line - instruction.line
            text = physical[index] if 0 <= index < len(physical) else physical[0]
        self.warnings.append(CheckWarning(rule_name, message, self.filename, line or 1, text.rstrip("\r")))

    def local(self, instruction: Instruction) -> CheckConfig:
        return _with_comments(self.config, instruction.comments)

    def run(self, stage_indices: list[int] | None) -> None:
        self.parse_time_rules()
        self.stage_rules()
        self.default_arg_rule()
        if self.plan is None:
            return
        for stage in self.plan.stages:
            self.from_rules(stage)
        for stage in self.plan.stages:
            if stage_indices is None or stage.index in stage_indices:
                self.stage_instructions(stage)

    def stages(self) -> list[list[Instruction]]:
        """Each stage's FROM and instructions, straight from the file (no plan needed)."""
        stages: list[list[Instruction]] = []
        for instruction in self.dockerfile.instructions:
            if isinstance(instruction, From):
                stages.append([instruction])
            elif stages:
                stages[-1].append(instruction)
        return stages

    # -- rules over the whole file ----------------------------------------------

    def parse_time_rules(self) -> None:
        for instruction in self.dockerfile.instructions:
            config = self.local(instruction)
            if instruction.empty_continuation_line is not None:
                self.warn("NoEmptyContinuation", instruction, "Empty continuation line",
                          line=instruction.empty_continuation_line)
            if isinstance(instruction, Maintainer):
                self.warn("MaintainerDeprecated", instruction,
                          "Maintainer instruction is deprecated in favor of using label", config=config)
            if isinstance(instruction, From):
                self.from_casing(instruction, config)
                if instruction.stage_name is not None:
                    self.definition_description(instruction, "FROM", [instruction.stage_name_as_written], config)
            if isinstance(instruction, Arg):
                self.definition_description(instruction, "ARG", [p.name for p in instruction.pairs], config)

    def from_casing(self, instruction: From, config: CheckConfig) -> None:
        written = instruction.stage_name_as_written
        if written is not None and written.lower() != written:
            self.warn("StageNameCasing", instruction, f"Stage name '{written}' should be lowercase", config=config)
        keyword, as_word = instruction.keyword_as_written, instruction.as_keyword
        if as_word is None or not _self_consistent(keyword):
            return  # an inconsistent FROM is ConsistentInstructionCasing's
        want = as_word.lower() if keyword == keyword.lower() else as_word.upper()
        if as_word != want:
            self.warn("FromAsCasing", instruction, f"'{as_word}' and '{keyword}' keywords' casing do not match",
                      config=config)

    def definition_description(self, instruction: Instruction, kind: str, names: list[str],
                               config: CheckConfig) -> None:
        if not instruction.comments or not names:
            return
        if instruction.comments[-1].split(" ")[0] in names:
            return
        example = names[0] if len(names) == 1 else "<arg_key>"
        self.warn("InvalidDefinitionDescription", instruction,
                  f"Comment for {kind} should follow the format: `# {example} <description>`", config=config)

    def stage_rules(self) -> None:
        seen: set[str] = set()
        for stage in self.stages():
            name = stage[0].stage_name
            if name is None:
                continue
            if name in _RESERVED_STAGE_NAMES:
                self.warn("ReservedStageName", stage[0],
                          f"Stage name should not use the same name as reserved stage {go_quote(name)}")
            if name in seen:
                self.warn("DuplicateStageName", stage[0],
                          f"Duplicate stage name {go_quote(name)}, stage names should be unique")
            seen.add(name)
        self.instruction_casing()

    def instruction_casing(self) -> None:
        # Global ARGs do not count: BuildKit only looks at the stages' commands.
        in_stages = [i for stage in self.stages() for i in stage]
        lower = upper = 0
        for instruction in in_stages:
            keyword = instruction.keyword_as_written
            if _self_consistent(keyword):
                if keyword == keyword.lower():
                    lower += 1
                else:
                    upper += 1
        majority_lower = lower > upper
        for instruction in in_stages:
            keyword = instruction.keyword_as_written
            if majority_lower and keyword != keyword.lower():
                casing = "lowercase"
            elif not majority_lower and keyword != keyword.upper():
                casing = "uppercase"
            else:
                continue
            self.warn("ConsistentInstructionCasing", instruction,
                      f"Command '{keyword}' should match the case of the command majority ({casing})")

    def default_arg_rule(self) -> None:
        """InvalidDefaultArgInFrom: each FROM with the global ARGs' defaults
        only (no build args) must still name a valid image."""
        from imgbuild.registry.reference import parse_reference  # only needed here

        env = dict(self.plan.predefined_args if self.plan is not None else platform_args())
        for instruction in self.dockerfile.instructions:
            if not isinstance(instruction, Arg):
                break
            for pair in instruction.pairs:
                if pair.default is None:
                    continue
                try:
                    env[pair.name] = Lexer(self.escape).process(pair.default, env).result
                except ExpansionError:
                    return  # the build itself reports this
        for stage in self.stages():
            written = stage[0].image
            try:
                base = Lexer(self.escape).process(written, env).result
            except ExpansionError:
                return
            try:
                parse_reference(base)
            except DockerfileError:
                raise
            except Exception:  # noqa: BLE001 - any refusal means "not a valid name"
                self.warn("InvalidDefaultArgInFrom", stage[0],
                          f"Default value for ARG {written} results in empty or invalid base image name")

    # -- FROM lines ----------------------------------------------------------------

    def global_env(self) -> dict[str, str]:
        env = dict(self.plan.predefined_args)
        env.update({k: v for k, v in self.plan.global_args.items() if v is not None})
        return env

    def from_rules(self, stage: Stage) -> None:
        instruction = stage.from_instruction
        config = self.local(instruction)
        env = self.global_env()
        declared = sorted(set(env) | set(self.plan.global_args))
        for word in (instruction.image, instruction.platform):
            if word is None:
                continue
            try:
                result = Lexer(self.escape).process(word, env)
            except ExpansionError:
                continue  # the plan has reported it
            for name in sorted(result.unmatched - set(declared)):
                hint = suggest(name, declared)
                message = f"FROM argument '{name}' is not declared" + (f" (did you mean {hint}?)" if hint else "")
                self.warn("UndefinedArgInFrom", instruction, message, config=config)
            if word is instruction.platform:
                self.platform_rules(stage, word, result, env, config)

    def platform_rules(self, stage: Stage, written: str, result, env, config: CheckConfig) -> None:
        if result.matched == {"TARGETPLATFORM"} and not result.unmatched:
            if result.result == env.get("TARGETPLATFORM"):
                self.warn("RedundantTargetPlatform", stage.from_instruction,
                          f"Setting platform to predefined {written} in FROM is redundant as this is the "
                          "default behavior", config=config)
        if result.matched or result.unmatched:
            return
        parsed = _parse_platform(result.result)
        if parsed is None:
            return
        os_name, arch = parsed
        name = stage.from_instruction.stage_name_as_written or ""
        if os_name in name or arch in name:
            return
        self.warn("FromPlatformFlagConstDisallowed", stage.from_instruction,
                  f"FROM --platform flag should not use constant value {go_quote(result.result)}", config=config)

    # -- the instructions of a stage -------------------------------------------------

    def stage_instructions(self, stage: Stage) -> None:
        facts, triggers = self.start_facts(stage)
        scope = self.plan.scope_for(stage.index, facts.env)
        if stage.base_stage is not None:
            scope.inherit_args(facts.args)
        once = {"CMD": _Once(), "ENTRYPOINT": _Once(), "HEALTHCHECK": _Once()}
        facts.triggers = []
        for instruction in triggers + list(stage.instructions):
            config = self.local(instruction)
            scope.take_unmatched()
            try:
                done = scope.apply(instruction)
            except DockerfileError:  # a bad expansion or mount: the build reports it
                done = instruction  # check the rest as written
            if isinstance(instruction, Arg):
                facts.declared |= {pair.name for pair in instruction.pairs}
            if isinstance(instruction, Onbuild):
                facts.triggers.append(instruction.trigger)
            if not isinstance(instruction, Expose):
                self.undefined_vars(instruction, scope, facts, config)
            self.instruction_rules(instruction, done, facts, once, config)
        facts.env = scope.image_env()
        facts.args = scope.args_in_scope()
        self.facts[stage.index] = facts

    def at_from(self, stage: Stage, trigger: Instruction) -> Instruction:
        """An ONBUILD trigger runs first in a stage built on its stage (or
        image), and BuildKit points its warnings at that stage's FROM."""
        where = stage.from_instruction
        return replace(trigger, line=where.line, end_line=where.line, source=where.source, comments=[])

    def start_facts(self, stage: Stage) -> tuple[_StageFacts, list[Instruction]]:
        """What the stage starts with, and the ONBUILD triggers it runs first."""
        if stage.base_stage is not None and stage.base_stage in self.facts:
            base = self.facts[stage.base_stage]
            facts = _StageFacts(list(base.env), dict(base.args), base.workdir_set, base.shell_set, set(base.declared))
            return facts, [self.at_from(stage, trigger) for trigger in base.triggers]
        if stage.base.lower() == "scratch" or stage.base_stage is not None:
            return _StageFacts([f"PATH={_DEFAULT_PATH}"], {}, False, False), []
        config = (self.base_config(stage) if self.base_config else None) or {}
        if config and self.base_platforms:
            self.base_platform(stage, config)
        container = config.get("config") or {}
        env = list(container.get("Env") or [])
        if not any(entry.startswith("PATH=") for entry in env):
            env.append(f"PATH={_DEFAULT_PATH}")
        triggers = []
        for expression in container.get("OnBuild") or []:
            try:
                triggers.append(self.at_from(stage, parse_onbuild_trigger(expression)))
            except DockerfileError:
                continue  # the build reports a bad trigger
        return _StageFacts(env, {}, False, bool(container.get("Shell"))), triggers

    def base_platform(self, stage: Stage, config: dict) -> None:
        expected = stage.platform or self.plan.predefined_args["TARGETPLATFORM"]
        actual = "/".join(part for part in (config.get("os"), config.get("architecture"), config.get("variant"))
                          if part)
        message = base_image_platform(stage.base, expected, actual)
        if message is not None:
            self.warn("InvalidBaseImagePlatform", stage.from_instruction, message)

    def undefined_vars(self, instruction: Instruction, scope, facts: _StageFacts, config: CheckConfig) -> None:
        names = sorted(
            name
            for name in scope.take_unmatched()
            if not scope.is_declared(name) and name not in facts.declared and name not in _NON_ENV_ARGS
        )
        if not names:
            return  # the usual case: the suggestions below sort the whole environment
        known = sorted(scope.env_for_run())
        for name in names:
            hint = suggest(name, known)
            message = f"Usage of undefined variable '${name}'" + (f" (did you mean ${hint}?)" if hint else "")
            self.warn("UndefinedVar", instruction, message, config=config)

    def instruction_rules(self, instruction, done, facts: _StageFacts, once, config: CheckConfig) -> None:
        keyword = instruction.keyword_as_written or instruction.keyword
        if isinstance(instruction, (Env, Label)):
            if any(pair.legacy for pair in instruction.pairs):
                self.warn("LegacyKeyValueFormat", instruction,
                          f'"{keyword} key=value" should be used instead of legacy "{keyword} key value" format',
                          config=config)
            if isinstance(done, Env):
                for pair in done.pairs:
                    self.secret(instruction, "ENV", pair.key, config)
        elif isinstance(done, Arg):
            for pair in done.pairs:
                self.secret(instruction, "ARG", pair.name, config)
        elif isinstance(done, Workdir):
            if not facts.workdir_set and not done.path.startswith("/"):
                self.warn("WorkdirRelativePath", instruction,
                          f"Relative workdir {go_quote(done.path)} can have unexpected results if the base "
                          "image changes", config=config)
            facts.workdir_set = True
        elif isinstance(instruction, Shell):
            facts.shell_set = True
        elif isinstance(instruction, (Cmd, Entrypoint, Healthcheck)):
            self.used_once(instruction, once[instruction.keyword], config)
            if not isinstance(instruction, Healthcheck) and not instruction.exec_form and not facts.shell_set:
                self.warn("JSONArgsRecommended", instruction,
                          f"JSON arguments recommended for {keyword} to prevent unintended behavior related "
                          "to OS signals", config=config)
        elif isinstance(done, Expose):
            for port in done.ports:
                self.expose(instruction, port, config)
        elif isinstance(done, (Copy, Add)):
            self.copy_sources(instruction, done, config)

    def used_once(self, instruction: Instruction, once: _Once, config: CheckConfig) -> None:
        # BuildKit points at the earlier one: it is the one that has no effect.
        if once.last is not None:
            keyword = instruction.keyword_as_written or instruction.keyword
            self.warn("MultipleInstructionsDisallowed", once.last,
                      f"Multiple {keyword} instructions should not be used in the same stage because only the "
                      "last one will be used", config=config)
        once.last = instruction

    def secret(self, instruction: Instruction, kind: str, name: str, config: CheckConfig) -> None:
        if _SECRET.search(name) and not _NOT_SECRET.search(name):
            self.warn("SecretsUsedInArgOrEnv", instruction,
                      f"Do not use ARG or ENV instructions for sensitive data ({kind} {go_quote(name)})",
                      config=config)

    def expose(self, instruction: Instruction, port: str, config: CheckConfig) -> None:
        parts = port.split(":")
        if len(parts) == 1:
            ip, host, container = "", "", parts[0]
        else:
            ip, host, container = ":".join(parts[:-2]), parts[-2], parts[-1]
        number, _, proto = container.partition("/")
        if not number:
            return  # not a port at all: the build reports it
        proto = proto.split("/")[0] if proto else "tcp"
        if proto != proto.lower():
            self.warn("ExposeProtoCasing", instruction,
                      f"Defined protocol '{port}' in EXPOSE instruction should be lowercase", config=config)
        if ip or host:
            self.warn("ExposeInvalidFormat", instruction,
                      f"EXPOSE instruction should not define an IP address or host-port mapping, found '{port}'",
                      config=config)

    def copy_sources(self, instruction: Instruction, done: Copy | Add, config: CheckConfig) -> None:
        matcher = self.ignore
        if matcher is None or not matcher or matcher.has_exceptions:
            return  # exceptions make it undecidable without the files (BuildKit's rule too)
        if isinstance(done, Copy) and done.from_stage is not None:
            return
        verb = "Add" if isinstance(done, Add) else "Copy"
        for source in done.sources:
            if isinstance(done, Add) and re.match(r"(?i)(https?|git)://|git@", source):
                continue
            path = go_clean(source)
            if path in (".", "/") and not any(
                not p.exclusion and p.text in ("*", "**", "**/*") for p in matcher.patterns
            ):
                continue
            if matcher.matches(path):
                self.warn("CopyIgnoredFile", instruction,
                          f"Attempting to {verb} file {go_quote(path)} that is excluded by .dockerignore",
                          config=config)


# -- small helpers -------------------------------------------------------------------


def _self_consistent(word: str) -> bool:
    return word == word.lower() or word == word.upper()


def suggest(word: str, options: list[str]) -> str | None:
    """BuildKit's suggestion: the first option within edit distance 2, closest first."""
    best, best_distance = None, 3
    for option in options:
        if option == word:
            return None
        distance = _levenshtein(word, option)
        if distance < best_distance:
            best, best_distance = option, distance
    return best


def _levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


_PLATFORM_PART = re.compile(r"[A-Za-z0-9_.-]+\Z")
_KNOWN_OS = ("linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos", "aix", "android")
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386", "armhf": "arm"}


def _parse_platform(text: str) -> tuple[str, str] | None:
    """OS and architecture of a platform string as containerd parses it; None if invalid."""
    parts = text.split("/")
    if not 1 <= len(parts) <= 3 or not all(_PLATFORM_PART.match(p) for p in parts):
        return None
    if len(parts) == 1:
        word = parts[0].lower()
        if word in _KNOWN_OS:
            return word, ""
        return "linux", _ARCH_ALIASES.get(word, word)
    return parts[0].lower(), _ARCH_ALIASES.get(parts[1].lower(), parts[1].lower())


__all__ = [
    "CHECK_BUILD_ARG",
    "RULES",
    "CheckConfig",
    "CheckResult",
    "CheckWarning",
    "Rule",
    "base_image_platform",
    "check",
    "check_config",
    "warnings_before",
    "parse_check_options",
    "suggest",
]
