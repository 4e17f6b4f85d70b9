// fedmol scoring page: paste SMILES or pick a file, POST /v1/score?depict=true, show a sortable table.
"use strict";

const $ = (id) => document.getElementById(id);
let results = [];     // records as returned by the API
let columns = [];     // data columns shown after the depiction
let sortState = { column: null, dir: 1 };

$("token").value = sessionStorage.getItem("fedmol-token") || "";

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function requestBody() {
  const file = $("file").files[0];
  if (file) {
    const text = await file.text();
    if (file.name.toLowerCase().endsWith(".csv")) {
      return { body: text, type: "text/csv" };
    }
    return { body: JSON.stringify(parseLines(text)), type: "application/json" };
  }
  return { body: JSON.stringify(parseLines($("smiles").value)), type: "application/json" };
}

function parseLines(text) {
  const smiles = [], ids = [];
  for (const line of text.split(/\r?\n/)) {
    const parts = line.trim().split(/\s+/);
    if (!parts[0]) continue;
    smiles.push(parts[0]);
    ids.push(parts.length > 1 ? parts.slice(1).join(" ") : String(smiles.length));
  }
  return { smiles, ids };
}

async function score() {
  const token = $("token").value.trim();
  sessionStorage.setItem("fedmol-token", token);
  const { body, type } = await requestBody();
  setStatus("scoring…", false);
  $("score").disabled = true;
  try {
    const response = await fetch("/v1/score?depict=true", {
      method: "POST",
      headers: { "Authorization": "Bearer " + token, "Content-Type": type },
      body,
    });
    const payload = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = typeof payload.detail === "string" ? payload.detail : JSON.stringify(payload.detail);
      setStatus(`error ${response.status}: ${detail || response.statusText}`, true);
      return;
    }
    results = payload.results;
    columns = ["id", "canonical_smiles", "error", ...payload.columns];
    sortState = { column: null, dir: 1 };
    $("calibration").textContent = payload.calibration || "";
    let summary = `read ${payload.n_read}, scored ${payload.n_scored}, rejected ${payload.n_rejected}`;
    if (payload.n_depicted < payload.n_scored) summary += ` (structures drawn for the first ${payload.n_depicted})`;
    setStatus(summary, false);
    render();
    $("download").disabled = results.length === 0;
  } catch (err) {
    setStatus("request failed: " + err, true);
  } finally {
    $("score").disabled = false;
  }
}

function isNumeric(column) {
  return !["id", "smiles", "canonical_smiles", "error"].includes(column);
}

function format(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") return Math.abs(value) >= 1000 ? value.toFixed(0) : value.toPrecision(3);
  return String(value);
}

function render() {
  const table = $("results");
  const head = table.tHead.rows[0];
  head.replaceChildren();
  const structure = document.createElement("th");
  structure.textContent = "structure";
  head.appendChild(structure);
  for (const column of columns) {
    const th = document.createElement("th");
    th.textContent = column;
    th.dataset.column = column;
    if (sortState.column === column) th.className = sortState.dir > 0 ? "sorted-asc" : "sorted-desc";
    th.addEventListener("click", () => sortBy(column));
    head.appendChild(th);
  }
  const tbody = table.tBodies[0];
  tbody.replaceChildren();
  for (const record of results) {
    const tr = document.createElement("tr");
    const cell = document.createElement("td");
    if (record.svg) {
      const img = document.createElement("img");
      img.className = "depiction";
      img.alt = record.canonical_smiles;
      img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(record.svg);
      cell.appendChild(img);
    }
    tr.appendChild(cell);
    for (const column of columns) {
      const td = document.createElement("td");
      td.textContent = format(record[column]);
      if (isNumeric(column)) td.className = "num";
      if (column === "canonical_smiles") td.className = "smiles";
      if (column === "error" && record.error) td.className = "error";
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
  table.hidden = false;
}

function sortBy(column) {
  sortState.dir = sortState.column === column ? -sortState.dir : 1;
  sortState.column = column;
  const dir = sortState.dir;
  results.sort((a, b) => {
    const x = a[column], y = b[column];
    if (x === null || x === undefined || x === "") return 1;   // missing values last
    if (y === null || y === undefined || y === "") return -1;
    if (typeof x === "number" && typeof y === "number") return dir * (x - y);
    return dir * String(x).localeCompare(String(y));
  });
  render();
}

function csvCell(value) {
  if (value === null || value === undefined) return "";
  let text = String(value);
  // A spreadsheet would take text starting with = + - @ (or tab, CR) for a formula: the API's rule too.
  if (typeof value === "string" && /^[=+\-@\t\r]/.test(text)) text = "'" + text;
  return /[",\n\r]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
}

function download() {
  const header = ["index", "id", "smiles", "canonical_smiles", "error", ...columns.slice(3)];
  const lines = [header.join(",")];
  for (const record of results) lines.push(header.map((c) => csvCell(record[c])).join(","));
  const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "fedmol-predictions.csv";
  link.click();
  URL.revokeObjectURL(link.href);
}

$("score").addEventListener("click", score);
$("download").addEventListener("click", download);
