"""README's synopses list every flag each verb really takes (checked against its parser)."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from imgbuild.cli import VERBS

README = Path(__file__).resolve().parents[2] / "README.md"
GROUPS = {"cache": "imgbuild.cli.cache", "image": "imgbuild.cli.image", "system": "imgbuild.cli.system"}


def synopses() -> dict[str, str]:
    """``verb`` (or ``group subcommand``) -> the text of its synopsis in README's code blocks."""
    found: dict[str, str] = {}
    current = None
    for line in README.read_text().splitlines():
        stripped = line.strip()
        if line.startswith("    imgbuild "):
            words = stripped.split()[1:]
            verb = words[0].strip("[]")
            if verb.startswith("-"):
                current = None
                continue
            key = f"{verb} {words[1]}" if verb in GROUPS and len(words) > 1 else verb
            found[key] = found.get(key, "") + " " + stripped
            current = key
        elif current and line.startswith("     ") and stripped.startswith("["):
            found[current] += " " + stripped
        else:
            current = None
    return found


def parsers() -> dict[str, argparse.ArgumentParser]:
    result = {}
    for verb, (module_name, _) in VERBS.items():
        if verb in GROUPS:
            group = importlib.import_module(GROUPS[verb])
            for name, (sub_module, _) in group.SUBCOMMANDS.items():
                if sub_module in (module for module, _ in VERBS.values()):
                    continue  # another name of a verb (image ls = images): checked as that verb
                parser = argparse.ArgumentParser()
                importlib.import_module(f"imgbuild.cli.{sub_module}").add_arguments(parser)
                result[f"{verb} {name}"] = parser
            continue
        parser = argparse.ArgumentParser()
        importlib.import_module(f"imgbuild.cli.{module_name}").add_arguments(parser)
        result[verb] = parser
    return result


@pytest.mark.parametrize("verb", sorted(parsers()))
def test_readme_synopsis_lists_every_flag(verb):
    text = synopses().get(verb)
    assert text, f"README has no synopsis line for `imgbuild {verb}`"
    missing = []
    for action in parsers()[verb]._actions:
        options = [o for o in action.option_strings if o not in ("-h", "--help")]
        if options and not any(re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text) for o in options):
            missing.append("/".join(options))
    assert not missing, f"README's synopsis of `imgbuild {verb}` lacks {', '.join(missing)}"
