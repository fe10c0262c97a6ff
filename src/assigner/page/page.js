// berth's web page: follows GET /v1/events/stream and updates the rows the server rendered.
// The store is the truth: on every (re)connect, after a lag and now and then, the page
// re-reads GET /v1/slots; events only make it quick. One file, no build step, no library.
"use strict";
(() => {
  const TOKEN_KEY = "berth-token";
  const FRESH_FOR_MS = 2000; // how old GET /v1/slots may be (the assigner's cache)
  const REREAD_MS = 30000; // a re-read now and then, whatever the feed says
  const SILENCE_MS = 45000; // the stream sends a comment every 15 s; this long silent is dead
  const LEASE_SOON_S = 300;

  // What the page saw, for a person debugging it (and for its browser test).
  const seen = {};
  const state = { feedUp: false, streamOpen: false, lastRead: null, seen };
  window.berth = state;

  const $ = (sel, root) => (root || document).querySelector(sel);
  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
  const headers = (extra) => {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    if (token()) h.Authorization = "Bearer " + token();
    return h;
  };
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // ---- words and times (the same rules as page.rs) ----
  const word = (s) =>
    s.state === "used" && s.draining ? "draining"
      : s.state === "dirty" && !s.clean_failures ? "cleaning" : s.state;
  const spanText = (secs) => {
    secs = Math.max(0, Math.floor(secs));
    const two = (n) => String(n).padStart(2, "0");
    if (secs < 60) return secs + "s";
    if (secs < 3600) return Math.floor(secs / 60) + "m " + two(secs % 60) + "s";
    if (secs < 86400) return Math.floor(secs / 3600) + "h " + two(Math.floor((secs % 3600) / 60)) + "m";
    return Math.floor(secs / 86400) + "d " + two(Math.floor((secs % 86400) / 3600)) + "h";
  };
  const clock = (d) => d.toISOString().slice(11, 19) + " UTC";

  // ---- rows ----
  const rows = {}; // slot -> the slot's status as the page knows it
  const eventAt = {}; // slot -> {at (ms, the event's time), got (ms, when received)}

  function fromRow(tr) {
    const cell = (c) => $("td." + c, tr);
    return {
      slot: tr.dataset.slot,
      state: tr.dataset.state,
      owner: cell("owner").textContent || null,
      held_since: cell("held").dataset.since || null,
      lease_expires: cell("lease").dataset.until || null,
      draining: tr.dataset.word === "draining",
      clean_failures: 0,
      last_error: null,
      disabled_reason: null,
      keepNotes: true,
    };
  }

  function note(text, cls) {
    const span = document.createElement("span");
    span.className = "note" + (cls ? " " + cls : "");
    span.textContent = text;
    return span;
  }

  function paint(s) {
    const tr = document.getElementById("slot-" + s.slot);
    if (!tr) return;
    const w = word(s);
    tr.dataset.state = s.state;
    tr.dataset.word = w;
    const badge = $("td.state span", tr);
    badge.className = "badge s-" + w;
    badge.textContent = w;
    $("td.owner", tr).textContent = s.owner || "";
    const held = $("td.held", tr);
    if (s.held_since) held.dataset.since = s.held_since; else delete held.dataset.since;
    const lease = $("td.lease", tr);
    if (s.lease_expires) lease.dataset.until = s.lease_expires; else delete lease.dataset.until;
    if (!s.keepNotes) {
      const notes = $("td.notes", tr);
      notes.replaceChildren();
      const reason = s.disabled_reason || "";
      if (s.draining) notes.append(note("Draining (disabled once its holder is done): " + reason));
      else if (s.state === "disabled") notes.append(note("Disabled: " + reason));
      if (s.clean_failures > 0) notes.append(note("Failed cleanings: " + s.clean_failures));
      if (s.last_error) notes.append(note(s.last_error, "error"));
    }
    actions(tr, s);
    tick(tr);
    const list = seen[s.slot] || (seen[s.slot] = []);
    if (list[list.length - 1] !== w) list.push(w);
  }

  function tick(tr) {
    const now = Date.now();
    const held = $("td.held", tr);
    held.textContent = held.dataset.since ? spanText((now - Date.parse(held.dataset.since)) / 1000) : "";
    const lease = $("td.lease", tr);
    if (lease.dataset.until) {
      const left = (Date.parse(lease.dataset.until) - now) / 1000;
      lease.textContent = spanText(left);
      lease.classList.toggle("soon", left < LEASE_SOON_S);
    } else {
      lease.textContent = "";
      lease.classList.remove("soon");
    }
  }

  // ---- counts of each pool ----
  function recount() {
    for (const section of document.querySelectorAll("section.pool")) {
      const counts = { free: 0, used: 0, dirty: 0, disabled: 0 };
      for (const tr of section.querySelectorAll("tbody tr")) {
        const st = tr.dataset.state === "missing" ? "dirty" : tr.dataset.state;
        if (st in counts) counts[st]++;
      }
      for (const [k, n] of Object.entries(counts)) {
        const span = $('[data-count="' + k + '"]', section);
        if (span) span.textContent = n + " " + k;
      }
    }
  }

  // ---- the banner ----
  function banner() {
    const b = $("#banner");
    const read = state.lastRead ? "View last read " + clock(state.lastRead) + "." : "Not read yet.";
    b.classList.toggle("down", !state.feedUp);
    b.textContent = (state.feedUp ? "Live. " : "Live feed down; reconnecting. ") + read;
  }

  // ---- reading the store ----
  let rereadTimer = null;
  function rereadSoon(ms) {
    if (rereadTimer) return;
    rereadTimer = setTimeout(() => { rereadTimer = null; reread(); }, ms);
  }

  async function reread() {
    let resp;
    try {
      resp = await fetch("/v1/slots", { headers: headers(), cache: "no-store" });
    } catch (e) {
      return false;
    }
    if (!resp.ok) return false;
    const snap = await resp.json();
    const asOf = Date.parse(snap.as_of);
    let stale = false;
    // Served while the store could not be read: the server renders the rows now.
    if (document.body.dataset.unread === "store" && snap.slots.length) { location.reload(); return true; }
    for (const s of snap.slots) {
      const ev = eventAt[s.slot];
      // An event newer than this read wins, unless the read may be off by clocks.
      if (ev && ev.at > asOf && Date.now() - ev.got < 5000 + FRESH_FOR_MS) { stale = true; continue; }
      rows[s.slot] = s;
      paint(s);
    }
    recount();
    state.lastRead = new Date();
    banner();
    if (stale) rereadSoon(FRESH_FOR_MS + 500);
    return true;
  }

  // ---- events ----
  function apply(ev) {
    if (!rows[ev.slot]) return; // not a slot of this page's configuration
    const s = Object.assign({}, rows[ev.slot]);
    s.keepNotes = false;
    const vacate = () => { s.owner = null; s.held_since = null; s.lease_expires = null; };
    switch (ev.event) {
      case "assigned":
        Object.assign(s, { state: "used", owner: ev.owner, held_since: ev.at, lease_expires: null,
          draining: false, clean_failures: 0, last_error: null, disabled_reason: null });
        break;
      case "released": case "expired": case "reclaimed":
        vacate(); s.state = "dirty"; s.clean_failures = 0; s.last_error = null;
        break;
      case "clean_requested":
        s.state = "dirty"; s.clean_failures = 0;
        break;
      case "cleaned":
        vacate(); s.state = "free"; s.clean_failures = 0; s.last_error = null;
        break;
      case "clean_failed":
        s.state = "dirty"; s.clean_failures = (s.clean_failures || 0) + 1;
        break;
      case "disabled":
        vacate(); Object.assign(s, { state: "disabled", draining: false, disabled_reason: ev.reason || null });
        break;
      case "enabled":
        if (s.state === "disabled") { s.state = "dirty"; s.clean_failures = 0; }
        s.draining = false; s.disabled_reason = null;
        break;
      default: // renewed, and kinds this page does not know: the store says
        break;
    }
    eventAt[ev.slot] = { at: Date.parse(ev.at), got: Date.now() };
    rows[ev.slot] = s;
    paint(s);
    recount();
    rereadSoon(300); // the lease, errors and reasons come from the store
  }

  function handle(block) {
    let type = "message";
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "event") type = value;
      else if (field === "data") data += (data ? "\n" : "") + value;
    }
    if (!data) return;
    const body = JSON.parse(data);
    if (type === "slot") apply(body);
    else if (type === "feed") {
      const wasUp = state.feedUp;
      state.feedUp = !!body.up;
      banner();
      if (state.feedUp && !wasUp) reread(); // missed events while it was down
    } else if (type === "resync") reread();
  }

  // EventSource cannot send an Authorization header: the stream is read with fetch.
  async function follow() {
    let delay = 500;
    for (;;) {
      const abort = new AbortController();
      let watchdog = null;
      const arm = () => { clearTimeout(watchdog); watchdog = setTimeout(() => abort.abort(), SILENCE_MS); };
      try {
        arm();
        const resp = await fetch("/v1/events/stream", {
          headers: headers({ Accept: "text/event-stream" }), cache: "no-store", signal: abort.signal,
        });
        if (!resp.ok) throw new Error("HTTP " + resp.status);
        state.streamOpen = true;
        delay = 500;
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          arm();
          buf = (buf + value).replace(/\r\n?/g, "\n");
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            try { handle(block); } catch (e) { console.warn("berth: bad event", e); }
          }
        }
      } catch (e) {
        // the assigner went away, or answered an error: try again
      }
      clearTimeout(watchdog);
      state.streamOpen = false;
      state.feedUp = false;
      banner();
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
  }

  // ---- operator actions ----
  const ACTIONS = {
    disable: { label: "Disable", reason: true, ok: (s) => s.state !== "disabled" && !(s.draining && s.state !== "used") },
    enable: { label: "Enable", reason: false, ok: (s) => s.state === "disabled" || s.draining },
    reclaim: { label: "Reclaim", reason: true, ok: (s) => s.state === "used" },
    clean: { label: "Clean now", reason: false, ok: (s) => s.state === "dirty" },
  };

  // Buttons are made again only when the actions allowed change (a button keeps its focus).
  function actions(tr, s) {
    const cell = $("td.actions", tr);
    const allowed = Object.keys(ACTIONS).filter((name) => ACTIONS[name].ok(s));
    if (cell.dataset.allowed === allowed.join(" ")) return;
    cell.dataset.allowed = allowed.join(" ");
    const answer = $(".answer", cell);
    cell.replaceChildren();
    for (const name of allowed) {
      const a = ACTIONS[name];
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = a.label;
      b.dataset.action = name;
      b.setAttribute("aria-label", a.label + " " + s.slot);
      b.addEventListener("click", () => openAction(s.slot, name));
      cell.append(b);
    }
    if (answer) cell.append(answer);
  }

  let acting = null;
  function openAction(slot, name) {
    acting = { slot, name };
    const a = ACTIONS[name];
    $("#action-title").textContent = a.label + " " + slot;
    $("#action-what").textContent = a.reason ? "A reason is required; it is kept with the slot and its history." : "A reason is optional.";
    $("#action-reason").value = "";
    $("#action-reason").required = a.reason;
    $("#action-now").checked = false;
    $("#action-now-row").hidden = name !== "disable";
    $("#action-answer").textContent = "";
    $("#action-send").disabled = false;
    $("#action-dialog").showModal();
    $("#action-reason").focus();
  }

  async function send(e) {
    e.preventDefault();
    if (!acting) return;
    const { slot, name } = acting;
    const now = name === "disable" && $("#action-now").checked;
    if ((name === "reclaim" || now) &&
        !window.confirm((name === "reclaim" ? "Reclaim " : "Disable now ") + slot +
          "? Its holder loses the slot at once.")) return;
    const body = {};
    const reason = $("#action-reason").value.trim();
    if (reason) body.reason = reason;
    if (now) body.now = true;
    const out = $("#action-answer");
    out.textContent = "Sending…";
    let text;
    try {
      const resp = await fetch("/v1/slots/" + encodeURIComponent(slot) + "/" + name, {
        method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
      });
      const json = await resp.json().catch(() => ({}));
      text = resp.ok ? "Done: " + name + " handed to the slot's worker." : "Refused (" + resp.status + "): " + (json.message || json.error || "");
      if (resp.ok) rereadSoon(500);
    } catch (err) {
      text = "Could not reach the assigner; try again.";
    }
    out.textContent = text;
    const tr = document.getElementById("slot-" + slot);
    if (tr) {
      const cell = $("td.actions", tr);
      let span = $(".answer", cell);
      if (!span) { span = document.createElement("span"); span.className = "answer"; span.setAttribute("role", "status"); cell.append(span); }
      span.textContent = text;
    }
  }

  // ---- history ----
  async function history(slot) {
    const body = $("#history-body");
    $("#history-title").textContent = "History of " + slot;
    body.textContent = "Reading…";
    $("#history-dialog").showModal();
    try {
      const resp = await fetch("/v1/slots/" + encodeURIComponent(slot) + "/history?since=7d&limit=50", { headers: headers() });
      const json = await resp.json();
      if (!resp.ok) { body.textContent = json.message || "Could not read the history."; return; }
      if (!json.length) { body.textContent = "No events in the last 7 days."; return; }
      const table = document.createElement("table");
      table.innerHTML = "<caption>Newest last</caption><thead><tr><th scope=col>At</th><th scope=col>Event</th><th scope=col>Owner</th><th scope=col>By</th><th scope=col>Reason</th></tr></thead>";
      const tbody = document.createElement("tbody");
      for (const ev of json) {
        const tr = document.createElement("tr");
        for (const v of [ev.at, ev.event, ev.owner, ev.by, ev.reason]) {
          const td = document.createElement("td");
          td.textContent = v || "";
          tr.append(td);
        }
        tbody.append(tr);
      }
      table.append(tbody);
      body.replaceChildren(table);
    } catch (e) {
      body.textContent = "Could not reach the assigner.";
    }
  }

  // ---- the token ----
  function showToken() {
    const has = !!token();
    document.body.classList.toggle("operator", has);
    $("#token-forget").hidden = !has;
    $("#token").value = "";
    $("#token").placeholder = has ? "token given" : "operator token";
  }

  function start() {
    for (const tr of document.querySelectorAll("tbody tr[data-slot]")) {
      const s = fromRow(tr);
      rows[s.slot] = s;
      seen[s.slot] = [tr.dataset.word];
      actions(tr, s);
    }
    const asOf = document.body.dataset.asOf;
    state.lastRead = asOf ? new Date(asOf) : null;
    banner();
    $("#token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const t = $("#token").value.trim();
      if (t) sessionStorage.setItem(TOKEN_KEY, t);
      showToken();
      reread();
    });
    $("#token-forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showToken(); });
    $("#action-form").addEventListener("submit", send);
    $("#action-close").addEventListener("click", () => $("#action-dialog").close());
    document.addEventListener("click", (e) => {
      const a = e.target.closest("a.history");
      if (!a) return;
      e.preventDefault();
      history(a.closest("tr").dataset.slot);
    });
    showToken();
    setInterval(() => document.querySelectorAll("tbody tr[data-slot]").forEach(tick), 1000);
    setInterval(reread, REREAD_MS);
    follow();
  }

  start();
})();
