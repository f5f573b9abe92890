// The SAS-VPReID console: search by example and browse the gallery through the public API.
//
// Rules this file keeps (see service/ui/__init__.py):
// - everything from the server is put in the page with textContent, never as HTML, so an identity
//   named "<img src=x onerror=...>" is shown as those characters;
// - the API key lives in this tab's sessionStorage and travels only in the X-API-Key header (never
//   in a URL, so no access log, history entry or Referer carries it);
// - thumbnails are fetched with the key and shown from blob: URLs, because an <img src> request
//   cannot carry a header.
"use strict";

(() => {
  const KEY_STORAGE = "sasreid.apiKey";
  const PAGE_SIZE = 50;
  const THUMB_SIZE = 96;
  const THUMBS_PER_TRACKLET = 8;
  const THUMB_FETCHES_AT_ONCE = 4; // the server decodes 2 at a time by default; more only queue

  const $ = (id) => document.getElementById(id);

  // ---- small DOM helpers: text only ---------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("data-")) node.setAttribute(name, value);
      else node[name] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  const fmtScore = (x) => (typeof x === "number" ? x.toFixed(3) : "");
  const fmtMs = (x) => `${x.toFixed(1)} ms`;
  const fmtTime = (epoch) => new Date(epoch * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  const seg = (s) => encodeURIComponent(s);

  // ---- the API -------------------------------------------------------------------------------
  class ApiFailure extends Error {
    constructor(status, detail) {
      const code = detail && detail.error ? detail.error : `http_${status}`;
      const message = detail && detail.message ? detail.message : `the server answered ${status}`;
      super(`${message} (${status} ${code})`);
      this.status = status;
      this.code = code;
    }
  }

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  async function api(method, path, options = {}) {
    const headers = new Headers();
    const key = options.key !== undefined ? options.key : apiKey();
    if (key) headers.set("X-API-Key", key);
    let body = options.body;
    if (options.json !== undefined) {
      headers.set("Content-Type", "application/json");
      body = JSON.stringify(options.json);
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body, credentials: "omit", referrerPolicy: "no-referrer" });
    } catch (err) {
      throw new ApiFailure(0, { error: "network_error", message: `the server did not answer (${err.message})` });
    }
    if (!response.ok) {
      let detail = null;
      try {
        detail = (await response.json()).detail;
      } catch (_) {
        detail = null;
      }
      throw new ApiFailure(response.status, detail);
    }
    return response;
  }

  const getJson = async (path) => (await api("GET", path)).json();

  // ---- banner and status -----------------------------------------------------------------------
  function showError(err) {
    const banner = $("banner");
    banner.textContent = err instanceof ApiFailure ? err.message : `error: ${err}`;
    banner.hidden = false;
  }

  function hideError() {
    $("banner").hidden = true;
  }

  // ---- server facts (/stats) -------------------------------------------------------------------
  const server = { stats: null };

  async function loadStats() {
    server.stats = await getJson("/v1/stats");
    return server.stats;
  }

  function framesKept() {
    return Boolean(server.stats && server.stats.keep_frames);
  }

  const NO_FRAMES_SERVER =
    "No pictures: this server was started without --keep-frames (SASREID_KEEP_FRAMES), so it does not " +
    "store uploaded frames and has none to show. Restart it with --keep-frames; tracklets enrolled from " +
    "then on get thumbnails.";

  function framesNotice(node) {
    node.textContent = NO_FRAMES_SERVER;
    node.hidden = framesKept();
  }

  // ---- API key ---------------------------------------------------------------------------------
  async function checkKey() {
    const status = $("key-status");
    try {
      await loadStats();
      status.textContent = apiKey() ? "key accepted" : "no key needed (auth is off on this server)";
      status.className = "key-status ok";
      return true;
    } catch (err) {
      server.stats = null;
      if (err.status === 401) {
        status.textContent = apiKey() ? "key refused" : "enter an API key";
      } else {
        status.textContent = err.message;
      }
      status.className = "key-status bad";
      return false;
    }
  }

  function setupKeyForm() {
    $("key-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = $("api-key");
      const value = input.value.trim();
      if (value) sessionStorage.setItem(KEY_STORAGE, value);
      input.value = ""; // the key is kept in sessionStorage only, not in the page
      hideError();
      if (await checkKey()) route();
    });
    $("key-forget").addEventListener("click", async () => {
      sessionStorage.removeItem(KEY_STORAGE);
      thumbs.forget();
      await checkKey();
      route();
    });
  }

  // ---- thumbnails ------------------------------------------------------------------------------
  const thumbs = {
    records: new Map(), // tracklet id -> Promise of its record
    urls: new Map(), // "id/index" -> Promise of a blob: URL, or null when the frame is not kept
    queue: [],
    running: 0,

    forget() {
      for (const p of this.urls.values()) p.then((url) => url && URL.revokeObjectURL(url)).catch(() => {});
      this.records.clear();
      this.urls.clear();
    },

    schedule(task) {
      return new Promise((resolve, reject) => {
        this.queue.push({ task, resolve, reject });
        this.pump();
      });
    },

    pump() {
      while (this.running < THUMB_FETCHES_AT_ONCE && this.queue.length) {
        const { task, resolve, reject } = this.queue.shift();
        this.running += 1;
        task()
          .then(resolve, reject)
          .finally(() => {
            this.running -= 1;
            this.pump();
          });
      }
    },

    record(id) {
      if (!this.records.has(id)) {
        const p = getJson(`/v1/tracklets/${seg(id)}`);
        p.catch(() => this.records.delete(id));
        this.records.set(id, p);
      }
      return this.records.get(id);
    },

    url(id, index) {
      const cacheKey = `${id}/${index}`;
      if (!this.urls.has(cacheKey)) {
        const p = this.schedule(async () => {
          try {
            const response = await api("GET", `/v1/tracklets/${seg(id)}/frames/${index}?size=${THUMB_SIZE}`);
            return URL.createObjectURL(await response.blob());
          } catch (err) {
            if (err.status === 404 && err.code === "frames_not_kept") return null;
            throw err;
          }
        });
        p.catch(() => this.urls.delete(cacheKey));
        this.urls.set(cacheKey, p);
      }
      return this.urls.get(cacheKey);
    },
  };

  function spread(count, most) {
    if (count <= most) return [...Array(count).keys()];
    return [...Array(most).keys()].map((i) => Math.round((i * (count - 1)) / (most - 1)));
  }

  // Fills `strip` with thumbnails of a gallery tracklet, or a line saying why there are none.
  async function fillStrip(strip, trackletId, numFrames) {
    clear(strip);
    if (!framesKept()) {
      strip.append(el("span", { class: "no-frames", text: "no pictures (frames are not kept on this server)" }));
      return;
    }
    try {
      const count = numFrames !== undefined ? numFrames : (await thumbs.record(trackletId)).num_frames;
      const indices = spread(count, THUMBS_PER_TRACKLET);
      if (!indices.length) {
        strip.append(el("span", { class: "no-frames", text: "no frames kept for this tracklet" }));
        return;
      }
      const images = indices.map((i) => {
        // No alt text until the picture is there: a half-loaded strip should not fill with words.
        const img = el("img", { class: "thumb", alt: "", title: `frame ${i}` });
        strip.append(img);
        return [i, thumbs.url(trackletId, i), img]; // all requested now; the queue bounds the fetches
      });
      for (const [i, pending, img] of images) {
        const url = await pending;
        if (url === null) {
          clear(strip);
          strip.append(
            el("span", {
              class: "no-frames",
              text: "no frames kept for this tracklet (enrolled while frames were not kept, or imported as a descriptor)",
            }),
          );
          return;
        }
        img.alt = `frame ${i} of ${trackletId}`;
        img.src = url;
      }
    } catch (err) {
      clear(strip);
      strip.append(el("span", { class: "no-frames", text: `pictures unavailable: ${err.message}` }));
    }
  }

  // ---- search ----------------------------------------------------------------------------------
  const search = { files: [] };

  function setFiles(files) {
    search.files = [...files].sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
    const preview = $("query-preview");
    for (const img of preview.querySelectorAll("img")) URL.revokeObjectURL(img.src);
    clear(preview);
    for (const file of search.files.slice(0, 16)) {
      preview.append(el("img", { class: "thumb", alt: file.name, title: file.name, src: URL.createObjectURL(file) }));
    }
    const n = search.files.length;
    $("frames-chosen").textContent = n ? `${n} frame${n === 1 ? "" : "s"} chosen, in name order` : "";
  }

  function mode() {
    return $("mode-tracklet-radio").checked ? "tracklet" : "upload";
  }

  function showMode() {
    $("mode-upload").hidden = mode() !== "upload";
    $("mode-tracklet").hidden = mode() !== "tracklet";
  }

  function options() {
    const out = {
      top_k: Number($("top-k").value) || 10,
      rerank: $("rerank").checked,
      aggregate: $("aggregate").value,
      exclude_same_camera: $("exclude-same-camera").checked,
    };
    for (const [field, id] of [["platform", "platform"], ["camera", "camera"], ["query_camera", "query-camera"]]) {
      const value = $(id).value.trim();
      if (value) out[field] = value;
    }
    // The created-at range [since, until): the picker gives the browser's local time, sent as
    // unix seconds so the server never has to guess a time zone.
    for (const field of ["since", "until"]) {
      const value = $(field).value;
      if (value) out[field] = new Date(value).getTime() / 1000;
    }
    return out;
  }

  async function runSearch() {
    hideError();
    const opts = options();
    let response;
    const status = $("search-status");
    if (mode() === "tracklet") {
      const id = $("query-tracklet").value.trim();
      if (!id) return showError("enter the id of an enrolled tracklet");
      status.textContent = `searching with tracklet ${id}…`;
      response = api("POST", "/v1/query", { json: { tracklet_id: id, ...opts } });
    } else {
      if (!search.files.length) return showError("choose or drop the frames of the query tracklet first");
      const form = new FormData();
      for (const [field, value] of Object.entries(opts)) form.append(field, String(value));
      for (const file of search.files) form.append("frames", file, file.name);
      status.textContent = `searching with ${search.files.length} uploaded frames…`;
      response = api("POST", "/v1/query", { body: form });
    }
    clear($("search-results"));
    $("search-timings").textContent = "";
    try {
      const answer = await (await response).json();
      if (!server.stats) await loadStats(); // whether thumbnails can be shown
      status.textContent = `${answer.results.length} identities${answer.reranked ? ", re-ranked" : ""}`;
      renderResults(answer);
    } catch (err) {
      status.textContent = "";
      showError(err);
    }
  }

  function renderResults(answer) {
    const t = answer.timings_ms;
    $("search-timings").textContent =
      `decode ${fmtMs(t.decode)} · embed ${fmtMs(t.embed)} · search ${fmtMs(t.search)} · ` +
      `re-rank ${fmtMs(t.rerank)} · total ${fmtMs(t.total)}`;
    framesNotice($("search-frames-notice"));
    const list = $("search-results");
    for (const result of answer.results) {
      const rows = result.tracklets.map((t) => {
        const strip = el("div", { class: "strip" });
        fillStrip(strip, t.tracklet_id);
        return el(
          "tr",
          { class: "tracklet-row", "data-tracklet": t.tracklet_id },
          el("td", { class: "mono", text: t.tracklet_id }),
          el("td", { class: "num", text: fmtScore(t.score) }),
          el("td", { text: t.camera || "" }),
          el("td", { text: t.platform || "" }),
          el("td", {}, strip),
        );
      });
      const table = el(
        "table",
        { class: "tracklet-table" },
        el("thead", {}, el("tr", {}, ...["tracklet", "score", "camera", "platform", "frames"].map((h) => el("th", { text: h })))),
        el("tbody", {}, ...rows),
      );
      list.append(
        el(
          "li",
          { class: "result", "data-identity": result.identity },
          el(
            "div",
            { class: "result-head" },
            el("span", { class: "rank", text: `#${result.rank}` }),
            el("a", { class: "identity-link name", href: `#/identity/${seg(result.identity)}`, text: result.identity }),
            el("span", { class: "score", text: `score ${fmtScore(result.score)}` }),
          ),
          table,
        ),
      );
    }
  }

  function setupSearch() {
    for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", showMode);
    $("frames").addEventListener("change", (event) => setFiles(event.target.files));
    const zone = $("drop-zone");
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      setFiles(event.dataTransfer.files);
    });
    $("search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      runSearch();
    });
  }

  function searchWithTracklet(id) {
    $("mode-tracklet-radio").checked = true;
    $("query-tracklet").value = id;
    showMode();
    location.hash = "#/search";
    runSearch();
  }

  // ---- confirmation --------------------------------------------------------------------------
  function confirmDelete(text) {
    const dialog = $("confirm-dialog");
    $("confirm-text").textContent = text;
    return new Promise((resolve) => {
      const done = (answer) => {
        $("confirm-ok").removeEventListener("click", ok);
        $("confirm-cancel").removeEventListener("click", cancel);
        dialog.removeEventListener("cancel", cancel);
        dialog.close();
        resolve(answer);
      };
      const ok = () => done(true);
      const cancel = (event) => {
        if (event) event.preventDefault();
        done(false);
      };
      $("confirm-ok").addEventListener("click", ok);
      $("confirm-cancel").addEventListener("click", cancel);
      dialog.addEventListener("cancel", cancel);
      dialog.showModal();
    });
  }

  // ---- gallery ---------------------------------------------------------------------------------
  function renderStats(stats) {
    const dl = $("stats");
    clear(dl);
    const items = [
      ["identities", stats.identities],
      ["tracklets", stats.tracklets],
      ["indexed", stats.indexed_tracklets],
      ["model fingerprint", stats.fingerprint],
      ["encoder", `${stats.backend} on ${stats.device}, ${stats.dim}-d`],
      ["index", stats.index],
      ["store", stats.store],
      ["frames kept", stats.keep_frames ? "yes (thumbnails available)" : "no (started without --keep-frames)"],
    ];
    for (const [name, value] of items) dl.append(el("dt", { text: name }), el("dd", { text: String(value) }));
  }

  async function showGallery(offset, current) {
    const [stats, page] = await Promise.all([loadStats(), getJson(`/v1/identities?offset=${offset}&limit=${PAGE_SIZE}`)]);
    if (!current()) return;
    renderStats(stats);
    const body = $("identities").querySelector("tbody");
    clear(body);
    for (const item of page.items) {
      body.append(
        el(
          "tr",
          { "data-identity": item.identity },
          el("td", {}, el("a", { class: "identity-link name", href: `#/identity/${seg(item.identity)}`, text: item.identity })),
          el("td", { class: "num", text: String(item.tracklets) }),
        ),
      );
    }
    const last = Math.min(page.offset + page.items.length, page.total);
    $("page-info").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "the gallery is empty";
    $("page-prev").disabled = page.offset === 0;
    $("page-next").disabled = last >= page.total;
    $("page-prev").onclick = () => (location.hash = `#/gallery/${Math.max(0, page.offset - PAGE_SIZE)}`);
    $("page-next").onclick = () => (location.hash = `#/gallery/${page.offset + PAGE_SIZE}`);
  }

  // ---- identity --------------------------------------------------------------------------------
  async function showIdentity(identity, current) {
    $("identity-name").textContent = identity;
    const list = $("identity-tracklets");
    clear(list);
    $("identity-count").textContent = "";
    if (!server.stats) await loadStats();
    let answer;
    try {
      answer = await getJson(`/v1/identities/${seg(identity)}`);
    } catch (err) {
      if (!current()) return;
      if (err.status === 404) {
        $("identity-count").textContent = "no tracklet of this identity is stored";
        $("identity-delete").hidden = true;
        return;
      }
      throw err;
    }
    if (!current()) return; // another page was asked for meanwhile
    framesNotice($("identity-frames-notice"));
    clear(list);
    $("identity-delete").hidden = false;
    const n = answer.tracklets.length;
    $("identity-count").textContent = `${n} tracklet${n === 1 ? "" : "s"}`;
    $("identity-delete").onclick = async () => {
      if (!(await confirmDelete(`Delete identity "${identity}" and all its ${n} tracklet(s)? This cannot be undone.`))) return;
      try {
        await api("DELETE", `/v1/identities/${seg(identity)}`);
        location.hash = "#/gallery";
      } catch (err) {
        showError(err);
      }
    };
    for (const t of answer.tracklets) {
      const strip = el("div", { class: "strip" });
      const facts = el("dl", { class: "facts" });
      const meta = Object.keys(t.metadata || {}).length ? JSON.stringify(t.metadata, null, 1) : "";
      for (const [name, value] of [
        ["camera", t.camera],
        ["platform", t.platform],
        ["session", t.session],
        ["frames", t.num_frames],
        ["enrolled", fmtTime(t.created_at)],
        ["metadata", meta],
      ]) {
        if (value === null || value === undefined || value === "") continue;
        facts.append(el("dt", { text: name }), el("dd", { class: name === "metadata" ? "mono" : "", text: String(value) }));
      }
      const searchButton = el("button", { type: "button", class: "search-tracklet", text: "Search with this tracklet" });
      searchButton.addEventListener("click", () => searchWithTracklet(t.tracklet_id));
      const deleteButton = el("button", { type: "button", class: "danger delete-tracklet", text: "Delete tracklet…" });
      deleteButton.addEventListener("click", async () => {
        if (!(await confirmDelete(`Delete tracklet "${t.tracklet_id}" of "${identity}"? This cannot be undone.`))) return;
        try {
          await api("DELETE", `/v1/tracklets/${seg(t.tracklet_id)}`);
          thumbs.records.delete(t.tracklet_id);
          await route();
        } catch (err) {
          showError(err);
        }
      });
      list.append(
        el(
          "li",
          { class: "tracklet", "data-tracklet": t.tracklet_id },
          el("h3", { class: "mono", text: t.tracklet_id }),
          facts,
          strip,
          el("div", { class: "buttons" }, searchButton, deleteButton),
        ),
      );
      fillStrip(strip, t.tracklet_id, t.num_frames);
    }
  }

  // ---- routing (#/search, #/gallery[/offset], #/identity/<name>) -------------------------------
  // Every route() gets a generation number; a render whose generation is no longer the latest
  // stops before touching the page, so two quick navigations never mix their content. The body's
  // data-generation / data-routed attributes let a driving script wait for the page to settle.
  let generation = 0;

  async function route() {
    const mine = ++generation;
    const current = () => mine === generation;
    document.body.dataset.generation = String(mine);
    const hash = location.hash || "#/search";
    const parts = hash.slice(2).split("/");
    const page = ["search", "gallery", "identity"].includes(parts[0]) ? parts[0] : "search";
    for (const name of ["search", "gallery", "identity"]) $(`page-${name}`).hidden = name !== page;
    $("nav-search").classList.toggle("active", page === "search");
    $("nav-gallery").classList.toggle("active", page !== "search");
    hideError();
    try {
      if (page === "gallery") await showGallery(Math.max(0, parseInt(parts[1] || "0", 10) || 0), current);
      if (page === "identity") await showIdentity(decodeURIComponent(parts.slice(1).join("/")), current);
    } catch (err) {
      if (current()) showError(err);
    } finally {
      if (current()) document.body.dataset.routed = String(mine);
    }
  }

  async function start() {
    setupKeyForm();
    setupSearch();
    showMode();
    window.addEventListener("hashchange", route);
    await checkKey();
    await route();
    document.body.dataset.ready = "1"; // for scripts that drive the page (service/ui/walkthrough.py)
  }

  start();
})();
