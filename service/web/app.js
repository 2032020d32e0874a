// rsd-serve page: drop an image, POST /upscale, show before/after, offer the result for download.
"use strict";

const $ = (id) => document.getElementById(id);
let chosen = null;
let resultUrl = null;
let originalUrl = null;

$("apikey").value = localStorage.getItem("rsd-api-key") || "";

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
  const headers = {};
  const key = $("apikey").value.trim();
  localStorage.setItem("rsd-api-key", key);
  if (key) headers["X-API-Key"] = key;
  $("go").disabled = true;
  $("status").textContent = "Upscaling…";
  showError("");
  const started = performance.now();
  try {
    const response = await fetch(`/upscale?${params}`, { method: "POST", body, headers });
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try { message += `: ${(await response.json()).error.message}`; } catch (_) { /* not JSON */ }
      const retry = response.headers.get("Retry-After");
      if (retry) message += ` (retry after ${retry} s)`;
      throw new Error(message);
    }
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
  $("download").download = `${stem}_x4.${ext}`;
  const seed = response.headers.get("X-Seed");
  const timing = response.headers.get("Server-Timing") || "";
  $("details").textContent = `seed ${seed} · ${Math.round(elapsedMs)} ms · ${timing}`;
  $("status").textContent = "Done";
}
