"""``imgbuild layers --format html``: one page, nothing fetched, rendered in
headless Chromium without console errors; the screenshot is kept."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cli.craftedimage import write_layout
from cli.test_cli_layers import HISTORY, LAYER0, LAYER1, LAYER2

ARTIFACTS = Path("/tmp/imgbuild-test-artifacts")


def _chromium(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed (scripts/install-deps.sh --test installs it)")
    return subprocess.run(
        [binary, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
         "--no-first-run", "--disable-extensions", f"--user-data-dir={cwd / 'profile'}",
         "--window-size=1280,1800", "--virtual-time-budget=3000", *argv],
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )


def _console_problems(stderr: str) -> list[str]:
    """Console messages of the page (Chromium logs them as ...:CONSOLE(line)] "text") and script errors."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_html_report_renders_in_chromium(cli, tmp_path):
    layout = tmp_path / "layout"
    # a hostile name: markup in a path must show as text, not become markup
    layer3 = [("file", "srv/<img src=x onerror=alert(1)>.txt", b"h" * 64), ("file", "srv/@SCRIPT@", b"s")]
    write_layout(layout, "v1", [LAYER0, LAYER1, LAYER2, layer3], HISTORY + [{"created_by": "COPY evil /srv/"}])
    report_path = tmp_path / "report.html"
    result = cli("layers", f"oci:{layout}:v1", "--format", "html", "-o", str(report_path), "--ci",
                 "--lowest-efficiency", "0.1", "--highest-user-wasted-percent", "disabled")
    assert result.exit_code == 0, result.stderr
    page = report_path.read_text()
    # self-contained: no attribute loads anything, no stylesheet or script from elsewhere
    assert re.search(r"\b(src|href)\s*=", page.split('id="report-data">')[0]) is None
    assert "<img" not in page  # the hostile name is escaped inside the JSON
    assert page.count("<script") == 2

    dom = _chromium("--dump-dom", report_path.as_uri(), cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _console_problems(dom.stderr) == [], dom.stderr[-2000:]
    html = dom.stdout
    assert 'data-rendered="ok"' in html  # the script ran to its end
    assert html.count('class="bar') == 4  # one bar per layer
    assert "RUN echo hi &gt; /opt/n" in html and "COPY evil /srv/" in html
    # the biggest layer (layer 0) is selected: its files are listed
    assert "Files of layer 0: ADD file:0123 in /" in html and "/srv/d/q" in html
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in html  # shown as text in the treemap
    # the treemap: a box per file of the final tree, coloured by its layer
    boxes = re.findall(r'<div [^>]*data-layer="(\d)"', html)
    assert sorted(boxes) == ["1", "1", "2", "3", "3"]  # /etc/a, /opt/n, /var/cache/z, the two in /srv
    assert "lowest-efficiency: pass" in html

    shot = tmp_path / "report.png"
    shot_run = _chromium(f"--screenshot={shot}", report_path.as_uri(), cwd=tmp_path)
    assert shot_run.returncode == 0 and shot.stat().st_size > 10_000, shot_run.stderr[-2000:]
    assert _console_problems(shot_run.stderr) == []
    ARTIFACTS.mkdir(exist_ok=True)
    kept = ARTIFACTS / "layers-report.png"
    shutil.copyfile(shot, kept)
    shutil.copyfile(report_path, ARTIFACTS / "layers-report.html")
    print(f"screenshot of the HTML report: {kept}")


def test_html_needs_an_output_file(cli, tmp_path):
    layout = tmp_path / "layout"
    write_layout(layout, "v1", [LAYER0], HISTORY[:1])
    result = cli("layers", f"oci:{layout}:v1", "--format", "html")
    assert result.exit_code == 2 and "-o" in result.stderr


def test_html_json_data_matches_the_json_report(cli, tmp_path):
    layout = tmp_path / "layout"
    write_layout(layout, "v1", [LAYER0, LAYER1], HISTORY[:3])
    out = tmp_path / "r.html"
    assert cli("layers", f"oci:{layout}:v1", "--format", "html", "-o", str(out)).exit_code == 0
    embedded = json.loads(out.read_text().split('id="report-data">')[1].split("</script>")[0])
    plain = json.loads(cli("layers", f"oci:{layout}:v1", "--format", "json").stdout)
    assert [layer["size"] for layer in embedded["layers"]] == [layer["size"] for layer in plain["layers"]]
    assert embedded["wasted"] == plain["wasted"]
    assert sum(group["size"] for group in embedded["treemap"]) == 150 + 300 + 400 + 5000 + 1000 + 2000 + 50
