"""Each build check rule: a Dockerfile that triggers it and one that does not.

The cases follow BuildKit's ``frontend/dockerfile/dockerfile_check_test.go``
(named in each case), with its Dockerfiles, line numbers and messages; they
run through the real parser, planner and checker (``imgbuild.dockerfile``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from imgbuild.context.dockerignore import IgnoreMatcher
from imgbuild.dockerfile import parse, plan
from imgbuild.dockerfile.checks import RULES, base_image_platform, check
from imgbuild.errors import PlanError


@dataclass
class Case:
    id: str
    buildkit_test: str | None
    dockerfile: str
    expected: list[tuple[str, int, str]]
    dockerignore: list[str] | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    base_env: list[str] | None = None


def found(case: Case) -> list[tuple[str, int, str]]:
    parsed = parse(case.dockerfile)
    try:
        planned = plan(parsed, case.build_args, case.target, "linux/amd64", build_platform="linux/amd64")
    except PlanError:  # duplicate stage names: imgbuild check still runs the rules it can
        planned = None
    config = {"config": {"Env": case.base_env}} if case.base_env is not None else None
    result = check(
        parsed,
        planned,
        stages=planned.needed if case.target and planned else None,
        ignore=IgnoreMatcher(case.dockerignore) if case.dockerignore is not None else None,
        base_config=lambda stage: config,
    )
    return [(w.rule, w.line, w.message) for w in result.warnings]


CASES = [
    Case("StageNameCasing", "testStageName", """
# warning: stage name should be lowercase
#
FROM scratch AS BadStageName
# warning: 'as' should match 'FROM' cmd casing.
#
FROM scratch as base2
FROM scratch AS base3
""", [("StageNameCasing", 4, "Stage name 'BadStageName' should be lowercase"),
      ("FromAsCasing", 7, "'as' and 'FROM' keywords' casing do not match")]),
    Case("FromAsCasing-lower-from", "testStageName", """
# warning: 'AS' should match 'from' cmd casing.
#
from scratch AS base
from scratch as base2
""", [("FromAsCasing", 4, "'AS' and 'from' keywords' casing do not match")]),
    Case("StageNameCasing-FromAsCasing-clean", "testStageName", "FROM scratch AS base\nFROM scratch AS base2\n", []),
    Case("NoEmptyContinuation", "testNoEmptyContinuation", """
FROM scratch
# warning: empty continuation line
COPY Dockerfile \\

.
COPY Dockerfile \\
.
""", [("NoEmptyContinuation", 6, "Empty continuation line")]),
    Case("NoEmptyContinuation-clean", "testNoEmptyContinuation", "FROM scratch\nCOPY Dockerfile \\\n.\n", []),
    Case("ConsistentInstructionCasing-mixed-word", "testConsistentInstructionCasing", """
# warning: 'FROM' should be either lowercased or uppercased
#
From scratch as base
FROM scratch AS base2
""", [("ConsistentInstructionCasing", 4, "Command 'From' should match the case of the command majority (uppercase)")]),
    Case("ConsistentInstructionCasing-majority-lower", "testConsistentInstructionCasing", """
# warning: 'FROM' should match command majority's casing (lowercase)
#
FROM scratch
copy Dockerfile /foo
copy Dockerfile /bar
copy Dockerfile /baz
""", [("ConsistentInstructionCasing", 4, "Command 'FROM' should match the case of the command majority (lowercase)")]),
    Case("ConsistentInstructionCasing-clean", "testConsistentInstructionCasing",
         "\nfrom scratch\ncopy Dockerfile /foo\ncopy Dockerfile /bar\n", []),
    Case("DuplicateStageName", "testDuplicateStageName", "\nFROM scratch AS b\nFROM scratch AS b\n",
         [("DuplicateStageName", 3, 'Duplicate stage name "b", stage names should be unique')]),
    Case("DuplicateStageName-clean", "testDuplicateStageName", "\nFROM scratch AS b1\nFROM scratch AS b2\n", []),
    Case("ReservedStageName", "testReservedStageName", "\nFROM scratch AS scratch\nFROM scratch AS context\n",
         [("ReservedStageName", 2, 'Stage name should not use the same name as reserved stage "scratch"'),
          ("ReservedStageName", 3, 'Stage name should not use the same name as reserved stage "context"')]),
    Case("ReservedStageName-clean", "testReservedStageName", "\nFROM scratch\nFROM scratch AS a\n", []),
    Case("JSONArgsRecommended-cmd", "testJSONArgsRecommended", "\nFROM scratch\nCMD mycommand\n",
         [("JSONArgsRecommended", 3,
           "JSON arguments recommended for CMD to prevent unintended behavior related to OS signals")]),
    Case("JSONArgsRecommended-entrypoint", "testJSONArgsRecommended", "\nFROM scratch\nENTRYPOINT mycommand\n",
         [("JSONArgsRecommended", 3,
           "JSON arguments recommended for ENTRYPOINT to prevent unintended behavior related to OS signals")]),
    Case("JSONArgsRecommended-shell-in-base-stage", "testJSONArgsRecommended",
         '\nFROM scratch AS base\nSHELL ["/usr/bin/customshell"]\n\nFROM base\nCMD mycommand\n', []),
    Case("JSONArgsRecommended-exec-form", "testJSONArgsRecommended", '\nFROM scratch\nCMD ["mycommand"]\n', []),
    Case("MaintainerDeprecated", "testMaintainerDeprecated", "\nFROM scratch\nMAINTAINER me@example.org\n",
         [("MaintainerDeprecated", 3, "Maintainer instruction is deprecated in favor of using label")]),
    Case("MaintainerDeprecated-skipped-by-comment", "testMaintainerDeprecated",
         "\nFROM scratch\n# check=skip=MaintainerDeprecated\nMAINTAINER me@example.org\n", []),
    Case("UndefinedArgInFrom", "testUndeclaredArg", "\nARG tag=latest\nFROM busybox:${tag}${version} AS b\n",
         [("UndefinedArgInFrom", 3, "FROM argument 'version' is not declared")]),
    Case("UndefinedArgInFrom-suggests", "testUndeclaredArg",
         "\nARG MY_OS=linux\nARG MY_ARCH=amd64\nFROM --platform=linux/${MY_ARCH} busybox${MYARCH}\n",
         [("UndefinedArgInFrom", 4, "FROM argument 'MYARCH' is not declared (did you mean MY_ARCH?)")]),
    Case("UndefinedArgInFrom-declared-without-value", "testUndeclaredArg",
         "\nARG DEBUG\nFROM scratch${DEBUG}\nCOPY Dockerfile .\n", []),
    Case("UndefinedArgInFrom-predefined", "testUndeclaredArg",
         "\nFROM --platform=$BUILDPLATFORM scratch\nCOPY Dockerfile .\n", []),
    Case("WorkdirRelativePath", "testWorkdirRelativePath", "\nFROM scratch\nWORKDIR app/\n",
         [("WorkdirRelativePath", 3, 'Relative workdir "app/" can have unexpected results if the base image changes')]),
    Case("WorkdirRelativePath-absolute-in-base-stage", "testWorkdirRelativePath",
         "\nFROM scratch AS a\nWORKDIR /app\n\nFROM a AS b\nWORKDIR subdir/\n", []),
    Case("UndefinedVar", "testUnmatchedVars", "\nFROM busybox\nCOPY $foo .\nARG foo=bar\nRUN echo $foo\n",
         [("UndefinedVar", 3, "Usage of undefined variable '$foo'")]),
    Case("UndefinedVar-suggests", "testUnmatchedVars",
         "\nFROM busybox\nARG DIR_BINARIES=binaries/\nARG DIR_ASSETS=assets/\nARG DIR_CONFIG=config/\nCOPY $DIR_ASSET .\n",
         [("UndefinedVar", 6, "Usage of undefined variable '$DIR_ASSET' (did you mean $DIR_ASSETS?)")]),
    Case("UndefinedVar-base-env-suggests", "testUnmatchedVars", "\nFROM busybox\nENV PATH=$PAHT:/tmp/bin\n",
         [("UndefinedVar", 3, "Usage of undefined variable '$PAHT' (did you mean $PATH?)")],
         base_env=["PATH=/usr/bin:/bin"]),
    Case("UndefinedVar-declared-arg", "testUnmatchedVars", "\nFROM scratch\nARG foo\nCOPY Dockerfile${foo} .\n", []),
    Case("UndefinedVar-arg-of-base-stage", "testUnmatchedVars",
         "\nFROM busybox AS base\nARG foo=Dockerfile\n\nFROM base\nCOPY $foo .\n", []),
    Case("UndefinedVar-declared-without-value-in-base-stage", None,
         "\nFROM scratch AS base\nARG foo\n\nFROM base\nCOPY Dockerfile${foo} .\n", []),
    Case("UndefinedVar-onbuild-trigger-runs-in-child", None,
         "\nFROM scratch AS base\nONBUILD COPY $missing /\n\nFROM base\n",
         [("UndefinedVar", 5, "Usage of undefined variable '$missing'")]),
    Case("UndefinedVar-run-is-not-checked", "testUnmatchedVars", "\nFROM busybox\nRUN echo $PATH $nothing\n", []),
    Case("MultipleInstructionsDisallowed", "testMultipleInstructionsDisallowed", """
FROM scratch
ENTRYPOINT ["/myapp"]
ENTRYPOINT ["/myotherapp"]
CMD ["/myapp"]
CMD ["/myotherapp"]
HEALTHCHECK CMD ["/myapp"]
HEALTHCHECK CMD ["/myotherapp"]
""", [("MultipleInstructionsDisallowed", line,
       f"Multiple {kw} instructions should not be used in the same stage because only the last one will be used")
      for kw, line in (("ENTRYPOINT", 3), ("CMD", 5), ("HEALTHCHECK", 7))]),
    Case("MultipleInstructionsDisallowed-other-stage", "testMultipleInstructionsDisallowed", """
FROM scratch AS a
ENTRYPOINT ["/myapp"]
CMD ["/myapp"]
HEALTHCHECK CMD ["/myapp"]

FROM a AS b
ENTRYPOINT ["/myotherapp"]
CMD ["/myotherapp"]
HEALTHCHECK CMD ["/myotherapp"]
""", []),
    Case("LegacyKeyValueFormat", "testLegacyKeyValueFormat", "\nFROM scratch\nENV testkey value\nLABEL key value\n",
         [("LegacyKeyValueFormat", 3, '"ENV key=value" should be used instead of legacy "ENV key value" format'),
          ("LegacyKeyValueFormat", 4, '"LABEL key=value" should be used instead of legacy "LABEL key value" format')]),
    Case("LegacyKeyValueFormat-clean", "testLegacyKeyValueFormat",
         "\nFROM scratch\nENV testkey=value\nLABEL key=value\n", []),
    Case("LegacyKeyValueFormat-unreachable-stage-in-a-build", "testLegacyKeyValueFormat",
         "\nFROM scratch AS a\n\nFROM a AS b\nENV testkey value\nLABEL key value\n\nFROM a AS c\n", [], target="c"),
    Case("RedundantTargetPlatform", "testRedundantTargetPlatform", "\nFROM --platform=${TARGETPLATFORM} scratch\n",
         [("RedundantTargetPlatform", 2, "Setting platform to predefined ${TARGETPLATFORM} in FROM is redundant "
           "as this is the default behavior")]),
    Case("RedundantTargetPlatform-skipped", "testRedundantTargetPlatform",
         "\n# check=skip=RedundantTargetPlatform\nFROM --platform=$TARGETPLATFORM scratch\n", []),
    Case("SecretsUsedInArgOrEnv", "testSecretsUsedInArgOrEnv", """# check=skip=InvalidDefinitionDescription
FROM scratch
ARG SECRET_PASSPHRASE
ENV SUPER_Secret=foo
ENV password=bar secret=baz
ENV git_key=
ENV PUBLIC_KEY=
ARG public_token
ARG SECRET_PASSPHRASE_FILE
ARG AUTH_MODULE_VERSION
# check=skip=SecretsUsedInArgOrEnv // allow secret in environment
ENV password=bar
# check=skip=all // is local to only this instruction
ARG alternate_password
""", [("SecretsUsedInArgOrEnv", 3, 'Do not use ARG or ENV instructions for sensitive data (ARG "SECRET_PASSPHRASE")'),
      ("SecretsUsedInArgOrEnv", 4, 'Do not use ARG or ENV instructions for sensitive data (ENV "SUPER_Secret")'),
      ("SecretsUsedInArgOrEnv", 5, 'Do not use ARG or ENV instructions for sensitive data (ENV "password")'),
      ("SecretsUsedInArgOrEnv", 5, 'Do not use ARG or ENV instructions for sensitive data (ENV "secret")'),
      ("SecretsUsedInArgOrEnv", 6, 'Do not use ARG or ENV instructions for sensitive data (ENV "git_key")')]),
    Case("InvalidDefaultArgInFrom", "testInvalidDefaultArgInFrom", "\nARG VERSION\nFROM busybox:$VERSION\n",
         [("InvalidDefaultArgInFrom", 3,
           "Default value for ARG busybox:$VERSION results in empty or invalid base image name")],
         build_args={"VERSION": "latest"}),
    Case("InvalidDefaultArgInFrom-clean", "testInvalidDefaultArgInFrom",
         '\nARG VERSION="latest"\nFROM busybox:${VERSION}\n', [], build_args={"VERSION": "latest"}),
    Case("FromPlatformFlagConstDisallowed", "testFromPlatformFlagConstDisallowed",
         "\nFROM --platform=linux/amd64 scratch\n",
         [("FromPlatformFlagConstDisallowed", 2, 'FROM --platform flag should not use constant value "linux/amd64"')]),
    Case("FromPlatformFlagConstDisallowed-named-for-platform", "testFromPlatformFlagConstDisallowed",
         "\nFROM --platform=linux/amd64 scratch AS my_amd64_stage\n", []),
    Case("CopyIgnoredFile", "testCopyIgnoredFiles", "\nFROM scratch\nCOPY Dockerfile .\nADD Dockerfile /windy\n",
         [("CopyIgnoredFile", 3, 'Attempting to Copy file "Dockerfile" that is excluded by .dockerignore'),
          ("CopyIgnoredFile", 4, 'Attempting to Add file "Dockerfile" that is excluded by .dockerignore')],
         dockerignore=["Dockerfile"]),
    Case("CopyIgnoredFile-context-root-wildcard", "testCopyIgnoredFileContextRoot", "\nFROM scratch\nCOPY . .\n",
         [("CopyIgnoredFile", 3, 'Attempting to Copy file "." that is excluded by .dockerignore')],
         dockerignore=["*"]),
    Case("CopyIgnoredFile-exceptions", "testCopyIgnoredFiles", "\nFROM scratch\nCOPY ./Dockerfile .\n", [],
         dockerignore=["**", "!Dockerfile"]),
    Case("CopyIgnoredFile-from-stage", "testCopyIgnoredFiles",
         "\nFROM scratch AS base\nCOPY Dockerfile /foobar\nFROM base\nCOPY --from=base /foobar /Dockerfile\n", [],
         dockerignore=["foobar"]),
    Case("ExposeProtoCasing", "testExposeProtoCasing", "\nFROM scratch\nEXPOSE 80/TcP 8080/TCP 8080/udp\n",
         [("ExposeProtoCasing", 3, "Defined protocol '80/TcP' in EXPOSE instruction should be lowercase"),
          ("ExposeProtoCasing", 3, "Defined protocol '8080/TCP' in EXPOSE instruction should be lowercase")]),
    Case("ExposeInvalidFormat", "testExposeInvalidFormat",
         "\nFROM scratch\nEXPOSE 127.0.0.1:80:80 [::1]:8080:8080 5000:5000 8000\n",
         [("ExposeInvalidFormat", 3, f"EXPOSE instruction should not define an IP address or host-port mapping, "
           f"found '{port}'") for port in ("127.0.0.1:80:80", "[::1]:8080:8080", "5000:5000")]),
    Case("ExposeProtoCasing-clean", None, "\nFROM scratch\nEXPOSE 80/tcp 53/udp 8000-8010\n", []),
    Case("ExposeInvalidFormat-clean", None, "\nFROM scratch\nEXPOSE 80 8000-8010/udp\n", []),
    Case("FromAsCasing-clean", "testStageName", "\nFROM scratch AS a\nfrom a as b\n",
         [("ConsistentInstructionCasing", 3, "Command 'from' should match the case of the command majority (uppercase)")]),
    Case("SecretsUsedInArgOrEnv-clean", "testSecretsUsedInArgOrEnv",
         "\nFROM scratch\nARG PUBLIC_KEY\nENV password_file=/run/secrets/pw keyboard=us\n", []),
    Case("InvalidDefinitionDescription-off-by-default", "testDefinitionDescription",
         "# bar this is the bar\nARG foo=bar\nFROM scratch\n", []),
    Case("InvalidDefinitionDescription", "testDefinitionDescription", """# check=experimental=InvalidDefinitionDescription
# bar this is the bar
ARG foo=bar
# BasE this is the BasE image
FROM scratch AS base
# definitely a bad comment
ARG version=latest
# definitely a bad comment
ARG foo=baz bar=qux baz=quux
""", [("InvalidDefinitionDescription", 3, "Comment for ARG should follow the format: `# foo <description>`"),
      ("InvalidDefinitionDescription", 5, "Comment for FROM should follow the format: `# base <description>`"),
      ("InvalidDefinitionDescription", 7, "Comment for ARG should follow the format: `# version <description>`"),
      ("InvalidDefinitionDescription", 9, "Comment for ARG should follow the format: `# <arg_key> <description>`")]),
    Case("InvalidDefinitionDescription-good-comments", "testDefinitionDescription",
         "# check=experimental=InvalidDefinitionDescription\n# foo this is the foo\nARG foo=bar\n"
         "# base this is the base image\nFROM scratch AS base\n#\nARG bit=bat\n", []),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule(case):
    assert found(case) == case.expected


def test_every_rule_has_a_case_that_triggers_it_and_one_that_does_not():
    triggered = {rule for case in CASES for rule, _, _ in case.expected}
    quiet = {
        rule
        for rule in RULES
        for case in CASES
        if case.id.startswith(rule + "-") and rule not in {r for r, _, _ in case.expected}
    }
    build_only = {"InvalidBaseImagePlatform"}  # test_base_image_platform, and a real build in test_check_cli.py
    assert triggered | build_only == set(RULES)
    assert quiet | build_only == set(RULES)


def test_base_image_platform():
    """testBaseImagePlatformMismatch: only OS and architecture count."""
    assert base_image_platform("app:1", "linux/amd64", "linux/arm64") == (
        'Base image app:1 was pulled with platform "linux/arm64", expected "linux/amd64" for current build'
    )
    assert base_image_platform("app:1", "linux/arm64", "linux/arm64/v8") is None


@pytest.mark.parametrize(
    ("directive", "build_arg", "expected"),
    [
        # testRuleCheckOption
        ("#check=skip=all", None, []),
        ("#check=skip=ConsistentInstructionCasing,FromAsCasing", None, []),
        ("#check=skip=ConsistentInstructionCasing", None, ["FromAsCasing"]),
        ("#check=skip=all", "skip=ConsistentInstructionCasing;error=true", ["FromAsCasing"]),
        ("#check=error=true", "skip=all", []),
    ],
)
def test_check_options(directive, build_arg, expected):
    text = f"{directive}\nFROM scratch as base\ncopy Dockerfile .\n"
    parsed = parse(text)
    args = {"BUILDKIT_DOCKERFILE_CHECK": build_arg} if build_arg is not None else {}
    result = check(parsed, plan(parsed, args))
    assert [w.rule for w in result.warnings] == expected
    error = result.error()
    if build_arg and "error=true" in build_arg:
        assert error is not None and "lint violation found for rules: FromAsCasing" in str(error)
        assert error.exit_code == 1
    else:
        assert error is None


def test_bad_check_directive_is_an_error():
    from imgbuild.errors import DockerfileError

    parsed = parse("# check=skip=A;bogus\nFROM scratch\n")
    with pytest.raises(DockerfileError, match='failed to parse check options.*invalid check option "bogus"'):
        check(parsed, plan(parsed))


def test_warning_text_quotes_the_line():
    parsed = parse("FROM scratch\nMAINTAINER me\n", "Dockerfile")
    (warning,) = check(parsed, plan(parsed)).warnings
    assert warning.format() == (
        "Dockerfile:2: MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label\n"
        "     2 | MAINTAINER me"
    )
    assert warning.to_json()["url"] == "https://docs.docker.com/go/dockerfile/rule/maintainer-deprecated/"

