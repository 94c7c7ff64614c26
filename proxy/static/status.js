// zcompute-proxy status page: polls /_proxy/status (same origin only), counts tokens down,
// and posts TOTP codes. Everything from the server is written with textContent, never HTML.
"use strict";

let snapshot = null;
let fetchedAt = 0;

function el(id) { return document.getElementById(id); }

function duration(seconds) {
  if (seconds <= 0) return "expired";
  const h = Math.floor(seconds / 3600), m = Math.floor(seconds % 3600 / 60),
        s = Math.floor(seconds % 60);
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
}

function row(cells, numeric) {
  const tr = document.createElement("tr");
  cells.forEach((text, i) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (numeric && numeric.includes(i)) td.className = "num";
    tr.appendChild(td);
  });
  return tr;
}

function renderSummary(s) {
  const body = el("summary").tBodies[0];
  body.replaceChildren(...[
    ["upstream", s.upstream], ["identity", s.identity_url],
    ["user", s.username + " @ " + s.account], ["default project", s.default_project || "—"],
    ["clock skew", s.clock_skew_s === null ? "unknown" : s.clock_skew_s + " s"],
  ].map(r => row(r)));
}

function renderTokens() {
  const elapsed = (Date.now() - fetchedAt) / 1000;
  const rows = snapshot.tokens.map(t => row([
    t.scope, t.fingerprint, new Date(t.expires_at).toLocaleString(),
    duration(t.seconds_left - elapsed),
    duration(t.renews_in - elapsed)], [3, 4]));
  el("tokens").tBodies[0].replaceChildren(...rows);
  el("no-tokens").hidden = rows.length > 0;
}

function renderState(s) {
  const errors = Object.entries(s.errors);
  const items = errors.map(([scope, e]) => {
    const li = document.createElement("li");
    li.textContent = scope + ": " + e.message + (e.hint ? " — " + e.hint : "");
    return li;
  });
  if (!items.length) {
    items.push(document.createElement("li"));
    items[0].textContent = "none";
    items[0].className = "none";
  }
  el("errors").replaceChildren(...items);
  const needed = s.mfa.startsWith("needed now");
  el("mfa").textContent = s.mfa;
  el("totp-form").hidden = !(s.mfa.startsWith("needed"));
  const state = el("state");
  state.textContent = errors.length ? "error" : needed ? "TOTP code needed" : "ok";
  state.className = "pill " + (errors.length ? "bad" : needed ? "warn" : "ok");
}

async function refresh() {
  try {
    const response = await fetch("/_proxy/status", { cache: "no-store" });
    snapshot = await response.json();
    fetchedAt = Date.now();
    renderSummary(snapshot);
    renderState(snapshot);
    renderTokens();
  } catch (error) {
    el("state").textContent = "proxy unreachable";
    el("state").className = "pill bad";
  }
}

async function post(path, body, resultId) {
  const response = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const answer = await response.json();
  el(resultId).textContent = response.ok ? "accepted" : answer.error.message;
  await refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  el("totp-form").addEventListener("submit", event => {
    event.preventDefault();
    const code = el("code").value.trim();
    el("code").value = "";
    post("/_proxy/totp", { code: code }, "totp-result");
  });
  el("login").addEventListener("click", () => post("/_proxy/login", {}, "login-result"));
  refresh();
  setInterval(() => { if (snapshot) renderTokens(); }, 1000);
  setInterval(refresh, 5000);
});
