// A thin client of the JSON API (/openapi.json): every action here is one fetch a script could make.
"use strict";
const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.hash.slice(1)).get("token") || localStorage.getItem("licsearch-token");
if (token) localStorage.setItem("licsearch-token", token);

async function api(path, options = {}) {
  options.headers = Object.assign({}, options.headers, token ? { Authorization: "Bearer " + token } : {});
  const r = await fetch(path, options);
  const body = (r.headers.get("content-type") || "").includes("json") ? await r.json() : null;
  if (!r.ok) throw new Error(body && body.error ? body.error.message : "request failed: HTTP " + r.status);
  return body;
}
async function blobUrl(path) {
  const r = await fetch(path, { headers: token ? { Authorization: "Bearer " + token } : {} });
  if (!r.ok) throw new Error("HTTP " + r.status);
  return URL.createObjectURL(await r.blob());
}
function show(which) { for (const id of ["grid", "detail", "stats"]) $(id).hidden = id !== which; }
function say(text, error = false) { $("message").textContent = text; $("message").className = error ? "error" : ""; }

function filters() {
  const f = [];
  if ($("f-from").value) f.push("taken>=" + $("f-from").value);
  if ($("f-to").value) f.push("taken<=" + $("f-to").value);
  if ($("f-camera").value.trim()) f.push("camera=" + $("f-camera").value.trim());
  if ($("f-width").value) f.push("width>=" + $("f-width").value);
  if ($("f-meta").value.trim()) f.push($("f-meta").value.trim());
  return f;
}

function render(doc) {
  show("grid");
  const grid = $("grid");
  grid.replaceChildren();
  if (!doc.hits.length) { say("No images match. Try other words or fewer filters."); return; }
  say(doc.hits.length + (doc.hits.length === 1 ? " result" : " results") + (doc.notices.length ? " — " + doc.notices.join("; ") : ""));
  for (const h of doc.hits) {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.id = h.id;
    const img = document.createElement("img");
    img.alt = h.payload.source_path || h.id;
    blobUrl("/api/images/" + h.id + "/preview").then((u) => { img.src = u; }, () => { img.alt = "preview failed"; });
    img.onclick = () => detail(h.id);
    const row = document.createElement("div");
    row.className = "row";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = h.score.toFixed(3);
    const like = document.createElement("a");
    like.href = "#";
    like.className = "like";
    like.textContent = "more like this";
    like.onclick = (e) => { e.preventDefault(); run({ like: h.id }); };
    row.append(score, like);
    card.append(img, row);
    grid.append(card);
  }
}

async function run(query) {
  say("Searching…");
  try { render(await api("/api/search", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(Object.assign({ filters: filters() }, query)) })); }
  catch (e) { show("grid"); $("grid").replaceChildren(); say(e.message, true); }
}

async function searchImage(file) {
  const form = new FormData();
  form.append("file", file);
  for (const f of filters()) form.append("filters", f);
  say("Searching by " + file.name + "…");
  try { render(await api("/api/search/image", { method: "POST", body: form })); }
  catch (e) { show("grid"); $("grid").replaceChildren(); say(e.message, true); }
}

async function detail(id) {
  try {
    const d = await api("/api/images/" + id);
    show("detail");
    say("");
    const box = $("detail");
    box.replaceChildren();
    const back = document.createElement("a"); back.href = "#"; back.textContent = "← back to results";
    back.onclick = (e) => { e.preventDefault(); show("grid"); };
    const img = document.createElement("img"); img.id = "full";
    img.src = await blobUrl("/api/images/" + id + "/image?format=png");
    const rows = [["id", d.id], ["size", d.width + " × " + d.height], ["bitstream bytes", d.bytes],
      ["bpp", d.bpp.toFixed(4)], ["source bytes", d.source_bytes ?? "unknown"],
      ["compression ratio", d.compression_ratio ? d.compression_ratio.toFixed(1) + " : 1" : "unknown"],
      ["embedding space", d.space_id]];
    for (const k of ["taken", "camera", "lens", "source_path"]) if (d.payload[k]) rows.push([k, d.payload[k]]);
    const table = document.createElement("table");
    for (const [k, v] of rows) { const tr = table.insertRow(); tr.insertCell().textContent = k; tr.insertCell().textContent = v; }
    const dl = document.createElement("p");
    dl.append("Download: ");
    for (const fmt of ["png", "jpeg", "webp"]) {
      const a = document.createElement("a"); a.textContent = fmt.toUpperCase() + " "; a.href = "#"; a.className = "dl-" + fmt;
      a.onclick = async (e) => { e.preventDefault(); const link = document.createElement("a");
        link.href = await blobUrl("/api/images/" + id + "/image?format=" + fmt + "&download=true");
        link.download = id + "." + fmt; link.click(); };
      dl.append(a);
    }
    box.append(back, img, table, dl);
  } catch (e) { say(e.message, true); }
}

async function stats() {
  try {
    const s = await api("/api/stats");
    show("stats"); say("");
    const t = document.createElement("table");
    const rows = [["images", s.images], ["bytes", s.bytes], ["mean bpp", s.mean_bpp.toFixed(4)],
      ["previews", s.previews + " (" + s.preview_bytes + " bytes)"], ["active space", s.space_id]];
    for (const sp of s.space_states) rows.push(["space " + sp.space_id, sp.state + ", " + sp.with_vector + " of " + sp.points + " vectors"]);
    for (const [k, v] of rows) { const tr = t.insertRow(); tr.insertCell().textContent = k; tr.insertCell().textContent = v; }
    $("stats").replaceChildren(t);
  } catch (e) { say(e.message, true); }
}

async function start() {
  try {
    const s = await api("/api/stats");
    if (s.images === 0) {
      $("grid").innerHTML = '<div id="empty"><h2>This store is empty</h2><p>Add images with ' +
        "<code>licsearch ingest --store " + s.store + " PHOTOS/</code>, then reload this page.</p></div>";
    } else say(s.images + " images in the store. Type what you are looking for, or drop an image.");
  } catch (e) { say(e.message, true); }
}

$("search-form").onsubmit = (e) => { e.preventDefault(); if ($("q").value.trim()) run({ text: $("q").value.trim() }); };
$("upload").onchange = () => { if ($("upload").files[0]) searchImage($("upload").files[0]); };
$("show-stats").onclick = (e) => { e.preventDefault(); stats(); };
document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
document.addEventListener("drop", (e) => { e.preventDefault(); document.body.classList.remove("dragging");
  if (e.dataTransfer.files[0]) searchImage(e.dataTransfer.files[0]); });
start();
