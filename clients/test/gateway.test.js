// End-to-end tests of the client against a running gateway (tests/clients/test_js_client.py
// starts one). Only the platform's login call is fake: it mints a real code from the platform
// sandbox. Requests go to the gateway with fetch; storage is an in-memory Map.
//
//   MPLOGIN_GATEWAY=http://127.0.0.1:8080 MPLOGIN_SANDBOX=http://127.0.0.1:8090 \
//   MPLOGIN_APP_ID=wxdevsandbox0001 node --test clients/test/*.test.js
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { after, describe, test } from 'node:test'

import { createClient } from '../mplogin.js'

const GATEWAY = process.env.MPLOGIN_GATEWAY
const SANDBOX = process.env.MPLOGIN_SANDBOX
const APP_ID = process.env.MPLOGIN_APP_ID
const DOUYIN_APP_ID = process.env.MPLOGIN_DOUYIN_APP_ID
const skip = !(GATEWAY && SANDBOX && APP_ID) && 'set MPLOGIN_GATEWAY, MPLOGIN_SANDBOX and MPLOGIN_APP_ID'

/** POST JSON with fetch; the parsed answer and status. */
async function postJson(url, body, header = {}) {
  const res = await fetch(url, {
    method: 'POST', headers: { 'Content-Type': 'application/json', ...header }, body: JSON.stringify(body),
  })
  return { status: res.status, body: await res.json() }
}

async function sandbox(path, body) {
  const { status, body: answer } = await postJson(`${SANDBOX}/sandbox/${path}`, body)
  assert.ok(status < 300, JSON.stringify(answer))
  return answer
}

/**
 * A test host: `login()` mints a real sandbox code (or takes the next of `codes` first),
 * `request()` is fetch, storage a Map. Records every login call and gateway request.
 */
function testHost({ openid = `o_${randomUUID()}`, codes = [], platform = 'wechat', appId = APP_ID, mint } = {}) {
  const map = new Map()
  const host = {
    openid,
    map,
    logins: 0,
    /** @type {{path: string, method: string, data: any, header: Record<string,string>}[]} */
    sent: [],
    clock: 0, // ms added to Date.now()
    paths(path) { return host.sent.filter((r) => r.path === path) },
    stored() { return JSON.parse(map.get(`mplogin:${platform}:${appId}`)) },
    adapter: {
      async login() {
        host.logins += 1
        if (codes.length) return codes.shift()
        if (mint) return mint()
        const minted = await sandbox('codes', { platform, app_id: appId, openid })
        return { code: minted.code }
      },
      async request({ url, method, data, header, timeout }) {
        host.sent.push({ path: new URL(url).pathname, method, data, header })
        const res = await fetch(url, {
          method,
          headers: header,
          body: data === undefined ? undefined : typeof data === 'string' ? data : JSON.stringify(data),
          signal: AbortSignal.timeout(timeout),
        })
        const text = await res.text()
        let body = text
        try { body = JSON.parse(text) } catch { /* not JSON */ }
        return { statusCode: res.status, data: body, header: Object.fromEntries(res.headers) }
      },
      storage: {
        get: (k) => map.get(k),
        set: (k, v) => { map.set(k, v) },
        remove: (k) => { map.delete(k) },
      },
    },
  }
  host.client = createClient({
    baseUrl: GATEWAY, platform, appId, adapter: host.adapter,
    now: () => Date.now() + host.clock,
    backoffMs: 50,
  })
  return host
}

describe('against the gateway', { skip }, () => {
  after(async () => {
    if (!skip) await fetch(`${SANDBOX}/sandbox/faults`, { method: 'DELETE' })
  })

  test('login stores the tokens with absolute expiry and returns the user', async () => {
    const host = testHost()
    const before = Date.now()
    const user = await host.client.login()
    assert.match(user.id, /^u_/)
    assert.equal(user.is_new, true)
    assert.equal(user.platform, 'wechat')
    assert.equal(user.app_id, APP_ID)
    assert.equal(host.logins, 1)
    const stored = host.stored()
    assert.match(stored.refresh_token, /^mplrt_/)
    assert.equal(stored.access_token.split('.').length, 3)
    assert.ok(stored.access_expires_at >= before + 30_000 && stored.access_expires_at <= Date.now() + 86_400_000)
    assert.ok(stored.refresh_expires_at > stored.access_expires_at)
    const shown = await host.client.session()
    assert.equal(shown.access_token, stored.access_token)
    assert.equal(shown.user.id, user.id)
    assert.equal('refresh_token' in shown, false)

    const again = testHost({ openid: host.openid })
    const same = await again.client.login()
    assert.equal(same.id, user.id)
    assert.equal(same.is_new, false)
  })

  test('a request attaches the access token', async () => {
    const host = testHost()
    const user = await host.client.login()
    const res = await host.client.request({ url: '/v1/me' })
    assert.equal(res.statusCode, 200)
    assert.equal(res.data.id, user.id)
    const [sent] = host.paths('/v1/me')
    assert.equal(sent.header.Authorization, `Bearer ${host.stored().access_token}`)
    assert.equal((await host.client.me()).id, user.id)
    assert.equal(host.paths('/v1/token/refresh').length, 0, 'no refresh while the token is fresh')
  })

  test('a request without a session logs in first', async () => {
    const host = testHost()
    const me = await host.client.me()
    assert.match(me.id, /^u_/)
    assert.equal(host.logins, 1)
  })

  test('refresh before expiry: 5 concurrent requests share one rotation', async () => {
    const host = testHost()
    const user = await host.client.login()
    const first = host.stored()
    // Jump to 30 s before the access token expires: inside the 60 s refresh window.
    host.clock = first.access_expires_at - Date.now() - 30_000
    const answers = await Promise.all(Array.from({ length: 5 }, () => host.client.me()))
    assert.deepEqual(answers.map((a) => a.id), Array(5).fill(user.id))
    assert.equal(host.paths('/v1/token/refresh').length, 1)
    const second = host.stored()
    assert.notEqual(second.access_token, first.access_token)
    assert.notEqual(second.refresh_token, first.refresh_token)
    assert.ok(second.access_expires_at > first.access_expires_at)
    for (const sent of host.paths('/v1/me')) {
      assert.equal(sent.header.Authorization, `Bearer ${second.access_token}`)
    }
    // The session lives on (a second refresh with the spent token would have ended it): the
    // next rotation works too.
    host.clock = second.access_expires_at - Date.now() - 30_000
    assert.equal((await host.client.me()).id, user.id)
    assert.equal(host.paths('/v1/token/refresh').length, 2)
    assert.equal(host.logins, 1)
  })

  test('a refused access token (401 invalid_token) is refreshed once and the request retried', async () => {
    const host = testHost()
    const user = await host.client.login()
    const stored = host.stored()
    host.map.set(`mplogin:wechat:${APP_ID}`, JSON.stringify({ ...stored, access_token: `${stored.access_token}x` }))
    assert.equal((await host.client.me()).id, user.id)
    assert.equal(host.paths('/v1/me').length, 2)
    assert.equal(host.paths('/v1/token/refresh').length, 1)
    assert.equal(host.logins, 1)
  })

  test('a login failing with invalid_code is retried with a fresh code', async () => {
    const host = testHost({ codes: [{ code: `bogus-${randomUUID()}` }] })
    const user = await host.client.login()
    assert.match(user.id, /^u_/)
    assert.equal(host.logins, 2)
    const posted = host.paths('/v1/login').map((r) => r.data.code)
    assert.equal(posted.length, 2)
    assert.notEqual(posted[0], posted[1])
  })

  test('platform_unavailable (the platform is busy) is retried with a fresh code', async () => {
    await sandbox('faults', { platform: 'wechat', app_id: APP_ID, fault: 'busy', count: 1 })
    const host = testHost()
    await host.client.login()
    assert.equal(host.logins, 2)
    const [first, second] = host.paths('/v1/login').map((r) => r.data.code)
    assert.notEqual(first, second)
  })

  test('rate_limited with a Retry-After over the cap is not waited for', async () => {
    await sandbox('faults', { platform: 'wechat', app_id: APP_ID, fault: 'rate_limited', count: 1 })
    const host = testHost()
    const started = Date.now()
    await assert.rejects(host.client.login(), (err) => err.code === 'rate_limited' && err.retryAfter > 10)
    assert.ok(Date.now() - started < 5000)
    assert.equal(host.logins, 1)
    assert.equal(await host.client.session(), null)
  })

  test('after logout the old token gets 401 and storage is cleared', async () => {
    const host = testHost()
    await host.client.login()
    const { access_token: old } = host.stored()
    assert.deepEqual(await host.client.logout(), { sessions_ended: 1 })
    assert.equal(host.map.size, 0)
    assert.equal(await host.client.session(), null)
    const res = await fetch(`${GATEWAY}/v1/me`, { headers: { Authorization: `Bearer ${old}` } })
    assert.equal(res.status, 401)
    assert.equal((await res.json()).error.code, 'invalid_token')
    assert.deepEqual(await host.client.logout(), { sessions_ended: 0 }, 'logging out twice is harmless')
  })

  test('logout({all}) elsewhere: the other device refreshes, is refused, logs in again', async () => {
    const phone = testHost()
    const user = await phone.client.login()
    const tablet = testHost({ openid: phone.openid })
    await tablet.client.login()
    assert.ok((await tablet.client.logout({ all: true })).sessions_ended >= 2)
    // The phone's token is refused (session ended), its refresh token too: a fresh login.
    const me = await phone.client.me()
    assert.equal(me.id, user.id)
    assert.equal(phone.logins, 2)
    assert.equal(phone.paths('/v1/token/refresh').length, 1)
  })

  test('invalid_refresh_token (the token was spent elsewhere) leads to a fresh login', async () => {
    const host = testHost()
    const user = await host.client.login()
    const stolen = host.stored()
    // Someone else spends the stored refresh token first; then the client's refresh is a
    // reuse, which ends the session and is refused.
    const spent = await postJson(`${GATEWAY}/v1/token/refresh`, { refresh_token: stolen.refresh_token })
    assert.equal(spent.status, 200)
    host.clock = stolen.access_expires_at - Date.now() - 10_000
    const me = await host.client.me()
    assert.equal(me.id, user.id)
    assert.equal(host.logins, 2)
    const refreshes = host.paths('/v1/token/refresh')
    assert.equal(refreshes.length, 1)
    assert.notEqual(host.stored().refresh_token, stolen.refresh_token)
    // The thief's descendant token died with the session.
    const thief = await postJson(`${GATEWAY}/v1/token/refresh`, { refresh_token: spent.body.refresh_token })
    assert.equal(thief.status, 401)
    assert.equal(thief.body.error.code, 'invalid_refresh_token')
  })

  test('Douyin: an anonymousCode is posted as anonymous_code', { skip: !DOUYIN_APP_ID && 'set MPLOGIN_DOUYIN_APP_ID' }, async () => {
    const device = `device-${randomUUID()}`
    const host = testHost({
      platform: 'douyin', appId: DOUYIN_APP_ID,
      mint: async () => {
        const minted = await sandbox('codes', { platform: 'douyin', app_id: DOUYIN_APP_ID, anonymous: true, device_id: device })
        return { anonymousCode: minted.anonymous_code }
      },
    })
    const guest = await host.client.login()
    assert.equal(guest.platform, 'douyin')
    const [sent] = host.paths('/v1/login')
    assert.equal(sent.data.code, undefined)
    assert.match(sent.data.anonymous_code, /./)
    const me = await host.client.me()
    assert.deepEqual(me.identities.map((i) => i.anonymous), [true])

    // The same device, now logged in to Douyin: code and anonymous_code together, same user.
    const real = testHost({
      platform: 'douyin', appId: DOUYIN_APP_ID,
      mint: async () => {
        const minted = await sandbox('codes', { platform: 'douyin', app_id: DOUYIN_APP_ID, openid: `o_${randomUUID()}`, device_id: device })
        return { code: minted.code, anonymousCode: minted.anonymous_code }
      },
    })
    const user = await real.client.login()
    assert.equal(user.id, guest.id)
    const [both] = real.paths('/v1/login')
    assert.ok(both.data.code && both.data.anonymous_code)
  })
})
