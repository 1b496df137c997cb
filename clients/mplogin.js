/**
 * mplogin client for mini-programs: log in with the platform's login code, keep the session,
 * refresh it before it expires, and attach it to requests.
 *
 * One dependency-free ES module. Works on WeChat, Alipay, Douyin, Kuaishou, Baidu and QQ
 * mini-programs, on uni-app and Taro, and in Node (tests) with an adapter of your own.
 *
 *   import { createClient } from './mplogin.js'
 *   const auth = createClient({ baseUrl: 'https://login.example.com', platform: 'wechat' })
 *   const user = await auth.login()
 *   const res = await auth.request({ url: '/v1/me' })
 */

/** @typedef {'wechat'|'alipay'|'douyin'|'kuaishou'|'baidu'|'qq'} Platform */

/**
 * What the platform's login call gave: a one-time `code` and/or (Douyin) an `anonymousCode`.
 * @typedef {{ code?: string, anonymousCode?: string }} LoginCode
 */

/**
 * @typedef {object} HttpRequest
 * @property {string} url           absolute URL
 * @property {string} method        'GET', 'POST', …
 * @property {object|string} [data] request body (sent as JSON)
 * @property {Record<string,string>} header
 * @property {number} [timeout]     milliseconds
 */

/**
 * @typedef {object} HttpResponse
 * @property {number} statusCode
 * @property {any} data             the parsed JSON body (or the raw text)
 * @property {Record<string,string>} header
 */

/**
 * @typedef {object} Storage
 * @property {(key: string) => any} get       the stored string, or null/undefined/''; may return a Promise
 * @property {(key: string, value: string) => any} set
 * @property {(key: string) => any} remove
 */

/**
 * A host platform, as the client needs it. Plain object; pass your own for tests or unusual hosts.
 * @typedef {object} Adapter
 * @property {() => Promise<LoginCode>} login   a fresh login code from the platform, every call
 * @property {(req: HttpRequest) => Promise<HttpResponse>} request   resolves for every HTTP status;
 *           rejects only when no response arrived
 * @property {Storage} storage
 * @property {(req: UploadRequest) => Promise<HttpResponse>} [upload]   the host's uploadFile
 *           (multipart, one file); resolves for every HTTP status
 */

/**
 * @typedef {object} UploadRequest
 * @property {string} url            absolute URL
 * @property {string} filePath       the host's temporary file path (e.g. chooseAvatar's avatarUrl)
 * @property {string} name           the file's form field name
 * @property {Record<string,string>} header
 * @property {number} [timeout]      milliseconds
 */

/**
 * What the client stores (one JSON string under `storageKey`). Times are epoch milliseconds
 * of the injected clock.
 * @typedef {object} StoredSession
 * @property {string} access_token
 * @property {number} access_expires_at
 * @property {string} refresh_token
 * @property {number} refresh_expires_at
 * @property {{id: string, is_new: boolean, platform: string, app_id: string}} user
 * @property {{document: string, version: string}[]} [consent_required]  what the app asks the
 *           user to accept that they have not (from the login; updated by acceptConsent)
 */

/** Login errors worth another try with a fresh code. */
const RETRY_LOGIN = new Set([
  'invalid_code', 'platform_unavailable', 'timeout', 'service_unavailable', 'network_error',
])

/** An error from mplogin (`code` is the gateway's stable error code) or from the transport. */
export class MploginError extends Error {
  /**
   * @param {string} code          e.g. 'invalid_code', 'network_error', 'platform_login_failed'
   * @param {string} message
   * @param {{status?: number, requestId?: string, retryAfter?: number, cause?: unknown}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message)
    this.name = 'MploginError'
    this.code = code
    this.status = extra.status ?? 0
    this.requestId = extra.requestId
    this.retryAfter = extra.retryAfter
    if (extra.cause !== undefined) this.cause = extra.cause
  }
}

/**
 * The MploginError an error response stands for.
 * @param {HttpResponse} res
 * @returns {MploginError}
 */
export function errorFromResponse(res) {
  const body = typeof res.data === 'string' ? safeJson(res.data) : res.data
  const error = (body && body.error) || {}
  const retry = Number(headerOf(res.header, 'retry-after'))
  return new MploginError(
    error.code || `http_${res.statusCode}`,
    error.message || `HTTP ${res.statusCode}`,
    {
      status: res.statusCode,
      requestId: error.request_id || headerOf(res.header, 'x-request-id'),
      retryAfter: Number.isFinite(retry) && retry >= 0 ? retry : undefined,
    },
  )
}

/**
 * Create a client.
 * @param {object} options
 * @param {string} options.baseUrl          the gateway, e.g. 'https://login.example.com'
 * @param {Platform} options.platform
 * @param {string} [options.appId]          may be left out when the platform has one app
 * @param {Adapter} [options.adapter]       detected from the host's globals when left out
 * @param {Storage} [options.storage]       defaults to the adapter's storage
 * @param {() => number} [options.now]      clock, epoch ms (default Date.now)
 * @param {string} [options.storageKey]     default 'mplogin:<platform>:<appId>'
 * @param {number} [options.refreshLeeway]  refresh when the access token expires within this many seconds (60)
 * @param {number} [options.retries]        login retries with a fresh code (2)
 * @param {number} [options.backoffMs]      first login retry delay, doubled each time (300)
 * @param {number} [options.maxRetryAfter]  longest `Retry-After` a login waits for, seconds (10)
 * @param {number} [options.timeout]        per HTTP request, ms (15000)
 * @param {(ms: number) => Promise<void>} [options.sleep]
 */
export function createClient(options) {
  const {
    baseUrl, platform, appId,
    now = Date.now,
    refreshLeeway = 60,
    retries = 2,
    backoffMs = 300,
    maxRetryAfter = 10,
    timeout = 15000,
    sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
  } = options
  if (!baseUrl) throw new TypeError('createClient: baseUrl is required')
  if (!platform) throw new TypeError('createClient: platform is required')
  const adapter = options.adapter || detectAdapter(platform)
  const storage = options.storage || adapter.storage
  const key = options.storageKey || `mplogin:${platform}:${appId || 'default'}`

  /** @type {Promise<StoredSession>|null} */ let loggingIn = null
  /** @type {Promise<StoredSession|null>|null} */ let refreshing = null

  // ---- storage -------------------------------------------------------------------------

  /** @returns {Promise<StoredSession|null>} */
  async function load() {
    const raw = await storage.get(key)
    if (!raw) return null
    const value = typeof raw === 'string' ? safeJson(raw) : raw
    return value && value.access_token && value.refresh_token ? value : null
  }

  /**
   * Store a login or refresh answer, with absolute expiry times counted from `sentAt`.
   * @param {any} body
   * @param {number} sentAt
   * @returns {Promise<StoredSession>}
   */
  async function save(body, sentAt, consentRequired = undefined) {
    /** @type {StoredSession} */
    const session = {
      access_token: body.access_token,
      access_expires_at: sentAt + body.expires_in * 1000,
      refresh_token: body.refresh_token,
      refresh_expires_at: sentAt + body.refresh_expires_in * 1000,
      user: body.user,
      // A login says what is required (absent: nothing); a refresh keeps what was known.
      consent_required: body.consent_required ?? consentRequired ?? [],
    }
    await storage.set(key, JSON.stringify(session))
    return session
  }

  async function clear() {
    await storage.remove(key)
  }

  // ---- transport -----------------------------------------------------------------------

  /** @param {string} url */
  function absolute(url) {
    if (/^https?:\/\//i.test(url)) return url
    return `${baseUrl.replace(/\/+$/, '')}/${url.replace(/^\/+/, '')}`
  }

  /**
   * One HTTP exchange; rejects only with a `network_error`.
   * @param {{url: string, method?: string, data?: any, header?: Record<string,string>, timeout?: number}} req
   * @returns {Promise<HttpResponse>}
   */
  async function send(req) {
    const header = { ...(req.header || {}) }
    if (req.data !== undefined && !hasHeader(header, 'content-type')) {
      header['Content-Type'] = 'application/json'
    }
    try {
      const res = await adapter.request({
        url: absolute(req.url),
        method: (req.method || 'GET').toUpperCase(),
        data: req.data,
        header,
        timeout: req.timeout ?? timeout,
      })
      if (typeof res.data === 'string' && isJson(res.header)) res.data = safeJson(res.data) ?? res.data
      return res
    } catch (cause) {
      if (cause instanceof MploginError) throw cause
      throw new MploginError('network_error', `The request did not complete: ${describe(cause)}`, { cause })
    }
  }

  /**
   * POST to the gateway, the 2xx body or a MploginError.
   * @param {string} path
   * @param {any} data
   */
  async function post(path, data) {
    const res = await send({ url: path, method: 'POST', data })
    if (res.statusCode >= 200 && res.statusCode < 300) return res.data
    throw errorFromResponse(res)
  }

  // ---- login ---------------------------------------------------------------------------

  /** @returns {Promise<StoredSession>} */
  async function doLogin() {
    for (let attempt = 0; ; attempt++) {
      let got
      try {
        got = (await adapter.login()) || {}
      } catch (cause) {
        throw new MploginError('platform_login_failed',
          `The platform's login call failed: ${describe(cause)}`, { cause })
      }
      /** @type {Record<string,string>} */
      const body = { platform }
      if (appId) body.app_id = appId
      if (got.code) body.code = got.code
      if (got.anonymousCode) body.anonymous_code = got.anonymousCode
      if (!body.code && !body.anonymous_code) {
        throw new MploginError('platform_login_failed', 'The platform gave no login code.')
      }
      const sentAt = now()
      try {
        return await save(await post('/v1/login', body), sentAt)
      } catch (err) {
        const wait = attempt < retries ? loginRetryDelay(err, attempt) : null
        if (wait === null) throw err
        await sleep(wait) // then a fresh code: a code is never posted twice
      }
    }
  }

  /**
   * How long to wait before the next login attempt, or null when it is not worth one.
   * @param {any} err
   * @param {number} attempt
   */
  function loginRetryDelay(err, attempt) {
    if (!(err instanceof MploginError)) return null
    if (err.code === 'rate_limited') {
      const seconds = err.retryAfter ?? 1
      return seconds <= maxRetryAfter ? seconds * 1000 : null
    }
    return RETRY_LOGIN.has(err.code) ? backoffMs * 2 ** attempt : null
  }

  /**
   * Log in (single flight: concurrent callers share one login).
   * @returns {Promise<StoredSession>}
   */
  function loginSession() {
    if (!loggingIn) loggingIn = doLogin().finally(() => { loggingIn = null })
    return loggingIn
  }

  // ---- refresh -------------------------------------------------------------------------

  /**
   * Spend the stored refresh token for a new pair; on `invalid_refresh_token` clear storage and
   * (with `relogin`) log in again.
   * @param {string|undefined} stale  the access token that prompted this; if the stored one
   *   differs, someone already refreshed and the stored session is returned as is
   * @param {boolean} relogin
   * @returns {Promise<StoredSession|null>}
   */
  async function doRefresh(stale, relogin) {
    const current = await load()
    if (!current || current.refresh_expires_at <= now()) return relogin ? loginSession() : null
    if (stale !== undefined && current.access_token !== stale) return current
    const sentAt = now()
    try {
      return await save(await post('/v1/token/refresh', { refresh_token: current.refresh_token }), sentAt,
        current.consent_required)
    } catch (err) {
      if (err instanceof MploginError && err.code === 'invalid_refresh_token') {
        await clear()
        return relogin ? loginSession() : null
      }
      throw err
    }
  }

  /**
   * Refresh, single flight: concurrent callers share one call, because rotation spends the
   * token and a second refresh with it would end the session.
   * @param {string} [stale]
   * @returns {Promise<StoredSession>}
   */
  async function refreshSession(stale) {
    if (!refreshing) refreshing = doRefresh(stale, true).finally(() => { refreshing = null })
    // The flight may have been started by logout (no relogin): then log in here.
    return (await refreshing) || loginSession()
  }

  /**
   * Refresh without a login fallback: null when the refresh token is refused.
   * @param {string} stale
   * @returns {Promise<StoredSession|null>}
   */
  function refreshSessionOnly(stale) {
    return refreshing || (refreshing = doRefresh(stale, false).finally(() => { refreshing = null }))
  }

  /**
   * A session whose access token is good for more than `refreshLeeway` seconds, logging in or
   * refreshing as needed.
   * @returns {Promise<StoredSession>}
   */
  async function freshSession() {
    if (loggingIn) return loggingIn
    if (refreshing) return refreshSession()
    const current = await load()
    const t = now()
    if (!current || current.refresh_expires_at <= t) {
      if (current) await clear()
      return loginSession()
    }
    if (current.access_expires_at - t > refreshLeeway * 1000) return current
    try {
      return await refreshSession(current.access_token)
    } catch (err) {
      // The refresh failed for a passing reason (network, timeout): the old token, still
      // stored and not yet expired, may still do.
      const still = await load()
      if (still && still.access_token === current.access_token && current.access_expires_at > now()) {
        return current
      }
      throw err
    }
  }

  // ---- requests --------------------------------------------------------------------------

  /**
   * Make an authenticated request (to the gateway, or to any service that verifies our tokens).
   * Resolves with the response for every HTTP status, like `wx.request`; rejects with a
   * MploginError when there is no session to be had or no response came.
   * @param {{url: string, method?: string, data?: any, header?: Record<string,string>, timeout?: number}} req
   * @returns {Promise<HttpResponse>}
   */
  async function request(req) {
    let session = await freshSession()
    const attempt = (/** @type {StoredSession} */ s) => send({
      ...req, header: { ...(req.header || {}), Authorization: `Bearer ${s.access_token}` },
    })
    const res = await attempt(session)
    if (!isInvalidToken(res)) return res
    // The token was refused (revoked, expired early, keys rotated): refresh once, then retry.
    // A refused refresh token leads to a fresh login inside refreshSession.
    session = await refreshSession(session.access_token)
    return attempt(session)
  }

  /**
   * Upload a file with the host's uploadFile, with the access token (refreshed once on 401,
   * like `request`).
   * @param {string} path
   * @param {string} filePath
   * @returns {Promise<HttpResponse>}
   */
  async function uploadWithSession(path, filePath) {
    if (!adapter.upload) throw new TypeError('mplogin: this adapter has no upload (uploadFile)')
    const upload = /** @type {NonNullable<Adapter['upload']>} */ (adapter.upload)
    const attempt = async (/** @type {StoredSession} */ s) => {
      try {
        const res = await upload({
          url: absolute(path), filePath, name: 'file',
          header: { Authorization: `Bearer ${s.access_token}` }, timeout,
        })
        // uploadFile hands the body over as text whatever its type.
        if (typeof res.data === 'string') res.data = safeJson(res.data) ?? res.data
        return res
      } catch (cause) {
        throw new MploginError('network_error', `The upload did not complete: ${describe(cause)}`, { cause })
      }
    }
    let session = await freshSession()
    const res = await attempt(session)
    if (!isInvalidToken(res)) return res
    session = await refreshSession(session.access_token)
    return attempt(session)
  }

  /**
   * A gateway call after login: the 2xx body, or a MploginError.
   * @param {{url: string, method?: string, data?: any}} req
   */
  async function call(req) {
    const res = await request(req)
    if (res.statusCode >= 200 && res.statusCode < 300) return res.data
    throw errorFromResponse(res)
  }

  /**
   * A call that needs a recent login (account deletion and export): on
   * `reauthentication_required` log in once more with a fresh code, then retry.
   * @param {{url: string, method?: string}} req
   */
  async function recentCall(req) {
    const res = await request(req)
    if (res.statusCode >= 200 && res.statusCode < 300) return res.data
    const err = errorFromResponse(res)
    if (err.code !== 'reauthentication_required') throw err
    await loginSession()
    return call(req)
  }

  /**
   * Keep the stored session's `consent_required` in step with an answer that carries it.
   * @param {{consent_required?: {document: string, version: string}[]}} body
   */
  async function keepConsents(body) {
    const current = await load()
    if (current && Array.isArray(body.consent_required)) {
      await storage.set(key, JSON.stringify({ ...current, consent_required: body.consent_required }))
    }
    return body
  }

  return {
    /**
     * Log in with a fresh platform code (also when a session is stored) and store the session.
     * @returns {Promise<StoredSession['user']>}
     */
    async login() {
      return (await loginSession()).user
    },

    /**
     * A session that is valid now: the stored one, refreshed or newly logged in as needed.
     * @returns {Promise<StoredSession['user']>}
     */
    async ensureLogin() {
      return (await freshSession()).user
    },

    request,

    /** GET /v1/me: the user's id, identities, profile and masked phone. */
    me() {
      return call({ url: '/v1/me' })
    },

    /**
     * POST /v1/phone with what this host's phone button gave (`e.detail` of
     * `<button open-type="getPhoneNumber">`, or Alipay's `my.getPhoneNumber` result), shaped as
     * the gateway expects it for the platform.
     * @param {any} result
     * @param {{component?: 'fast'|'realtime'}} [opts]  WeChat: which phone button was used
     * @returns {Promise<{phone: string, platform?: string}>}
     */
    bindPhone(result, opts = {}) {
      return call({ url: '/v1/phone', method: 'POST', data: phoneBody(platform, result, opts) })
    },

    /** GET /v1/identities: the user's platform identities. */
    identities() {
      return call({ url: '/v1/identities' })
    },

    /**
     * Get a login code from this host and link its identity to a user (POST /v1/identities):
     * the signed-in user, or the one whose access token is given (a session obtained on
     * another platform). The code is used once: a failed link needs a new call.
     * @param {{accessToken?: string}} [opts]
     * @returns {Promise<{identity: any, identities: any[]}>}
     */
    async linkIdentity({ accessToken } = {}) {
      let got
      try {
        got = (await adapter.login()) || {}
      } catch (cause) {
        throw new MploginError('platform_login_failed',
          `The platform's login call failed: ${describe(cause)}`, { cause })
      }
      if (!got.code) throw new MploginError('platform_login_failed', 'The platform gave no login code.')
      /** @type {Record<string,string>} */
      const data = { platform, code: got.code }
      if (appId) data.app_id = appId
      const req = { url: '/v1/identities', method: 'POST', data }
      if (!accessToken) return call(req)
      const res = await send({ ...req, header: { Authorization: `Bearer ${accessToken}` } })
      if (res.statusCode >= 200 && res.statusCode < 300) return res.data
      throw errorFromResponse(res)
    },

    /**
     * DELETE /v1/account: delete the user's account (注销账号). Logs in again first when the
     * server asks for a recent login. Clears storage: every session of the user has ended.
     * @returns {Promise<{status: 'deleted'|'pending_deletion', deleted_at?: string, due_at?: string}>}
     */
    async deleteAccount() {
      const body = await recentCall({ url: '/v1/account', method: 'DELETE' })
      await clear()
      return body
    },

    /**
     * GET /v1/account/export: everything the server stores about the user, as one object
     * (logs in again first when the server asks for a recent login).
     * @returns {Promise<Record<string, any>>}
     */
    exportData() {
      return recentCall({ url: '/v1/account/export' })
    },

    /**
     * POST /v1/consents: record that the user accepted `version` of `document`.
     * @param {string} document  e.g. 'privacy'
     * @param {string} version   e.g. '2026-10'
     * @returns {Promise<{document: string, version: string, accepted_at: string, consent_required: {document: string, version: string}[]}>}
     */
    async acceptConsent(document, version) {
      return keepConsents(await call({ url: '/v1/consents', method: 'POST', data: { document, version } }))
    },

    /**
     * DELETE /v1/consents/{document}: withdraw the user's consent to `document`.
     * @param {string} document
     */
    async withdrawConsent(document) {
      return keepConsents(await call({ url: `/v1/consents/${encodeURIComponent(document)}`, method: 'DELETE' }))
    },

    /**
     * POST /v1/profile/avatar with the host's uploadFile: `tempFilePath` is what
     * `<button open-type="chooseAvatar">` gave (`e.detail.avatarUrl`) or any local image path.
     * Resolves with the user-entered profile (`avatar.status`: pending until the platform's
     * check passes it); rejects with a MploginError (`invalid_image`, `invalid_request` for a file over the size limit, …).
     * @param {string} tempFilePath
     */
    async uploadAvatar(tempFilePath) {
      const res = await uploadWithSession('/v1/profile/avatar', tempFilePath)
      if (res.statusCode >= 200 && res.statusCode < 300) return res.data
      throw errorFromResponse(res)
    },

    /**
     * POST /v1/profile/nickname (PATCH /v1/profile's twin: `wx.request` and its copies have no
     * PATCH) with the nickname the user typed (`<input type="nickname">`). Rejects with
     * `content_rejected` when the platform's check rates it risky (the old one stays).
     * @param {string} text
     */
    setNickname(text) {
      return call({ url: '/v1/profile/nickname', method: 'POST', data: { nickname: text } })
    },

    /**
     * Phone side of a QR login (docs/qrlogin.md): the page opened by a scan of the website's
     * code calls this with `query.scene`. It becomes the request's one scanner, shows the
     * user what `decide` is given (the requesting site and browser: a code relayed by a
     * phishing page names a site the user did not open), then confirms or cancels.
     * @param {string} scene  `query.scene` as the page received it (URL-encoded or not)
     * @param {{decide?: (screen: {id: string, site: string|null, browser: string|null, expires_in: number}) => boolean|Promise<boolean>}} [opts]
     *        default: confirm
     * @returns {Promise<{state: string, screen: object}>}  state 'confirmed' or 'cancelled'
     */
    async confirmQrLogin(scene, { decide } = {}) {
      const id = decodeURIComponent(String(scene || ''))
      if (!/^[A-Za-z0-9_-]{16,32}$/.test(id)) {
        throw new MploginError('qr_login_expired', 'This is not a QR login code.')
      }
      const path = `/v1/qr-logins/${id}`
      const screen = await call({ url: `${path}/scan`, method: 'POST' })
      const yes = decide ? await decide(screen) : true
      const answer = await call({ url: `${path}/${yes ? 'confirm' : 'cancel'}`, method: 'POST' })
      return { state: answer.state, screen }
    },

    /** GET /v1/sessions: the user's active sessions (web sessions from QR logins included). */
    sessions() {
      return call({ url: '/v1/sessions' })
    },

    /**
     * End another session of this user (a web session signed in by a QR login).
     * @param {string} sessionId  its `id` from `sessions()`
     */
    endSession(sessionId) {
      return call({ url: '/v1/logout', method: 'POST', data: { session_id: sessionId } })
    },

    /**
     * End this session (or, with `all`, every session of the user) and clear storage. Storage
     * is cleared even when the gateway cannot be reached.
     * @param {{all?: boolean}} [opts]
     * @returns {Promise<{sessions_ended: number}>}
     */
    async logout({ all = false } = {}) {
      try {
        let session = await load()
        if (session && session.access_expires_at - now() <= 5000) {
          // An expired access token cannot end its session: refresh first (never log in).
          session = await refreshSessionOnly(session.access_token).catch(() => null)
        }
        if (!session) return { sessions_ended: 0 }
        const res = await send({
          url: '/v1/logout', method: 'POST', data: { all },
          header: { Authorization: `Bearer ${session.access_token}` },
        })
        if (res.statusCode >= 200 && res.statusCode < 300) return res.data
        if (isInvalidToken(res)) return { sessions_ended: 0 } // already ended
        throw errorFromResponse(res)
      } finally {
        await clear()
      }
    },

    /**
     * What is stored, without the refresh token; null when logged out.
     * @returns {Promise<{access_token: string, access_expires_at: number, refresh_expires_at: number, user: StoredSession['user']}|null>}
     */
    async session() {
      const s = await load()
      if (!s) return null
      const { refresh_token: _hidden, ...shown } = s
      return shown
    },
  }
}

// ---- platform adapters -------------------------------------------------------------------

/**
 * Promisify a callback-style platform API (`{success, fail}`).
 * @param {Function} fn
 * @param {object} [opts]
 * @returns {Promise<any>}
 */
function callApi(fn, opts = {}) {
  return new Promise((resolve, reject) => {
    fn({ ...opts, success: resolve, fail: reject })
  })
}

/**
 * storage for the wx-shaped `getStorageSync(key)` family.
 * @param {any} api
 * @returns {Storage}
 */
function syncStorage(api) {
  return {
    get: (key) => api.getStorageSync(key),
    set: (key, value) => api.setStorageSync(key, value),
    remove: (key) => api.removeStorageSync(key),
  }
}

/**
 * `request` for the wx-shaped family (wx, qq, tt, ks, swan, uni).
 * @param {any} api
 */
function wxRequest(api) {
  /** @param {HttpRequest} req */
  return (req) => callApi(api.request, {
    url: req.url, method: req.method, data: req.data, header: req.header, timeout: req.timeout,
  }).then((res) => ({ statusCode: res.statusCode, data: res.data, header: res.header || {} }))
}

/**
 * An adapter for a wx-shaped host with the given login call.
 * @param {any} api
 * @param {() => Promise<LoginCode>} login
 * @returns {Adapter}
 */
function wxLike(api, login) {
  return { login, request: wxRequest(api), storage: syncStorage(api), upload: wxUpload(api) }
}

/**
 * `upload` for the wx-shaped family: `uploadFile({url, filePath, name, header})` answers
 * `{statusCode, data}` with the body as text.
 * @param {any} api
 */
function wxUpload(api) {
  /** @param {UploadRequest} req */
  return (req) => callApi(api.uploadFile, {
    url: req.url, filePath: req.filePath, name: req.name, header: req.header, timeout: req.timeout,
  }).then((res) => ({ statusCode: res.statusCode, data: res.data, header: res.header || {} }))
}

/** Adapters by host. Each takes the host's API object (e.g. `wx`) and returns an Adapter. */
export const adapters = {
  /** @param {any} wx */
  wechat: (wx) => wxLike(wx, () => callApi(wx.login).then((r) => ({ code: r.code }))),
  /** @param {any} qq */
  qq: (qq) => wxLike(qq, () => callApi(qq.login).then((r) => ({ code: r.code }))),
  /** @param {any} ks */
  kuaishou: (ks) => wxLike(ks, () => callApi(ks.login).then((r) => ({ code: r.code }))),
  /** @param {any} tt  tt.login gives `code` (logged-in user) and/or `anonymousCode`. */
  douyin: (tt) => wxLike(tt, () => callApi(tt.login)
    .then((r) => ({ code: r.code || undefined, anonymousCode: r.anonymousCode || undefined }))),
  /** @param {any} swan  `swan.getLoginCode` where the base library has it, else `swan.login`. */
  baidu: (swan) => wxLike(swan, () => callApi(swan.getLoginCode || swan.login)
    .then((r) => ({ code: r.code }))),

  /**
   * Alipay: `my.getAuthCode` gives `authCode`; `my.request` takes `headers` and answers
   * `status`/`headers` (and calls `fail` for non-2xx on older base libraries); storage takes
   * `{key, data}` objects.
   * @param {any} my
   * @returns {Adapter}
   */
  alipay: (my) => ({
    login: () => callApi(my.getAuthCode, { scopes: 'auth_base' }).then((r) => ({ code: r.authCode })),
    request: (req) => new Promise((resolve, reject) => {
      const shape = (/** @type {any} */ r) => ({
        statusCode: r.status ?? r.statusCode,
        data: r.data,
        header: r.headers || r.header || {},
      })
      my.request({
        url: req.url,
        method: req.method,
        data: req.data === undefined || typeof req.data === 'string' ? req.data : JSON.stringify(req.data),
        headers: req.header,
        dataType: 'json',
        timeout: req.timeout,
        success: (/** @type {any} */ r) => resolve(shape(r)),
        // HTTP errors arrive here with the response attached; anything else had no response.
        fail: (/** @type {any} */ e) => ((e && (e.status ?? e.statusCode)) ? resolve(shape(e)) : reject(e)),
      })
    }),
    // my.uploadFile names the field `fileName` and needs `fileType`; it answers `statusCode`
    // (or `status`) and the body as text.
    upload: (req) => callApi(my.uploadFile, {
      url: req.url, filePath: req.filePath, fileName: req.name, fileType: 'image',
      header: req.header, timeout: req.timeout,
    }).then((r) => ({ statusCode: r.statusCode ?? r.status, data: r.data, header: r.header || r.headers || {} })),
    storage: {
      get: (key) => {
        const r = my.getStorageSync({ key })
        return r && r.data
      },
      set: (key, value) => my.setStorageSync({ key, data: value }),
      remove: (key) => my.removeStorageSync({ key }),
    },
  }),

  /**
   * uni-app's unified API (`uni.login({provider})`, `uni.request`, `uni.getStorageSync`).
   * @param {any} uni
   * @param {Platform} platform
   * @returns {Adapter}
   */
  uni: (uni, platform) => wxLike(uni, () => callApi(uni.login, { provider: UNI_PROVIDERS[platform] })
    .then((r) => ({ code: r.code || r.authCode || undefined, anonymousCode: r.anonymousCode || undefined }))),

  /**
   * Taro (`import Taro from '@tarojs/taro'`): promise-returning `login` and `request`.
   * @param {any} Taro
   * @returns {Adapter}
   */
  taro: (Taro) => ({
    login: () => Promise.resolve(Taro.login())
      .then((r) => ({ code: r.code || r.authCode || undefined, anonymousCode: r.anonymousCode || undefined })),
    request: (req) => Promise.resolve(Taro.request({
      url: req.url, method: req.method, data: req.data, header: req.header, timeout: req.timeout,
    })).then((res) => ({ statusCode: res.statusCode, data: res.data, header: res.header || {} })),
    upload: (req) => Promise.resolve(Taro.uploadFile({
      url: req.url, filePath: req.filePath, name: req.name, header: req.header, timeout: req.timeout,
    })).then((res) => ({ statusCode: res.statusCode, data: res.data, header: res.header || {} })),
    storage: syncStorage(Taro),
  }),
}

/** uni.login providers by platform. */
const UNI_PROVIDERS = {
  wechat: 'weixin', alipay: 'alipay', douyin: 'toutiao', kuaishou: 'kuaishou', baidu: 'baidu', qq: 'qq',
}

/** The global object of each platform's native API. */
const NATIVE_GLOBALS = { wechat: 'wx', alipay: 'my', douyin: 'tt', kuaishou: 'ks', baidu: 'swan', qq: 'qq' }

/**
 * The adapter for the host this code runs on: the platform's native global (`wx`, `my`, `tt`,
 * `ks`, `swan`, `qq`), else uni-app's `uni`, else a global `Taro`.
 * @param {Platform} platform
 * @param {any} [scope]  where to look (default globalThis)
 * @returns {Adapter}
 */
export function detectAdapter(platform, scope = globalThis) {
  const name = NATIVE_GLOBALS[/** @type {keyof typeof NATIVE_GLOBALS} */ (platform)]
  if (!name) throw new TypeError(`mplogin: unknown platform ${platform}`)
  const native = scope[name]
  if (native && typeof native.request === 'function') return adapters[platform](native)
  if (scope.uni && typeof scope.uni.login === 'function') return adapters.uni(scope.uni, platform)
  if (scope.Taro && typeof scope.Taro.login === 'function') return adapters.taro(scope.Taro)
  throw new TypeError(`mplogin: no ${name} (or uni/Taro) API found; pass createClient({ adapter })`)
}

// ---- helpers -----------------------------------------------------------------------------

/**
 * The body of POST /v1/phone from a host's phone-button result: WeChat's `code`; Douyin's,
 * Kuaishou's and Baidu's `encryptedData` + `iv` (Douyin's newer button gives a `code` alone,
 * which is sent as is; given both, the encrypted pair is sent); Alipay's `response`, as
 * `my.getPhoneNumber` gives it (a JSON string holding `response` and `sign`).
 * @param {Platform} platform
 * @param {any} result
 * @param {{component?: string}} opts
 */
export function phoneBody(platform, result, opts = {}) {
  const r = result && result.detail ? result.detail : result || {}
  /** @type {Record<string,string>} */
  const body = {}
  if (platform === 'alipay') {
    if (r.response) body.response = r.response
    if (r.sign) body.sign = r.sign
  } else if (r.encryptedData && r.iv && platform !== 'wechat') {
    body.encryptedData = r.encryptedData
    body.iv = r.iv
  } else if (r.code) {
    body.code = r.code
    if (platform === 'wechat' && opts.component) body.component = opts.component
  }
  if (!Object.keys(body).length) {
    throw new MploginError('invalid_request', 'The phone button gave nothing to bind (did the user refuse?).')
  }
  return body
}

/** @param {HttpResponse} res */
function isInvalidToken(res) {
  if (res.statusCode !== 401) return false
  const code = res.data && typeof res.data === 'object' && res.data.error && res.data.error.code
  // Our gateway says invalid_token; a service of yours may answer a bare 401. Other 401 codes
  // (session_key_expired, invalid_code) are not about the access token.
  return !code || code === 'invalid_token'
}

/**
 * @param {Record<string,string>|undefined} header
 * @param {string} name  lower case
 */
function headerOf(header, name) {
  if (!header) return undefined
  for (const k of Object.keys(header)) if (k.toLowerCase() === name) return header[k]
  return undefined
}

/** @param {Record<string,string>} header @param {string} name */
function hasHeader(header, name) {
  return headerOf(header, name) !== undefined
}

/** @param {Record<string,string>|undefined} header */
function isJson(header) {
  return /json/i.test(headerOf(header, 'content-type') || '')
}

/** @param {string} text */
function safeJson(text) {
  try {
    return JSON.parse(text)
  } catch {
    return null
  }
}

/** @param {unknown} err */
function describe(err) {
  if (!err) return 'unknown error'
  const e = /** @type {any} */ (err)
  return e.errMsg || e.errorMessage || e.message || String(err)
}
