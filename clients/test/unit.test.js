// Unit tests: platform adapters, autodetection and the login retry policy, with fake hosts and a
// fake gateway. No network. The end-to-end behaviour is in gateway.test.js.
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'

import { adapters, createClient, detectAdapter, MploginError, phoneBody } from '../mplogin.js'

const SESSION = {
  access_token: 'at-1', token_type: 'Bearer', expires_in: 900,
  refresh_token: 'mplrt_x', refresh_expires_in: 2592000,
  user: { id: 'u_1', is_new: true, platform: 'wechat', app_id: 'wx1' },
}

/** A Map-backed storage. */
function memoryStorage() {
  const map = new Map()
  return {
    map,
    get: (k) => map.get(k),
    set: (k, v) => { map.set(k, v) },
    remove: (k) => { map.delete(k) },
  }
}

/**
 * A fake gateway answering /v1/login from a queue of [status, body, header?] and recording the
 * requests.
 */
function fakeGateway(answers) {
  const requests = []
  return {
    requests,
    request: async (req) => {
      requests.push(req)
      const [statusCode, data, header = {}] = answers.shift() ?? [200, SESSION]
      return { statusCode, data, header }
    },
  }
}

/** A wx-shaped host: callback APIs, sync storage. */
function fakeWxHost(loginResult = { code: 'c1' }) {
  const store = new Map()
  const calls = { login: [], request: [] }
  return {
    calls,
    store,
    login(opts) { calls.login.push(opts); opts.success(loginResult) },
    request(opts) {
      calls.request.push(opts)
      opts.success({ statusCode: 200, data: SESSION, header: { 'Content-Type': 'application/json' } })
    },
    getStorageSync: (k) => (store.has(k) ? store.get(k) : ''),
    setStorageSync: (k, v) => { store.set(k, v) },
    removeStorageSync: (k) => { store.delete(k) },
  }
}

const error = (code, status, header) => [status, { error: { code, message: code, request_id: 'r' } }, header]

describe('login retries', () => {
  function client(answers, extra = {}) {
    const gw = fakeGateway(answers)
    const sleeps = []
    let n = 0
    const c = createClient({
      baseUrl: 'https://gw.test/', platform: 'wechat', appId: 'wx1',
      adapter: { login: async () => ({ code: `code-${++n}` }), request: gw.request, storage: memoryStorage() },
      sleep: async (ms) => { sleeps.push(ms) },
      ...extra,
    })
    return { c, gw, sleeps, logins: () => n }
  }

  for (const code of ['invalid_code', 'platform_unavailable', 'timeout', 'service_unavailable']) {
    test(`${code} is retried with a fresh code`, async () => {
      const status = { invalid_code: 401, platform_unavailable: 502, timeout: 504, service_unavailable: 503 }[code]
      const { c, gw, sleeps, logins } = client([error(code, status)])
      const user = await c.login()
      assert.equal(user.id, 'u_1')
      assert.equal(logins(), 2)
      assert.deepEqual(gw.requests.map((r) => r.data.code), ['code-1', 'code-2'])
      assert.equal(gw.requests[0].url, 'https://gw.test/v1/login')
      assert.deepEqual(sleeps, [300])
    })
  }

  test('a transport failure is retried with a fresh code', async () => {
    let first = true
    const gw = fakeGateway([])
    let n = 0
    const c = createClient({
      baseUrl: 'https://gw.test', platform: 'wechat',
      adapter: {
        login: async () => ({ code: `code-${++n}` }),
        request: async (req) => {
          if (first) { first = false; throw new Error('request:fail timeout') }
          return gw.request(req)
        },
        storage: memoryStorage(),
      },
      sleep: async () => {},
    })
    await c.login()
    assert.equal(n, 2)
    assert.equal(gw.requests[0].data.code, 'code-2')
    assert.equal(gw.requests[0].data.app_id, undefined, 'app_id is left out when not configured')
  })

  test('retries are bounded, with doubling backoff', async () => {
    const { c, sleeps, logins } = client([error('invalid_code', 401), error('invalid_code', 401), error('invalid_code', 401)])
    await assert.rejects(c.login(), (err) => err instanceof MploginError && err.code === 'invalid_code' && err.status === 401)
    assert.equal(logins(), 3)
    assert.deepEqual(sleeps, [300, 600])
    assert.equal(await c.session(), null)
  })

  test('errors that a new code cannot fix are not retried', async () => {
    const { c, logins } = client([error('user_blocked', 403)])
    await assert.rejects(c.login(), { code: 'user_blocked', requestId: 'r' })
    assert.equal(logins(), 1)
  })

  test('rate_limited waits for Retry-After within the cap, then uses a fresh code', async () => {
    const { c, sleeps, logins } = client([error('rate_limited', 429, { 'Retry-After': '2' })])
    await c.login()
    assert.deepEqual(sleeps, [2000])
    assert.equal(logins(), 2)
  })

  test('rate_limited with a Retry-After over the cap gives up at once', async () => {
    const { c, sleeps, logins } = client([error('rate_limited', 429, { 'retry-after': '60' })])
    await assert.rejects(c.login(), { code: 'rate_limited', retryAfter: 60 })
    assert.deepEqual(sleeps, [])
    assert.equal(logins(), 1)
  })

  test('a failing platform login call is reported, not retried', async () => {
    const c = createClient({
      baseUrl: 'https://gw.test', platform: 'wechat',
      adapter: { login: async () => { throw { errMsg: 'login:fail cancel' } }, request: fakeGateway([]).request, storage: memoryStorage() },
    })
    await assert.rejects(c.login(), (err) => err.code === 'platform_login_failed' && /cancel/.test(err.message))
  })
})

describe('stored session', () => {
  test('expiry times are absolute, from the injected clock; session() hides the refresh token', async () => {
    const storage = memoryStorage()
    const c = createClient({
      baseUrl: 'https://gw.test', platform: 'wechat', appId: 'wx1', now: () => 1_000_000,
      adapter: { login: async () => ({ code: 'c' }), request: fakeGateway([]).request, storage },
    })
    await c.login()
    const stored = JSON.parse(storage.map.get('mplogin:wechat:wx1'))
    assert.equal(stored.access_expires_at, 1_000_000 + 900_000)
    assert.equal(stored.refresh_expires_at, 1_000_000 + 2592000_000)
    assert.equal(stored.refresh_token, 'mplrt_x')
    const shown = await c.session()
    assert.equal(shown.access_token, 'at-1')
    assert.equal('refresh_token' in shown, false)
  })
})

describe('adapters', () => {
  test('Douyin: anonymousCode alone is posted as anonymous_code', async () => {
    const tt = fakeWxHost({ anonymousCode: 'anon-1', isLogin: false })
    const gw = fakeGateway([])
    const c = createClient({
      baseUrl: 'https://gw.test', platform: 'douyin', appId: 'tt1',
      adapter: { ...adapters.douyin(tt), request: gw.request },
    })
    await c.login()
    assert.deepEqual(gw.requests[0].data, { platform: 'douyin', app_id: 'tt1', anonymous_code: 'anon-1' })
  })

  test('Douyin: a logged-in user posts code and anonymous_code together', async () => {
    const tt = fakeWxHost({ code: 'c-1', anonymousCode: 'anon-1', isLogin: true })
    const gw = fakeGateway([])
    const c = createClient({ baseUrl: 'https://gw.test', platform: 'douyin', adapter: { ...adapters.douyin(tt), request: gw.request } })
    await c.login()
    assert.deepEqual(gw.requests[0].data, { platform: 'douyin', code: 'c-1', anonymous_code: 'anon-1' })
  })

  test('WeChat: detected from the wx global; wx.request, wx storage', async () => {
    const wx = fakeWxHost({ code: 'wx-code' })
    const adapter = detectAdapter('wechat', { wx })
    const c = createClient({ baseUrl: 'https://gw.test', platform: 'wechat', appId: 'wx1', adapter })
    const user = await c.login()
    assert.equal(user.id, 'u_1')
    const sent = wx.calls.request[0]
    assert.equal(sent.url, 'https://gw.test/v1/login')
    assert.equal(sent.method, 'POST')
    assert.equal(sent.header['Content-Type'], 'application/json')
    assert.deepEqual(sent.data, { platform: 'wechat', app_id: 'wx1', code: 'wx-code' })
    assert.ok(JSON.parse(wx.store.get('mplogin:wechat:wx1')).access_token)
    await c.logout()
    assert.equal(wx.store.size, 0)
  })

  test('QQ and Kuaishou: qq.login / ks.login', async () => {
    for (const [platform, name] of [['qq', 'qq'], ['kuaishou', 'ks']]) {
      const host = fakeWxHost({ code: `${name}-code` })
      const adapter = detectAdapter(platform, { [name]: host })
      assert.deepEqual(await adapter.login(), { code: `${name}-code` })
    }
  })

  test('Baidu: swan.getLoginCode when present, else swan.login', async () => {
    const swan = fakeWxHost({ code: 'old' })
    assert.deepEqual(await detectAdapter('baidu', { swan }).login(), { code: 'old' })
    swan.getLoginCode = (opts) => opts.success({ code: 'new' })
    assert.deepEqual(await detectAdapter('baidu', { swan }).login(), { code: 'new' })
  })

  test('Alipay: getAuthCode(auth_base), headers/status shape, {key, data} storage', async () => {
    const store = new Map()
    const calls = []
    const my = {
      getAuthCode(opts) { calls.push(['auth', opts.scopes]); opts.success({ authCode: 'ali-code' }) },
      request(opts) {
        calls.push(['request', opts])
        if (opts.url.endsWith('/down')) {
          opts.fail({ error: 12, errorMessage: 'network error' })
          return
        }
        if (opts.url.endsWith('/v1/me')) {
          // Older base libraries call fail for a non-2xx status, with the response attached.
          opts.fail({ error: 19, errorMessage: 'http status error', status: 401, data: { error: { code: 'invalid_token' } }, headers: {} })
          return
        }
        opts.success({ status: 200, data: { ...SESSION, user: { ...SESSION.user, platform: 'alipay' } }, headers: {} })
      },
      getStorageSync: ({ key }) => ({ data: store.get(key) }),
      setStorageSync: ({ key, data }) => { store.set(key, data) },
      removeStorageSync: ({ key }) => { store.delete(key) },
    }
    const adapter = detectAdapter('alipay', { my })
    const c = createClient({ baseUrl: 'https://gw.test', platform: 'alipay', appId: '2021', adapter })
    const user = await c.login()
    assert.equal(user.platform, 'alipay')
    assert.deepEqual(calls[0], ['auth', 'auth_base'])
    const sent = calls[1][1]
    assert.equal(sent.headers['Content-Type'], 'application/json')
    assert.equal(JSON.parse(sent.data).code, 'ali-code')
    assert.ok(JSON.parse(store.get('mplogin:alipay:2021')).refresh_token)
    const res = await adapter.request({ url: 'https://gw.test/v1/me', method: 'GET', header: {} })
    assert.equal(res.statusCode, 401)
    assert.equal(res.data.error.code, 'invalid_token')
    // A failure without a response (network) rejects.
    await assert.rejects(adapter.request({ url: 'https://gw.test/down', method: 'GET', header: {} }), { error: 12 })
  })

  test('uni-app: uni.login({provider}) when the native global is missing', async () => {
    const uni = fakeWxHost({ code: 'uni-code' })
    const seen = []
    const login = uni.login
    uni.login = (opts) => { seen.push(opts.provider); login(opts) }
    const adapter = detectAdapter('douyin', { uni })
    assert.deepEqual(await adapter.login(), { code: 'uni-code', anonymousCode: undefined })
    assert.deepEqual(seen, ['toutiao'])
    const res = await adapter.request({ url: 'https://gw.test/v1/login', method: 'POST', data: {}, header: {} })
    assert.equal(res.statusCode, 200)
  })

  test('Taro: promise APIs', async () => {
    const host = fakeWxHost()
    const Taro = {
      login: async () => ({ code: 'taro-code' }),
      request: async (opts) => ({ statusCode: 201, data: { url: opts.url }, header: {} }),
      getStorageSync: host.getStorageSync, setStorageSync: host.setStorageSync, removeStorageSync: host.removeStorageSync,
    }
    const adapter = adapters.taro(Taro)
    assert.deepEqual(await adapter.login(), { code: 'taro-code', anonymousCode: undefined })
    assert.deepEqual(await adapter.request({ url: 'u', method: 'GET', header: {} }), { statusCode: 201, data: { url: 'u' }, header: {} })
    assert.deepEqual(await detectAdapter('wechat', { Taro }).login(), { code: 'taro-code', anonymousCode: undefined })
  })

  test('no host API: a clear error', () => {
    assert.throws(() => detectAdapter('wechat', {}), /no wx .*adapter/)
    assert.throws(() => createClient({ baseUrl: 'x', platform: 'nope', adapter: undefined }), /unknown platform/)
  })
})

describe('account and consents', () => {
  function client(answers) {
    const gw = fakeGateway(answers)
    const storage = memoryStorage()
    let n = 0
    const c = createClient({
      baseUrl: 'https://gw.test/', platform: 'wechat', appId: 'wx1',
      adapter: { login: async () => ({ code: `code-${++n}` }), request: gw.request, storage },
      sleep: async () => {},
    })
    return { c, gw, storage, logins: () => n }
  }
  const REQUIRED = [{ document: 'privacy', version: '2026-10' }]

  test('the login keeps consent_required; acceptConsent posts and updates it', async () => {
    const { c, gw } = client([[200, { ...SESSION, consent_required: REQUIRED }],
      [200, { document: 'privacy', version: '2026-10', accepted_at: 't', consent_required: [] }]])
    await c.login()
    assert.deepEqual((await c.session()).consent_required, REQUIRED)
    const answer = await c.acceptConsent('privacy', '2026-10')
    assert.equal(answer.accepted_at, 't')
    const sent = gw.requests[1]
    assert.equal(sent.method, 'POST')
    assert.equal(sent.url, 'https://gw.test/v1/consents')
    assert.deepEqual(sent.data, { document: 'privacy', version: '2026-10' })
    assert.equal(sent.header.Authorization, 'Bearer at-1')
    assert.deepEqual((await c.session()).consent_required, [])
  })

  test('deleteAccount logs in again when a recent login is needed, then clears storage', async () => {
    const { c, gw, logins } = client([[200, SESSION],
      error('reauthentication_required', 401),
      [200, { ...SESSION, access_token: 'at-2' }],
      [200, { status: 'deleted', deleted_at: '2026-12-03T00:00:00+00:00' }]])
    await c.login()
    const answer = await c.deleteAccount()
    assert.equal(answer.status, 'deleted')
    assert.equal(logins(), 2, 'a fresh login code for the recent login')
    assert.deepEqual(gw.requests.map((r) => `${r.method} ${r.url.replace('https://gw.test', '')}`),
      ['POST /v1/login', 'DELETE /v1/account', 'POST /v1/login', 'DELETE /v1/account'])
    assert.equal(gw.requests[3].header.Authorization, 'Bearer at-2')
    assert.equal(await c.session(), null, 'every session ended: nothing stays stored')
  })

  test('exportData answers the document; other errors are thrown with their code', async () => {
    const { c } = client([[200, SESSION], [200, { user_id: 'u_1', identities: [] }],
      error('service_unavailable', 503)])
    await c.login()
    assert.deepEqual(await c.exportData(), { user_id: 'u_1', identities: [] })
    await assert.rejects(c.exportData(), (err) => err instanceof MploginError && err.code === 'service_unavailable')
  })

  test('withdrawConsent escapes the document name', async () => {
    const { c, gw } = client([[200, SESSION], [200, { document: 'a/b', consent_required: REQUIRED }]])
    await c.login()
    await c.withdrawConsent('a/b')
    assert.equal(gw.requests[1].url, 'https://gw.test/v1/consents/a%2Fb')
    assert.equal(gw.requests[1].method, 'DELETE')
  })
})

describe('phones and identities', () => {
  test('bindPhone sends each host\'s phone result in the shape /v1/phone takes', () => {
    assert.deepEqual(phoneBody('wechat', { detail: { code: 'pc', errMsg: 'ok' } }, { component: 'fast' }),
      { code: 'pc', component: 'fast' })
    assert.deepEqual(phoneBody('wechat', { code: 'pc', encryptedData: 'e', iv: 'i' }), { code: 'pc' })
    for (const platform of ['douyin', 'kuaishou', 'baidu']) {
      // Douyin's newer button also gives a code: the encrypted pair is what is sent.
      assert.deepEqual(phoneBody(platform, { code: 'pc', encryptedData: 'e', iv: 'i' }),
        { encryptedData: 'e', iv: 'i' }, platform)
    }
    // Douyin's newer button gives a code alone: it is sent as is.
    assert.deepEqual(phoneBody('douyin', { detail: { code: 'dy-code' } }), { code: 'dy-code' })
    assert.deepEqual(phoneBody('alipay', { response: '{"response":"x","sign":"s"}' }),
      { response: '{"response":"x","sign":"s"}' })
    assert.throws(() => phoneBody('douyin', { errMsg: 'getPhoneNumber:fail auth deny' }),
      (err) => err instanceof MploginError && err.code === 'invalid_request')
  })

  function signedIn(answers, login = async () => ({ code: 'link-code' })) {
    const gw = fakeGateway([[200, SESSION], ...answers])
    const c = createClient({
      baseUrl: 'https://gw.test', platform: 'alipay', appId: '2021',
      adapter: { login, request: gw.request, storage: memoryStorage() },
    })
    return { c, gw }
  }

  test('linkIdentity posts a fresh code of this host with the stored token', async () => {
    const linked = { identity: { id: 'i2', platform: 'alipay' }, identities: [] }
    const { c, gw } = signedIn([[200, linked]])
    await c.login()
    assert.deepEqual(await c.linkIdentity(), linked)
    const sent = gw.requests[1]
    assert.equal(sent.url, 'https://gw.test/v1/identities')
    assert.equal(sent.method, 'POST')
    assert.deepEqual(sent.data, { platform: 'alipay', code: 'link-code', app_id: '2021' })
    assert.equal(sent.header.Authorization, 'Bearer at-1')
  })

  test('linkIdentity with another session\'s token uses that token, and reports refusals', async () => {
    const { c, gw } = signedIn([error('identity_in_use', 409)])
    await c.login()
    await assert.rejects(c.linkIdentity({ accessToken: 'at-other' }),
      (err) => err instanceof MploginError && err.code === 'identity_in_use' && err.status === 409)
    assert.equal(gw.requests[1].header.Authorization, 'Bearer at-other')
  })

  test('identities() and bindPhone() are authenticated gateway calls', async () => {
    const { c, gw } = signedIn([[200, { identities: [] }], [200, { phone: '+86138****0007' }]])
    await c.login()
    assert.deepEqual(await c.identities(), { identities: [] })
    assert.deepEqual(await c.bindPhone({ response: 'r' }), { phone: '+86138****0007' })
    assert.deepEqual(gw.requests.slice(1).map((r) => [r.method, r.url, r.data]), [
      ['GET', 'https://gw.test/v1/identities', undefined],
      ['POST', 'https://gw.test/v1/phone', { response: 'r' }],
    ])
  })
})
