// mplogin try-it page (development only): plays a mini-program against the sandbox and gateway.
// Plain DOM, no dependencies. Tokens live in this closure only; the page shows them shortened.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  const held = { code: null, codeUsed: false, access: null, refresh: null, user: null, ended: false,
    consents: null, qr: null };
  let apps = [];
  let logsDir = "";
  let busy = false;

  // Top-level fields that hold a secret (a nested "code" is an error code, shown as is).
  const SECRET_FIELDS = new Set(["code", "anonymous_code", "access_token", "refresh_token",
    "session_key", "poll_token"]);
  // Request headers that carry a secret: shown shortened.
  const SECRET_HEADERS = new Set(["X-QR-Poll-Token"]);
  const SECRET_PATTERN = /^(eyJ[\w-]*\.[\w-]*\.[\w-]*|mplrt_\S+)$/;

  function shorten(value) {
    return value.length <= 16 ? value : value.slice(0, 8) + "…" + value.slice(-6);
  }

  function redact(value, key, depth) {
    if (typeof value === "string") {
      const secret = (depth === 1 && SECRET_FIELDS.has(key)) || SECRET_PATTERN.test(value);
      return secret ? shorten(value) : value;
    }
    if (Array.isArray(value)) return value.map((v) => redact(v, null, depth + 1));
    if (value && typeof value === "object") {
      const out = {};
      for (const [k, v] of Object.entries(value)) out[k] = redact(v, k, depth + 1);
      return out;
    }
    return value;
  }

  function pretty(body) {
    if (body === undefined) return "";
    if (typeof body === "string") return body;
    return JSON.stringify(redact(body, null, 0), null, 2);
  }

  function element(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // ---- the log panel -------------------------------------------------------------------

  function startEntry(method, path, headers, body) {
    $("log-empty").hidden = true;
    const li = element("li", "entry pending");
    li.dataset.method = method;
    li.dataset.path = path;
    const title = element("h3");
    title.append(method + " " + path + " → ");
    const status = element("span", "status", "…");
    title.append(status);
    li.append(title);
    const lines = [];
    for (const [name, value] of Object.entries(headers)) {
      const shown = name === "Authorization" ? "Bearer " + shorten(value.slice(7))
        : SECRET_HEADERS.has(name) ? shorten(value) : value;
      lines.push(name + ": " + shown);
    }
    if (body !== undefined) lines.push((lines.length ? "\n" : "") + pretty(body));
    li.append(element("div", "label", "Request"), element("pre", "request", lines.join("\n") || "(no body)"));
    $("log").append(li);
    li.scrollIntoView({ block: "nearest" });
    return { li, status, started: performance.now() };
  }

  function finishEntry(entry, resp, body) {
    const ms = Math.round(performance.now() - entry.started);
    const { li } = entry;
    li.classList.remove("pending");
    if (resp) {
      li.dataset.status = String(resp.status);
      li.classList.add(resp.ok ? "ok" : "failed");
      entry.status.textContent = resp.status + " " + (resp.statusText || "");
    } else {
      li.dataset.status = "0";
      li.classList.add("failed");
      entry.status.textContent = "no response";
    }
    li.querySelector("h3").append(" · " + ms + " ms");
    // The gateway's id of this request: every log line of it, on the gateway and on the worker
    // that handled it, carries the same id.
    const requestId = resp && resp.headers.get("X-Request-Id");
    if (requestId) {
      li.dataset.requestId = requestId;
      const line = element("div", "request-id");
      line.append("Request id ", element("code", "", requestId));
      if (logsDir) {
        line.append(" · in the logs: ", element("code", "", "grep " + requestId + " " + logsDir + "/*.log"));
      }
      li.querySelector("h3").after(line);
    }
    const lines = [];
    const retryAfter = resp && resp.headers.get("Retry-After");
    if (retryAfter) lines.push("Retry-After: " + retryAfter + "\n");
    lines.push(pretty(body) || "(no body)");
    li.append(element("div", "label", "Response"), element("pre", "response", lines.join("\n")));
    li.scrollIntoView({ block: "nearest" });
  }

  async function call(method, path, options) {
    const { body, token, file, headers: extra } = options || {};
    const headers = { ...(extra || {}) };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (file) headers["Content-Type"] = file.type;
    if (token) headers["Authorization"] = "Bearer " + token;
    const shown = file ? "(" + file.type + ", " + file.size + " bytes: " + file.name + ")" : body;
    const entry = startEntry(method, path, headers, shown);
    let resp;
    let data;
    try {
      resp = await fetch(path, {
        method,
        headers,
        body: file || (body === undefined ? undefined : JSON.stringify(body)),
        cache: "no-store",
        credentials: "omit",
      });
      const text = await resp.text();
      try {
        data = text ? JSON.parse(text) : undefined;
      } catch (err) {
        data = text;
      }
    } catch (err) {
      finishEntry(entry, null, String(err));
      return { status: 0, data: undefined };
    }
    finishEntry(entry, resp, data);
    return { status: resp.status, data };
  }

  // ---- what the mini-program holds -------------------------------------------------------

  function show() {
    $("state-code").textContent = held.code
      ? shorten(held.code) + (held.codeUsed ? " (posted; posting it again gets the same user)" : "")
      : "none";
    const ended = held.ended ? " (session ended)" : "";
    $("state-access").textContent = held.access ? shorten(held.access) + ended : "none";
    $("state-refresh").textContent = held.refresh ? shorten(held.refresh) + ended : "none";
    $("state-user").textContent = held.user
      ? held.user.id + (held.user.is_new ? " (new user)" : "")
      : "not logged in";
    const none = apps.length === 0;
    $("get-code").disabled = busy || none;
    $("login").disabled = busy || none || !held.code;
    $("refresh").disabled = busy || !held.refresh;
    $("me").disabled = busy;
    $("logout").disabled = busy;
    $("qr-scan").disabled = busy || !held.access || held.ended;
    $("qr-confirm").disabled = busy || !held.qr;
    $("qr-cancel").disabled = busy || !held.qr;
    $("web-start").disabled = none || web.waiting;
    $("upload-avatar").disabled = busy || !held.access;
    $("set-nickname").disabled = busy || !held.access;
    showConsents();
    const app = currentApp();
    const phoneFlow = app ? PHONE_FLOWS[app.platform] : undefined;
    $("bind-phone").disabled = busy || !held.access || !phoneFlow;
    $("phone-note").hidden = !app || Boolean(phoneFlow);
    $("phone-note").textContent = app && !phoneFlow ? PHONE_NOTES[app.platform] || "" : "";
    $("link").disabled = busy || !held.access || !linkApp();
    $("identities").disabled = busy || !held.access;
  }

  // How the sandbox plays each platform's phone button (docs/platforms.md §11).
  const PHONE_FLOWS = { wechat: "phone_codes", douyin: "phone_payload", kuaishou: "phone_payload",
    baidu: "phone_payload", alipay: "alipay/phone_payload" };
  const PHONE_NOTES = {
    qq: "QQ documents no server-side phone flow: the gateway answers not_supported.",
  };

  function linkApp() {
    return apps[Number($("link-app").value)] || null;
  }

  async function bindPhone() {
    const app = currentApp();
    const flow = PHONE_FLOWS[app.platform];
    const openid = $("openid").value.trim();
    const phone = $("phone").value.trim();
    const body = app.platform === "alipay"
      ? { app_id: app.app_id, mobile: phone } // Alipay's my.getPhoneNumber: no openid, its AES key
      : { platform: app.platform, app_id: app.app_id, openid, phone };
    const { status, data } = await call("POST", "/sandbox/" + flow, { body });
    if (status !== 200 || !data) return;
    const result = flow === "phone_codes" ? { code: data.code }
      : app.platform === "alipay" ? { response: data.response }
        : { encryptedData: data.encryptedData, iv: data.iv };
    await call("POST", "/api/v1/phone", { token: held.access, body: result });
  }

  async function link() {
    const other = linkApp();
    const body = { platform: other.platform, app_id: other.app_id };
    const openid = $("openid").value.trim();
    if (openid) body.openid = openid;
    const minted = await call("POST", "/sandbox/codes", { body });
    if (minted.status !== 200 || !minted.data || !minted.data.code) return;
    await call("POST", "/api/v1/identities", { token: held.access,
      body: { platform: other.platform, app_id: other.app_id, code: minted.data.code } });
  }

  async function identities() {
    await call("GET", "/api/v1/identities", { token: held.access });
  }

  // ---- the account panel -----------------------------------------------------------------

  function showConsents() {
    const prompt = $("consent-prompt");
    const missing = held.consents || [];
    if (held.consents === null) {
      prompt.textContent = "Log in to see what this app asks you to accept.";
    } else if (missing.length === 0) {
      prompt.textContent = "Nothing to accept: every document this app names is accepted.";
    } else {
      prompt.textContent = "This app asks you to accept: " +
        missing.map((c) => c.document + " (version " + c.version + ")").join(", ") + ".";
    }
    $("accept-consent").disabled = busy || missing.length === 0 || !held.access;
    $("export").disabled = busy;
    $("delete-account").disabled = busy;
  }

  async function acceptConsent() {
    const wanted = (held.consents || [])[0];
    const { status, data } = await call("POST", "/api/v1/consents", {
      token: held.access, body: { document: wanted.document, version: wanted.version },
    });
    if (status === 200 && data) held.consents = data.consent_required || [];
  }

  async function exportData() {
    await call("GET", "/api/v1/account/export", { token: held.access });
  }

  async function deleteAccount() {
    const { status } = await call("DELETE", "/api/v1/account", { token: held.access });
    if (status === 200) {
      held.ended = true;
      held.consents = null;
    }
  }

  function currentApp() {
    return apps[Number($("app").value)] || null;
  }

  async function step(action) {
    if (busy) return;
    busy = true;
    show();
    try {
      await action();
    } finally {
      busy = false;
      show();
    }
  }

  function keepSession(data) {
    held.access = data.access_token;
    held.refresh = data.refresh_token;
    held.ended = false;
    if (data.user) held.user = data.user;
  }

  async function getCode() {
    const app = currentApp();
    const openid = $("openid").value.trim();
    const body = { platform: app.platform, app_id: app.app_id };
    if (openid) body.openid = openid;
    const { status, data } = await call("POST", "/sandbox/codes", { body });
    if (status === 200 && data && data.code) {
      held.code = data.code;
      held.codeUsed = false;
    }
  }

  async function logIn() {
    const app = currentApp();
    const body = { platform: app.platform, app_id: app.app_id, code: held.code };
    held.codeUsed = true;
    const { status, data } = await call("POST", "/api/v1/login", { body });
    if (status === 200 && data && data.access_token) {
      keepSession(data);
      // A login says what the app asks the user to accept (absent: nothing).
      held.consents = data.consent_required || [];
    }
  }

  async function refresh() {
    const { status, data } = await call("POST", "/api/v1/token/refresh", {
      body: { refresh_token: held.refresh },
    });
    if (status === 200 && data && data.access_token) keepSession(data);
  }

  async function me() {
    const { status, data } = await call("GET", "/api/v1/me", { token: held.access });
    if (status === 200 && data) held.consents = data.consent_required || [];
  }

  async function logOut() {
    const body = $("logout-all").checked ? { all: true } : {};
    const { status } = await call("POST", "/api/v1/logout", { token: held.access, body });
    if (status === 200) held.ended = true;
  }

  // ---- the profile panel ----------------------------------------------------------------

  // The gateway's absolute avatar URLs, through this page's proxy (one origin).
  function proxied(url) {
    const at = url.indexOf("/v1/");
    return at < 0 ? "" : "/api" + url.slice(at);
  }

  function showProfile(profile) {
    const avatar = profile && profile.avatar;
    const img = $("avatar-img");
    if (avatar) {
      $("avatar-status").textContent = avatar.status;
      img.src = proxied(avatar.url || avatar.preview_url || "");
      img.hidden = false;
    } else {
      $("avatar-status").textContent = "none";
      img.hidden = true;
    }
    if (profile && profile.nickname) {
      $("nickname-status").textContent = profile.nickname + " (" + profile.nickname_status + ")";
    }
  }

  // Until the platform's verdict arrives: read /v1/me quietly (not logged) every second.
  async function watchAvatar(id) {
    for (let i = 0; i < 60; i++) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const resp = await fetch("/api/v1/me", {
        headers: { Authorization: "Bearer " + held.access }, cache: "no-store", credentials: "omit",
      });
      if (!resp.ok) return;
      const me = await resp.json();
      const profile = me.user_profile || {};
      if (!profile.avatar || profile.avatar.id !== id || profile.avatar.status !== "pending") {
        showProfile(profile);
        if (!profile.avatar) $("avatar-status").textContent = "rejected: removed";
        return;
      }
    }
  }

  async function uploadAvatar() {
    const file = $("avatar-file").files[0];
    if (!file) {
      $("avatar-status").textContent = "choose an image first";
      return;
    }
    const { status, data } = await call("POST", "/api/v1/profile/avatar", { token: held.access, file });
    if (status === 200 && data) {
      showProfile(data);
      if (data.avatar && data.avatar.status === "pending") watchAvatar(data.avatar.id);
    }
  }

  async function setNickname() {
    const { status, data } = await call("PATCH", "/api/v1/profile", {
      token: held.access, body: { nickname: $("nickname").value },
    });
    if (status === 200 && data) showProfile(data);
    else if (data && data.error) $("nickname-status").textContent = "refused: " + data.error.code;
  }

  // ---- QR login: the phone side (mini-program panel) -------------------------------------

  async function qrScan() {
    const app = currentApp();
    // The camera: the sandbox tells what the latest code drawn for this app opens.
    const camera = await call("POST", "/sandbox/scan", { body: { app_id: app.app_id } });
    if (camera.status !== 200 || !camera.data) return;
    const id = decodeURIComponent(camera.data.scene);
    // The page's proxy takes JSON bodies only; the gateway ignores this one.
    const { status, data } = await call("POST", "/api/v1/qr-logins/" + id + "/scan",
      { token: held.access, body: {} });
    if (status !== 200 || !data) return;
    held.qr = id;
    $("qr-site").textContent = data.site || "unknown site";
    $("qr-browser").textContent = data.browser || "unknown browser";
  }

  async function qrAnswer(yes) {
    const id = held.qr;
    held.qr = null;
    await call("POST", "/api/v1/qr-logins/" + id + "/" + (yes ? "confirm" : "cancel"),
      { token: held.access, body: {} });
  }

  // ---- QR login: the website side (PC website panel) -----------------------------------

  const web = { waiting: false };

  function webState(text) {
    $("web-state").textContent = text;
  }

  async function webStart() {
    const app = currentApp();
    web.waiting = true;
    show();
    $("web-user").hidden = true;
    delete $("website").dataset.signedIn;
    try {
      const { status, data } = await call("POST", "/api/v1/qr-logins",
        { body: { platform: app.platform, app_id: app.app_id } });
      if (status !== 200 || !data) {
        webState("Could not start: " + (data && data.error ? data.error.code : status));
        return;
      }
      const img = $("web-qr");
      img.src = "/api" + data.image_url;
      img.hidden = false;
      $("website").dataset.qrId = data.id;
      let known = "pending";
      webState("Scan the code with the mini-program.");
      for (;;) {
        const poll = await call("GET",
          "/api/v1/qr-logins/" + data.id + "?wait=20&state=" + known,
          { headers: { "X-QR-Poll-Token": data.poll_token } });
        if (poll.status !== 200 || !poll.data) {
          webState("Stopped: " + (poll.data && poll.data.error ? poll.data.error.code : poll.status));
          return;
        }
        known = poll.data.state;
        $("website").dataset.state = known;
        if (poll.data.session) {
          img.hidden = true;
          const me = await call("GET", "/api/v1/me", { token: poll.data.session.access_token });
          const id = me.data && me.data.id;
          webState("Signed in (a web session of its own).");
          $("web-user").textContent = "Signed in as " + (id || "?");
          $("web-user").hidden = false;
          if (id) $("website").dataset.signedIn = id;
          return;
        }
        if (known === "scanned") {
          webState("Scanned" + (poll.data.scanned_by ? " by " + poll.data.scanned_by : "")
            + ": confirm on the phone.");
        } else if (known === "cancelled" || known === "expired") {
          img.hidden = true;
          webState("The request was " + known + ": start again.");
          return;
        }
      }
    } finally {
      web.waiting = false;
      show();
    }
  }

  function clearLog() {
    $("log").replaceChildren();
    $("log-empty").hidden = false;
  }

  async function init() {
    const select = $("app");
    try {
      const resp = await fetch("/config.json", { cache: "no-store" });
      const config = await resp.json();
      apps = config.apps || [];
      logsDir = config.logs_dir || "";
      $("openid").value = config.default_openid || "";
    } catch (err) {
      apps = [];
    }
    if (apps.length === 0) {
      const option = element("option", "", "no app is registered");
      option.disabled = true;
      select.append(option);
    }
    apps.forEach((app, index) => {
      const label = app.platform + " · " + app.app_id + (app.name ? " (" + app.name + ")" : "");
      const option = element("option", "", label);
      option.value = String(index);
      select.append(option);
      const linked = element("option", "", label);
      linked.value = String(index);
      $("link-app").append(linked);
    });
    if (apps.length > 1) $("link-app").value = "1";
    $("link-app").addEventListener("change", show);
    select.addEventListener("change", () => {
      held.code = null;
      show();
    });
    $("get-code").addEventListener("click", () => step(getCode));
    $("login").addEventListener("click", () => step(logIn));
    $("refresh").addEventListener("click", () => step(refresh));
    $("me").addEventListener("click", () => step(me));
    $("logout").addEventListener("click", () => step(logOut));
    $("bind-phone").addEventListener("click", () => step(bindPhone));
    $("link").addEventListener("click", () => step(link));
    $("identities").addEventListener("click", () => step(identities));
    $("qr-scan").addEventListener("click", () => step(qrScan));
    $("qr-confirm").addEventListener("click", () => step(() => qrAnswer(true)));
    $("qr-cancel").addEventListener("click", () => step(() => qrAnswer(false)));
    $("web-start").addEventListener("click", () => webStart());
    $("clear-log").addEventListener("click", clearLog);
    $("accept-consent").addEventListener("click", () => step(acceptConsent));
    $("export").addEventListener("click", () => step(exportData));
    $("delete-account").addEventListener("click", () => step(deleteAccount));
    $("upload-avatar").addEventListener("click", () => step(uploadAvatar));
    $("set-nickname").addEventListener("click", () => step(setNickname));
    show();
    document.body.dataset.ready = "true";
  }

  document.addEventListener("DOMContentLoaded", init);
})();
