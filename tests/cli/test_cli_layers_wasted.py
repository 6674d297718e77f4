"""dive's figures (efficiency, wasted bytes, user-wasted percent, top wasted
paths) on an image whose numbers are worked out by hand here, and the
``--ci`` gate with dive's thresholds and .dive-ci keys."""

from __future__ import annotations

import json

import pytest
from cli.craftedimage import write_layout
from cli.test_cli_layers import HISTORY, LAYER0, LAYER1, LAYER2

# dive counts each layer's leaves (entries with nothing of the same layer below them):
#   /etc/a       layer 0: 100, layer 1: 150                 -> 2 nodes, 250, smallest 100
#   /etc/b       layer 0: 200, layer 1: whiteout of a file  -> 2 nodes, 200 + 0, smallest 0
#   /usr/big     layer 0: 5000, layer 2: whiteout of a file -> 2 nodes, 5000, smallest 0
#   /srv/d       layer 2: whiteout of a directory, sized by what was below it (1000 + 2000);
#                one node only (in layer 0 /srv/d has entries below it, so it is no leaf)
#   /var/cache/x 300, /var/cache/y 400, /srv/d/p 1000, /srv/d/q 2000, /opt/n 50, /opt/l 0,
#   /var/cache/z 10: one node each
SMALLEST = 100 + 0 + 0 + 3000 + 300 + 400 + 1000 + 2000 + 50 + 0 + 10
CUMULATIVE = 250 + 200 + 5000 + 3000 + 300 + 400 + 1000 + 2000 + 50 + 0 + 10
WASTED = 250 + 200 + 5000
LAYER_SIZES = (9000, 200, 10)  # every entry's header size, whiteouts 0
USER_SIZE = 200 + 10  # all but the first layer


@pytest.fixture
def crafted(tmp_path):
    layout = tmp_path / "layout"
    write_layout(layout, "v1", [LAYER0, LAYER1, LAYER2], HISTORY)
    return f"oci:{layout}:v1"


def test_dive_figures_by_hand(cli, crafted):
    result = cli("layers", crafted, "--format", "json")
    wasted = json.loads(result.stdout)["wasted"]
    assert wasted["efficiency"] == pytest.approx(SMALLEST / CUMULATIVE)
    assert wasted["wasted_bytes"] == WASTED
    assert wasted["size_bytes"] == sum(LAYER_SIZES) and wasted["user_size_bytes"] == USER_SIZE
    assert wasted["user_wasted_percent"] == pytest.approx(WASTED / USER_SIZE)
    assert wasted["top_wasted"] == [
        {"path": "/usr/big", "count": 2, "wasted_bytes": 5000},
        {"path": "/etc/a", "count": 2, "wasted_bytes": 250},
        {"path": "/etc/b", "count": 2, "wasted_bytes": 200},
    ]
    text = cli("layers", crafted).stdout
    assert f"efficiency: {SMALLEST / CUMULATIVE * 100:.4f} %" in text
    assert f"wasted bytes: {WASTED} " in text


def test_ci_passes_and_fails_naming_the_threshold(cli, crafted):
    efficiency = SMALLEST / CUMULATIVE  # about 0.56
    ok = cli("layers", crafted, "--ci", "--lowest-efficiency", "0.5", "--highest-wasted-bytes", "5450",
             "--highest-user-wasted-percent", "disabled")
    assert ok.exit_code == 0, ok.stderr
    low = cli("layers", crafted, "--ci", "--lowest-efficiency", "0.6", "--highest-user-wasted-percent", "off")
    assert low.exit_code == 1
    assert f"lowest-efficiency: image efficiency is too low (efficiency={efficiency:.2f} < threshold=0.6)" in low.stderr
    # dive reads sizes as go-humanize does: 5kB is 5000 bytes, 5KiB 5120
    wasted = cli("layers", crafted, "--ci", "--lowest-efficiency", "0", "--highest-wasted-bytes", "5kB",
                 "--highest-user-wasted-percent", "disabled")
    assert wasted.exit_code == 1 and "highest-wasted-bytes" in wasted.stderr and "5450 > threshold=5kB" in wasted.stderr
    assert "lowest-efficiency" not in wasted.stderr
    # without thresholds, dive's defaults: efficiency 0.9 and user-wasted 0.1 both fail here
    defaults = cli("layers", crafted, "--ci", "--format", "json")
    assert defaults.exit_code == 1
    statuses = {row["rule"]: row["status"] for row in json.loads(defaults.stdout)["ci"]}
    assert statuses == {"lowest-efficiency": "fail", "highest-wasted-bytes": "disabled",
                        "highest-user-wasted-percent": "fail"}


def test_dive_ci_file_with_legacy_and_new_keys(cli, crafted, tmp_path, monkeypatch):
    config = tmp_path / "ci" / ".dive-ci"
    config.parent.mkdir()
    config.write_text("rules:\n  lowestEfficiency: 0.5\n  highestWastedBytes: disabled\n"
                      "  highest-user-wasted-percent: 30  # far above 1\n")
    bad = cli("layers", crafted, "--ci", "--ci-config", str(config))
    assert bad.exit_code == 2 and "highest-user-wasted-percent" in bad.stderr and "outside 0-1" in bad.stderr
    config.write_text("rules:\n  lowestEfficiency: 0.5\n  highestWastedBytes: disabled\n"
                      "  highest-user-wasted-percent: 0.9\n")
    monkeypatch.chdir(config.parent)  # ./.dive-ci is read without --ci-config, as dive does
    failed = cli("layers", crafted, "--ci")
    assert failed.exit_code == 1 and "highest-user-wasted-percent" in failed.stderr
    assert "lowest-efficiency" not in failed.stderr  # 0.5 from the file, not dive's default 0.9
    passed = cli("layers", crafted, "--ci", "--highest-user-wasted-percent", "disabled")
    assert passed.exit_code == 0, passed.stderr
    config.write_text("rules:\n  smallestImage: 1\n")
    unknown = cli("layers", crafted, "--ci")
    assert unknown.exit_code == 2 and ".dive-ci:2" in unknown.stderr and "smallestImage" in unknown.stderr


def test_dive_own_efficiency_example(cli, tmp_path):
    """dive's TestEfficiency (filetree/efficiency_test.go), as layer tars: no directory
    entries, so /etc/nginx is a directory only by implication, and dive sizes its
    whiteout 0. dive expects efficiency 0.75 and one wasted path, nginx.conf, 7000 bytes."""
    layers = [
        [("file", "etc/nginx/nginx.conf", b"c" * 2000), ("file", "etc/nginx/public", b"p" * 3000)],
        [("file", "etc/nginx/nginx.conf", b"C" * 5000), ("file", "etc/athing", b"t" * 10_000)],
        [("whiteout", "etc/nginx")],
    ]
    layout = tmp_path / "layout"
    write_layout(layout, "dive", layers, [{"created_by": f"step {n}"} for n in range(3)])
    wasted = json.loads(cli("layers", f"oci:{layout}:dive", "--format", "json").stdout)["wasted"]
    assert wasted["efficiency"] == 0.75
    assert wasted["top_wasted"] == [{"path": "/etc/nginx/nginx.conf", "count": 2, "wasted_bytes": 7000}]
    # with a directory entry for etc/nginx in the layer before, the whiteout counts what it hides
    layers[1].insert(0, ("dir", "etc/nginx"))
    write_layout(tmp_path / "with-dir", "dive", layers, [{"created_by": f"step {n}"} for n in range(3)])
    wasted = json.loads(cli("layers", f"oci:{tmp_path / 'with-dir'}:dive", "--format", "json").stdout)["wasted"]
    hidden = 5000 + 3000  # nginx.conf as layer 1 wrote it, public from layer 0
    assert wasted["efficiency"] == pytest.approx((2000 + 3000 + 10_000 + hidden) / (7000 + 3000 + 10_000 + hidden))
