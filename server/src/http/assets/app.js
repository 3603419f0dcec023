// Baton dashboard: one ES module, no framework, no build step, nothing
// fetched from anywhere but this broker. Pages are hash routes; live data
// comes from server-sent events (/api/v1/overview/events and
// /api/v1/chains/{id}/events) and the JSON API (docs/http.md).

const $ = (sel, root = document) => root.querySelector(sel);
const main = $("#main");
const live = $("#live");

/** Builds an element: h("a", {href: "#"}, "text", child, ...). Text is
 * always set as text, never parsed as HTML. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Shows the page: children may be nested arrays, with nulls left out. */
function show(...children) {
  main.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

function announce(text, error = false) {
  live.textContent = text;
  live.classList.toggle("error", error);
}

/** Calls the JSON API; throws {code, message} on an error answer. */
async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { code: "UNKNOWN", message: text }; }
  if (!res.ok) {
    const err = new Error((data && data.message) || res.statusText);
    err.code = (data && data.code) || String(res.status);
    throw err;
  }
  return data;
}

async function act(label, fn) {
  try {
    const out = await fn();
    announce(label);
    return out;
  } catch (e) {
    announce(`${e.code || "ERROR"}: ${e.message}`, true);
    return null;
  }
}

function confirmDialog(title, text, yes) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-yes").textContent = yes;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
    $("#confirm-no").focus();
  });
}

// ---------------------------------------------------------------- format

const short = (s) => (s || "").replace(/^(CHAIN_STATE_|STEP_STATE_|PHASE_|DEDUP_)/, "");
const badge = (state) => h("span", { class: `badge s-${short(state)}` }, short(state).toLowerCase().replace("_", " "));

/** A rate as it is written: "10/s", "3/10s", with its burst when more than 1. */
function rateText(r) {
  const units = [[86400000, "d"], [3600000, "h"], [60000, "m"], [1000, "s"], [1, "ms"]];
  const [size, unit] = units.find(([size]) => r.period_ms % size === 0);
  const n = r.period_ms / size;
  return `${r.count}/${n === 1 ? "" : n}${unit}${r.burst > 1 ? ` burst ${r.burst}` : ""}`;
}

function ms(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1000) return `${Math.round(n)} ms`;
  if (n < 60_000) return `${(n / 1000).toFixed(1)} s`;
  if (n < 3_600_000) return `${Math.floor(n / 60_000)} min ${Math.round((n % 60_000) / 1000)} s`;
  return `${(n / 3_600_000).toFixed(1)} h`;
}
function when(t) {
  if (!t) return "–";
  const d = new Date(t);
  return d.toLocaleString();
}
function ago(t) { return t ? `${ms(Date.now() - t)} ago` : "–"; }

/** A JSON value, folded in a <details> when long. */
function value(v, label) {
  if (v === null || v === undefined) return h("span", { class: "muted" }, "null");
  const oneLine = JSON.stringify(v);
  if (oneLine.length <= 120) return h("code", {}, oneLine);
  const text = JSON.stringify(v, null, 2);
  return h("details", {},
    h("summary", {}, `${label}: ${oneLine.slice(0, 60)}${oneLine.length > 60 ? "…" : ""} (${text.length} chars)`),
    h("pre", {}, text));
}

function chainLink(id) {
  return h("a", { href: `#/chains/${id}`, class: "mono" }, id.slice(0, 8) + "…" + id.slice(-4));
}

// ---------------------------------------------------------------- charts

/** An SVG line chart of one or more series (arrays of numbers), with an
 * accessible name that says what it shows and its latest values. */
function chart(label, series) {
  const W = 300, H = 70;
  const all = series.flatMap((s) => s.points).filter((x) => x !== null);
  const max = Math.max(1, ...all);
  const n = Math.max(2, ...series.map((s) => s.points.length));
  const latest = series.map((s) => `${s.name} ${fmt(s.points[s.points.length - 1])}`).join(", ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${label}, last hour; now: ${latest}; peak ${fmt(max)}`);
  const axis = document.createElementNS(svg.namespaceURI, "line");
  Object.entries({ x1: 0, y1: H - 1, x2: W, y2: H - 1, class: "axis" }).forEach(([k, v]) => axis.setAttribute(k, v));
  svg.append(axis);
  for (const s of series) {
    const pts = s.points.map((y, i) => y === null ? null : `${(i / (n - 1)) * W},${H - 2 - (y / max) * (H - 6)}`).filter(Boolean);
    const line = document.createElementNS(svg.namespaceURI, "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("class", s.cls);
    svg.append(line);
  }
  return h("figure", { class: "panel", style: "margin:0" },
    h("figcaption", {}, h("strong", {}, label), " ", h("span", { class: "muted" }, `(peak ${fmt(max)})`)),
    svg,
    h("div", { class: "legend", "aria-hidden": "true" },
      series.map((s) => h("span", {}, h("i", { class: s.cls, style: `background:var(--${{ a: "accent", b: "ok", c: "bad" }[s.cls]})` }), `${s.name}: ${fmt(s.points[s.points.length - 1])}`))));
}
function fmt(x) {
  if (x === null || x === undefined) return "–";
  return Number.isInteger(x) ? String(x) : x.toFixed(1);
}

// ---------------------------------------------------------------- feeds

/** The overview feed, shared by the pages that show the broker now. */
const feed = {
  source: null, history: [], frame: null, listeners: new Set(),
  start() {
    if (this.source) return;
    this.source = new EventSource("/api/v1/overview/events");
    this.source.addEventListener("history", (e) => { this.history = JSON.parse(e.data).samples; });
    this.source.addEventListener("sample", (e) => {
      this.frame = JSON.parse(e.data);
      const last = this.history[this.history.length - 1];
      if (!last || last.t !== this.frame.sample.t) this.history.push(this.frame.sample);
      if (this.history.length > 1800) this.history.shift();
      for (const f of this.listeners) f(this.frame);
    });
    this.source.onerror = () => announce("Live feed interrupted; reconnecting…", true);
    this.source.onopen = () => { if (live.classList.contains("error")) announce("Live feed connected"); };
  },
  on(f) { this.start(); this.listeners.add(f); if (this.frame) f(this.frame); return () => this.listeners.delete(f); },
};

let cleanup = [];
function onLeave(f) { cleanup.push(f); }

/** Replaces the rows of `tbody` keyed by `key`, leaving alone a row that
 * holds the focus (an input being edited, a button about to be pressed). */
function renderRows(tbody, items, key, row) {
  const focused = document.activeElement;
  const existing = new Map([...tbody.children].map((tr) => [tr.dataset.key, tr]));
  const rows = items.map((item) => {
    const k = key(item);
    const old = existing.get(k);
    if (old && old.contains(focused)) return old;
    const tr = row(item);
    tr.dataset.key = k;
    return tr;
  });
  tbody.replaceChildren(...rows);
  if (!items.length) {
    tbody.append(h("tr", {}, h("td", { colspan: 20, class: "empty" }, "None right now.")));
  }
}

function table(caption, headers) {
  const tbody = h("tbody");
  const t = h("table", {},
    h("caption", { class: "muted", style: "text-align:left" }, caption),
    h("thead", {}, h("tr", {}, headers.map((x) => typeof x === "string"
      ? h("th", { scope: "col" }, x)
      : h("th", { scope: "col", class: x.cls }, x.t)))),
    tbody);
  return { el: h("div", { class: "scroll" }, t), tbody };
}

// ---------------------------------------------------------------- pages

const pages = {
  async overview() {
    show(h("h1", {}, "Overview"), h("p", { class: "muted" }, "Waiting for the first sample…"));
    onLeave(feed.on((frame) => renderOverview(frame)));
  },

  async chains(params) {
    const form = h("form", { class: "filters", role: "search", "aria-label": "Find chains" },
      h("label", {}, "Chain id or idempotency key", h("input", { name: "q", type: "search", value: params.get("q") || "", size: 38 })),
      h("label", {}, "State", h("select", { name: "state" },
        ["CHAIN_STATE_FAILED", "CHAIN_STATE_RUNNING", "CHAIN_STATE_SUCCEEDED", "CHAIN_STATE_CANCELLED"].map((s) =>
          h("option", { value: s, selected: params.get("state") === s }, short(s).toLowerCase())))),
      h("label", {}, "Task name", h("input", { name: "task", value: params.get("task") || "" })),
      h("label", {}, "Queue", h("input", { name: "queue", value: params.get("queue") || "", size: 12 })),
      h("label", {}, "Created since", h("input", { name: "since", type: "datetime-local", value: params.get("since") || "" })),
      h("button", { type: "submit", class: "primary" }, "Find"));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const q = new URLSearchParams();
      for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
      location.hash = `#/chains?${q}`;
    });
    const results = h("div", { "aria-live": "polite" });
    show(h("h1", {}, "Chains"), form, results,
      h("p", { class: "note" }, "Running chains are listed newest first by creation, ended ones by when they ended (failed ones until requeued); any chain is found by its id or idempotency key."));
    await listChains(params, results, "");
  },

  async chain(params, id) {
    show(h("h1", {}, "Chain ", h("span", { class: "mono" }, id)), h("p", {}, "Loading…"));
    let chain = null;
    try { chain = await api("GET", `/api/v1/chains/${id}`); } catch (e) {
      show(h("h1", {}, "Chain"), h("p", { class: "live error" }, `${e.code}: ${e.message}`));
      return;
    }
    renderChain(chain);
    const source = new EventSource(`/api/v1/chains/${id}/events`);
    source.onmessage = null;
    const kinds = ["snapshot", "submitted", "step_started", "step_succeeded", "step_retrying", "step_polling", "step_failed",
      "step_lost", "step_ready", "step_throttled", "step_scheduled", "step_waiting", "chain_succeeded", "chain_failed", "chain_cancelled"];
    // Each event carries the whole chain, its history included.
    const handler = (e) => renderChain(JSON.parse(e.data).chain);
    kinds.forEach((k) => source.addEventListener(k, handler));
    source.onerror = () => source.close(); // the stream ends with the chain
    // Any other kind still arrives: EventSource has no wildcard, so poll
    // the record too while the chain runs.
    const poll = setInterval(async () => {
      if (source.readyState !== EventSource.CLOSED) return;
      try { renderChain(await api("GET", `/api/v1/chains/${id}`)); } catch { /* shown on the next try */ }
    }, 3000);
    onLeave(() => { source.close(); clearInterval(poll); });
  },

  async queues() {
    const { el, tbody } = table("Every queue with work in it, or paused", [
      "Queue", { t: "Ready", cls: "num" }, { t: "Running", cls: "num" }, { t: "Delayed", cls: "num" },
      { t: "Throttled", cls: "num" }, "Oldest ready", "State", "Actions"]);
    const pauseForm = h("form", { class: "filters", "aria-label": "Pause a queue by name" },
      h("label", {}, "Queue name", h("input", { name: "queue", required: true, pattern: "[A-Za-z0-9_.:\\-]{1,64}" })),
      h("button", { type: "submit" }, "Pause queue"));
    pauseForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const q = new FormData(pauseForm).get("queue");
      await act(`Queue ${q} paused`, () => api("POST", `/api/v1/queues/${encodeURIComponent(q)}/pause`));
    });
    show(h("h1", {}, "Queues"), el, h("h2", {}, "Pause a queue without work yet"), pauseForm);
    onLeave(feed.on((frame) => renderRows(tbody, frame.now.queues, (q) => q.name, (q) => h("tr", {},
      h("th", { scope: "row" }, h("span", { class: "mono" }, q.name),
        q.unserved_tasks.length ? h("div", { class: "note" }, `no worker runs: ${q.unserved_tasks.join(", ")}`) : null),
      h("td", { class: "num" }, q.ready), h("td", { class: "num" }, q.running), h("td", { class: "num" }, q.delayed),
      h("td", { class: "num" }, q.throttled), h("td", {}, q.ready ? ms(q.oldest_ready_age_ms) : "–"),
      h("td", {}, q.paused ? h("span", { class: "badge s-paused" }, "paused") : h("span", { class: "badge s-SUCCEEDED" }, "active")),
      h("td", {}, h("div", { class: "actions" },
        q.paused
          ? h("button", { type: "button", "aria-label": `Resume queue ${q.name}`, onclick: () => act(`Queue ${q.name} resumed`, () => api("POST", `/api/v1/queues/${encodeURIComponent(q.name)}/resume`)) }, "Resume")
          : h("button", { type: "button", "aria-label": `Pause queue ${q.name}`, onclick: () => act(`Queue ${q.name} paused`, () => api("POST", `/api/v1/queues/${encodeURIComponent(q.name)}/pause`)) }, "Pause"),
        h("button", { type: "button", class: "danger", "aria-label": `Purge queue ${q.name}`, onclick: async () => {
          if (await confirmDialog(`Purge queue ${q.name}?`, `Every chain with a task waiting (READY) in ${q.name} is cancelled: ${q.ready} now. Running, delayed and throttled tasks are left alone. This cannot be undone.`, "Purge")) {
            await act(`Queue ${q.name} purged`, async () => { const r = await api("POST", `/api/v1/queues/${encodeURIComponent(q.name)}/purge`, { reason: "purged from the dashboard" }); announce(`${r.cancelled} chains cancelled`); return r; });
          }
        } }, "Purge")))))));
  },

  async workers() {
    const { el, tbody } = table("Connected worker streams", ["Worker", "Queues", "Task names", { t: "Running", cls: "num" }, { t: "Concurrency", cls: "num" }, "Connected", "State", "Actions"]);
    show(h("h1", {}, "Workers"), el);
    onLeave(feed.on((frame) => renderRows(tbody, frame.now.workers, (w) => w.worker_id, (w) => h("tr", {},
      h("th", { scope: "row" }, w.worker_name || "(unnamed)", h("div", { class: "note mono" }, w.worker_id)),
      h("td", {}, w.queues.join(", ")),
      h("td", {}, w.task_names.length > 6 ? h("details", {}, h("summary", {}, `${w.task_names.length} tasks`), w.task_names.join(", ")) : w.task_names.join(", ")),
      h("td", { class: "num" }, w.in_flight.length), h("td", { class: "num" }, w.concurrency + (w.prefetch ? ` (+${w.prefetch})` : "")),
      h("td", {}, ago(w.connected_unix_ms)),
      h("td", {}, w.draining ? h("span", { class: "badge s-draining" }, "draining") : h("span", { class: "badge s-SUCCEEDED" }, "taking work")),
      h("td", {}, h("button", { type: "button", disabled: w.draining, "aria-label": `Drain worker ${w.worker_name}`, onclick: async () => {
        if (await confirmDialog(`Drain ${w.worker_name}?`, "It takes no new work and finishes what it runs; every stream with this name is drained.", "Drain")) {
          await act(`Worker ${w.worker_name} draining`, () => api("POST", `/api/v1/workers/${encodeURIComponent(w.worker_id)}/drain`));
        }
      } }, "Drain"))))));
  },

  async throttles() {
    const { el, tbody } = table("Throttle identities with holders, waiters or an admin limit", [
      "Identity", "Limit", { t: "Holders", cls: "num" }, "Held by", { t: "Waiters", cls: "num" }, "Waiting, first served first"]);
    const setForm = h("form", { class: "filters", "aria-label": "Set a throttle limit" },
      h("label", {}, "Task name (empty for a shared key)", h("input", { name: "task_name" })),
      h("label", {}, "Key", h("input", { name: "key", placeholder: "*" })),
      h("label", {}, "Limit (0 clears)", h("input", { name: "limit", type: "number", min: 0, required: true, class: "limit" })),
      h("button", { type: "submit" }, "Set limit"));
    setForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = new FormData(setForm);
      await act("Limit set", () => api("PUT", "/api/v1/throttles/limit", { identity: { task_name: f.get("task_name"), key: f.get("key") }, limit: Number(f.get("limit")) }));
    });
    show(h("h1", {}, "Throttles"), el,
      h("p", { class: "note" }, "Waiters are served first in, first out (one that cannot start now, for want of a worker, is passed over, not dropped); the first 20 are listed."),
      h("h2", {}, "Set a limit for another identity"), setForm);
    const name = (t) => `${t.identity.task_name || "(shared)"} / ${t.identity.key}`;
    onLeave(feed.on((frame) => renderRows(tbody, frame.now.throttles, (t) => `${t.identity.task_name}\u0000${t.identity.key}`, (t) => {
      const input = h("input", { type: "number", min: 1, value: t.limit, class: "limit", "aria-label": `Limit of ${name(t)}` });
      const save = async () => {
        const limit = Number(input.value);
        if (!(limit >= 1)) { announce("A limit is at least 1", true); return; }
        await act(`Limit of ${name(t)} set to ${limit}`, () => api("PUT", "/api/v1/throttles/limit", { identity: t.identity, limit }));
        input.blur();
      };
      input.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); save(); } if (e.key === "Escape") { input.value = t.limit; input.blur(); } });
      // A rate alone limits no holders at once (its limit reads 0).
      const full = t.limit > 0 && t.holders.length >= t.limit;
      return h("tr", {},
        h("th", { scope: "row" }, h("span", { class: "mono" }, name(t)), full ? h("div", {}, h("span", { class: "badge s-paused" }, "at its limit")) : null),
        h("td", {}, h("div", { class: "actions" }, input,
          h("button", { type: "button", onclick: save, "aria-label": `Save limit of ${name(t)}` }, "Save"),
          t.limit_overridden ? h("button", { type: "button", "aria-label": `Clear the admin limit of ${name(t)}`, onclick: () => act(`Limit of ${name(t)} cleared`, () => api("PUT", "/api/v1/throttles/limit", { identity: t.identity, limit: 0 })) }, "Clear") : null),
          h("div", { class: "note" }, t.limit === 0 ? "no limit at once" : t.limit_overridden ? "set by an admin" : "declared"),
          t.rate ? h("div", { class: "note" }, `rate ${rateText(t.rate)} (${t.rate_overridden ? "set by an admin" : "declared"})`) : null),
        h("td", { class: "num" }, t.holders.length),
        h("td", {}, t.holders.length ? h("ul", { style: "margin:0;padding-left:1rem" }, t.holders.map((x) =>
          h("li", {}, `${x.kind} `, x.chain_id ? chainLink(x.chain_id) : "", x.worker ? ` on ${x.worker}` : "", ` for ${ms(Date.now() - x.since_unix_ms)}`))) : "–"),
        h("td", { class: "num" }, t.waiters),
        h("td", {}, t.first_waiters.length ? h("ol", { class: "waiters", "aria-label": `Waiters of ${name(t)}, in order` }, t.first_waiters.map((x) =>
          h("li", {}, `${x.kind} `, x.chain_id ? chainLink(x.chain_id) : "", ` for ${ms(Date.now() - x.since_unix_ms)}`)),
          t.waiters > t.first_waiters.length ? h("li", { class: "muted" }, `and ${t.waiters - t.first_waiters.length} more`) : null) : "–"));
    })));
  },

  async dead() {
    const { el, tbody } = table("Failed chains not requeued, newest failure first", [
      h("span", { class: "sr" }, "Select"), "Chain", "Failed task", "Error", "Failed at", "Actions"]);
    const selected = new Set();
    const requeueSelected = h("button", { type: "button", class: "primary", disabled: true, onclick: async () => {
      const ids = [...selected];
      const r = await act(`Requeue of ${ids.length} chains sent`, () => api("POST", "/api/v1/dead/requeue", { chain_ids: ids }));
      if (r) {
        const bad = r.chains.filter((c) => c.error);
        announce(`${r.chains.length - bad.length} chains requeued${bad.length ? `; ${bad.length} failed: ${bad[0].error.message}` : ""}`, bad.length > 0);
        selected.clear();
        await refresh();
      }
    } }, "Requeue selected");
    const selectAll = h("input", { type: "checkbox", "aria-label": "Select every chain on this page" });
    show(h("h1", {}, "Dead chains"),
      h("div", { class: "actions" }, h("label", {}, selectAll, " Select all"), requeueSelected), el);
    let chains = [];
    const sync = () => { requeueSelected.disabled = selected.size === 0; requeueSelected.textContent = `Requeue selected (${selected.size})`; };
    selectAll.addEventListener("change", () => {
      for (const c of chains) selectAll.checked ? selected.add(c.chain_id) : selected.delete(c.chain_id);
      tbody.querySelectorAll("input[type=checkbox]").forEach((b) => { b.checked = selectAll.checked; });
      sync();
    });
    const refresh = async () => {
      try { chains = (await api("GET", "/api/v1/dead?page_size=100")).chains; } catch (e) { announce(`${e.code}: ${e.message}`, true); return; }
      for (const id of [...selected]) if (!chains.some((c) => c.chain_id === id)) selected.delete(id);
      renderRows(tbody, chains, (c) => c.chain_id, (c) => {
        const f = c.failure || {};
        const box = h("input", { type: "checkbox", checked: selected.has(c.chain_id), "aria-label": `Select chain ${c.chain_id}` });
        box.addEventListener("change", () => { box.checked ? selected.add(c.chain_id) : selected.delete(c.chain_id); sync(); });
        return h("tr", {},
          h("td", {}, box),
          h("th", { scope: "row" }, chainLink(c.chain_id)),
          h("td", {}, f.task_name || "–", h("div", { class: "note" }, short(f.phase || "").toLowerCase(), ` step ${f.step_index ?? "–"}, attempt ${f.attempt ?? "–"}`)),
          h("td", {}, h("strong", {}, f.error_type || ""), " ", f.message || ""),
          h("td", {}, when(c.finished_unix_ms)),
          h("td", {}, h("button", { type: "button", "aria-label": `Requeue chain ${c.chain_id}`, onclick: async () => {
            const r = await act(`Chain requeued`, () => api("POST", `/api/v1/chains/${c.chain_id}/requeue`));
            if (r) { announce(`Chain requeued as ${r.chain_id}`); await refresh(); }
          } }, "Requeue")));
      });
      sync();
    };
    await refresh();
    onLeave(feed.on(() => { if (!document.activeElement || !tbody.contains(document.activeElement)) refresh(); }));
  },
};

async function listChains(params, results, token) {
  const q = new URLSearchParams();
  for (const k of ["q", "state", "task", "queue"]) if (params.get(k)) q.set(k, params.get(k));
  if (params.get("since")) q.set("since_unix_ms", String(new Date(params.get("since")).getTime()));
  if (token) q.set("page_token", token);
  let page;
  try { page = await api("GET", `/api/v1/chains?${q}`); } catch (e) {
    results.replaceChildren(h("p", { class: "live error" }, `${e.code}: ${e.message}`));
    return;
  }
  const { el, tbody } = table(params.get("q") ? `Chains matching “${params.get("q")}”` : "Failed chains", ["Chain", "State", "Tasks", "Queues", "Created", "Failure"]);
  renderRows(tbody, page.chains, (c) => c.chain_id, (c) => h("tr", {},
    h("th", { scope: "row" }, chainLink(c.chain_id)), h("td", {}, badge(c.state)),
    h("td", {}, c.tasks.join(" → ")), h("td", {}, c.queues.join(", ")), h("td", {}, when(c.created_unix_ms)),
    h("td", {}, c.failure ? `${c.failure.error_type}: ${c.failure.message}` : "–")));
  const more = page.next_page_token
    ? h("button", { type: "button", onclick: () => listChains(params, results, page.next_page_token) }, "Next page")
    : null;
  results.replaceChildren(el, h("div", { class: "actions" }, h("span", { class: "note" }, `${page.chains.length} shown, ${page.scanned} read`), more));
}

function renderOverview(frame) {
  const hist = feed.history;
  const now = frame.now;
  const perMin = (s, field) => s.span_ms ? (s[field] * 60000) / s.span_ms : 0;
  const queues = [...new Set(hist.flatMap((s) => s.queues.map((q) => q.name)).concat(now.queues.map((q) => q.name)))].sort();
  const atLimit = now.throttles.filter((t) => t.holders.length >= t.limit);
  const failedLastMin = hist.slice(-30).reduce((a, s) => a + s.failed, 0);
  const stat = (n, l) => h("div", { class: "stat" }, h("div", { class: "n" }, n), h("div", { class: "l" }, l));
  const running = now.queues.reduce((a, q) => a + q.running, 0);
  const ready = now.queues.reduce((a, q) => a + q.ready, 0);
  const children = [
    h("h1", {}, "Overview"),
    now.store_fault ? h("p", { class: "live error" }, `The store is in trouble (${now.store_fault}): new work is refused.`) : null,
    h("div", { class: "stats" },
      stat(now.workers.length, `workers connected${frame.sample.draining ? `, ${frame.sample.draining} draining` : ""}`),
      stat(ready, "tasks ready"), stat(running, "tasks running"),
      stat(atLimit.length, "throttles at their limit"),
      stat(failedLastMin, "failures in the last minute")),
    h("h2", {}, "Broker-wide, last hour"),
    h("div", { class: "grid" },
      chart("Throughput (per minute)", [
        { name: "started", cls: "a", points: hist.map((s) => perMin(s, "started")) },
        { name: "succeeded", cls: "b", points: hist.map((s) => perMin(s, "succeeded")) }]),
      chart("Ready-to-start latency (ms)", [{ name: "mean", cls: "a", points: hist.map((s) => s.latency_ms) }]),
      chart("Failures (per minute)", [
        { name: "failed", cls: "c", points: hist.map((s) => perMin(s, "failed")) },
        { name: "retried", cls: "a", points: hist.map((s) => perMin(s, "retried")) }])),
    h("h2", {}, "Queues"),
    queues.length ? h("div", { class: "grid" }, queues.map((name) => {
      const q = now.queues.find((x) => x.name === name) || { ready: 0, running: 0, oldest_ready_age_ms: 0, paused: false };
      const series = (f) => hist.map((s) => { const p = s.queues.find((x) => x.name === name); return p ? p[f] : 0; });
      return h("section", { class: "panel", "aria-label": `Queue ${name}` },
        h("h3", {}, h("a", { href: "#/queues" }, name), " ", q.paused ? h("span", { class: "badge s-paused" }, "paused") : null),
        h("dl", { class: "kv" }, h("dt", {}, "Depth (ready)"), h("dd", {}, q.ready), h("dt", {}, "Running"), h("dd", {}, q.running),
          h("dt", {}, "Oldest ready"), h("dd", {}, q.ready ? ms(q.oldest_ready_age_ms) : "–")),
        chart(`Queue ${name}: depth and running`, [
          { name: "ready", cls: "a", points: series("ready") },
          { name: "running", cls: "b", points: series("running") }]),
        chart(`Queue ${name}: throughput (per minute)`, [
          { name: "started", cls: "a", points: hist.map((s) => { const p = s.queues.find((x) => x.name === name); return p ? perMin({ ...p, span_ms: s.span_ms }, "started") : 0; }) },
          { name: "succeeded", cls: "b", points: hist.map((s) => { const p = s.queues.find((x) => x.name === name); return p ? perMin({ ...p, span_ms: s.span_ms }, "succeeded") : 0; }) }]),
        chart(`Queue ${name}: ready-to-start latency (ms)`, [
          { name: "mean", cls: "a", points: hist.map((s) => { const p = s.queues.find((x) => x.name === name); return p ? p.latency_ms : null; }) }]));
    })) : h("p", { class: "empty" }, "No queue holds work."),
    h("h2", {}, "Throttles at their limit"),
    atLimit.length ? h("ul", {}, atLimit.map((t) => h("li", {}, h("span", { class: "mono" }, `${t.identity.task_name || "(shared)"} / ${t.identity.key}`),
      ` ${t.holders.length}/${t.limit} held, ${t.waiters} waiting`))) : h("p", { class: "empty" }, "None."),
    h("p", { class: "note" }, `Sampled every 2 s; updated ${new Date(frame.sample.t).toLocaleTimeString()}. Throughput and latency: broker-wide, and per queue below.`),
  ];
  show(...children);
}

function renderChain(c) {
  const focused = document.activeElement && document.activeElement.id;
  const running = c.state === "CHAIN_STATE_RUNNING";
  const failed = c.state === "CHAIN_STATE_FAILED";
  const actions = h("div", { class: "actions" },
    running ? h("button", { type: "button", id: "cancel", class: "danger", onclick: async () => {
      if (await confirmDialog("Cancel this chain?", "Unstarted steps never start, running ones are told to stop, and neither callback fires.", "Cancel chain")) {
        await act("Chain cancelled", () => api("POST", `/api/v1/chains/${c.chain_id}/cancel`, { reason: "cancelled from the dashboard" }));
      }
    } }, "Cancel chain") : null,
    failed && !c.requeued_as ? h("button", { type: "button", id: "requeue", class: "primary", onclick: async () => {
      const r = await act("Chain requeued", () => api("POST", `/api/v1/chains/${c.chain_id}/requeue`));
      if (r) { announce(`Requeued as ${r.chain_id}`); location.hash = `#/chains/${r.chain_id}`; }
    } }, "Requeue") : null);
  const step = (s) => {
    const wait = s.started_unix_ms && s.ready_unix_ms ? s.started_unix_ms - s.ready_unix_ms : null;
    const run = s.finished_unix_ms && s.started_unix_ms ? s.finished_unix_ms - s.started_unix_ms
      : s.started_unix_ms && short(s.state) === "RUNNING" ? Date.now() - s.started_unix_ms : null;
    return h("li", { class: `st-${short(s.state)}` },
      h("div", { class: "step-head" }, h("strong", {}, s.name), badge(s.state),
        h("span", { class: "muted" }, `${short(s.phase).toLowerCase().replace("_", " ")} #${s.index}`),
        s.description ? h("span", { class: "muted" }, s.description) : null),
      h("dl", { class: "kv" },
        h("dt", {}, "Attempts"), h("dd", {}, `${s.attempts}${s.retries ? `, ${s.retries} retried` : ""}${s.polls ? `, ${s.polls} polls` : ""}`),
        h("dt", {}, "Worker"), h("dd", {}, s.worker || "–"),
        h("dt", {}, "Queue"), h("dd", {}, s.queue || "–", s.unserved_queue ? h("span", { class: "badge s-paused" }, " no worker runs it") : null),
        h("dt", {}, "Waited"), h("dd", {}, ms(wait)),
        h("dt", {}, "Ran"), h("dd", {}, ms(run)),
        s.members ? [h("dt", {}, s.members === 1 && s.child_chain_ids.length <= 1 && s.name !== "group" ? "Child chain" : "Members"),
          h("dd", {}, `${s.members_succeeded} of ${s.members} succeeded`, h("ul", { class: "children" },
            s.child_chain_ids.slice(0, 20).map((id) => h("li", {}, chainLink(id))),
            s.child_chain_ids.length > 20 ? h("li", { class: "muted" }, `and ${s.child_chain_ids.length - 20} more`) : null))] : null,
        s.members ? null : [h("dt", {}, "Args"), h("dd", {}, value(s.args, "args"))],
        Object.keys(s.kwargs || {}).length ? [h("dt", {}, "Kwargs"), h("dd", {}, value(s.kwargs, "kwargs"))] : null,
        short(s.state) === "SUCCEEDED" ? [h("dt", {}, "Result"), h("dd", {}, s.result_omitted
          ? h("button", { type: "button", onclick: async (e) => { const r = await act("Result loaded", () => api("GET", `/api/v1/chains/${c.chain_id}/results/${s.task_id}`)); if (r) e.target.replaceWith(value(r.result, "result")); } }, `Load result (${s.result_bytes} bytes)`)
          : value(s.result, "result"))] : null),
      s.failure ? failure(s.failure, short(s.state) !== "FAILED") : null);
  };
  const phase = (title, steps) => steps.length ? [h("h3", {}, title), h("ol", { class: "timeline" }, steps.map(step))] : null;
  show(
    h("h1", {}, "Chain ", h("span", { class: "mono" }, c.chain_id), " ", badge(c.state)),
    actions,
    h("section", { class: "panel", "aria-label": "Chain" }, h("dl", { class: "kv" },
      h("dt", {}, "Created"), h("dd", {}, when(c.created_unix_ms)),
      h("dt", {}, "Ended"), h("dd", {}, c.finished_unix_ms ? `${when(c.finished_unix_ms)} (${ms(c.finished_unix_ms - c.created_unix_ms)})` : "running"),
      c.heavy ? [h("dt", {}, "Heavy"), h("dd", {}, "yes")] : null,
      c.deadline_unix_ms ? [h("dt", {}, "Deadline"), h("dd", {}, when(c.deadline_unix_ms))] : null,
      Object.keys(c.context).length ? [h("dt", {}, "Context"), h("dd", {}, value(c.context, "context"))] : null,
      c.parent_chain_id ? [h("dt", {}, "Parent"), h("dd", {}, chainLink(c.parent_chain_id), ` (member ${c.member_index})`)] : null,
      c.requeued_from ? [h("dt", {}, "Requeued from"), h("dd", {}, chainLink(c.requeued_from))] : null,
      c.requeued_as ? [h("dt", {}, "Requeued as"), h("dd", {}, chainLink(c.requeued_as))] : null,
      c.cancel_reason ? [h("dt", {}, "Cancelled"), h("dd", {}, c.cancel_reason)] : null,
      c.state === "CHAIN_STATE_SUCCEEDED" ? [h("dt", {}, "Result"), h("dd", {}, value(c.result, "result"))] : null)),
    c.failure ? h("section", { class: "panel", "aria-label": "Failure record" }, h("h2", { style: "margin-top:0" }, "Failure"), failure(c.failure, false)) : null,
    h("h2", {}, "Timeline"),
    phase("Steps", c.steps), phase("On success", c.on_success), phase("On failure", c.on_failure),
    h("h2", {}, "History"),
    h("ol", { class: "events", "aria-label": "History of the chain, oldest first" }, history(c)));
  if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
}

/** The chain's history from its record (`history`, kept by the broker
 * for as long as the chain is stored), oldest first: each attempt with its
 * worker, each failure, retry, poll and loss, the callbacks and the end. */
function history(c) {
  // To the millisecond: a chain's events are often within one second.
  const at = (t) => h("time", { datetime: new Date(t).toISOString(), class: "muted" },
    `${new Date(t).toLocaleTimeString([], { hour12: false })}.${String(t % 1000).padStart(3, "0")}`);
  const stepName = (e) => {
    const steps = { PHASE_MAIN: c.steps, PHASE_ON_SUCCESS: c.on_success, PHASE_ON_FAILURE: c.on_failure }[e.phase] || [];
    const s = steps[e.step_index];
    return `${s ? s.name : "step"} (${short(e.phase).toLowerCase().replace("_", " ")} #${e.step_index})`;
  };
  const items = (c.history || []).map((e) => h("li", {}, at(e.at_unix_ms), " ", h("code", {}, e.kind),
    e.phase !== "PHASE_UNSPECIFIED" ? ` ${stepName(e)}` : "",
    e.attempt ? `, attempt ${e.attempt}` : "",
    e.worker ? ` on ${e.worker}` : "",
    e.repeats ? ` (${e.repeats + 1} polls, the last at this time)` : "",
    e.next_unix_ms ? `, due again ${when(e.next_unix_ms)}` : "",
    e.detail ? [": ", e.kind === "requeued" ? chainLink(e.detail) : h("span", { class: "detail" }, e.detail)] : null));
  return [h("li", {}, at(c.created_unix_ms), " ", h("code", {}, "submitted"),
    c.requeued_from ? [" as a requeue of ", chainLink(c.requeued_from)] : null),
  c.history_dropped ? h("li", { class: "muted" }, `${c.history_dropped} retries, polls or lost runs in the middle are not kept (the first 10 and the last 90 are)`) : null,
  ...items];
}

function failure(f, earlier) {
  return h("div", {},
    h("p", {}, earlier ? h("span", { class: "muted" }, "Last failure (retried): ") : null,
      h("strong", {}, f.error_type), ": ", f.message),
    h("p", { class: "note" }, `${short(f.phase).toLowerCase()} step ${f.step_index} ${f.task_name} (task ${f.task_id}), attempt ${f.attempt}`),
    f.traceback ? h("details", { open: !earlier }, h("summary", {}, "Traceback"), h("pre", { class: "traceback" }, f.traceback)) : null);
}

// ---------------------------------------------------------------- routing

let me = { role: "admin", name: "", auth: false };

/** Shows the page of the location's hash; after a navigation (not the
 * first load) the focus moves to the page's content. */
async function route(navigated = true) {
  for (const f of cleanup) f();
  cleanup = [];
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query || "");
  const parts = (path || "/overview").split("/").filter(Boolean);
  let page = parts[0] || "overview";
  if (me.role !== "admin" && !["chains"].includes(page)) page = "chains";
  document.querySelectorAll("#nav a").forEach((a) => {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
  const titles = { overview: "Overview", chains: "Chains", queues: "Queues", workers: "Workers", throttles: "Throttles", dead: "Dead chains" };
  document.title = `${titles[page] || "Chain"} · Baton`;
  if (page === "chains" && parts[1]) await pages.chain(params, parts[1]);
  else if (pages[page]) await pages[page](params);
  else show(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/overview" }, "Overview")));
  if (navigated === true || navigated instanceof HashChangeEvent) main.focus({ preventScroll: true });
}

async function start() {
  try { me = await api("GET", "/api/v1/whoami"); } catch (e) { announce(`${e.code}: ${e.message}`, true); }
  $("#who").textContent = me.auth ? `${me.name} (${me.role})` : "authentication off";
  $("#logout").hidden = !me.auth;
  if (me.role !== "admin") document.querySelectorAll("[data-admin], [data-page=overview]").forEach((a) => a.closest("li").remove());
  window.addEventListener("hashchange", route);
  await route(false);
}

start();
