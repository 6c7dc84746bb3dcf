// Keyward portal: the shared helpers of every page. Calls the REST API with
// the session cookie and the page's CSRF token (X-CSRF-Token); wires the
// small declarative forms and buttons of the administration pages
// (data-api-url, data-api-method, ...). No inline script anywhere: the
// Content-Security-Policy forbids it.
'use strict';

const Keyward = (() => {
  const csrf = () => {
    const m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.content : '';
  };

  // One API call; resolves with the parsed JSON (or null), rejects with an
  // Error carrying `status` and the API's `{error: {code, message, field}}`.
  async function api(method, url, body, contentType, signal) {
    const headers = { Accept: 'application/json' };
    if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = csrf();
    let payload;
    if (body !== undefined) {
      if (contentType) {
        headers['Content-Type'] = contentType;
        payload = body;
      } else {
        headers['Content-Type'] = 'application/json';
        payload = JSON.stringify(body);
      }
    }
    const res = await fetch(url, {
      method, headers, body: payload, credentials: 'same-origin', cache: 'no-store', signal,
    });
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
    if (!res.ok) {
      const detail = data && data.error ? data.error : null;
      const err = new Error(detail ? detail.message : `HTTP ${res.status}`);
      err.status = res.status;
      err.detail = detail;
      throw err;
    }
    return data;
  }

  function describe(e) {
    if (e && e.detail) {
      let s = e.detail.message;
      if (e.detail.field) s += ` (${e.detail.field})`;
      // PIN answers refused by the policy's rules name each failed rule.
      const d = e.detail.details;
      if (d && Array.isArray(d.failed_rules) && d.failed_rules.length && !s.includes(d.failed_rules[0].description)) {
        s += ': ' + d.failed_rules.map((r) => r.description).join('; ');
      }
      return s;
    }
    return e && e.message ? e.message : String(e);
  }

  function pageError(e, near) {
    const scope = (near && near.closest('section, article, main')) || document;
    const el = scope.querySelector('.api-error') || document.querySelector('.api-error');
    if (!el) return;
    if (e) {
      el.textContent = describe(e);
      el.hidden = false;
    } else {
      el.hidden = true;
    }
  }

  function resultBox(near) {
    const scope = near.closest('section, article, main, p') || document;
    return scope.querySelector('.api-result') || document.querySelector('.api-result');
  }

  function showResult(near, data) {
    const box = resultBox(near);
    if (!box) return;
    box.textContent = typeof data === 'string' ? data : JSON.stringify(data, null, 2);
    box.hidden = false;
  }

  async function formBody(form) {
    const file = form.dataset.apiFile;
    if (file) {
      const input = form.querySelector('input[type="file"]');
      if (!input.files.length) throw new Error('choose a file first');
      return { body: await input.files[0].text(), type: file === 'csv' ? 'text/csv' : file };
    }
    const jsonField = form.dataset.apiJson;
    if (jsonField) {
      const text = form.elements[jsonField].value;
      try {
        return { body: JSON.parse(text) };
      } catch (e) {
        throw new Error(`the document is not valid JSON: ${e.message}`);
      }
    }
    const body = {};
    for (const el of form.elements) {
      if (!el.name || el.disabled) continue;
      if (el.dataset.optional && el.value === '') continue;
      body[el.name] = el.dataset.number ? Number(el.value) : el.value;
    }
    return { body };
  }

  async function run(el, method, url, body, type) {
    if (el.dataset.confirm && !window.confirm(el.dataset.confirm)) return;
    pageError(null, el);
    try {
      const data = await api(method, url, method === 'GET' ? undefined : body, type);
      if (el.dataset.apiShow) showResult(el, data);
      if (el.dataset.reload) window.location.reload();
    } catch (e) {
      pageError(e, el);
    }
  }

  function wire() {
    for (const form of document.querySelectorAll('form[data-api-url]')) {
      form.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        let parsed;
        try {
          parsed = await formBody(form);
        } catch (e) {
          pageError(e, form);
          return;
        }
        await run(form, form.dataset.apiMethod || 'POST', form.dataset.apiUrl, parsed.body, parsed.type);
      });
    }
    for (const button of document.querySelectorAll('button[data-api-url]')) {
      button.addEventListener('click', () => run(button, button.dataset.apiMethod || 'POST', button.dataset.apiUrl));
    }
  }

  document.addEventListener('DOMContentLoaded', wire);

  // A PIN rule's state, in words as well as colour and mark (WCAG 1.4.1):
  // a visually hidden "met" / "not met" a screen reader reads with the rule.
  function markRule(li, passed) {
    li.classList.toggle('pass', passed === true);
    li.classList.toggle('fail', passed === false);
    let state = li.querySelector('.rule-state');
    if (!state) {
      state = document.createElement('span');
      state.className = 'rule-state sr-only';
      li.prepend(state);
    }
    state.textContent = passed === true ? 'Met: ' : passed === false ? 'Not met: ' : '';
  }

  return { api, describe, pageError, csrf, markRule };
})();
