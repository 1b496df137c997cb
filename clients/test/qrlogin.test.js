// Unit tests of the QR login helpers: the website's startQrLogin (fake fetch) and the phone's
// confirmQrLogin (fake gateway). No network; the end-to-end flow is tested through the gateway
// in tests/e2e/test_qr_login.py and in the try-it page's browser test.
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'

import { createClient } from '../mplogin.js'
import { QrLoginError, startQrLogin } from '../qrlogin-web.js'

const CREATED = {
  id: 'AbCdEfGhIjKlMnOpQrStUvWx', poll_token: 'secret-poll-token-0123456789', expires_in: 120,
  image_url: '/v1/qr-logins/AbCdEfGhIjKlMnOpQrStUvWx/image',
}
const SESSION = {
  access_token: 'at-web', token_type: 'Bearer', expires_in: 900, refresh_token: 'mplrt_w',
  refresh_expires_in: 2592000, user: { id: 'u_1', is_new: false, platform: 'web', app_id: 'wx1' },
}

/** A fetch answering from a queue of [status, body], recording [url, init]. */
function fakeFetch(answers) {
  const calls = []
  const fetch = async (url, init = {}) => {
    calls.push([url, init])
    const [status, body] = answers.shift()
    return { ok: status >= 200 && status < 300, status, json: async () => body }
  }
  return { fetch, calls }
}

describe('startQrLogin', () => {
  test('renders the code, follows the states and resolves with the session once', async () => {
    const { fetch, calls } = fakeFetch([
      [200, CREATED],
      [200, { state: 'pending', expires_in: 100 }],
      [200, { state: 'scanned', expires_in: 90, scanned_by: 'A**' }],
      [200, { state: 'confirmed', expires_in: 0, session: SESSION }],
    ])
    const img = { src: '' }
    const seen = []
    const login = startQrLogin({
      baseUrl: 'https://login.example/', platform: 'wechat', appId: 'wx1', img, fetch,
      onState: (state, info) => seen.push([state, info.scanned_by]),
    })
    assert.deepEqual(await login.done, SESSION)
    assert.equal(img.src, `https://login.example${CREATED.image_url}`)
    assert.deepEqual(seen, [['pending', undefined], ['scanned', 'A**'], ['confirmed', undefined]])
    assert.deepEqual(JSON.parse(calls[0][1].body), { platform: 'wechat', app_id: 'wx1' })
    for (const [url, init] of calls.slice(1)) {
      assert.ok(!url.includes(CREATED.poll_token), 'the poll token is never in a URL')
      assert.equal(init.headers['X-QR-Poll-Token'], CREATED.poll_token)
    }
    assert.match(calls[1][0], /\?wait=25&state=pending$/)
    assert.match(calls[3][0], /&state=scanned$/)
  })

  test('a cancelled request rejects with qr_login_cancelled', async () => {
    const { fetch } = fakeFetch([[200, CREATED], [200, { state: 'cancelled', expires_in: 0 }]])
    const login = startQrLogin({ platform: 'wechat', fetch })
    await assert.rejects(login.done, (err) => err instanceof QrLoginError && err.code === 'qr_login_cancelled')
  })

  test('a gateway error ends the wait with its code; a network error is retried', async () => {
    let first = true
    const { fetch: base } = fakeFetch([
      [200, CREATED], [410, { error: { code: 'already_used', message: 'used' } }],
    ])
    const fetch = async (url, init) => {
      if (url.includes('?wait') && first) {
        first = false
        throw new TypeError('connection reset')
      }
      return base(url, init)
    }
    const login = startQrLogin({ platform: 'wechat', fetch, sleep: async () => {} })
    await assert.rejects(login.done, (err) => err.code === 'already_used' && err.status === 410)
  })
})

describe('confirmQrLogin', () => {
  function phone(answers) {
    const requests = []
    const stored = new Map()
    const adapter = {
      login: async () => ({ code: 'c1' }),
      request: async (req) => {
        requests.push(req)
        const [statusCode, data] = answers.shift()
        return { statusCode, data, header: {} }
      },
      storage: { get: (k) => stored.get(k), set: (k, v) => { stored.set(k, v) }, remove: (k) => { stored.delete(k) } },
    }
    const auth = createClient({ baseUrl: 'https://login.example', platform: 'wechat', adapter })
    return { auth, requests }
  }
  const LOGIN = { ...SESSION, user: { ...SESSION.user, platform: 'wechat' } }
  const SCREEN = { id: CREATED.id, state: 'scanned', site: 'https://shop.example', browser: 'Chrome on Windows' }

  test('scans, shows the site to decide, then confirms with the phone session', async () => {
    const { auth, requests } = phone([[200, LOGIN], [200, SCREEN], [200, { id: CREATED.id, state: 'confirmed' }]])
    let shown = null
    const result = await auth.confirmQrLogin(encodeURIComponent(CREATED.id), {
      decide: (screen) => { shown = screen; return true },
    })
    assert.equal(result.state, 'confirmed')
    assert.equal(shown.site, 'https://shop.example')
    assert.deepEqual(requests.slice(1).map((r) => [r.method, r.url]), [
      ['POST', `https://login.example/v1/qr-logins/${CREATED.id}/scan`],
      ['POST', `https://login.example/v1/qr-logins/${CREATED.id}/confirm`],
    ])
    assert.equal(requests[1].header.Authorization, 'Bearer at-web')
  })

  test('a refusal cancels; a scene that is not a QR login is refused before any request', async () => {
    const { auth, requests } = phone([[200, LOGIN], [200, SCREEN], [200, { id: CREATED.id, state: 'cancelled' }]])
    const result = await auth.confirmQrLogin(CREATED.id, { decide: async () => false })
    assert.equal(result.state, 'cancelled')
    assert.ok(requests[2].url.endsWith('/cancel'))
    await assert.rejects(auth.confirmQrLogin('../v1/logout'), (err) => err.code === 'qr_login_expired')
    assert.equal(requests.length, 3)
  })
})
