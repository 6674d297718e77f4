"""A build's RUN steps are launched by one launcher service (sandbox/launcher.py),
which ends with the build."""

from __future__ import annotations

import os
from pathlib import Path

from imagetools import make_busybox_image

from imgbuild.store import Store


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_run_steps_are_forked_by_one_service_that_ends_with_the_build(build_df, tmp_path):
    # runc behind a script noting, for each `run`, the launcher that started it
    # and that launcher's parent.
    log = tmp_path / "launchers.log"
    runtime = tmp_path / "logging-runc"
    runtime.write_text(
        "#!/bin/sh\n"
        f'for arg; do [ "$arg" = run ] && echo "$PPID $(sed "s/.*) //" /proc/$PPID/stat | cut -d" " -f2)" >> {log}; done\n'
        'exec runc "$@"\n'
    )
    runtime.chmod(0o755)
    store = Store(tmp_path / "store")
    make_busybox_image(store, "busybox:latest")

    built = build_df(
        "FROM busybox\nRUN echo one > /one\nRUN echo two > /two\nRUN echo three > /three\n",
        store=store, runtime=str(runtime),
    )

    rows = [line.split() for line in Path(log).read_text().splitlines()]
    assert len(rows) == 3
    assert len({launcher for launcher, _parent in rows}) == 3  # a launcher per step
    parents = {int(parent) for _launcher, parent in rows}
    assert len(parents) == 1  # all forked by one process
    service = parents.pop()
    assert service != os.getpid()  # not started by the build itself, one Python each
    assert not _alive(service)  # gone (and waited for) when the build returned
    assert built.tree()["three"].data == b"three\n"
