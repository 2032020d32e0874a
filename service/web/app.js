// rsd-serve page: drop an image, upscale it, show before/after, offer the result for download.
// Small images go through POST /upscale; large ones through POST /jobs, with a progress bar fed by the
// job's Server-Sent Events (GET /jobs/{id}/events, read with fetch so that the API key header is sent).
"use strict";

// above this many input pixels the page uses /jobs and shows progress (a few model tiles and more)
const JOBS_ABOVE_PIXELS = 128 * 128;

const $ = (id) => document.getElementById(id);
let chosen = null;
let resultUrl = null;
let originalUrl = null;

$("apikey").value = localStorage.getItem("rsd-api-key") || "";

function apiHeaders() {
  const key = $("apikey").value.trim();
  return key ? { "X-API-Key": key } : {};
}

// the model picker: GET /models, the server's default first (serving.md "Models")
async function loadModels() {
  const response = await fetch("/models", { headers: apiHeaders() });
  if (!response.ok) return; // e.g. the API key is not entered yet: the server's default model is used
  const select = $("model");
  select.replaceChildren();
  for (const model of await response.json()) {
    const option = document.createElement("option");
    option.value = model.name;
    const steps = model.steps === 1 ? "one step" : `${model.steps} steps`;
    option.textContent = `${model.name} (${model.family}, ${steps})`;
    option.selected = model.default;
    select.append(option);
  }
}
loadModels();
$("apikey").addEventListener("change", loadModels);

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function choose(file) {
  if (!file) return;
  chosen = file;
  showError("");
  if (originalUrl) URL.revokeObjectURL(originalUrl);
  originalUrl = URL.createObjectURL(file);
  $("original").src = originalUrl;
  $("compare-before").src = originalUrl;
  $("go").disabled = false;
  $("status").textContent = `${file.name} (${Math.round(file.size / 1024)} kB) ready`;
  upscale();
}

const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  choose(event.dataTransfer.files[0]);
});
drop.addEventListener("click", (event) => { if (event.target === drop) $("file").click(); });
$("file").addEventListener("change", (event) => choose(event.target.files[0]));
$("options").addEventListener("submit", (event) => { event.preventDefault(); upscale(); });
$("slider").addEventListener("input", (event) => {
  $("compare-before-clip").style.width = `${event.target.value}%`;
});

async function upscale() {
  if (!chosen) return;
  const body = new FormData();
  body.append("image", chosen);
  const params = new URLSearchParams({ format: $("format").value });
  if ($("seed").value !== "") params.set("seed", $("seed").value);
  if ($("model").value) params.set("model", $("model").value);
  // 4 is the model's own scale: sent only when smaller (the server resizes the x4 result)
  if ($("outscale").value !== "" && Number($("outscale").value) < 4) params.set("outscale", $("outscale").value);
  localStorage.setItem("rsd-api-key", $("apikey").value.trim());
  const headers = apiHeaders();
  $("go").disabled = true;
  $("status").textContent = "Upscaling…";
  $("progress").hidden = true;
  showError("");
  const started = performance.now();
  try {
    const large = (await pixelsOf(chosen)) > JOBS_ABOVE_PIXELS;
    const response = large
      ? await viaJob(params, body, headers)
      : await fetch(`/upscale?${params}`, { method: "POST", body, headers });
    if (!response.ok) throw await errorOf(response);
    const blob = await response.blob();
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = URL.createObjectURL(blob);
    await showResult(response, blob, performance.now() - started);
  } catch (error) {
    showError(String(error.message || error));
    $("status").textContent = "";
  } finally {
    $("go").disabled = false;
  }
}

async function pixelsOf(file) {
  try {
    const bitmap = await createImageBitmap(file);
    const pixels = bitmap.width * bitmap.height;
    bitmap.close();
    return pixels;
  } catch (_) {
    return file.size > 256 * 1024 ? Infinity : 0; // a format the browser cannot decode (TIFF): judge by size
  }
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  try { message += `: ${(await response.json()).error.message}`; } catch (_) { /* not JSON */ }
  const retry = response.headers.get("Retry-After");
  if (retry) message += ` (retry after ${retry} s)`;
  return new Error(message);
}

async function viaJob(params, body, headers) {
  const created = await fetch(`/jobs?${params}`, { method: "POST", body, headers });
  if (!created.ok) throw await errorOf(created);
  const job = await created.json();
  showProgress(job);
  const final = await followEvents(job.id, headers);
  if (final.status !== "done") {
    throw new Error(`the job ended ${final.status}${final.error ? `: ${final.error.message}` : ""}`);
  }
  return fetch(`/jobs/${job.id}/result`, { headers });
}

async function followEvents(id, headers) {
  const response = await fetch(`/jobs/${id}/events`, { headers });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((line) => line.startsWith("data: ")).map((line) => line.slice(6)).join("\n");
      if (!data) continue;
      const event = JSON.parse(data);
      if (!event.status) throw new Error(event.error ? event.error.message : "the progress stream failed");
      last = event;
      showProgress(last);
    }
  }
  if (!last) throw new Error("the progress stream ended early");
  return last;
}

function showProgress(job) {
  const bar = $("progress");
  bar.hidden = false;
  bar.max = job.tiles_total;
  bar.value = job.tiles_done;
  const eta = job.eta_s == null || job.status !== "running" ? "" : ` · about ${Math.ceil(job.eta_s)} s left`;
  $("status").textContent = `${job.status}: ${job.tiles_done}/${job.tiles_total} tiles${eta}`;
}

function loaded(img, src) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the result could not be displayed"));
    img.src = src;
  });
}

async function showResult(response, blob, elapsedMs) {
  $("compare-section").hidden = false;
  const after = await loaded($("result"), resultUrl);
  await loaded($("compare-after"), resultUrl);
  const before = $("original");
  $("before-size").textContent = `${before.naturalWidth}×${before.naturalHeight}`;
  $("after-size").textContent = `${after.naturalWidth}×${after.naturalHeight}`;
  // the comparison shows the input stretched to the result's displayed size
  const shown = $("compare-after").getBoundingClientRect();
  $("compare-before").style.width = `${shown.width}px`;
  $("compare-before").style.height = `${shown.height}px`;
  const ext = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" }[blob.type] || "png";
  const stem = (chosen.name || "image").replace(/\.[^.]+$/, "");
  $("download").href = resultUrl;
  const scale = Number($("outscale").value) < 4 ? $("outscale").value : "4";
  $("download").download = `${stem}_x${scale}.${ext}`;
  const seed = response.headers.get("X-Seed");
  const timing = response.headers.get("Server-Timing") || "";
  $("details").textContent = `seed ${seed} · ${Math.round(elapsedMs)} ms · ${timing}`;
  $("status").textContent = "Done";
}
