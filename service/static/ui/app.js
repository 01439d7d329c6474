// SimPool explorer: calls the public API (GET /models, POST /attention, /classify, /embed) exactly as a
// user's program would, and draws the answers. No framework, no build step, nothing from other hosts.
"use strict";

const KEY_STORAGE = "simpool-api-key"; // sessionStorage: the key lives as long as this tab
const TOP_K = 5;
// The service's heat-map ramp (blue → cyan → yellow → red), so the page and ?format=png look alike.
const STOPS = [0.0, 0.35, 0.65, 1.0];
const COLOURS = [[0, 0, 160], [0, 200, 255], [255, 230, 0], [220, 0, 0]];

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), modelInfo: $("model-info"), untrained: $("untrained"), files: $("files"), drop: $("drop"),
  opacity: $("opacity"), opacityValue: $("opacity-value"), showRequest: $("show-request"),
  keyForm: $("key-form"), key: $("api-key"), status: $("status"), alert: $("alert"),
  requests: $("requests"), requestsText: $("requests-text"), results: $("results"),
  similarity: $("similarity"), similarityTable: $("similarity-table"),
};

let models = [];
let currentFiles = [];
let runId = 0; // a newer run makes an older one's late answers irrelevant
let afterKey = null; // what to retry once the user gives a key
const shownRequests = []; // the current run's calls only

class ApiError extends Error {
  constructor(status, detail, retryAfter) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

// -- talking to the server --------------------------------------------------------------------

function apiUrl(path) {
  return new URL(path, document.baseURI).href; // relative: works behind a path prefix too
}

function shellQuote(text) {
  return `'${String(text).replace(/'/g, `'\\''`)}'`;
}

function curlFor(path, form) {
  const parts = ["curl -s", shellQuote(apiUrl(path))];
  if (sessionStorage.getItem(KEY_STORAGE)) parts.push('-H "Authorization: Bearer $SIMPOOL_API_KEY"');
  if (form) {
    for (const [name, value] of form.entries()) {
      parts.push("-F", shellQuote(value instanceof File ? `${name}=@${value.name}` : `${name}=${value}`));
    }
  }
  return parts.join(" ");
}

function showRequests() {
  ui.requestsText.textContent = shownRequests.join("\n\n");
}

function recordRequest(path, form) {
  shownRequests.push(curlFor(path, form));
  showRequests();
}

async function api(path, form) {
  recordRequest(path, form);
  const headers = {};
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(apiUrl(path), form ? { method: "POST", body: form, headers } : { headers });
  } catch (err) {
    throw new ApiError(0, `cannot reach the server (${err.message})`);
  }
  let body = null;
  if ((response.headers.get("content-type") || "").includes("json")) {
    body = await response.json().catch(() => null);
  }
  if (!response.ok) {
    throw new ApiError(response.status, body?.detail ?? response.statusText, response.headers.get("Retry-After"));
  }
  return body;
}

function explain(err) {
  const detail = err.detail || "no detail";
  switch (err.status) {
    case 0: return `The server cannot be reached: ${detail}.`;
    case 400: return `The server could not read an image: ${detail}.`;
    case 401: return "The server needs its API key.";
    case 404: return `Not found on the server (404): ${detail}.`;
    case 413: return `Too much for one request (413): ${detail}. Send fewer or smaller images.`;
    case 415: case 422: return `The server refused the request (${err.status}): ${detail}.`;
    case 503: {
      const wait = err.retryAfter ? `${err.retryAfter} s` : "a few seconds";
      return `The server is busy or still loading its models (503): ${detail}. Try again in ${wait}.`;
    }
    case 504: return `The server ran out of time (504): ${detail}. Try fewer images.`;
    default: return `The server answered ${err.status}: ${detail}.`;
  }
}

function showAlert(message) {
  ui.alert.textContent = message;
  ui.alert.hidden = !message;
}

function setStatus(message) {
  ui.status.textContent = message;
}

// Runs `task`; on 401 asks for the key and runs it again once given. Other errors are shown.
async function withKey(task) {
  try {
    await task();
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    if (err.status === 401) {
      askForKey(task, Boolean(sessionStorage.getItem(KEY_STORAGE)));
      return;
    }
    setStatus("");
    showAlert(explain(err));
    if (err.status === 503 && task === loadModels) {
      setTimeout(() => withKey(loadModels), 1000 * Math.min(30, Number(err.retryAfter) || 5));
    }
  }
}

function askForKey(retry, refused) {
  afterKey = retry;
  sessionStorage.removeItem(KEY_STORAGE);
  ui.keyForm.hidden = false;
  setStatus("");
  showAlert(refused ? "The server refused that API key (401). Enter the right one." : "The server needs its API key (401).");
  ui.key.value = "";
  ui.key.focus();
}

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.key.value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  ui.keyForm.hidden = true;
  showAlert("");
  const retry = afterKey;
  afterKey = null;
  if (retry) withKey(retry);
});

// -- models -----------------------------------------------------------------------------------

function selectedModel() {
  return models.find((m) => m.name === ui.model.value);
}

function describeModel() {
  const m = selectedModel();
  if (!m) return;
  const classes = m.num_classes > 0 ? `${m.num_classes} classes` : "no classifier";
  ui.modelInfo.textContent = `${m.arch}, ${m.input_size}×${m.input_size} input, ${m.grid[0]}×${m.grid[1]} ` +
    `attention grid, ${m.embedding_dim}-d embedding, ${classes}.`;
  describeWeights(m);
}

// An exported model with random weights answers, but its classes, boxes and similarities mean nothing:
// say so where the model is chosen, with the command that exports a trained one.
function describeWeights(m) {
  const untrained = String(m.weights || "").toLowerCase() === "random";
  ui.untrained.hidden = !untrained;
  if (!untrained) return;
  const command = `simpool-export --arch ${m.arch} --checkpoint PATH_OR_URL --name ${m.name} --out model_repository/${m.name}`;
  ui.untrained.replaceChildren(
    element("strong", "", `${m.name} is untrained (random weights).`),
    document.createTextNode(" Its classes, attention and similarities are noise, not what SimPool sees. " +
      "Export a trained checkpoint, then restart the server:"),
    element("code", "", command),
  );
}

async function loadModels() {
  setStatus("Loading the list of models…");
  const answer = await api("models");
  models = answer.models;
  ui.model.replaceChildren(...models.map((m) => {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.default ? `${m.name} (default)` : m.name;
    option.selected = m.default;
    return option;
  }));
  ui.model.disabled = false;
  describeModel();
  showAlert("");
  setStatus(`${models.length} model${models.length === 1 ? "" : "s"} served. Choose images to explore.`);
  if (currentFiles.length) withKey(analyse);
}

ui.model.addEventListener("change", () => {
  describeModel();
  if (currentFiles.length) withKey(analyse);
});

// -- geometry: where the model's centre crop lies on the photograph ---------------------------

function pythonRound(x) { // the service rounds as Python does: halves to the even neighbour
  return Math.abs(x % 1) === 0.5 ? 2 * Math.round(x / 2) : Math.round(x);
}

// Shorter side resized to `resize`, centre crop of `input_size`, as the service prepares images.
function cropOnOriginal(width, height, model) {
  const s = model.input_size;
  const [rw, rh] = width <= height
    ? [model.resize, Math.trunc(model.resize * height / width)]
    : [Math.trunc(model.resize * width / height), model.resize];
  const left = pythonRound((rw - s) / 2), top = pythonRound((rh - s) / 2);
  const sx = width / rw, sy = height / rh;
  return [left * sx, top * sy, (left + s) * sx, (top + s) * sy];
}

function place(element, [x0, y0, x1, y1], width, height) {
  element.style.setProperty("left", `${(100 * x0) / width}%`);
  element.style.setProperty("top", `${(100 * y0) / height}%`);
  element.style.setProperty("width", `${(100 * (x1 - x0)) / width}%`);
  element.style.setProperty("height", `${(100 * (y1 - y0)) / height}%`);
}

function heatColour(v) {
  let i = 0;
  while (i < STOPS.length - 2 && v > STOPS[i + 1]) i++;
  const t = Math.min(1, Math.max(0, (v - STOPS[i]) / (STOPS[i + 1] - STOPS[i])));
  return COLOURS[i].map((c, k) => Math.round(c + t * (COLOURS[i + 1][k] - c)));
}

// One canvas pixel per grid cell; the browser's smooth scaling upsamples it over the crop.
function drawHeat(canvas, map) {
  const h = map.length, w = map[0].length;
  const values = map.flat();
  const lo = Math.min(...values), hi = Math.max(...values);
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(w, h);
  values.forEach((v, i) => {
    const [r, g, b] = heatColour(hi > lo ? (v - lo) / (hi - lo) : 0);
    image.data.set([r, g, b, 255], 4 * i);
  });
  ctx.putImageData(image, 0, 0);
}

// -- one card per image -----------------------------------------------------------------------

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function makeCard(file, index) {
  const card = element("article", "card");
  card.dataset.state = "loading";
  card.setAttribute("aria-busy", "true");
  const title = element("h3", "", `${index + 1}. ${file.name}`);
  title.id = `card-title-${index}`;
  card.setAttribute("aria-labelledby", title.id);
  const view = element("div", "view");
  const img = element("img");
  img.alt = `Photograph ${index + 1}: ${file.name}`;
  img.src = URL.createObjectURL(file);
  const heat = element("canvas", "heat");
  heat.setAttribute("aria-hidden", "true");
  heat.hidden = true;
  const box = element("div", "box");
  box.setAttribute("role", "img");
  box.hidden = true;
  view.append(img, heat, box);
  const message = element("p", "message", "Waiting for the server…");
  const facts = element("dl", "facts");
  const classesTitle = element("h4", "", `Top ${TOP_K} classes`);
  classesTitle.hidden = true;
  const classes = element("ol", "classes");
  classes.setAttribute("aria-label", `Top ${TOP_K} classes of ${file.name}`);
  card.append(title, view, message, facts, classesTitle, classes);
  const loaded = new Promise((resolve) => {
    img.addEventListener("load", () => resolve(true), { once: true });
    img.addEventListener("error", () => resolve(false), { once: true });
  });
  return { card, img, heat, box, message, facts, classesTitle, classes, loaded, file };
}

function addFact(card, term, value, code = false) {
  const dt = element("dt", "", term);
  const dd = element("dd");
  dd.append(code ? element("code", "", value) : document.createTextNode(value));
  card.facts.append(dt, dd);
}

async function showAttention(card, model, map, box) {
  const shown = await card.loaded;
  const { naturalWidth: width, naturalHeight: height } = card.img;
  addFact(card, "Box", `x ${box[0]}–${box[2]}, y ${box[1]}–${box[3]} (of ${width}×${height} pixels)`);
  card.box.dataset.box = JSON.stringify(box);
  card.box.setAttribute("aria-label", `Attention box from (${box[0]}, ${box[1]}) to (${box[2]}, ${box[3]})`);
  if (!shown) return false;
  drawHeat(card.heat, map);
  place(card.heat, cropOnOriginal(width, height, model), width, height);
  place(card.box, box, width, height);
  card.heat.hidden = false;
  card.box.hidden = false;
  return true;
}

function showClasses(card, predictions) {
  card.classesTitle.hidden = false;
  card.classes.replaceChildren(...predictions.map((p) => {
    const item = element("li");
    const label = element("span", "label", p.label);
    const meter = element("meter");
    meter.min = 0;
    meter.max = 1;
    meter.value = p.score;
    meter.setAttribute("aria-label", `${p.label}: ${(100 * p.score).toFixed(1)} %`);
    item.append(label, meter, element("span", "score", `${(100 * p.score).toFixed(1)} %`));
    return item;
  }));
}

function finish(card, state, message) {
  card.card.dataset.state = state;
  card.card.removeAttribute("aria-busy");
  card.message.textContent = message;
  card.message.classList.toggle("error", state === "error");
}

// -- similarity -------------------------------------------------------------------------------

function showSimilarity(names, embeddings) {
  const table = ui.similarityTable;
  const caption = element("caption", "visually-hidden", "Cosine similarity between the images");
  const head = element("tr");
  head.append(element("th", "", ""), ...names.map((n, i) => {
    const th = element("th", "", `${i + 1}`);
    th.scope = "col";
    th.title = n;
    return th;
  }));
  const rows = names.map((name, i) => {
    const tr = element("tr");
    const th = element("th", "", `${i + 1}. ${name}`);
    th.scope = "row";
    tr.append(th, ...names.map((_, j) => {
      const a = embeddings[i], b = embeddings[j];
      if (!a || !b) return element("td", "none", "–");
      const cos = a.reduce((sum, x, k) => sum + x * b[k], 0); // both are L2-normalised by the server
      const td = element("td", "", cos.toFixed(3));
      td.style.setProperty("--sim", String(Math.max(0, cos)));
      return td;
    }));
    return tr;
  });
  table.replaceChildren(caption, element("thead"), element("tbody"));
  table.tHead.append(head);
  table.tBodies[0].append(...rows);
  ui.similarity.hidden = false;
}

// -- a run: one request per endpoint for all the images ---------------------------------------

function formFor(files, fields) {
  const form = new FormData();
  for (const file of files) form.append("images", file, file.name);
  for (const [name, value] of Object.entries(fields)) form.append(name, value);
  return form;
}

async function analyse() {
  const model = selectedModel();
  const files = currentFiles;
  if (!model || !files.length) return;
  const id = ++runId;
  shownRequests.length = 0; // "Show the request" shows this run's calls
  showAlert("");
  ui.similarity.hidden = true;
  const cards = files.map(makeCard);
  ui.results.replaceChildren(...cards.map((c) => c.card));
  setStatus(`Sending ${files.length} image${files.length === 1 ? "" : "s"} to ${model.name}…`);
  const fields = { model: model.name, on_error: "skip" };
  const calls = [api("attention", formFor(files, fields))];
  if (model.num_classes > 0) calls.push(api("classify", formFor(files, { ...fields, top_k: String(TOP_K) })));
  if (files.length > 1) calls.push(api("embed", formFor(files, fields)));
  let answers;
  try {
    answers = await Promise.all(calls);
  } catch (err) {
    if (id === runId) {
      for (const card of cards) finish(card, "error", "No answer for this image (see the message above).");
    }
    throw err;
  }
  if (id !== runId) return;
  const [attention, ...rest] = answers;
  const classify = model.num_classes > 0 ? rest.shift() : null;
  const embed = files.length > 1 ? rest.shift() : null;
  const failed = new Map(attention.errors.map((e) => [e.index, e.detail]));
  await Promise.all(cards.map(async (card, i) => {
    if (failed.has(i)) {
      finish(card, "error", `The server could not use this file: ${failed.get(i)}.`);
      return;
    }
    addFact(card, "Fingerprint", attention.fingerprint, true);
    const shown = await showAttention(card, model, attention.attention[i], attention.boxes[i]);
    if (classify && classify.predictions[i]) showClasses(card, classify.predictions[i]);
    finish(card, "done", shown ? "" : "Your browser cannot show this format; the server's answers are below.");
  }));
  if (embed) showSimilarity(files.map((f) => f.name), embed.embeddings);
  const bad = failed.size ? ` ${failed.size} could not be read.` : "";
  setStatus(`Done: ${files.length - failed.size} of ${files.length} image${files.length === 1 ? "" : "s"} explored with ${model.name}.${bad}`);
}

function useFiles(fileList) {
  currentFiles = Array.from(fileList);
  if (!currentFiles.length) return;
  withKey(analyse);
}

ui.files.addEventListener("change", () => useFiles(ui.files.files));
ui.drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  ui.drop.classList.add("over");
});
ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("over"));
ui.drop.addEventListener("drop", (event) => {
  event.preventDefault();
  ui.drop.classList.remove("over");
  useFiles(event.dataTransfer.files);
});

// -- display options --------------------------------------------------------------------------

function applyOpacity() {
  ui.results.style.setProperty("--heat-opacity", String(ui.opacity.value / 100));
  ui.opacityValue.textContent = `${ui.opacity.value} %`;
}

ui.opacity.addEventListener("input", applyOpacity);
ui.showRequest.addEventListener("change", () => { ui.requests.hidden = !ui.showRequest.checked; });

applyOpacity();
withKey(loadModels);
