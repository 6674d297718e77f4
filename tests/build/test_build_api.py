"""The Python API: ``imgbuild.build(store, options)`` is what the CLI calls."""

from __future__ import annotations

import imgbuild
from imgbuild.build.options import BuildOptions


def test_imgbuild_build_is_callable_after_importing_the_builder_package(store, tmp_path, image_tree):
    # Importing imgbuild.build.* must not hide the top-level function.
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo api > /api.txt\nCMD [\"cat\", \"/api.txt\"]\n")
    result = imgbuild.build(store, BuildOptions(context=context, tags=["api:1"], progress="quiet"))
    assert store.resolve("api:1").digest == result.image.digest
    assert result.steps_run == 1
    assert image_tree(store, result.image)["api.txt"].data == b"api\n"
    assert result.image.config["config"]["Cmd"] == ["cat", "/api.txt"]
