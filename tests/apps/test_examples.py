"""Each example of examples/ builds on the Debian base, runs and does its job;
a rebuild after editing one source file reuses every layer before its COPY."""

from __future__ import annotations

from pathlib import Path

from apps.apptools import Apps, Built, copy_example, free_port, http_get, stop


def assert_cached_up_to(built: Built, source_copy: str) -> None:
    """Every step before the COPY of the edited source was cached; it and what follows ran."""
    instructions = [instruction for _, instruction, _ in built.steps]
    assert source_copy in instructions, built.steps
    at = instructions.index(source_copy)
    before = built.steps[:at]
    assert before and all(state == "cached" for _, _, state in before), built.steps
    assert built.steps[at][2] == "run", built.steps
    assert built.metadata["imgbuild.steps.cached"] == len(before)
    assert built.metadata["imgbuild.steps.run"] == len(built.steps) - len(before)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def serve_and_get(apps: Apps, image: str) -> tuple[str, str]:
    """The bodies of / and /health, with the image's HEALTHCHECK run against the server too."""
    port = free_port()
    server = apps.serve(image, port)
    try:
        bodies = http_get(port, "/", server=server), http_get(port, "/health", server=server)
        assert_healthy(apps, image, port)
        return bodies
    finally:
        stop(server)


def assert_healthy(apps: Apps, image: str, port: int) -> None:
    """The HEALTHCHECK command, run in a second container of the image (both on the host network)."""
    kind, command = apps.inspect(image)["ImageConfig"]["config"]["Healthcheck"]["Test"]
    assert kind == "CMD-SHELL"
    check = apps.run(image, "-c", command, flags=("-e", f"PORT={port}", "--entrypoint", "/bin/sh"))
    assert check.returncode == 0, check.stderr
    broken = apps.run(image, "-c", command, flags=("-e", f"PORT={free_port()}", "--entrypoint", "/bin/sh"))
    assert broken.returncode != 0  # no server on that port: the check fails


def test_python_web(apps: Apps, tmp_path):
    context = copy_example("python-web", tmp_path)
    first = apps.build(context, "python-web:1")
    assert first.metadata["imgbuild.steps.run"] > 0
    assert serve_and_get(apps, "python-web:1") == ("Hello from python-web\n", "ok\n")
    whoami = apps.run("python-web:1", flags=("--entrypoint", "id"))
    assert whoami.returncode == 0 and whoami.stdout.startswith("uid=10001(app)"), whoami.stderr
    config = apps.inspect("python-web:1")["ImageConfig"]["config"]
    assert config["ExposedPorts"] == {"8000/tcp": {}} and config["User"] == "app"

    edit(context / "app.py", 'GREETING = "Hello from python-web"', 'GREETING = "Hello again"')
    second = apps.build(context, "python-web:2")
    assert_cached_up_to(second, "COPY app.py ./")
    assert serve_and_get(apps, "python-web:2") == ("Hello again\n", "ok\n")
    print(f"\npython-web: first build {first.seconds:.1f}s, rebuild {second.seconds:.1f}s")


def test_node_web(apps: Apps, tmp_path):
    context = copy_example("node-web", tmp_path)
    first = apps.build(context, "node-web:1")
    assert first.metadata["imgbuild.steps.run"] > 0
    # "up 1m" is the ms package at work: npm ci installed it from the lockfile.
    assert serve_and_get(apps, "node-web:1") == ("Hello from node-web (up 1m)\n", "ok\n")

    edit(context / "server.js", 'const GREETING = "Hello from node-web";', 'const GREETING = "Hello again";')
    second = apps.build(context, "node-web:2")
    assert_cached_up_to(second, "COPY server.js ./")
    assert serve_and_get(apps, "node-web:2") == ("Hello again (up 1m)\n", "ok\n")
    print(f"\nnode-web: first build {first.seconds:.1f}s, rebuild {second.seconds:.1f}s")


def test_c_hello(apps: Apps, tmp_path):
    context = copy_example("c-hello", tmp_path)
    first = apps.build(context, "c-hello:1")
    ran = apps.run("c-hello:1", flags=("--network", "none"))
    assert (ran.returncode, ran.stdout) == (0, "Hello from c-hello\n"), ran.stderr
    with_args = apps.run("c-hello:1", "a b", "c", flags=("--network", "none"))
    assert with_args.stdout == "Hello from c-hello\narg 1: a b\narg 2: c\n", with_args.stderr
    # FROM scratch + the one COPY: the program is all the image holds.
    assert len(apps.inspect("c-hello:1")["Manifest"]["layers"]) == 1

    edit(context / "hello.c", '#define GREETING "Hello from c-hello"', '#define GREETING "Hello again"')
    second = apps.build(context, "c-hello:2")
    assert_cached_up_to(second, "COPY hello.c ./")
    ran = apps.run("c-hello:2", flags=("--network", "none"))
    assert (ran.returncode, ran.stdout) == (0, "Hello again\n"), ran.stderr
    print(f"\nc-hello: first build {first.seconds:.1f}s, rebuild {second.seconds:.1f}s")
