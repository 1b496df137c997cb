// End-to-end tests of the client against a running gateway (tests/clients/test_js_client.py
// starts one), on every host the client supports: the whole suite runs once per fake host
// (`wx`, `my`, `tt`, `ks`, `swan`, `qq`, `uni` on two platforms, Taro on two), installed as the
// global the client's detectAdapter looks for. In those hosts only the login call is fake: it
// mints a real code at the platform sandbox. Requests go to the gateway through the host's own
// request API (its option names, body encoding and response shape, over fetch), and the
// session is kept in the host's storage API (see hosts.js).
//
//   MPLOGIN_GATEWAY=http://127.0.0.1:8080 MPLOGIN_SANDBOX=http://127.0.0.1:8090 \
//   MPLOGIN_APPS='{"wechat": "wxdevsandbox0001", "alipay": "2021009900000001", ...}' \
//   node --test clients/test/*.test.js
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { deflateSync } from 'node:zlib'
import { after, describe, test } from 'node:test'

import { createClient } from '../mplogin.js'
import { fakeHost } from './hosts.js'

const GATEWAY = process.env.MPLOGIN_GATEWAY
const SANDBOX = process.env.MPLOGIN_SANDBOX
/** The app under test on each platform: {"wechat": "<app_id>", ...}. */
const APPS = JSON.parse(process.env.MPLOGIN_APPS || '{}')
/** The Alipay app's AES key: the sandbox encrypts its phone payloads with it. */
const ALIPAY_AES = process.env.MPLOGIN_ALIPAY_AES
const skip = !(GATEWAY && SANDBOX && APPS.wechat) && 'set MPLOGIN_GATEWAY, MPLOGIN_SANDBOX and MPLOGIN_APPS'

/** Every host the client runs on, with the platform it runs there. */
const HOSTS = [
  { kind: 'wx', platform: 'wechat' },
  { kind: 'my', platform: 'alipay' },
  { kind: 'tt', platform: 'douyin' },
  { kind: 'ks', platform: 'kuaishou' },
  { kind: 'swan', platform: 'baidu' },
  { kind: 'qq', platform: 'qq' },
  { kind: 'uni', platform: 'wechat' },
  { kind: 'uni', platform: 'alipay' },
  { kind: 'Taro', platform: 'wechat' },
  { kind: 'Taro', platform: 'douyin' },
]
const GLOBALS = ['wx', 'my', 'tt', 'ks', 'swan', 'qq', 'uni', 'Taro']
const UNI_PROVIDERS = {
  wechat: 'weixin', alipay: 'alipay', douyin: 'toutiao', kuaishou: 'kuaishou', baidu: 'baidu', qq: 'qq',
}
/** Platforms whose sandbox can answer a login with the platform's rate-limit error. */
const RATE_LIMIT_FAULT = new Set(['wechat', 'qq'])

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

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
  return c >>> 0
})

function crc32(bytes) {
  let c = 0xffffffff
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

/** A valid RGB PNG of `size`×`size` pixels, built by hand (no image library in Node). */
function png(size) {
  const chunk = (type, data) => {
    const head = Buffer.alloc(4); head.writeUInt32BE(data.length)
    const body = Buffer.concat([Buffer.from(type, 'latin1'), data])
    const crc = Buffer.alloc(4); crc.writeUInt32BE(crc32(body))
    return Buffer.concat([head, body, crc])
  }
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(size, 0); ihdr.writeUInt32BE(size, 4)
  ihdr[8] = 8; ihdr[9] = 2 // 8-bit RGB
  const row = Buffer.concat([Buffer.from([0]), Buffer.alloc(size * 3, 0x7f)])
  const raw = Buffer.concat(Array(size).fill(row))
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0)),
  ])
}

/** A temporary file holding `bytes`, as chooseAvatar's temp path would be. */
function tempFile(name, bytes) {
  const dir = mkdtempSync(join(tmpdir(), 'mplogin-avatar-'))
  const path = join(dir, name)
  writeFileSync(path, bytes)
  return path
}

/** Make `kind` the only host global, as on a real device. */
function install(kind, api) {
  for (const name of GLOBALS) delete globalThis[name]
  globalThis[kind] = api
}

/**
 * A device: a fresh fake host of `kind` on `platform` (its own storage), and a client created
 * the way an app creates it, with no adapter, so detectAdapter finds the host's global. Its
 * login call mints a sandbox code for `openid` (or answers the next of `codes`, or `mint()`).
 * Records every login call and every request the host sent.
 */
function testHost({ kind, platform, openid = `o_${randomUUID()}`, codes = [], mint, baseUrl = GATEWAY }) {
  const appId = APPS[platform]
  const host = {
    openid,
    platform,
    appId,
    logins: 0,
    clock: 0, // ms added to Date.now()
    paths(path) { return host.sent.filter((r) => r.path === path) },
    storageKey: `mplogin:${platform}:${appId}`,
    stored() { return JSON.parse(host.map.get(host.storageKey)) },
  }
  const nextCode = async () => {
    host.logins += 1
    if (codes.length) return { code: codes.shift() }
    if (mint) return mint()
    const minted = await sandbox('codes', { platform, app_id: appId, openid })
    return { code: minted.code }
  }
  const { api, state } = fakeHost(kind, platform, nextCode)
  host.map = state.storage
  host.sent = state.sent
  host.loginCalls = state.loginCalls
  install(kind, api)
  host.client = createClient({
    baseUrl, platform, appId,
    now: () => Date.now() + host.clock,
    backoffMs: 50,
  })
  return host
}

after(() => {
  for (const name of GLOBALS) delete globalThis[name]
})

for (const { kind, platform } of HOSTS) {
  describe(`against the gateway, on ${kind} (${platform})`, { skip: skip || (!APPS[platform] && `set MPLOGIN_APPS.${platform}`) }, () => {
    const device = (options = {}) => testHost({ kind, platform, ...options })

    after(async () => {
      if (!skip) await fetch(`${SANDBOX}/sandbox/faults`, { method: 'DELETE' })
    })

    test('login stores the tokens with absolute expiry and returns the user', async () => {
      const host = device()
      const before = Date.now()
      const user = await host.client.login()
      assert.match(user.id, /^u_/)
      assert.equal(user.is_new, true)
      assert.equal(user.platform, platform)
      assert.equal(user.app_id, APPS[platform])
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

      const again = device({ openid: host.openid })
      const same = await again.client.login()
      assert.equal(same.id, user.id)
      assert.equal(same.is_new, false)
    })

    test("the host's own APIs carry it: its login call, its request API, its storage", async () => {
      const host = device()
      await host.client.login()
      assert.equal(host.loginCalls.length, 1)
      if (kind === 'my') assert.equal(host.loginCalls[0].scopes, 'auth_base')
      if (kind === 'uni') assert.equal(host.loginCalls[0].provider, UNI_PROVIDERS[platform])
      const [sent] = host.sent
      assert.equal(sent.path, '/v1/login')
      assert.equal(sent.method, 'POST')
      const type = Object.entries(sent.header).find(([k]) => k.toLowerCase() === 'content-type')
      assert.match(type[1], /^application\/json/)
      assert.deepEqual(sent.data, { platform, app_id: APPS[platform], code: sent.data.code })
      assert.equal(typeof host.map.get(host.storageKey), 'string')
    })

    test('no response at all: network_error after retries with fresh codes, nothing stored', async () => {
      const host = device({ baseUrl: 'http://127.0.0.1:9' }) // the discard port: nothing listens
      await assert.rejects(host.client.login(), (err) => err.code === 'network_error' && err.status === 0)
      assert.equal(host.logins, 3)
      assert.equal(host.map.size, 0)
    })

    test('a request attaches the access token', async () => {
      const host = device()
      const user = await host.client.login()
      const res = await host.client.request({ url: '/v1/me' })
      assert.equal(res.statusCode, 200)
      assert.equal(res.data.id, user.id)
      const [sent] = host.paths('/v1/me')
      assert.equal(sent.header.Authorization, `Bearer ${host.stored().access_token}`)
      assert.equal((await host.client.me()).id, user.id)
      assert.equal(host.paths('/v1/token/refresh').length, 0, 'no refresh while the token is fresh')
    })

    test('exportData shows the user; deleteAccount ends it and the same person is new after', async () => {
      const host = device()
      const user = await host.client.login()
      const data = await host.client.exportData()
      assert.equal(data.user_id, user.id)
      assert.deepEqual(data.identities.map((i) => [i.platform, i.app_id]), [[platform, APPS[platform]]])
      assert.equal(data.login_history.length, 1)
      await assert.rejects(host.client.acceptConsent('privacy', '2026-10'),
        (err) => err.code === 'unknown_document' && err.status === 400)
      const gone = await host.client.deleteAccount()
      assert.equal(gone.status, 'deleted')
      assert.equal(await host.client.session(), null)
      const again = await host.client.login()
      assert.equal(again.is_new, true)
      assert.notEqual(again.id, user.id)
    })

    test("bindPhone binds what the host's phone button gives, shown masked in me()", async () => {
      const host = device()
      await host.client.login()
      const number = `139${String(Math.floor(Math.random() * 1e8)).padStart(8, "0")}`
      const masked = `+86${number.slice(0, 3)}****${number.slice(-4)}`
      if (platform === 'qq') {
        // QQ documents no server-side phone flow.
        await assert.rejects(host.client.bindPhone({ code: 'anything' }), (err) => err.code === 'not_supported')
        return
      }
      const account = host.stored().user
      let result
      if (platform === 'wechat') {
        result = { detail: await sandbox('phone_codes', { platform, app_id: APPS[platform], openid: host.openid, phone: number }) }
      } else if (platform === 'alipay') {
        result = await sandbox('alipay/phone_payload', { app_id: APPS[platform], mobile: number, aes_key_b64: ALIPAY_AES })
      } else {
        result = { detail: await sandbox('phone_payload', { platform, app_id: APPS[platform], openid: host.openid, phone: number }) }
      }
      const bound = await host.client.bindPhone(result)
      assert.equal(bound.phone, masked)
      const me = await host.client.me()
      assert.equal(me.id, account.id)
      assert.equal(me.phone, masked)
      assert.equal(me.phone_platform, platform)
    })

    test('linkIdentity joins this host\'s identity to the user of another session; identities() lists both', async () => {
      const first = device({ kind: 'wx', platform: 'wechat' })
      const owner = await first.client.login()
      const token = first.stored().access_token
      const host = device()
      const linked = await host.client.linkIdentity({ accessToken: token })
      if (platform === 'wechat') {
        // The same platform and app as the owner's own identity: a second WeChat identity.
        assert.equal(linked.identities.length, 2)
      } else {
        assert.equal(linked.identity.platform, platform)
      }
      const again = device({ openid: host.openid })
      assert.equal((await again.client.login()).id, owner.id, 'a login through the linked identity lands in the owner')
      const listed = await again.client.identities()
      assert.deepEqual(listed.identities.map((i) => i.platform).sort(), [platform, 'wechat'].sort())
    })

    test('a request without a session logs in first', async () => {
      const host = device()
      const me = await host.client.me()
      assert.match(me.id, /^u_/)
      assert.equal(host.logins, 1)
    })

    test('refresh before expiry: 5 concurrent requests share one rotation', async () => {
      const host = device()
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
      const host = device()
      const user = await host.client.login()
      const stored = host.stored()
      host.map.set(host.storageKey, JSON.stringify({ ...stored, access_token: `${stored.access_token}x` }))
      assert.equal((await host.client.me()).id, user.id)
      assert.equal(host.paths('/v1/me').length, 2)
      assert.equal(host.paths('/v1/token/refresh').length, 1)
      assert.equal(host.logins, 1)
    })

    test('a login failing with invalid_code is retried with a fresh code', async () => {
      const host = device({ codes: [`bogus-${randomUUID()}`] })
      const user = await host.client.login()
      assert.match(user.id, /^u_/)
      assert.equal(host.logins, 2)
      const posted = host.paths('/v1/login').map((r) => r.data.code)
      assert.equal(posted.length, 2)
      assert.notEqual(posted[0], posted[1])
    })

    test('platform_unavailable (the platform is busy) is retried with a fresh code', async () => {
      await sandbox('faults', { platform, app_id: APPS[platform], fault: 'busy', count: 1 })
      const host = device()
      await host.client.login()
      assert.equal(host.logins, 2)
      const [first, second] = host.paths('/v1/login').map((r) => r.data.code)
      assert.notEqual(first, second)
    })

    // Only where the platform has a documented rate-limit error for the sandbox to answer.
    if (RATE_LIMIT_FAULT.has(platform)) test('rate_limited with a Retry-After over the cap is not waited for', async () => {
      await sandbox('faults', { platform, app_id: APPS[platform], fault: 'rate_limited', count: 1 })
      const host = device()
      const started = Date.now()
      await assert.rejects(host.client.login(), (err) => err.code === 'rate_limited' && err.retryAfter > 10)
      assert.ok(Date.now() - started < 5000)
      assert.equal(host.logins, 1)
      assert.equal(await host.client.session(), null)
    })

    test('after logout the old token gets 401 and storage is cleared', async () => {
      const host = device()
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
      const phone = device()
      const user = await phone.client.login()
      const tablet = device({ openid: phone.openid })
      await tablet.client.login()
      assert.ok((await tablet.client.logout({ all: true })).sessions_ended >= 2)
      // The phone's token is refused (session ended), its refresh token too: a fresh login.
      const me = await phone.client.me()
      assert.equal(me.id, user.id)
      assert.equal(phone.logins, 2)
      assert.equal(phone.paths('/v1/token/refresh').length, 1)
    })

    test('invalid_refresh_token (the token was spent elsewhere) leads to a fresh login', async () => {
      const host = device()
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

    if (platform === 'douyin') test('Douyin: an anonymousCode is posted as anonymous_code', async () => {
      const appId = APPS.douyin
      const deviceId = `device-${randomUUID()}`
      const host = device({
        mint: async () => {
          const minted = await sandbox('codes', { platform: 'douyin', app_id: appId, anonymous: true, device_id: deviceId })
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
      const real = device({
        mint: async () => {
          const minted = await sandbox('codes', { platform: 'douyin', app_id: appId, openid: `o_${randomUUID()}`, device_id: deviceId })
          return { code: minted.code, anonymousCode: minted.anonymous_code }
        },
      })
      const user = await real.client.login()
      assert.equal(user.id, guest.id)
      const [both] = real.paths('/v1/login')
      assert.ok(both.data.code && both.data.anonymous_code)
    })

    test("uploadAvatar sends the file with the host's uploadFile, with the token; setNickname stores the nickname", async () => {
      const host = device()
      await host.client.login()
      const profile = await host.client.uploadAvatar(tempFile('tmp_avatar.png', png(32)))
      // WeChat checks the image later (pending until its pushed verdict), Douyin at once; the
      // other platforms have no check.
      const expected = { wechat: 'pending', douyin: 'approved' }[platform] || 'unmoderated'
      assert.equal(profile.avatar.status, expected)
      const [sent] = host.paths('/v1/profile/avatar')
      assert.equal(sent.header.Authorization, `Bearer ${host.stored().access_token}`)
      assert.equal(sent.data.file, 'tmp_avatar.png')
      const me = await host.client.me()
      assert.equal(me.user_profile.avatar.id, profile.avatar.id)

      const named = await host.client.setNickname(' Ann\u200b ')
      assert.equal(named.nickname, 'Ann')
      assert.equal((await host.client.me()).user_profile.nickname, 'Ann')
    })

    test('uploadAvatar refreshes once on invalid_token, and rejects a non-image with invalid_image', async () => {
      const host = device()
      await host.client.login()
      const stored = host.stored()
      host.map.set(host.storageKey, JSON.stringify({ ...stored, access_token: 'not.a.token' }))
      const profile = await host.client.uploadAvatar(tempFile('a.png', png(8)))
      assert.match(profile.avatar.id, /./)
      assert.equal(host.paths('/v1/token/refresh').length, 1)
      assert.equal(host.paths('/v1/profile/avatar').length, 2)
      await assert.rejects(host.client.uploadAvatar(tempFile('note.png', Buffer.from('not an image'))),
        (err) => err.code === 'invalid_image' && err.status === 422)
    })
  })
}
