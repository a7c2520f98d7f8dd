"""The HTML of a listening-test site: one self-contained page per rater and an index, opened from ``file://``.

Everything a page needs is inside it (CSS, JavaScript, its items as JSON) except the audio, which sits beside it
in ``audio/``: no network, no CDN. A page names no method: its items carry an opaque id, the audio file (an
opaque id too), the target emotion and, for attention checks only, the instruction. Ratings are kept in the
browser's localStorage under the site id and rater id, so a reload or a closed tab loses nothing, and the
Download button writes them as CSV (``site_id,rater_id,item_id,scale,rating,timestamp``) through a Blob.
"""
from __future__ import annotations

import html
import json
from typing import Any, Sequence

EMOS_LABELS = ("Not {target} at all", "Slightly {target}", "Moderately {target}", "Clearly {target}",
               "Very {target}")
"""EMOS, 1 to 5: how strongly the clip conveys the target emotion."""
NMOS_LABELS = ("Bad", "Poor", "Fair", "Good", "Excellent")
"""NMOS, 1 to 5: the absolute category rating labels of MOS tests (ITU-T P.800)."""
PREFERENCE_CHOICES = (("A", "A"), ("B", "B"), ("none", "No preference"))
"""A/B: which clip conveys the target emotion better."""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 52rem; padding: 0 1rem 4rem; color: #222; }
header { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ccc; padding: .6rem 0;
         display: flex; gap: 1rem; align-items: center; z-index: 1; }
#progress { font-weight: 600; }
.item { border: 1px solid #ddd; border-radius: 6px; padding: .8rem 1rem; margin: 1rem 0; }
.item.done { border-color: #6a6; background: #f6fbf6; }
.instruction { background: #fff4d6; padding: .4rem .6rem; border-radius: 4px; font-weight: 600; }
fieldset { border: none; padding: .3rem 0; margin: 0; }
legend { font-weight: 600; padding: 0; }
label { display: inline-block; margin: .2rem .8rem .2rem 0; cursor: pointer; }
.pair { display: flex; gap: 1.5rem; flex-wrap: wrap; }
.pair div { display: flex; flex-direction: column; }
audio { margin: .4rem 0; }
button { font-size: 1rem; padding: .4rem 1rem; }
"""

_SCRIPT = r"""
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("emoctl-data").textContent);
  const storeKey = "emoctl-listening:" + data.site_id + ":" + data.rater_id;
  let saved = {};
  try { saved = JSON.parse(window.localStorage.getItem(storeKey) || "{}") || {}; } catch (err) { saved = {}; }

  function persist() {
    try { window.localStorage.setItem(storeKey, JSON.stringify(saved)); } catch (err) { /* private mode */ }
  }
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function player(src, label) {
    const box = el("div");
    if (label) box.appendChild(el("strong", {}, label));
    const audio = el("audio", {controls: "", preload: "auto", src: src});
    box.appendChild(audio);
    return box;
  }
  function scale(item, scaleName, legend, choices) {
    const set = el("fieldset", {"data-scale": scaleName});
    set.appendChild(el("legend", {}, legend));
    choices.forEach(([value, text]) => {
      const label = el("label");
      const input = el("input", {type: "radio", name: item.id + ":" + scaleName, value: value,
                                 "data-item": item.id, "data-scale": scaleName});
      const kept = (saved[item.id] || {})[scaleName];
      if (kept && String(kept.rating) === String(value)) input.checked = true;
      input.addEventListener("change", () => {
        saved[item.id] = saved[item.id] || {};
        saved[item.id][scaleName] = {rating: value, timestamp: new Date().toISOString()};
        persist();
        update();
      });
      label.appendChild(input);
      label.appendChild(document.createTextNode(" " + value + (text === value ? "" : " – " + text)));
      set.appendChild(label);
    });
    return set;
  }
  function isDone(item) {
    return data.scales.every((s) => (saved[item.id] || {})[s] !== undefined);
  }
  function update() {
    let done = 0;
    data.items.forEach((item) => {
      const ok = isDone(item);
      if (ok) done += 1;
      document.getElementById("item-" + item.id).classList.toggle("done", ok);
    });
    document.getElementById("progress").textContent = done + " of " + data.items.length + " rated";
    document.getElementById("progress").setAttribute("data-done", String(done));
  }
  function csvRows() {
    const rows = [["site_id", "rater_id", "item_id", "scale", "rating", "timestamp"].join(",")];
    data.items.forEach((item) => {
      data.scales.forEach((s) => {
        const kept = (saved[item.id] || {})[s];
        if (kept) rows.push([data.site_id, data.rater_id, item.id, s, kept.rating, kept.timestamp].join(","));
      });
    });
    return rows.join("\n") + "\n";
  }
  function download() {
    const blob = new Blob([csvRows()], {type: "text/csv"});
    const url = URL.createObjectURL(blob);
    const link = el("a", {href: url, download: "ratings_" + data.site_id + "_" + data.rater_id + ".csv"});
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  const list = document.getElementById("items");
  data.items.forEach((item, i) => {
    const box = el("section", {class: "item", id: "item-" + item.id, "data-item": item.id});
    box.appendChild(el("h2", {}, "Item " + (i + 1) + " of " + data.items.length));
    if (item.instruction) box.appendChild(el("p", {class: "instruction"}, item.instruction));
    if (data.mode === "mos") {
      box.appendChild(player(item.audio));
      const emos = data.emos_labels.map((t, k) => [String(k + 1), t.split("{target}").join(item.target)]);
      const nmos = data.nmos_labels.map((t, k) => [String(k + 1), t]);
      box.appendChild(scale(item, "emos", "Emotion (EMOS): how " + item.target + " does this clip sound?", emos));
      box.appendChild(scale(item, "nmos", "Naturalness (NMOS): how natural does the speech sound?", nmos));
    } else {
      const pair = el("div", {class: "pair"});
      pair.appendChild(player(item.audio_a, "A"));
      pair.appendChild(player(item.audio_b, "B"));
      box.appendChild(pair);
      box.appendChild(scale(item, "preference", "Which clip sounds more " + item.target + "?", data.choices));
    }
    list.appendChild(box);
  });
  document.getElementById("download").addEventListener("click", download);
  update();
})();
"""


def rater_page(site_id: str, rater_id: str, mode: str, items: Sequence[dict[str, Any]], n_raters: int) -> str:
    """One rater's page: the items in this rater's order, the scales, progress and the Download button."""
    scales = ["emos", "nmos"] if mode == "mos" else ["preference"]
    payload = {"site_id": site_id, "rater_id": rater_id, "mode": mode, "scales": scales, "items": list(items),
               "emos_labels": list(EMOS_LABELS), "nmos_labels": list(NMOS_LABELS),
               "choices": [list(c) for c in PREFERENCE_CHOICES]}
    data = json.dumps(payload, ensure_ascii=False).replace("</", "<\\/")  # no "</script>" inside the script
    if mode == "mos":
        task = ("Play each clip (headphones, a quiet room) and rate it on both scales: how strongly it conveys the "
                "emotion named above the scale (EMOS, 1 to 5), and how natural the speech sounds (NMOS, 1 to 5, "
                "whatever its emotion).")
    else:
        task = ("Each item has two clips of the same sentence, A and B. Play both and choose the one that conveys "
                "the named emotion better, or No preference.")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="emoctl-site" content="{html.escape(site_id)}">
<meta name="emoctl-rater" content="{html.escape(rater_id)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Listening test – rater {html.escape(rater_id)}</title>
<style>{_CSS}</style>
</head>
<body>
<header><span id="progress">0 of {len(items)} rated</span>
<button id="download" type="button">Download ratings (CSV)</button>
<span>rater {html.escape(rater_id)} of {n_raters}</span></header>
<h1>Listening test</h1>
<p>{html.escape(task)} Some items ask for a fixed answer: give that answer. Your ratings are kept in this browser
as you go; when every item is rated, press <em>Download ratings</em> and send the CSV file back.</p>
<div id="items"></div>
<script type="application/json" id="emoctl-data">{data}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def index_page(site_id: str, mode: str, pages: Sequence[tuple[str, str]], n_items: int) -> str:
    """The site's front page: one link per rater page."""
    links = "\n".join(f'<li><a href="{html.escape(href)}">rater {html.escape(rater)}</a></li>' for rater, href in pages)
    what = "EMOS and NMOS, 1 to 5" if mode == "mos" else "A/B preference"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="emoctl-site" content="{html.escape(site_id)}">
<title>Listening test</title>
<style>{_CSS}</style>
</head>
<body>
<h1>Listening test</h1>
<p>{len(pages)} rater pages of {n_items} items each ({what}). Give each rater one page; each page keeps its
ratings in the rater's browser and downloads them as a CSV file to send back. Site id
<code>{html.escape(site_id)}</code>.</p>
<ul>
{links}
</ul>
</body>
</html>
"""
