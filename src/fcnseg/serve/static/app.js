// The fcnseg page: upload an image, draw it with its segmentation, read the class under the pointer.
// The server returns the palette label PNG; its colours map back to class indices through /v1/model's palette.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  model: $("model"), drop: $("drop"), file: $("file"), status: $("status"), error: $("error"),
  opacity: $("opacity"), opacityValue: $("opacity-value"), downloadLabels: $("download-labels"),
  downloadOverlay: $("download-overlay"), legend: $("legend"), canvas: $("canvas"), tip: $("tip"),
  hover: $("hover"), history: $("history"),
};
const ctx = els.canvas.getContext("2d");

const state = {
  model: null,          // GET /v1/model
  colourToClass: null,  // Map: (r << 16 | g << 8 | b) -> class index
  current: null,        // the result on screen
  results: [],          // every result of this session, newest first
  busy: false,
};

const rgbKey = (r, g, b) => (r << 16) | (g << 8) | b;
const stem = (name) => name.replace(/\.[^.]+$/, "") || "image";

function setStatus(text) { els.status.textContent = text; }
function showError(text) { els.error.textContent = text; els.error.hidden = !text; }

async function loadModel() {
  try {
    const resp = await fetch("/v1/model");
    if (!resp.ok) throw new Error(`${resp.status} ${resp.statusText}`);
    const m = await resp.json();
    state.model = m;
    state.colourToClass = new Map(m.palette.map((c, i) => [rgbKey(c[0], c[1], c[2]), i]));
    const miu = m.metrics && typeof m.metrics.mean_iu === "number"
      ? `, validation mean IU ${(100 * m.metrics.mean_iu).toFixed(1)}` : "";
    els.model.textContent = `Model ${m.name}: ${m.classes.length} classes${miu}; ${m.engine}, ${m.precision}.`;
  } catch (err) {
    showError(`Cannot read the model description: ${err.message}`);
  }
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return `${resp.status}: ${body.error}`;
  } catch (_) { /* not JSON: fall through */ }
  return `${resp.status}: ${resp.statusText || "request failed"}`;
}

// Decode the label PNG into class indices (Uint8Array, 255 = a colour outside the palette).
async function readLabels(blob) {
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const { width, height } = bitmap;
  const scratch = new OffscreenCanvas(width, height).getContext("2d", { willReadFrequently: true });
  scratch.drawImage(bitmap, 0, 0);
  const rgba = scratch.getImageData(0, 0, width, height).data;
  const labels = new Uint8Array(width * height);
  const counts = new Map();
  for (let p = 0, i = 0; p < labels.length; p++, i += 4) {
    const c = state.colourToClass.get(rgbKey(rgba[i], rgba[i + 1], rgba[i + 2]));
    const k = c === undefined ? 255 : c;
    labels[p] = k;
    counts.set(k, (counts.get(k) || 0) + 1);
  }
  return { bitmap, width, height, labels, counts };
}

async function segment(file) {
  if (state.busy || !file) return;
  if (!state.model) await loadModel();
  if (!state.model) return;
  state.busy = true;
  showError("");
  setStatus(`Segmenting ${file.name}…`);
  try {
    const form = new FormData();
    form.append("file", file, file.name);
    const t0 = performance.now();
    const resp = await fetch("/v1/segment?format=labels", { method: "POST", body: form });
    if (!resp.ok) {
      showError(`${file.name}: ${await errorText(resp)}`);
      setStatus("The server refused this image.");
      return;
    }
    const labelBlob = await resp.blob();
    const seconds = (performance.now() - t0) / 1000;
    const decoded = await readLabels(labelBlob);
    let image = null;
    try {
      image = await createImageBitmap(file);  // EXIF orientation applied, as the server does
    } catch (_) {
      setStatus("This browser cannot show the image itself; showing the labels alone.");
    }
    const result = { name: file.name, thumb: URL.createObjectURL(file), labelBlob, image, ...decoded };
    state.results.unshift(result);
    show(result);
    renderHistory();
    if (image) setStatus(`${file.name}: ${decoded.width}×${decoded.height}, ${seconds.toFixed(2)} s.`);
  } catch (err) {
    showError(`${file.name}: ${err.message}`);
    setStatus("Something went wrong.");
  } finally {
    state.busy = false;
    els.file.value = "";  // choosing the same file again fires "change" again
  }
}

function draw() {
  const r = state.current;
  if (!r) return;
  ctx.clearRect(0, 0, r.width, r.height);
  if (r.image) ctx.drawImage(r.image, 0, 0, r.width, r.height);
  ctx.globalAlpha = r.image ? Number(els.opacity.value) / 100 : 1;
  ctx.drawImage(r.bitmap, 0, 0);
  ctx.globalAlpha = 1;
}

function show(result) {
  state.current = result;
  els.canvas.width = result.width;
  els.canvas.height = result.height;
  els.canvas.setAttribute("aria-label", `${result.name} with its segmentation overlaid`);
  draw();
  renderLegend(result);
  for (const b of [els.opacity, els.downloadLabels, els.downloadOverlay]) b.disabled = false;
  els.downloadOverlay.disabled = !result.image;
  renderHistory();
}

function renderLegend(result) {
  const total = result.width * result.height;
  const rows = [...result.counts.entries()].sort((a, b) => b[1] - a[1]);
  els.legend.replaceChildren(...rows.map(([k, n]) => {
    const li = document.createElement("li");
    li.dataset.cls = String(k);
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const name = document.createElement("span");
    name.className = "name";
    const share = document.createElement("span");
    share.className = "share";
    if (k === 255) {
      swatch.style.background = "repeating-linear-gradient(45deg, #000 0 3px, #fff 3px 6px)";
      name.textContent = "(unknown colour)";
    } else {
      const [r, g, b] = state.model.palette[k];
      swatch.style.background = `rgb(${r}, ${g}, ${b})`;
      name.textContent = state.model.classes[k];
    }
    share.textContent = `${(100 * n / total).toFixed(1)}%`;
    li.append(swatch, name, share);
    return li;
  }));
}

function renderHistory() {
  els.history.replaceChildren(...state.results.map((r) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("aria-current", String(r === state.current));
    button.setAttribute("aria-label", `Show ${r.name} again`);
    const img = document.createElement("img");
    img.src = r.thumb;
    img.alt = "";
    button.append(img);
    button.addEventListener("click", () => show(r));
    li.append(button);
    return li;
  }));
}

function download(blob, filename) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

function pointerClass(event) {
  const r = state.current;
  const rect = els.canvas.getBoundingClientRect();
  const x = Math.floor((event.clientX - rect.left) * r.width / rect.width);
  const y = Math.floor((event.clientY - rect.top) * r.height / rect.height);
  if (x < 0 || y < 0 || x >= r.width || y >= r.height) return null;
  return { x, y, k: r.labels[y * r.width + x], left: event.clientX - rect.left, top: event.clientY - rect.top };
}

els.canvas.addEventListener("mousemove", (event) => {
  if (!state.current) return;
  const p = pointerClass(event);
  if (!p) return;
  const name = p.k === 255 ? "(unknown colour)" : state.model.classes[p.k];
  els.tip.textContent = name;
  els.tip.style.left = `${p.left}px`;
  els.tip.style.top = `${p.top}px`;
  els.tip.hidden = false;
  els.hover.textContent = `Under the pointer: ${name} at (${p.x}, ${p.y}).`;
  for (const li of els.legend.children) li.classList.toggle("active", li.dataset.cls === String(p.k));
});
els.canvas.addEventListener("mouseleave", () => {
  els.tip.hidden = true;
  for (const li of els.legend.children) li.classList.remove("active");
});

els.opacity.addEventListener("input", () => {
  els.opacityValue.textContent = `${els.opacity.value}%`;
  draw();
});
els.file.addEventListener("change", () => segment(els.file.files[0]));
els.downloadLabels.addEventListener("click", () => {
  const r = state.current;
  if (r) download(r.labelBlob, `${stem(r.name)}_labels.png`);
});
els.downloadOverlay.addEventListener("click", () => {
  const r = state.current;
  if (r) els.canvas.toBlob((blob) => download(blob, `${stem(r.name)}_overlay.png`), "image/png");
});
for (const type of ["dragenter", "dragover"]) {
  els.drop.addEventListener(type, (event) => { event.preventDefault(); els.drop.classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  els.drop.addEventListener(type, () => els.drop.classList.remove("over"));
}
els.drop.addEventListener("drop", (event) => {
  event.preventDefault();
  segment(event.dataTransfer.files[0]);
});

loadModel();
