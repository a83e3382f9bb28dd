// The LiteEmbed admin page: every number on it comes from the JSON API, called with the admin
// key the user typed (kept in sessionStorage, so it lives as long as this tab and is never put
// in a URL). Names and errors are user data: they only ever go into textContent.
"use strict";

const KEY_STORAGE = "liteembed.adminKey";
const PAGE_SIZE = 50;
const BUSY_POLL_MS = 1000; // while a class is queued or training: live progress
const IDLE_POLL_MS = 5000;

const state = {
  offset: 0,
  status: "",
  files: [],
  negatives: [], // "not this": images of look-alikes the class must not take
  thumbnails: new Map(), // class id -> Promise of an object URL (or null)
  timer: null,
  refreshes: 0,
  deleting: null,
  vocabulary: false, // the model's words, loaded once the model answers
};

const $ = (id) => document.getElementById(id);

class AuthError extends Error {}

function adminKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set("Authorization", `Bearer ${adminKey()}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 || response.status === 403) {
    const detail = await detailOf(response);
    askForKey(response.status === 403 ? "This is not an admin key." : `Key refused: ${detail}`);
    throw new AuthError(detail);
  }
  if (!response.ok) {
    throw new Error(await detailOf(response));
  }
  return response;
}

async function detailOf(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    return JSON.stringify(body.detail ?? body);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// --- the key -------------------------------------------------------------------------------

function askForKey(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  clearTimeout(state.timer);
  $("sign-out").hidden = true;
  $("key-error").textContent = message || "";
  if (!$("key-dialog").open) $("key-dialog").showModal();
  $("key-input").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("key-input").value.trim();
  if (!value) return;
  sessionStorage.setItem(KEY_STORAGE, value);
  $("key-input").value = "";
  $("key-dialog").close();
  $("sign-out").hidden = false;
  refresh();
});

// Escape must not leave the page without a key.
$("key-dialog").addEventListener("cancel", (event) => {
  if (!adminKey()) event.preventDefault();
});

$("sign-out").addEventListener("click", () => askForKey(""));

// --- the class table -----------------------------------------------------------------------

async function refresh() {
  clearTimeout(state.timer);
  if (!adminKey()) return;
  const mine = ++state.refreshes; // a newer refresh makes this one's answer stale
  let busy = false;
  try {
    const params = new URLSearchParams({ limit: PAGE_SIZE, offset: state.offset });
    if (state.status) params.set("status", state.status);
    const page = await (await api(`/v1/classes?${params}`)).json();
    if (mine !== state.refreshes) return;
    if (page.items.length === 0 && state.offset > 0) {
      state.offset = Math.max(0, state.offset - PAGE_SIZE);
      refresh();
      return;
    }
    renderClasses(page);
    busy = page.items.some((c) => c.status === "queued" || c.status === "training");
    $("list-error").textContent = "";
  } catch (error) {
    if (error instanceof AuthError) return;
    if (mine !== state.refreshes) return;
    $("list-error").textContent = `Could not load the classes: ${error.message}`;
  }
  serviceState();
  if (!state.vocabulary) loadVocabulary();
  state.timer = setTimeout(refresh, busy ? BUSY_POLL_MS : IDLE_POLL_MS);
}

// Hints must be words the model knows: offer those that start with the hint being typed, as
// suggestions and as buttons that put one in.
const VOCABULARY_SHOWN = 200;

async function loadVocabulary(prefix = "") {
  try {
    const params = new URLSearchParams({ prefix, limit: VOCABULARY_SHOWN });
    const vocabulary = await (await api(`/v1/vocabulary?${params}`)).json();
    const list = $("vocabulary-list");
    const buttons = $("vocabulary-words");
    list.replaceChildren();
    buttons.replaceChildren();
    for (const word of vocabulary.words) {
      list.append(element("option", { value: word }));
      const button = element("button", { type: "button", className: "quiet word" }, word);
      button.addEventListener("click", () => addHint(word));
      buttons.append(button);
    }
    const more = vocabulary.total - vocabulary.words.length;
    if (more > 0) buttons.append(element("span", {}, `… and ${more} more: type to narrow`));
    state.vocabulary = true;
  } catch {
    // The model is still loading (or the key was refused): the next refresh tries again.
  }
}

let vocabularyTimer = null;
$("reg-hints").addEventListener("input", () => {
  clearTimeout(vocabularyTimer);
  const typed = $("reg-hints").value.split(",").pop().trim();
  vocabularyTimer = setTimeout(() => loadVocabulary(typed), 150);
});

function addHint(word) {
  // The word replaces the hint being typed (the text after the last comma).
  const chosen = $("reg-hints").value.split(",").slice(0, -1).map((w) => w.trim());
  const kept = chosen.filter((w) => w && w !== word);
  $("reg-hints").value = [...kept, word].join(", ");
}

async function serviceState() {
  const target = $("service-state");
  try {
    const response = await fetch("/readyz");
    const body = await response.json();
    target.textContent = response.ok
      ? `model ${body.checks.model} · ready`
      : `not ready: ${body.detail}`;
    target.className = response.ok ? "muted" : "error";
  } catch (error) {
    target.textContent = `service unreachable: ${error.message}`;
    target.className = "error";
  }
}

function element(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function renderClasses(page) {
  const rows = page.items.map(classRow);
  $("class-rows").replaceChildren(...rows);
  if (rows.length === 0) {
    const empty = element("td", { colSpan: 7, className: "muted empty" }, "No classes yet.");
    $("class-rows").append(element("tr", {}, empty));
  }
  const what = state.status ? `${state.status} ` : "";
  $("total").textContent = `${page.total} ${what}${page.total === 1 ? "class" : "classes"}`;
  const first = page.items.length ? state.offset + 1 : 0;
  $("page-info").textContent = `${first}–${state.offset + page.items.length} of ${page.total}`;
  $("prev-page").disabled = state.offset === 0;
  $("next-page").disabled = state.offset + page.items.length >= page.total;
  // Thumbnails of classes no longer listed are let go.
  const shown = new Set(page.items.map((c) => c.id));
  for (const [id, url] of state.thumbnails) {
    if (!shown.has(id)) {
      state.thumbnails.delete(id);
      url.then((u) => u && URL.revokeObjectURL(u));
    }
  }
}

function classRow(c) {
  const image = element("img", { className: "thumb", alt: c.name, width: 56, height: 56 });
  thumbnail(c.id).then((url) => {
    if (url) image.src = url;
  });
  const name = element(
    "td",
    {},
    element("div", { className: "name" }, c.name),
    element("div", { className: "muted mono" }, c.id),
    element("div", { className: "muted small" }, `tenant ${c.tenant}`),
  );
  const created = element("td", { title: c.created_at }, new Date(c.created_at).toLocaleString());
  const hints = element("td", {}, c.hints.join(", ") || "—");
  if (c.confusers.length) {
    hints.append(element("div", { className: "muted" }, `not: ${c.confusers.join(", ")}`));
  }
  const remove = element("button", { type: "button", className: "danger small" }, "Delete");
  remove.addEventListener("click", () => confirmDelete(c));
  const row = element(
    "tr",
    {},
    element("td", {}, image),
    name,
    statusCell(c),
    hints,
    created,
    element("td", { className: "mono" }, c.model),
    element("td", {}, remove),
  );
  row.dataset.id = c.id;
  row.dataset.status = c.status;
  return row;
}

function statusCell(c) {
  const cell = element("td", {}, element("span", { className: `badge ${c.status}` }, c.status));
  if (c.status === "queued" || c.status === "training") {
    const percent = Math.round(c.progress * 100);
    cell.append(
      element(
        "div",
        { className: "progress" },
        element("progress", { max: 1, value: c.progress }),
        element("span", { className: "muted" }, `${percent} %`),
      ),
    );
  }
  if (c.status === "failed" && c.error) {
    cell.append(element("div", { className: "error small-text" }, c.error));
  }
  if (c.status === "ready" && typeof c.threshold === "number") {
    const title = "raw cosine at or above which a prediction of this class is accepted";
    const accepts = `accepts ≥ ${c.threshold.toFixed(3)}`;
    cell.append(element("div", { className: "muted small", title }, accepts));
  }
  for (const item of c.impact || []) cell.append(impactLine(item));
  return cell;
}

// What happened between this class and another when it became ready: it took some of the other's
// exemplars, or the other took some of its own; whether the other was re-learned beside it (and
// how many are still taken).
function impactLine(item) {
  let text =
    item.direction === "taken_by"
      ? `${item.name} took ${item.taken}/${item.of} of its images`
      : `took ${item.taken}/${item.of} of ${item.name}`;
  if (item.relearned) {
    const known = item.remaining !== null && item.remaining !== undefined;
    text += ` · re-learned${known ? `, ${item.remaining} left` : ""}`;
  }
  const still = item.relearned ? item.remaining || 0 : item.taken;
  const className = `impact small${still ? " warn" : ""}`;
  return element("div", { className, title: item.class_id }, text);
}

function thumbnail(id) {
  if (!state.thumbnails.has(id)) {
    const url = api(`/v1/classes/${encodeURIComponent(id)}/thumbnail?size=112`)
      .then((response) => response.blob())
      .then((blob) => URL.createObjectURL(blob))
      .catch(() => null);
    state.thumbnails.set(id, url);
  }
  return state.thumbnails.get(id);
}

$("status-filter").addEventListener("change", (event) => {
  state.status = event.target.value;
  state.offset = 0;
  refresh();
});
$("prev-page").addEventListener("click", () => {
  state.offset = Math.max(0, state.offset - PAGE_SIZE);
  refresh();
});
$("next-page").addEventListener("click", () => {
  state.offset += PAGE_SIZE;
  refresh();
});

// --- delete, after a confirmation ------------------------------------------------------------

function confirmDelete(c) {
  state.deleting = c;
  $("delete-name").textContent = c.name;
  $("delete-dialog").returnValue = "";
  $("delete-dialog").showModal();
}

$("delete-dialog").addEventListener("close", async () => {
  const c = state.deleting;
  state.deleting = null;
  if (!c || $("delete-dialog").returnValue !== "delete") return;
  try {
    await api(`/v1/classes/${encodeURIComponent(c.id)}`, { method: "DELETE" });
    $("list-error").textContent = "";
  } catch (error) {
    if (!(error instanceof AuthError)) {
      $("list-error").textContent = `Could not delete ${c.name}: ${error.message}`;
    }
  }
  refresh();
});

// --- register, from dropped or chosen images --------------------------------------------------

function words(text) {
  return text
    .split(",")
    .map((w) => w.trim())
    .filter(Boolean);
}

function message(text, isError = false) {
  $("reg-message").textContent = text;
  $("reg-message").className = isError ? "error" : "ok";
}

function addFiles(files, list = state.files) {
  const refused = [];
  for (const file of files) {
    if (file.type && !file.type.startsWith("image/")) refused.push(file.name);
    else list.push(file);
  }
  renderChosen();
  message(refused.length ? `Not images, left out: ${refused.join(", ")}` : "", refused.length > 0);
}

function renderChosen() {
  renderFiles(state.files, "chosen");
  renderFiles(state.negatives, "chosen-negatives");
}

function renderFiles(files, listId) {
  for (const img of $(listId).querySelectorAll("img")) URL.revokeObjectURL(img.src);
  const items = files.map((file, index) => {
    const drop = element("button", { type: "button", className: "quiet small", title: "remove" }, "×");
    drop.addEventListener("click", () => {
      files.splice(index, 1);
      renderChosen();
    });
    return element(
      "li",
      {},
      element("img", { src: URL.createObjectURL(file), alt: file.name }),
      element("span", { className: "muted" }, file.name),
      drop,
    );
  });
  $(listId).replaceChildren(...items);
}

const dropZone = $("drop-zone");
dropZone.addEventListener("click", () => $("reg-files").click());
dropZone.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    $("reg-files").click();
  }
});
for (const type of ["dragenter", "dragover"]) {
  dropZone.addEventListener(type, (event) => {
    event.preventDefault();
    dropZone.classList.add("over");
  });
}
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("over");
  addFiles(event.dataTransfer.files);
});
$("reg-files").addEventListener("change", (event) => {
  addFiles(event.target.files);
  event.target.value = "";
});
$("reg-negatives").addEventListener("change", (event) => {
  addFiles(event.target.files, state.negatives);
  event.target.value = "";
});

function clearForm() {
  $("register-form").reset();
  state.files = [];
  state.negatives = [];
  renderChosen();
}

$("reg-clear").addEventListener("click", () => {
  clearForm();
  message("");
});

$("register-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (state.files.length === 0) {
    message("Add at least one image.", true);
    return;
  }
  const form = new FormData();
  const name = $("reg-name").value.trim();
  form.append("name", name);
  for (const hint of words($("reg-hints").value)) form.append("hints", hint);
  for (const confuser of words($("reg-confusers").value)) form.append("confusers", confuser);
  for (const file of state.files) form.append("images", file, file.name);
  for (const file of state.negatives) form.append("negative_images", file, file.name);
  $("reg-submit").disabled = true;
  message("Uploading…");
  try {
    const created = await (await api("/v1/classes", { method: "POST", body: form })).json();
    clearForm();
    message(`Registered ${created.name}: ${created.status}.`);
    refresh();
  } catch (error) {
    if (!(error instanceof AuthError)) message(error.message, true);
  } finally {
    $("reg-submit").disabled = false;
  }
});

// --- start ---------------------------------------------------------------------------------

if (adminKey()) {
  $("sign-out").hidden = false;
  refresh();
} else {
  askForKey("");
}
