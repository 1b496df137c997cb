// Fake mini-program hosts for the end-to-end tests: the globals `wx`, `my`, `tt`, `ks`, `swan`,
// `qq`, `uni` and `Taro`, each with the platform's own API shapes. Only the login call is fake:
// it mints a real code at the platform sandbox. `request` is the platform's request API over
// fetch, with its real option names, defaults, body encoding and response shape; storage is
// the platform's storage API over a Map.
//
// Every request that leaves a host is recorded ({path, method, data, header}) as it went over
// the wire, so the tests can check what the client really sent.

import { readFile } from 'node:fs/promises'
import { basename } from 'node:path'

/** The global each host kind installs, and the platform it runs on natively. */
export const NATIVE = { wx: 'wechat', my: 'alipay', tt: 'douyin', ks: 'kuaishou', swan: 'baidu', qq: 'qq' }

/** uni.login's provider for each platform (uni-app's names). */
const UNI_PROVIDERS = {
  wechat: 'weixin', alipay: 'alipay', douyin: 'toutiao', kuaishou: 'kuaishou', baidu: 'baidu', qq: 'qq',
}

const METHODS = new Set(['OPTIONS', 'GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'TRACE', 'CONNECT'])

/** 'x-request-id' → 'X-Request-Id': header names as the server wrote them (fetch lowercases). */
function titleCase(name) {
  return name.replace(/(^|-)([a-z])/g, (_, dash, ch) => dash + ch.toUpperCase())
}

function headerValue(header, name) {
  for (const [k, v] of Object.entries(header || {})) if (k.toLowerCase() === name) return v
  return undefined
}

function formEncode(data) {
  return new URLSearchParams(Object.entries(data).map(([k, v]) => [k, String(v)])).toString()
}

/**
 * One HTTP exchange over fetch, recording what was sent. Resolves {status, text, headers};
 * rejects with {kind: 'timeout'|'network', message} when no response came.
 */
async function exchange(state, { url, method, header, body, timeout }) {
  const target = new URL(url)
  let data
  try { data = body === undefined ? undefined : JSON.parse(body) } catch { data = body }
  state.sent.push({ path: target.pathname, method, data, header: { ...header } })
  let res
  try {
    res = await fetch(target, { method, headers: header, body, signal: AbortSignal.timeout(timeout) })
  } catch (err) {
    const kind = err && err.name === 'TimeoutError' ? 'timeout' : 'network'
    throw { kind, message: String(err && err.message) }
  }
  const text = await res.text()
  return { status: res.status, text, headers: [...res.headers] }
}

/** `wx.request` and its copies (`tt`, `ks`, `swan`, `qq`, `uni`): callbacks, `header`, `statusCode`. */
function wxRequest(state, api) {
  return function request(options) {
    const { url, data, header = {}, timeout = 60000, dataType = 'json', success, fail, complete } = options
    const method = (options.method || 'GET').toUpperCase()
    const done = (cb, arg) => { if (cb) cb(arg); if (complete) complete(arg) }
    if (!METHODS.has(method)) {
      done(fail, { errMsg: `${api}.request:fail invalid method` })
      return { abort() {} }
    }
    const sent = { ...header }
    // wx.request's default Content-Type; an object body is JSON for it and form-encoded for
    // x-www-form-urlencoded; on GET the object becomes the query string.
    if (headerValue(sent, 'content-type') === undefined) sent['content-type'] = 'application/json'
    let target = url
    let body
    if (data !== undefined && data !== null) {
      if (method === 'GET' && typeof data === 'object') {
        target += (url.includes('?') ? '&' : '?') + formEncode(data)
      } else if (typeof data === 'string') {
        body = data
      } else if (/x-www-form-urlencoded/i.test(headerValue(sent, 'content-type'))) {
        body = formEncode(data)
      } else {
        body = JSON.stringify(data)
      }
    }
    exchange(state, { url: target, method, header: sent, body, timeout }).then(
      ({ status, text, headers }) => {
        let parsed = text
        if (dataType === 'json') {
          try { parsed = JSON.parse(text) } catch { /* the raw text, as wx does */ }
        }
        done(success, {
          data: parsed,
          statusCode: status,
          header: Object.fromEntries(headers.map(([k, v]) => [titleCase(k), v])),
          cookies: [],
          errMsg: 'request:ok',
        })
      },
      (err) => done(fail, { errMsg: `request:fail ${err.kind === 'timeout' ? 'timeout' : err.message}` }),
    )
    return { abort() {} }
  }
}

/**
 * A multipart upload of one local file over fetch, as the hosts' uploadFile sends it (the file
 * part labelled application/octet-stream, `formData` as text fields). Records {path, method,
 * data: {field, file, bytes}, header}. Resolves {status, text, headers}; rejects with
 * {kind: 'file'|'timeout'|'network', message}.
 */
async function uploadExchange(state, { url, filePath, name, header = {}, formData = {}, timeout = 60000 }) {
  let bytes
  try {
    bytes = await readFile(filePath)
  } catch (err) {
    throw { kind: 'file', message: `file not found: ${filePath}` }
  }
  const form = new FormData()
  for (const [k, v] of Object.entries(formData)) form.append(k, String(v))
  form.append(name, new Blob([bytes], { type: 'application/octet-stream' }), basename(filePath))
  const target = new URL(url)
  state.sent.push({
    path: target.pathname, method: 'POST', data: { field: name, file: basename(filePath), bytes: bytes.length },
    header: { ...header },
  })
  let res
  try {
    res = await fetch(target, { method: 'POST', headers: header, body: form, signal: AbortSignal.timeout(timeout) })
  } catch (err) {
    const kind = err && err.name === 'TimeoutError' ? 'timeout' : 'network'
    throw { kind, message: String(err && err.message) }
  }
  return { status: res.status, text: await res.text(), headers: [...res.headers] }
}

/** `wx.uploadFile` and its copies: callbacks, `name`, `header`, `formData`; `data` is the text. */
function wxUploadFile(state, api) {
  return function uploadFile(options) {
    const { url, filePath, name, header, formData, timeout, success, fail, complete } = options
    const done = (cb, arg) => { if (cb) cb(arg); if (complete) complete(arg) }
    if (!name || !filePath) {
      done(fail, { errMsg: `${api}.uploadFile:fail parameter error` })
      return { abort() {} }
    }
    uploadExchange(state, { url, filePath, name, header, formData, timeout }).then(
      ({ status, text }) => done(success, { data: text, statusCode: status, errMsg: 'uploadFile:ok' }),
      (err) => done(fail, { errMsg: `uploadFile:fail ${err.message}` }),
    )
    return { abort() {} }
  }
}

/** wx-shaped sync storage: getStorageSync answers '' for a missing key. */
function wxStorage(state) {
  return {
    getStorageSync: (key) => (state.storage.has(key) ? state.storage.get(key) : ''),
    setStorageSync: (key, value) => { state.storage.set(key, value) },
    removeStorageSync: (key) => { state.storage.delete(key) },
  }
}

/** A callback login API whose success gets `shape(code result)`. */
function callbackLogin(state, name, shape) {
  return (options = {}) => {
    const { success, fail, complete } = options
    state.loginCalls.push(options)
    state.nextCode().then(
      (got) => { const r = { ...shape(got), errMsg: `${name}:ok` }; if (success) success(r); if (complete) complete(r) },
      (err) => { const r = { errMsg: `${name}:fail ${err.message}` }; if (fail) fail(r); if (complete) complete(r) },
    )
  }
}

/** Alipay's `my`: getAuthCode, `my.request` with `headers`/`status` and error 19, {key, data} storage. */
function alipayApi(state) {
  return {
    getAuthCode: (options = {}) => {
      const scopes = [].concat(options.scopes || [])
      if (!scopes.includes('auth_base') && !scopes.includes('auth_user')) {
        const r = { error: 2, errorMessage: 'invalid scopes' }
        if (options.fail) options.fail(r)
        return
      }
      state.loginCalls.push(options)
      state.nextCode().then(
        (got) => options.success && options.success({
          authCode: got.code, authErrorScopes: {}, authSuccessScopes: scopes,
        }),
        (err) => options.fail && options.fail({ error: 11, errorMessage: err.message }),
      )
    },
    request: (options) => {
      const { url, data, headers = {}, timeout = 30000, dataType = 'json', success, fail, complete } = options
      const method = (options.method || 'GET').toUpperCase()
      const done = (cb, arg) => { if (cb) cb(arg); if (complete) complete(arg) }
      const sent = { ...headers }
      // my.request's default is a form body; an object is JSON only under a JSON content-type.
      if (headerValue(sent, 'content-type') === undefined) {
        sent['content-type'] = 'application/x-www-form-urlencoded'
      }
      let body
      if (data !== undefined && data !== null) {
        if (typeof data === 'string') body = data
        else if (/json/i.test(headerValue(sent, 'content-type'))) body = JSON.stringify(data)
        else body = formEncode(data)
      }
      exchange(state, { url, method, header: sent, body, timeout }).then(
        ({ status, text, headers: got }) => {
          let parsed = text
          if (dataType === 'json') {
            try { parsed = JSON.parse(text) } catch {
              done(fail, { error: 14, errorMessage: 'JSON parse error', status, data: text })
              return
            }
          }
          const res = { data: parsed, status, headers: Object.fromEntries(got) }
          // Base libraries before 2.0 (still found in the field) fail any non-2xx status.
          if (status >= 200 && status < 300) done(success, res)
          else done(fail, { error: 19, errorMessage: 'http status error', ...res })
        },
        (err) => done(fail, err.kind === 'timeout'
          ? { error: 13, errorMessage: 'timeout' }
          : { error: 12, errorMessage: 'network error' }),
      )
      return { abort() {} }
    },
    // my.uploadFile: `fileName` is the field name, `fileType` (image/video/audio) is required.
    uploadFile: (options) => {
      const { url, filePath, fileName, fileType, header, formData, timeout, success, fail, complete } = options
      const done = (cb, arg) => { if (cb) cb(arg); if (complete) complete(arg) }
      if (!fileName || !['image', 'video', 'audio'].includes(fileType)) {
        done(fail, { error: 2, errorMessage: 'invalid parameter: fileName and fileType are required' })
        return
      }
      uploadExchange(state, { url, filePath, name: fileName, header, formData, timeout }).then(
        ({ status, text, headers: got }) => done(success, { data: text, statusCode: status, header: Object.fromEntries(got) }),
        (err) => done(fail, { error: 12, errorMessage: err.message }),
      )
    },
    getStorageSync: ({ key }) => ({ data: state.storage.has(key) ? state.storage.get(key) : null }),
    setStorageSync: ({ key, data }) => { state.storage.set(key, data) },
    removeStorageSync: ({ key }) => { state.storage.delete(key) },
  }
}

/**
 * A fake host. `kind` is the global it installs ('wx', 'my', 'tt', 'ks', 'swan', 'qq', 'uni',
 * 'Taro'); `platform` the platform it runs on (uni and Taro run on any).
 * `nextCode()` gives the code result the login call answers with ({code?, anonymousCode?}).
 */
export function fakeHost(kind, platform, nextCode) {
  const state = { storage: new Map(), sent: [], loginCalls: [], nextCode }
  let api
  if (kind === 'my') {
    api = alipayApi(state)
  } else if (kind === 'Taro') {
    // Taro's promise API (on top of the platform's own); rejects when no response came.
    const request = wxRequest(state, 'Taro')
    api = {
      login: () => {
        state.loginCalls.push({})
        return state.nextCode().then((got) => ({ ...got, errMsg: 'login:ok' }))
      },
      request: (options) => new Promise((resolve, reject) => {
        request({ ...options, success: resolve, fail: reject })
      }),
      uploadFile: (options) => new Promise((resolve, reject) => {
        wxUploadFile(state, 'Taro')({ ...options, success: resolve, fail: reject })
      }),
      ...wxStorage(state),
    }
  } else if (kind === 'uni') {
    const provider = UNI_PROVIDERS[platform]
    const login = callbackLogin(state, 'login', (got) => ({ ...got, authResult: got }))
    api = {
      login: (options = {}) => {
        if (options.provider !== provider) {
          const r = { errMsg: `login:fail provider ${options.provider} is not ${provider} here` }
          if (options.fail) options.fail(r)
          return
        }
        login(options)
      },
      request: wxRequest(state, 'uni'),
      uploadFile: wxUploadFile(state, 'uni'),
      ...wxStorage(state),
    }
  } else {
    const shapes = {
      // tt.login: `code` only when the user is logged in to Douyin, `anonymousCode` always.
      tt: (got) => ({ code: got.code || '', anonymousCode: got.anonymousCode || '', isLogin: Boolean(got.code) }),
    }
    const shape = shapes[kind] || ((got) => ({ code: got.code }))
    api = {
      login: callbackLogin(state, 'login', shape),
      request: wxRequest(state, kind),
      uploadFile: wxUploadFile(state, kind),
      ...wxStorage(state),
    }
    if (kind === 'swan') api.getLoginCode = callbackLogin(state, 'getLoginCode', shape)
  }
  return { api, state }
}
