// The operators' console: plain DOM, no framework. The admin key lives in this module's
// memory only (never in storage, cookies or the URL); every text from the server is inserted
// as text (textContent), never as HTML.

let adminKey = null;
let currentUser = null;

const $ = (id) => document.getElementById(id);

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${adminKey}`, Accept: "application/json" };
  const init = { method, headers, credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = data.error || {};
    throw new Error(`${err.code || resp.status}: ${err.message || "request failed"}`);
  }
  return data;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  row.appendChild(td);
  return td;
}

function table(el, columns, rows) {
  el.replaceChildren();
  const head = document.createElement("tr");
  for (const c of columns) {
    const th = document.createElement("th");
    th.textContent = c;
    head.appendChild(th);
  }
  el.appendChild(head);
  for (const r of rows) {
    const tr = document.createElement("tr");
    for (const value of r) {
      if (value instanceof Node) {
        const td = document.createElement("td");
        td.appendChild(value);
        tr.appendChild(td);
      } else {
        cell(tr, value);
      }
    }
    el.appendChild(tr);
  }
}

function guarded(fn) {
  return async (event) => {
    if (event) event.preventDefault();
    try {
      await fn(event);
    } catch (e) {
      status(e.message, true);
    }
  };
}

async function signIn() {
  const key = $("key").value.trim();
  $("key").value = "";
  adminKey = key;
  try {
    const me = await api("GET", "/admin/v1/whoami");
    $("whoami").textContent = `${me.name} (${me.role})`;
    $("signin").hidden = true;
    $("console").hidden = false;
    $("signout").hidden = false;
    status("Signed in.");
  } catch (e) {
    adminKey = null;
    throw e;
  }
}

function signOut() {
  adminKey = null;
  currentUser = null;
  $("whoami").textContent = "";
  $("console").hidden = true;
  $("user").hidden = true;
  $("signin").hidden = false;
  $("signout").hidden = true;
  status("Signed out.");
}

async function find() {
  const body = { by: $("find-by").value, value: $("find-value").value.trim() };
  const platform = $("find-platform").value.trim();
  const app = $("find-app").value.trim();
  if (platform) body.platform = platform;
  if (app) body.app_id = app;
  const result = await api("POST", "/admin/v1/users/find", body);
  const list = $("found");
  list.replaceChildren();
  for (const u of result.users) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "open-user";
    button.textContent = u.id;
    button.addEventListener("click", guarded(() => showUser(u.id)));
    li.appendChild(button);
    li.appendChild(document.createTextNode(` created ${u.created_at || "?"}`));
    list.appendChild(li);
  }
  status(`${result.users.length} user(s) found.`);
}

async function showUser(id, reveal = false) {
  const u = await api("GET", `/admin/v1/users/${encodeURIComponent(id)}${reveal ? "?reveal_phone=1" : ""}`);
  currentUser = u.id;
  $("user").hidden = false;
  $("user-id").textContent = u.id;
  $("user-state").textContent = u.blocked
    ? `Blocked since ${u.blocked.at || "?"} by ${u.blocked.by || "?"}: ${u.blocked.message}`
    : "Not blocked.";
  const facts = $("user-facts");
  facts.replaceChildren();
  const profile = Object.entries(u.profile).filter(([k]) => k !== "signed")
    .map(([k, v]) => `${k}: ${v}`).join(", ");
  for (const [k, v] of [["created", u.created_at], ["phone", u.phone || "none"],
    ["profile", profile || "none"]]) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v == null ? "" : String(v);
    facts.append(dt, dd);
  }
  table($("identities"), ["platform", "app", "openid", "unionid", "created", "last login"],
    u.identities.map((i) => [i.platform, i.app_id, i.openid, i.unionid, i.created_at, i.last_login_at]));
  table($("consents"), ["document", "version", "accepted", "withdrawn", "platform", "app"],
    u.consents.map((c) => [c.document, c.version, c.accepted_at, c.withdrawn_at, c.platform, c.app_id]));
  table($("recent-logins"), ["when", "event", "platform", "app", "network", "user agent"],
    u.recent_logins.map((l) => [l.at, l.event, l.platform, l.app_id, l.client_ip, l.user_agent]));
  table($("sessions"), ["session", "state", "platform", "app", "created", "last used", ""],
    u.sessions.map((s) => {
      let end = "";
      if (s.state === "active") {
        end = document.createElement("button");
        end.type = "button";
        end.textContent = "End";
        end.addEventListener("click", guarded(async () => {
          await api("POST", `/admin/v1/users/${encodeURIComponent(u.id)}/sessions/end`, { session_id: s.id });
          await showUser(u.id);
          status("Session ended.");
        }));
      }
      return [s.id, s.ended_reason ? `${s.state} (${s.ended_reason})` : s.state, s.platform,
        s.app_id, s.created_at, s.last_used_at, end];
    }));
}

async function act(path, body, done) {
  if (!currentUser) return;
  const result = await api("POST", `/admin/v1/users/${encodeURIComponent(currentUser)}/${path}`, body);
  status(done(result));
  if (path !== "delete") await showUser(currentUser);
  else { $("user").hidden = true; currentUser = null; }
  await audit();
}

async function audit() {
  const user = $("audit-user").value.trim();
  const query = user ? `?user_id=${encodeURIComponent(user)}` : "";
  const result = await api("GET", `/admin/v1/audit${query}`);
  table($("audit"), ["when", "who", "action", "user", "ip", "detail"],
    result.entries.map((e) => [e.at, e.actor, e.action, e.user_id, e.ip, JSON.stringify(e.detail)]));
}

// The review queue: an avatar's image is fetched with the key and shown from a blob: URL
// (an <img> cannot send the Authorization header); the URLs are released on every refresh.
let reviewImages = [];

async function reviewImage(avatarId) {
  const resp = await fetch(`/admin/v1/review/avatars/${encodeURIComponent(avatarId)}`, {
    headers: { Authorization: `Bearer ${adminKey}` }, credentials: "omit", cache: "no-store",
  });
  const img = document.createElement("img");
  img.className = "review-avatar";
  img.alt = `avatar ${avatarId}`;
  if (resp.ok) {
    const url = URL.createObjectURL(await resp.blob());
    reviewImages.push(url);
    img.src = url;
  }
  return img;
}

function decideButton(item, decision) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `review-${decision}`;
  button.dataset.user = item.user_id;
  button.textContent = decision === "approve" ? "Approve" : "Reject";
  button.addEventListener("click", guarded(async () => {
    const body = { kind: item.kind, user_id: item.user_id, decision };
    if (item.kind === "avatar") body.avatar_id = item.avatar_id;
    else body.nickname = item.nickname;
    const result = await api("POST", "/admin/v1/review/decide", body);
    await reviewQueue();
    status(`The ${item.kind} of ${item.user_id} is ${result.status}.`);
  }));
  return button;
}

async function reviewQueue() {
  const result = await api("GET", "/admin/v1/review");
  for (const url of reviewImages) URL.revokeObjectURL(url);
  reviewImages = [];
  const rows = [];
  for (const item of result.items) {
    const what = item.kind === "avatar" ? await reviewImage(item.avatar_id) : item.nickname;
    const actions = document.createElement("span");
    actions.append(decideButton(item, "approve"), decideButton(item, "reject"));
    rows.push([item.kind, what, item.user_id, item.status, item.since, actions]);
  }
  table($("review"), ["kind", "content", "user", "status", "since", ""], rows);
  status(`${result.items.length} item(s) waiting for review.`);
}

async function conflicts() {
  const result = await api("GET", "/admin/v1/conflicts");
  const keepButton = (c, keep, label) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.addEventListener("click", guarded(async () => {
      const absorbed = keep === c.holder_user_id ? c.other_user_id : c.holder_user_id;
      if (!window.confirm(`Merge user ${absorbed} into ${keep}? ${absorbed} is deleted.`)) return;
      const r = await api("POST", "/admin/v1/conflicts/resolve",
        { conflict_id: c.id, keep_user_id: keep });
      await conflicts();
      status(`Merged ${r.absorbed_user_id} into ${r.user_id}: ${r.identities_moved} identity(ies) moved.`);
    }));
    return button;
  };
  table($("conflicts"), ["platform", "unionid", "holder", "other user", "app", "seen", "resolve (admin)"],
    result.conflicts.map((c) => {
      const actions = document.createElement("span");
      actions.append(keepButton(c, c.holder_user_id, "Keep holder"),
        keepButton(c, c.other_user_id, "Keep other"));
      return [c.platform, c.unionid, c.holder_user_id, c.other_user_id, c.app, c.seen_at, actions];
    }));
  status(`${result.conflicts.length} conflict(s).`);
}

$("review-load").addEventListener("click", guarded(reviewQueue));
$("conflicts-load").addEventListener("click", guarded(conflicts));
$("signin-form").addEventListener("submit", guarded(signIn));
$("signout").addEventListener("click", signOut);
$("find-form").addEventListener("submit", guarded(find));
$("audit-form").addEventListener("submit", guarded(audit));
$("block").addEventListener("click", guarded(() => {
  const message = $("block-message").value.trim();
  return act("block", message ? { message } : {}, (r) => `Blocked; ${r.sessions_ended} session(s) ended.`);
}));
$("unblock").addEventListener("click", guarded(() => act("unblock", {}, () => "Unblocked.")));
$("end-all").addEventListener("click", guarded(() =>
  act("sessions/end", {}, (r) => `${r.sessions_ended} session(s) ended.`)));
$("reveal").addEventListener("click", guarded(() => showUser(currentUser, true)));
$("delete").addEventListener("click", guarded(() => {
  if (!window.confirm(`Delete user ${currentUser} and all their data?`)) return Promise.resolve();
  return act("delete", {}, () => "User deleted.");
}));
