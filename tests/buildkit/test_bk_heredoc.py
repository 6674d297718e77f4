"""Heredocs as BuildKit's dockerfile_heredoc_test.go pins them down: one build whose
stage writes every file the checks read. (Debian's static busybox has no adduser:
users are added to /etc/passwd by hand.)"""

from __future__ import annotations

import pytest

DOCKERFILE = r"""FROM busybox AS build
RUN echo 'user:x:1001:1001::/home/user:/bin/sh' >> /etc/passwd && echo 'user:x:1001:' >> /etc/group
WORKDIR /dest

COPY <<EOF single
single file
EOF

COPY <<EOF <<EOF2 double/
first file
EOF
second file
EOF2

RUN mkdir -p /permfiles
COPY --chmod=777 <<EOF /permfiles/all
dummy content
EOF
COPY --chmod=0644 <<EOF /permfiles/rw
dummy content
EOF
COPY --chown=user:user <<EOF /permfiles/owned
dummy content
EOF
RUN stat -c "%04a" /permfiles/all >> perms && \
	stat -c "%04a" /permfiles/rw >> perms && \
	stat -c "%U:%G" /permfiles/owned >> perms

COPY <<EOF quotefile
"quotes in file"
EOF
COPY <<EOF slashfile1
\
EOF
COPY <<EOF slashfile2
\\
EOF
COPY <<EOF slashfile3
\$
EOF
COPY <<"EOF" rawslashfile1
\
EOF
COPY <<"EOF" rawslashfile2
\\
EOF
COPY <<"EOF" rawslashfile3
\$
EOF

RUN <<EOF
echo "i am" >> /dest/basic
whoami >> /dest/basic
EOF

RUN <<EOF
#!/bin/awk -f
BEGIN {
	print "hello" >> "./out1"
	print "world" >> "./out1"
}
EOF

RUN <<-EOF
	#!/bin/awk -f
	BEGIN {
		print "hello" >> "./out2"
		print "world" >> "./out2"
	}
EOF

RUN cat <<EOF1 | tr '[:upper:]' '[:lower:]' > ./out3; \
	cat <<EOF2 | tr '[:lower:]' '[:upper:]' > ./out4
hello WORLD
EOF1
HELLO world
EOF2

RUN <<EOF 3<<IN1 4<<IN2 awk -f -
BEGIN {
	while ((getline line < "/proc/self/fd/3") > 0)
		print tolower(line) > "./fd3"
	while ((getline line < "/proc/self/fd/4") > 0)
		print toupper(line) > "./fd4"
}
EOF
hello WORLD
IN1
HELLO world
IN2

COPY <<EOF /dest/foo-copy
	foo
EOF
COPY <<-EOF /dest/bar-copy
	bar
EOF
RUN <<EOF
echo "
	foo" > /dest/foo-run
EOF
RUN <<-EOF
echo "
	bar" > /dest/bar-run
EOF
RUN <<EOF
#!/bin/sh
echo "
	foo" > /dest/foo2-run
EOF
RUN <<-EOF
#!/bin/sh
echo "
	bar" > /dest/bar2-run
EOF
RUN <<EOF sh > /dest/foo3-run
echo "
	foo"
EOF
RUN <<-EOF sh > /dest/bar3-run
echo "
	bar"
EOF

ARG name=world
COPY <<EOF /dest/c1
Hello ${name}!
EOF
COPY <<'EOF' /dest/c2
Hello ${name}!
EOF
COPY <<"EOF" /dest/c3
Hello ${name}!
EOF
COPY <<EOF /dest/q1
Hello '${name}'!
EOF
COPY <<EOF /dest/q2
Hello "${name}"!
EOF
COPY <<'EOF' /dest/qsingle1
Hello '${name}'!
EOF
COPY <<'EOF' /dest/qsingle2
Hello "${name}"!
EOF
COPY <<"EOF" /dest/qdouble1
Hello '${name}'!
EOF
COPY <<"EOF" /dest/qdouble2
Hello "${name}"!
EOF
RUN <<EOF
greeting="Hello"
echo "${greeting} ${name}!" > /dest/r1
EOF
RUN <<EOF
name="new world"
echo "Hello ${name}!" > /dest/r2
EOF

FROM busybox AS fake
SHELL ["/bin/awk"]
RUN <<EOF
BEGIN {
	print "foo" > "/dest"
}
EOF

FROM scratch
COPY --from=build /dest /
COPY --from=fake /dest /fake
"""

EXPECTED = [
    ("testCopyHeredoc", "single", "single file\n"),
    ("testCopyHeredoc", "double/EOF", "first file\n"),
    ("testCopyHeredoc", "double/EOF2", "second file\n"),
    ("testCopyHeredoc", "perms", "0777\n0644\nuser:user\n"),
    ("testCopyHeredocSpecialSymbols", "quotefile", '"quotes in file"\n'),
    ("testCopyHeredocSpecialSymbols", "slashfile1", "\n"),
    ("testCopyHeredocSpecialSymbols", "slashfile2", "\\\n"),
    ("testCopyHeredocSpecialSymbols", "slashfile3", "$\n"),
    ("testCopyHeredocSpecialSymbols", "rawslashfile1", "\\\n"),
    ("testCopyHeredocSpecialSymbols", "rawslashfile2", "\\\\\n"),
    ("testCopyHeredocSpecialSymbols", "rawslashfile3", "\\$\n"),
    ("testRunBasicHeredoc", "basic", "i am\nroot\n"),
    ("testRunFakeHeredoc", "fake", "foo\n"),
    ("testRunShebangHeredoc", "out1", "hello\nworld\n"),
    ("testRunShebangHeredoc", "out2", "hello\nworld\n"),
    ("testRunComplexHeredoc", "out3", "hello world\n"),
    ("testRunComplexHeredoc", "out4", "HELLO WORLD\n"),
    ("testRunComplexHeredoc", "fd3", "hello world\n"),
    ("testRunComplexHeredoc", "fd4", "HELLO WORLD\n"),
    ("testHeredocIndent", "foo-copy", "\tfoo\n"),
    ("testHeredocIndent", "foo-run", "\n\tfoo\n"),
    ("testHeredocIndent", "foo2-run", "\n\tfoo\n"),
    ("testHeredocIndent", "foo3-run", "\n\tfoo\n"),
    ("testHeredocIndent", "bar-copy", "bar\n"),
    ("testHeredocIndent", "bar-run", "\nbar\n"),
    ("testHeredocIndent", "bar2-run", "\nbar\n"),
    ("testHeredocIndent", "bar3-run", "\nbar\n"),
    ("testHeredocVarSubstitution", "c1", "Hello world!\n"),
    ("testHeredocVarSubstitution", "c2", "Hello ${name}!\n"),
    ("testHeredocVarSubstitution", "c3", "Hello ${name}!\n"),
    ("testHeredocVarSubstitution", "q1", "Hello 'world'!\n"),
    ("testHeredocVarSubstitution", "q2", 'Hello "world"!\n'),
    ("testHeredocVarSubstitution", "qsingle1", "Hello '${name}'!\n"),
    ("testHeredocVarSubstitution", "qsingle2", 'Hello "${name}"!\n'),
    ("testHeredocVarSubstitution", "qdouble1", "Hello '${name}'!\n"),
    ("testHeredocVarSubstitution", "qdouble2", 'Hello "${name}"!\n'),
    ("testHeredocVarSubstitution", "r1", "Hello world!\n"),
    ("testHeredocVarSubstitution", "r2", "Hello new world!\n"),
]


@pytest.fixture(scope="module")
def tree(bk):
    return bk.build(DOCKERFILE).tree()


@pytest.mark.parametrize(
    ("path", "content"),
    [pytest.param(p, c, id=p, marks=pytest.mark.buildkit(b)) for b, p, c in EXPECTED],
)
def test_heredoc(tree, path, content):
    assert path in tree, f"{path} was not made"
    assert tree[path].data.decode() == content


ONBUILD_BASE = 'FROM busybox\nONBUILD RUN <<EOF\necho "hello world" >> /dest\nEOF\n'


@pytest.mark.buildkit("testOnBuildHeredoc")
def test_onbuild_heredoc(bk):
    bk.build(ONBUILD_BASE, tags=["bk/onbuild-heredoc:1"])
    tree = bk.build("FROM bk/onbuild-heredoc:1 AS base\nFROM scratch\nCOPY --from=base /dest /dest\n").tree()
    assert tree["dest"].data == b"hello world\n"
