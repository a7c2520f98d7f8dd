"""The atlas's HTML: one stylesheet and one script, inline in every page (no CDN, no fonts to fetch), so the site
opens from ``file://`` offline.  The index table is drawn by a short script from the latents' JSON, embedded in
the page; latent and emotion pages are plain HTML."""
from __future__ import annotations

import html
import json
from typing import Any, Sequence

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#222;background:#fff}
header{background:#263238;color:#fff;padding:10px 20px}header a{color:#cfd8dc;margin-right:14px}
main{padding:12px 20px;max-width:1400px}h1{font-size:22px;margin:6px 0}h2{font-size:17px;margin:22px 0 8px}
table{border-collapse:collapse;font-size:12.5px}th,td{border-bottom:1px solid #e0e0e0;padding:3px 7px;
text-align:right;white-space:nowrap}th{background:#f5f5f5;position:sticky;top:0;cursor:pointer;user-select:none}
td.l,th.l{text-align:left}tr:hover td{background:#f3f8ff}.dead{color:#aaa}.sig{font-weight:600}
.controls{display:flex;flex-wrap:wrap;gap:14px;align-items:center;margin:8px 0}.controls label{font-size:13px}
.grid{display:flex;flex-wrap:wrap;gap:18px}.card{border:1px solid #e0e0e0;border-radius:6px;padding:8px 10px}
.clip{display:flex;gap:12px;align-items:center;margin:8px 0}.clip img{border:1px solid #eee}
audio{height:30px;width:260px}footer{color:#666;font-size:12px;border-top:1px solid #ddd;margin-top:30px;
padding:10px 20px}.swatch{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:4px}
.muted{color:#777}.tag{display:inline-block;background:#eef;border-radius:3px;padding:0 5px;margin:1px}
"""

INDEX_JS = """
(function(){
const latents=JSON.parse(document.getElementById('atlas-latents').textContent);
const meta=JSON.parse(document.getElementById('atlas-meta').textContent);
const q=new URLSearchParams(location.search);
const el=id=>document.getElementById(id);
let sortKey=q.get('sort')||('delta.'+meta.scores[0]+'.'+meta.emotions[0]),desc=true;
el('score').value=q.get('score')||meta.scores[0];
el('emotion').value=q.get('emotion')||'';
if(q.get('min'))el('min').value=q.get('min');
if(q.get('max'))el('max').value=q.get('max');
if(q.get('filter'))el('filter').value=q.get('filter');
if(q.get('score')&&q.get('emotion'))sortKey='delta.'+q.get('score')+'.'+q.get('emotion');
const fmt=(v,d)=>v===null||v===undefined?'–':(typeof v==='number'?(Math.abs(v)>=1000?v.toFixed(0):v.toPrecision(d||3)):String(v));
function columns(){
  const s=el('score').value;const cols=[['id','latent','l'],['top_emotion','top emotion','l'],
   ['fire_rate_step','fires / step'],['fire_rate_utterance','fires / utt.'],['mean_act','mean act.'],['dead','dead','l']];
  for(const e of meta.emotions){cols.push(['delta.'+s+'.'+e,'Δ '+e]);cols.push(['ci.'+s+'.'+e,'95% CI','l']);
   cols.push(['q.'+s+'.'+e,'q']);cols.push(['held_out.'+s+'.'+e,'held-out Δ']);}
  cols.push(['stability','stability']);cols.push(['sets','feature sets','l']);return cols;}
function value(r,k){if(k.startsWith('ci.')){const t=k.slice(3);const lo=r['ci_low.'+t],hi=r['ci_high.'+t];
  return lo===null||lo===undefined?'–':'['+fmt(lo,2)+', '+fmt(hi,2)+']';}return r[k];}
function render(){
  const cols=columns(),s=el('score').value,emo=el('emotion').value,text=el('filter').value.trim().toLowerCase();
  const lo=parseFloat(el('min').value),hi=parseFloat(el('max').value),live=el('alive').checked,paged=el('paged').checked;
  let rows=latents.filter(r=>{
    if(live&&r.dead)return false;if(paged&&!r.page)return false;
    if(text&&!(String(r.id)===text||String(r.top_emotion).toLowerCase().includes(text)||(r.sets||'').toLowerCase().includes(text)))return false;
    if(emo){const d=r['delta.'+s+'.'+emo];if(!isNaN(lo)&&!(d>=lo))return false;if(!isNaN(hi)&&!(d<hi))return false;}
    return true;});
  rows.sort((a,b)=>{let x=value(a,sortKey),y=value(b,sortKey);
    if(x===null||x===undefined)x=-Infinity;if(y===null||y===undefined)y=-Infinity;
    if(typeof x==='boolean'){x=+x;y=+y;}
    const c=typeof x==='string'?x.localeCompare(y):x-y;return (desc?-c:c)||a.id-b.id;});
  el('shown').textContent=rows.length+' of '+latents.length+' latents';
  el('head').innerHTML=cols.map(c=>'<th data-k="'+c[0]+'" class="'+(c[2]||'')+'">'+c[1]+(c[0]===sortKey?(desc?' ▾':' ▴'):'')+'</th>').join('');
  const shown=rows.slice(0,1000);
  el('body').innerHTML=shown.map(r=>'<tr class="'+(r.dead?'dead':'')+'">'+cols.map(c=>{
    let v=value(r,c[0]);if(c[0]==='id')v=r.page?'<a href="'+r.page+'">#'+r.id+'</a>':'#'+r.id;
    else if(c[0]==='top_emotion')v='<span class="swatch" style="background:'+(meta.colours[r.top_emotion]||'#999')+'"></span>'+r.top_emotion;
    else if(c[0]==='dead')v=r.dead?'dead':'';else if(c[0]==='sets')v=r.sets||'';else v=fmt(v);
    const sig=c[0].startsWith('q.')&&r[c[0]]!==null&&r[c[0]]<0.05;
    return '<td class="'+(c[2]||'')+(sig?' sig':'')+'">'+v+'</td>';}).join('')+'</tr>').join('')+
    (rows.length>shown.length?'<tr><td class="l" colspan="9">… '+(rows.length-shown.length)+' more: narrow the filter</td></tr>':'');
  document.querySelectorAll('#head th').forEach(th=>th.onclick=()=>{const k=th.dataset.k;
    if(k===sortKey)desc=!desc;else{sortKey=k;desc=true;}render();});
}
for(const id of ['score','emotion','filter','min','max','alive','paged'])el(id).addEventListener('input',render);
render();
})();
"""


def e(text: object) -> str:
    return html.escape(str(text), quote=True)


def page(title: str, body: str, footer: str, root: str, script: str = "") -> str:
    """A whole page; ``root`` is the relative path back to the site's top ("" or "../")."""
    nav = (f'<a href="{root}index.html">All latents</a>'
           f'<a href="{root}emotions.html">Emotions</a>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body><header><strong>emoctl atlas</strong> &nbsp; {nav}</header><main>{body}</main>'
            f'<footer>{footer}</footer>{f"<script>{script}</script>" if script else ""}</body></html>')


def json_script(element_id: str, data: Any) -> str:
    """Data for the page's script, in a JSON script element (``</`` escaped so no value can end the element)."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def table(header: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1, raw: bool = False) -> str:
    """A small static table; the first ``left`` columns are left-aligned; ``raw`` cells are trusted HTML."""
    cell = (lambda v: str(v)) if raw else e
    head = "".join(f'<th class="{"l" if i < left else ""}">{e(h)}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{cell(v)}</td>' for i, v in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def audio(src: str, label: str = "") -> str:
    return (f'<span class="muted">{e(label)}</span> ' if label else "") + \
        f'<audio controls preload="metadata" src="{e(src)}"></audio>'


def index_body(meta: dict[str, Any], latents: list[dict[str, Any]], map_svg: str, histograms: str,
               summary: str) -> str:
    emotion_options = "".join(f'<option value="{e(x)}">{e(x)}</option>' for x in meta["emotions"])
    score_options = "".join(f'<option value="{e(x)}">{e(x)}</option>' for x in meta["scores"])
    legend = " ".join(f'<span class="swatch" style="background:{c}"></span>{e(k)}'
                      for k, c in meta["colours"].items() if k in meta["emotions"])
    return f"""
<h1>SAE feature atlas</h1><p>{summary}</p>
<div class="grid"><div class="card" style="max-width:540px"><h2>Decoder directions (PCA)</h2>
<p class="muted">Each point is a latent's decoder direction, coloured by the emotion it rises most with
(grey: no emotion raises it). Click a point.</p>{map_svg}<p>{legend}</p></div>
<div class="card" style="max-width:700px"><h2>Δ by emotion</h2><p class="muted">Each bar links to its latents in the
table (log count axis).</p><div class="grid">{histograms}</div></div></div>
<h2>Every latent</h2>
<div class="controls">
<label>score <select id="score">{score_options}</select></label>
<label>emotion <select id="emotion"><option value="">any</option>{emotion_options}</select></label>
<label>Δ from <input id="min" type="number" step="0.01" style="width:70px"></label>
<label>to <input id="max" type="number" step="0.01" style="width:70px"></label>
<label>find <input id="filter" placeholder="latent id, emotion or set" style="width:160px"></label>
<label><input id="alive" type="checkbox"> hide dead</label>
<label><input id="paged" type="checkbox"> with a page only</label>
<span id="shown" class="muted"></span></div>
<p class="muted">Click a column to sort. Δ: mean over (emotion, neutral) pairs of the score's per-utterance
difference; q: Benjamini-Hochberg over latents; held-out Δ: measured on the half of the texts the selection
did not see; stability: share of bootstrap resamples keeping the latent in its set.</p>
<table id="latents"><thead><tr id="head"></tr></thead><tbody id="body"></tbody></table>
{json_script("atlas-meta", meta)}{json_script("atlas-latents", latents)}"""
