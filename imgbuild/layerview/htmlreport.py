"""``imgbuild layers --format html``: one self-contained page — inline CSS and
script, the data inline as JSON, nothing fetched — with the layers as a bar
chart of sizes, a treemap of the final filesystem coloured by layer, dive's
wasted-space table and the files of the layer picked in the chart.

Every name in the page comes from the image, so the script puts text into
the page only as text (``textContent``), never as markup.
"""

from __future__ import annotations

import html
import json
import posixpath
import re

TREEMAP_FILES = 400  # the biggest files get a box each; the rest of a directory is one box
HTML_FILES_PER_LAYER = 2000  # rows per layer in the page; the counts say how many more


def render(report: dict) -> str:
    data = {
        "image": report["image"],
        "digest": report["digest"],
        "layers": [_layer(layer) for layer in report["layers"]],
        "wasted": report["wasted"],
        "treemap": treemap(report.get("tree", [])),
        "ci": report.get("ci", []),
    }
    payload = json.dumps(data, ensure_ascii=True).replace("<", "\\u003c").replace(">", "\\u003e")
    title = html.escape(f"imgbuild layers: {report['image']}")
    parts = {"TITLE": title, "DATA": payload, "SCRIPT": SCRIPT, "STYLE": STYLE}
    # one pass: a file named "@SCRIPT@" in the data stays a name
    return re.sub(r"@(TITLE|DATA|SCRIPT|STYLE)@", lambda match: parts[match.group(1)], PAGE)


def _layer(layer: dict) -> dict:
    files = layer["files"][:HTML_FILES_PER_LAYER]
    return {
        "index": layer["index"],
        "digest": layer["digest"],
        "size": layer["size"],
        "instruction": layer["instruction"] or "(no history)",
        "origin": layer["origin"],
        "counts": layer["counts"],
        "files": [[f["change"], f["path"], f["size"], f["type"]] for f in files],
        "more": layer["files_left_out"] + len(layer["files"]) - len(files),
    }


def treemap(rows: list[dict]) -> list[dict]:
    """Top-level directories, each with boxes: [name, size, layer]. The
    biggest files get their own box; the rest of each directory is one box
    coloured by the layer that wrote most of its bytes."""
    files = [row for row in rows if row["type"] == "file" and row["size"] > 0]
    files.sort(key=lambda row: -row["size"])
    groups: dict[str, dict] = {}
    for rank, row in enumerate(files):
        top = row["path"].split("/")[1] if row["path"].count("/") > 1 else "/"
        group = groups.setdefault(top, {"name": "/" + top if top != "/" else "/", "size": 0, "boxes": [], "rest": {}})
        group["size"] += row["size"]
        if rank < TREEMAP_FILES:
            group["boxes"].append([posixpath.relpath(row["path"], group["name"]), row["size"], row["layer"]])
        else:
            rest = group["rest"]
            rest[row["layer"]] = rest.get(row["layer"], 0) + row["size"]
    result = []
    for group in sorted(groups.values(), key=lambda g: -g["size"]):
        if group["rest"]:
            layer = max(group["rest"], key=group["rest"].get)
            group["boxes"].append(["(other files)", sum(group["rest"].values()), layer])
        result.append({"name": group["name"], "size": group["size"], "boxes": group["boxes"]})
    return result


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.3em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
.digest { color: #666; font-family: monospace; font-size: .9em; }
.figures span { display: inline-block; margin-right: 2em; }
.figures b { font-size: 1.2em; }
svg text { font: 12px system-ui, sans-serif; }
.bar { cursor: pointer; } .bar:hover rect { opacity: .8; } .bar.selected rect { stroke: #000; stroke-width: 2; }
table { border-collapse: collapse; background: #fff; } td, th { padding: 2px 10px; border-bottom: 1px solid #eee; }
th { text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.path { font-family: monospace; word-break: break-all; }
.added { color: #1a7f37; } .modified { color: #9a6700; } .removed { color: #cf222e; }
#treemap { position: relative; width: 100%; height: 420px; background: #fff; border: 1px solid #ddd; }
#treemap div { position: absolute; box-sizing: border-box; border: 1px solid #fff; overflow: hidden;
  font-size: 11px; color: #fff; padding: 1px 3px; white-space: nowrap; }
.legend span { display: inline-block; margin-right: 1em; } .legend i { display: inline-block; width: 12px;
  height: 12px; margin-right: 4px; vertical-align: middle; }
.fail { color: #cf222e; font-weight: bold; } .pass { color: #1a7f37; }
"""

SCRIPT = r"""
"use strict";
const data = JSON.parse(document.getElementById("report-data").textContent);
const NS = "http://www.w3.org/2000/svg";
const palette = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#bab0ac"];
const colour = (layer) => palette[((layer % palette.length) + palette.length) % palette.length];

function human(bytes) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = bytes, unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return (unit === 0 ? value : value.toPrecision(3)) + units[unit];
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function svgElement(tag, attributes) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

function drawHeader() {
  document.getElementById("image").textContent = data.image;
  document.getElementById("digest").textContent = data.digest;
  const w = data.wasted;
  document.getElementById("efficiency").textContent = (w.efficiency * 100).toFixed(2) + " %";
  document.getElementById("wasted-bytes").textContent = human(w.wasted_bytes);
  document.getElementById("user-wasted").textContent = (w.user_wasted_percent * 100).toFixed(2) + " %";
  const ci = document.getElementById("ci");
  for (const rule of data.ci) {
    const line = element("div", rule.rule + ": " + rule.status + (rule.message ? " (" + rule.message + ")" : ""),
                         rule.status === "fail" ? "fail" : "pass");
    ci.appendChild(line);
  }
}

function drawBars(selected) {
  const svg = document.getElementById("bars");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const rowHeight = 24, labelWidth = 520, chartWidth = 420;
  const biggest = Math.max(1, ...data.layers.map((layer) => layer.size));
  svg.setAttribute("height", String(rowHeight * data.layers.length + 10));
  svg.setAttribute("width", String(labelWidth + chartWidth + 180));
  data.layers.forEach((layer, row) => {
    const group = svgElement("g", { class: "bar" + (layer.index === selected ? " selected" : ""),
                                    "data-layer": layer.index });
    const y = row * rowHeight + 4;
    const label = svgElement("text", { x: 0, y: y + 15 });
    const text = layer.index + "  " + layer.instruction;
    label.textContent = text.length > 72 ? text.slice(0, 71) + "\u2026" : text;
    const width = Math.max(2, Math.round(chartWidth * layer.size / biggest));
    const bar = svgElement("rect", { x: labelWidth, y: y, width: width, height: rowHeight - 6,
                                     fill: colour(layer.index) });
    const size = svgElement("text", { x: labelWidth + width + 6, y: y + 15 });
    size.textContent = human(layer.size) + "  " + layer.origin;
    const tip = svgElement("title", {});
    tip.textContent = layer.instruction;
    group.append(label, bar, size, tip);
    group.addEventListener("click", () => select(layer.index));
    svg.appendChild(group);
  });
}

// Squarified treemap (Bruls, Huizing, van Wijk): rows of boxes whose aspect ratio stays near 1.
function squarify(items, x, y, w, h) {
  const total = items.reduce((sum, item) => sum + item.size, 0);
  const placed = [];
  if (total <= 0 || w <= 0 || h <= 0) return placed;
  const scale = (w * h) / total;
  let rest = items.map((item) => ({ item, area: item.size * scale }));
  while (rest.length) {
    const side = Math.min(w, h);
    let row = [rest[0]], worst = ratio(row, side);
    for (let i = 1; i < rest.length; i++) {
      const next = ratio(row.concat([rest[i]]), side);
      if (next > worst) break;
      row.push(rest[i]); worst = next;
    }
    const rowArea = row.reduce((sum, r) => sum + r.area, 0);
    const thickness = rowArea / side;
    let offset = 0;
    for (const r of row) {
      const length = r.area / thickness;
      if (w >= h) placed.push({ item: r.item, x: x, y: y + offset, w: thickness, h: length });
      else placed.push({ item: r.item, x: x + offset, y: y, w: length, h: thickness });
      offset += length;
    }
    if (w >= h) { x += thickness; w -= thickness; } else { y += thickness; h -= thickness; }
    rest = rest.slice(row.length);
  }
  return placed;
}

function ratio(row, side) {
  const areas = row.map((r) => r.area);
  const sum = areas.reduce((a, b) => a + b, 0);
  const max = Math.max(...areas), min = Math.min(...areas);
  return Math.max((side * side * max) / (sum * sum), (sum * sum) / (side * side * min));
}

function drawTreemap() {
  const box = document.getElementById("treemap");
  const width = box.clientWidth, height = box.clientHeight;
  for (const group of squarify(data.treemap, 0, 0, width, height)) {
    const boxes = group.item.boxes.map((b) => ({ name: b[0], size: b[1], layer: b[2] }));
    for (const cell of squarify(boxes, group.x, group.y, group.w, group.h)) {
      const path = (group.item.name === "/" ? "" : group.item.name) + "/" + cell.item.name;
      const div = element("div", cell.w > 40 && cell.h > 14 ? path : undefined);
      div.style.left = cell.x + "px"; div.style.top = cell.y + "px";
      div.style.width = cell.w + "px"; div.style.height = cell.h + "px";
      div.style.background = colour(cell.item.layer);
      div.title = path + "  " + human(cell.item.size) + "  layer " + cell.item.layer;
      div.dataset.layer = String(cell.item.layer);
      box.appendChild(div);
    }
  }
  const legend = document.getElementById("legend");
  for (const layer of data.layers) {
    const item = element("span", "layer " + layer.index);
    const swatch = element("i");
    swatch.style.background = colour(layer.index);
    item.prepend(swatch);
    legend.appendChild(item);
  }
}

function drawWasted() {
  const body = document.getElementById("wasted-rows");
  for (const row of data.wasted.top_wasted) {
    const tr = element("tr");
    tr.append(element("td", row.count, "num"), element("td", human(row.wasted_bytes), "num"),
              element("td", row.path, "path"));
    body.appendChild(tr);
  }
  if (!data.wasted.top_wasted.length) body.appendChild(element("tr")).appendChild(element("td", "nothing wasted"));
}

function select(index) {
  drawBars(index);
  const layer = data.layers.find((l) => l.index === index);
  const title = document.getElementById("files-title");
  title.textContent = "Files of layer " + layer.index + ": " + layer.instruction;
  const counts = layer.counts;
  document.getElementById("files-counts").textContent = counts.added + " added, " + counts.modified +
    " modified, " + counts.removed + " removed" + (layer.more ? " (" + layer.more + " more not shown)" : "");
  const body = document.getElementById("files-rows");
  while (body.firstChild) body.removeChild(body.firstChild);
  for (const [change, path, size, type] of layer.files) {
    const tr = element("tr");
    tr.append(element("td", change, change), element("td", human(size), "num"), element("td", type),
              element("td", path, "path"));
    body.appendChild(tr);
  }
}

drawHeader();
drawTreemap();
drawWasted();
if (data.layers.length) {
  const biggest = data.layers.reduce((a, b) => (b.size > a.size ? b : a));
  select(biggest.index);
}
document.body.dataset.rendered = "ok";
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>@TITLE@</title><style>@STYLE@</style></head>
<body>
<h1 id="image"></h1><div class="digest" id="digest"></div>
<p class="figures"><span>efficiency <b id="efficiency"></b></span><span>wasted <b id="wasted-bytes"></b></span>
<span>user wasted <b id="user-wasted"></b></span></p>
<div id="ci"></div>
<h2>Layers (click one to list its files)</h2>
<svg id="bars" xmlns="http://www.w3.org/2000/svg"></svg>
<h2>Final filesystem, coloured by the layer each file comes from</h2>
<div id="treemap"></div><p class="legend" id="legend"></p>
<h2>Wasted space (paths in more than one layer)</h2>
<table><thead><tr><th>count</th><th>wasted</th><th>path</th></tr></thead><tbody id="wasted-rows"></tbody></table>
<h2 id="files-title">Files</h2><p id="files-counts"></p>
<table><thead><tr><th>change</th><th>size</th><th>type</th><th>path</th></tr></thead><tbody id="files-rows"></tbody></table>
<script type="application/json" id="report-data">@DATA@</script>
<script>@SCRIPT@</script>
</body></html>
"""
