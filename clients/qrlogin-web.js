/**
 * mplogin QR login for the website (the PC side): show the mini-program code, wait, get a
 * session. The phone side is `confirmQrLogin` in mplogin.js. docs/qrlogin.md has the flow.
 *
 * One dependency-free ES module for browsers (and Node 18+, which has fetch):
 *
 *   import { startQrLogin } from './qrlogin-web.js'
 *   const login = startQrLogin({
 *     baseUrl: 'https://login.example.com', platform: 'wechat', appId: 'wx…',
 *     img: document.querySelector('#qr'),
 *     onState: (state, info) => { if (state === 'scanned') show(`Scanned by ${info.scanned_by}`) },
 *   })
 *   const session = await login.done   // {access_token, refresh_token, user: {platform: 'web'}}
 *
 * The poll token travels in a header, never in a URL; the image URL holds only the request's
 * id, which grants nothing. Waiting is a long poll: one request held up to `wait` seconds by the
 * gateway, answered as soon as the state changes.
 */

import { MploginError } from './mplogin.js'

/** Final states: the page shows a new code (call startQrLogin again). */
const FINAL = new Set(['cancelled', 'expired'])

/** Errors are mplogin's (`code`: the gateway's stable code, 'network_error' or 'stopped'). */
export { MploginError as QrLoginError }

/**
 * Start a QR login: create the request, render its code, wait for the phone.
 * @param {object} options
 * @param {string} options.baseUrl                 the gateway ('' for the same origin)
 * @param {string} options.platform                'wechat'
 * @param {string} [options.appId]
 * @param {{src: string}} [options.img]             an <img> the code is shown in
 * @param {(url: string, request: {id: string, expires_in: number}) => void} [options.onImage]
 * @param {(state: string, info: object) => void} [options.onState]  every state seen
 * @param {number} [options.wait]                   seconds one poll may be held (25)
 * @param {typeof fetch} [options.fetch]
 * @param {(ms: number) => Promise<void>} [options.sleep]  between failed polls
 * @returns {{done: Promise<object>, stop: () => void, request: Promise<{id: string, expires_in: number}>}}
 *   `done` resolves with the web session once confirmed; rejects with a QrLoginError
 *   ('qr_login_cancelled', 'qr_login_expired', 'stopped', or the gateway's code).
 */
export function startQrLogin(options) {
  const {
    baseUrl = '', platform, appId, img, onImage, onState = () => {}, wait = 25,
    sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
  } = options
  const fetchFn = options.fetch || globalThis.fetch.bind(globalThis)
  if (!platform) throw new TypeError('startQrLogin: platform is required')
  const base = baseUrl.replace(/\/+$/, '')
  const abort = new AbortController()
  let stopped = false

  async function json(path, init = {}) {
    let res
    try {
      res = await fetchFn(base + path, { ...init, signal: abort.signal })
    } catch (cause) {
      if (stopped) throw new MploginError('stopped', 'The QR login was stopped.')
      throw new MploginError('network_error', `The request did not complete: ${cause}`)
    }
    const body = await res.json().catch(() => null)
    if (res.ok && body) return body
    const error = body && body.error ? body.error : {}
    throw new MploginError(error.code || 'http_error', error.message || `HTTP ${res.status}`,
      { status: res.status })
  }

  const request = json('/v1/qr-logins', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(appId ? { platform, app_id: appId } : { platform }),
  })

  async function run() {
    const created = await request
    const url = base + created.image_url
    if (img) img.src = url
    if (onImage) onImage(url, created)
    let known = 'pending'
    onState(known, { expires_in: created.expires_in })
    let failures = 0
    while (!stopped) {
      let body
      try {
        body = await json(
          `/v1/qr-logins/${created.id}?wait=${wait}&state=${known}`,
          { headers: { 'X-QR-Poll-Token': created.poll_token } },
        )
      } catch (err) {
        // A gateway restarting or a dropped connection: try again a little later; the
        // gateway's answers (already_used, expired, …) end the wait.
        if (err.code !== 'network_error' && err.code !== 'service_unavailable'
            && err.code !== 'timeout' && err.code !== 'http_error') throw err
        failures += 1
        if (failures > 5) throw err
        await sleep(500 * failures)
        continue
      }
      failures = 0
      if (body.state !== known) {
        known = body.state
        onState(known, body)
      }
      if (body.session) return body.session
      if (FINAL.has(known)) {
        throw new MploginError(`qr_login_${known}`, `The QR login was ${known}.`)
      }
    }
    throw new MploginError('stopped', 'The QR login was stopped.')
  }

  return {
    request,
    done: run(),
    stop() {
      stopped = true
      abort.abort()
    },
  }
}
