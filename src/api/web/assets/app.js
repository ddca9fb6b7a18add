// sitegate local web app. One more client of the JSON API: every decision is the daemon's; this
// page only shows what the API returns. No framework, no build step. All text goes through
// textContent (never innerHTML), so names from bundles and profiles cannot inject markup.
'use strict';
(() => {
  const main = document.getElementById('main');
  const nav = document.getElementById('nav');
  const conn = document.getElementById('conn');

  let csrf = null; // CSRF token of the cookie session (held in memory only)
  let me = null; // GET /api/v1/me
  let units = []; // latest snapshot from the stream
  let lastMsgAt = 0; // performance.now() of the last stream message
  let msgAt = 0; // the daemon's time of the last stream message (ms since the epoch)
  let intervalMs = 1000;
  let es = null;
  let signature = ''; // what the current view's structure was built from
  let bindings = []; // functions refreshing live values in place

  // ---------------------------------------------------------------------------------------------
  // Small helpers
  // ---------------------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') e.textContent = v;
      else if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (k in e && typeof v !== 'string') e[k] = v;
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(typeof c === 'string' ? document.createTextNode(c) : c);
    }
    return e;
  }

  function show(...nodes) {
    main.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
  }

  const ERRORS = {
    invalid_credentials: 'Email, password or token not accepted.',
    login_throttled: 'Too many failed attempts. Wait a moment and try again.',
    unauthenticated: 'You are signed out. Sign in again.',
    session_expired: 'Your session has expired. Sign in again.',
    csrf_failed: 'The security check of this page failed. Reload the page and try again.',
    forbidden: 'Your access does not allow this.',
    unit_not_found: 'This unit does not exist or you have no access to it.',
    point_not_found: 'This value does not exist or you have no access to it.',
    command_not_found: 'This command does not exist for the unit.',
    point_read_only: 'This value cannot be changed.',
    invalid_value: 'The value is not accepted:',
    device_timeout: 'The unit did not answer in time; the result is not confirmed.',
    device_error: 'The unit reported an error:',
    readback_mismatch: 'Mismatch: the unit did not keep the value.',
    link_busy: 'The bus is busy; nothing was sent. Try again in a second.',
    not_possible_in_mode: 'Not sent: the unit cannot do this in its current mode.',
    command_not_supported: 'Not sent: this controller does not support the command.',
    device_refused: 'The unit refused the request:',
    rate_limited: 'Too many requests. Wait a moment.',
    request_timeout: 'The request took too long and was abandoned.',
    internal: 'The box could not complete this. Try again; if it persists, ask your technician.',
    config_unavailable: 'The config file cannot be read or changed now. Check it with `sitegate check-config` on the box.',
  };

  function errorText(status, body) {
    const code = body && body.error;
    const words = ERRORS[code];
    if (code === 'invalid_value' || code === 'device_error' || code === 'device_refused') return `${words} ${body.message}`;
    if (code === 'forbidden') return `${words} (${body.message})`;
    if (words) return words;
    if (body && body.message) return body.message;
    return `The request failed (HTTP ${status}).`;
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (csrf && method !== 'GET') headers['X-CSRF-Token'] = csrf;
    let r;
    try {
      r = await fetch(path, {
        method,
        headers,
        credentials: 'same-origin',
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      return { status: 0, body: { error: 'network', message: 'The box cannot be reached. Check the network.' } };
    }
    let data = null;
    try {
      data = r.status === 204 ? null : await r.json();
    } catch (e) {
      data = null;
    }
    if ((r.status === 401) && path !== '/web/session') {
      signedOut(errorText(r.status, data));
    }
    return { status: r.status, body: data };
  }

  function fmtAge(ms) {
    if (ms === null || ms === undefined) return '';
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  }

  function words(s) {
    return String(s).replace(/_/g, ' ');
  }

  // A point's title (its name in words) and, when the profile's label says more, that text.
  function title(p) {
    const w = words(p.name);
    return w.charAt(0).toUpperCase() + w.slice(1);
  }

  function detail(p) {
    return p.label && p.label !== p.name ? p.label : '';
  }

  function fmtValue(p) {
    if (p.value === null || p.value === undefined) return '—';
    if (p.type === 'bool') return p.value ? 'on' : 'off';
    if (typeof p.value === 'string') return words(p.value);
    if (typeof p.value === 'number') {
      const v = Number.isInteger(p.value) ? String(p.value) : p.value.toFixed(1);
      return p.unit ? `${v} ${p.unit}` : v;
    }
    return String(p.value);
  }

  // The point's age when the last message was sent (its `at` − the point's `read_at`, both the
  // daemon's clock), plus the time since that message arrived.
  function pointAge(p) {
    if (!p.read_at) return null;
    return Math.max(0, msgAt - Date.parse(p.read_at)) + (performance.now() - lastMsgAt);
  }

  function streamStale() {
    return !es || performance.now() - lastMsgAt > intervalMs + 1000;
  }

  // A value is marked stale when its quality says so, when the stream has been silent for an
  // interval and a second, or when it is older than the unit's own poll interval, plus the
  // stream interval that delivers it, plus a second (the daemon's own `stale` quality comes only
  // after three poll intervals).
  function isStale(p, u) {
    if (p.quality !== 'good' || streamStale()) return true;
    const age = pointAge(p);
    const poll = u && u.poll_interval_ms ? u.poll_interval_ms : null;
    return poll !== null && age !== null && age > poll + intervalMs + 1000;
  }

  const ALARM_ACTIVE = new Set(['warning', 'shutdown', 'electrical_trip']);

  function alarms(u) {
    const out = [];
    for (const p of u.points) {
      if (p.name.startsWith('alarm_') && typeof p.value === 'string' && ALARM_ACTIVE.has(p.value)) {
        out.push(`${title(p)}: ${words(p.value)}`);
      }
      if (p.name === 'failure_code' && typeof p.value === 'number' && p.value !== 0) {
        out.push(`${title(p)}: ${p.value}`);
      }
    }
    return out;
  }

  function offlineReason(u) {
    if (u.online) return '';
    if (!u.last_seen) return 'has not answered since the box started';
    return `no answer since ${new Date(u.last_seen).toLocaleString()}`;
  }

  // ---------------------------------------------------------------------------------------------
  // Session
  // ---------------------------------------------------------------------------------------------

  function signedOut(message) {
    csrf = null;
    me = null;
    units = [];
    if (es) {
      es.close();
      es = null;
    }
    renderNav();
    renderLogin(message);
  }

  async function start() {
    const r = await api('GET', '/web/session');
    if (r.status === 200 && r.body) {
      csrf = r.body.csrf_token;
      await afterLogin();
    } else if (r.status === 503 && r.body && r.body.error === 'not_provisioned') {
      renderSetup();
    } else {
      renderLogin();
    }
  }

  async function afterLogin() {
    const r = await api('GET', '/api/v1/me');
    if (r.status === 200) {
      me = r.body;
    } else if (r.status === 403) {
      me = null;
      renderNav();
      show(
        el('h1', { text: 'No access on this site' }),
        el('p', { text: 'You are signed in, but your account has no role on this box. Ask the site admin for access.' }),
      );
      return;
    } else {
      return;
    }
    renderNav();
    connect();
    route();
  }

  function renderNav() {
    nav.replaceChildren();
    if (!csrf) return;
    const name = me && me.user ? me.user.name || me.user.email || me.user.id : '';
    const site = (me && me.site && me.site.capabilities) || [];
    if (site.includes('diagnose')) {
      nav.append(el('a', { href: '#/scan', text: 'Scan' }));
    }
    if (site.includes('manage_users') || site.includes('diagnose')) {
      nav.append(el('a', { href: '#/admin', text: 'Access & audit' }));
    }
    nav.append(
      el('span', { text: name }),
      el('button', { class: 'secondary', type: 'button', onclick: logout, text: 'Sign out' }),
    );
  }

  async function logout() {
    await api('DELETE', '/web/session');
    signedOut('You are signed out.');
  }

  function renderLogin(message) {
    document.title = 'Sign in · sitegate';
    const err = el('p', { class: 'error', role: 'alert', id: 'login-error' });
    if (message) err.textContent = message;
    const email = el('input', { id: 'email', name: 'email', type: 'email', autocomplete: 'username', required: true });
    const password = el('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
    const submit = el('button', { type: 'submit', text: 'Sign in' });
    const form = el('form', { class: 'login', 'aria-labelledby': 'login-h' },
      el('h2', { id: 'login-h', text: 'With email and password' }),
      el('label', { for: 'email', text: 'Email' }), email,
      el('label', { for: 'password', text: 'Password' }), password,
      submit);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      submit.disabled = true;
      err.textContent = '';
      await login({ email: email.value, password: password.value }, err);
      submit.disabled = false;
    });

    const tokenText = el('textarea', { id: 'token', name: 'token', spellcheck: 'false', autocomplete: 'off' });
    const tokenFile = el('input', { id: 'token-file', type: 'file', accept: '.json,.token,.txt,application/json,text/plain' });
    tokenFile.addEventListener('change', async () => {
      const f = tokenFile.files && tokenFile.files[0];
      if (f) tokenText.value = (await f.text()).trim();
    });
    const tokenSubmit = el('button', { type: 'submit', text: 'Sign in with token' });
    const tform = el('form', { class: 'login', 'aria-labelledby': 'token-h' },
      el('h2', { id: 'token-h', text: 'Installer token' }),
      el('label', { for: 'token', text: 'Paste the token' }), tokenText,
      el('label', { for: 'token-file', text: 'or choose the token file' }), tokenFile,
      tokenSubmit);
    tform.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const t = tokenText.value.trim();
      err.textContent = '';
      if (!t) {
        err.textContent = 'Paste a token or choose its file first.';
        return;
      }
      tokenSubmit.disabled = true;
      await login({ token: t }, err);
      tokenSubmit.disabled = false;
    });
    show(el('h1', { text: 'Sign in to this box' }), err, form, tform);
  }

  // First boot (an unprovisioned box serves only POST /api/v1/setup): the setup code from the
  // console, the site and gateway ids, the fleet trust key; the certificate fingerprint to pin.
  async function renderSetup() {
    document.title = 'First-boot setup · sitegate';
    const h = await api('GET', '/api/v1/healthz');
    const fp = h.status === 200 && h.body && h.body.tls_fingerprint ? h.body.tls_fingerprint : null;
    const nodes = [];
    const field = (id, label, attrs, hint) => {
      const a = Object.assign({ id, name: id, autocomplete: 'off', spellcheck: 'false' }, attrs);
      if (hint) a['aria-describedby'] = `${id}-hint`;
      const input = el(attrs.tag || 'input', Object.assign(a, { tag: undefined }));
      nodes.push(el('label', { for: id, text: label }), hint ? el('p', { class: 'why', id: `${id}-hint`, text: hint }) : null, input);
      return input;
    };
    const code = field('su-code', 'Setup code', { required: true },
      'Shown on the box\'s console and in its journal, and in the file setup-code of its state directory.');
    const site = field('su-site', 'Site id', { required: true });
    const gateway = field('su-gateway', 'Gateway id (this box)', { required: true });
    const name = field('su-name', 'Name of the site (optional)', {});
    const kid = field('su-kid', 'Fleet trust key id', { required: true },
      'From your fleet\'s trust key sheet: the key id and the Ed25519 public key (base64url).');
    const pub = field('su-key', 'Fleet trust public key', { tag: 'textarea', required: true });
    const mqtt = field('su-mqtt', 'Cloud broker URL (optional)', {}, 'mqtts://host:8883; empty: the box works offline until one is set.');
    const err = el('p', { class: 'error', role: 'alert' });
    const submit = el('button', { type: 'submit', text: 'Set up this box' });
    const form = el('form', { class: 'login', novalidate: true, 'aria-labelledby': 'su-h' },
      el('h2', { id: 'su-h', text: 'Site and gateway' }), ...nodes.filter((n) => n), submit);
    const cert = el('section', { 'aria-labelledby': 'fp-h', class: 'control' },
      el('h2', { id: 'fp-h', text: 'Certificate to pin' }),
      el('p', { text: 'This box made its own certificate. Before you type the setup code, check that your browser shows the same SHA-256 fingerprint for this page (the padlock, then the certificate), and note it: it stays the same after setup, and your tools should accept only it.' }),
      el('p', { class: 'fingerprint', id: 'fp', text: fp || 'not available (the page is not served over TLS)' }));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      err.textContent = '';
      const body = {
        code: code.value.trim(), site: site.value.trim(), gateway: gateway.value.trim(),
        trust: [{ kid: kid.value.trim(), public_key: pub.value.trim() }],
      };
      if (name.value.trim()) body.name = name.value.trim();
      if (mqtt.value.trim()) body.mqtt_url = mqtt.value.trim();
      if (!body.code || !body.site || !body.gateway || !body.trust[0].kid || !body.trust[0].public_key) {
        err.textContent = 'Fill in the setup code, the site and gateway ids and the trust key.';
        return;
      }
      submit.disabled = true;
      const r = await api('POST', '/api/v1/setup', body);
      submit.disabled = false;
      if (r.status !== 200) {
        err.textContent = r.body && r.body.error === 'wrong_setup_code'
          ? 'The setup code is not right. After 5 wrong codes the box shows a new one on its console.'
          : errorText(r.status, r.body);
        return;
      }
      setupDone(r.body, fp);
    });
    show(el('h1', { text: 'Set up this box' }),
      el('p', { text: 'This box is not provisioned yet. Give it its site, its gateway id and the key your fleet signs with; it then restarts as that site\'s gateway.' }),
      cert, err, form);
    code.focus();
  }

  async function setupDone(res, fp) {
    const state = el('p', { class: 'result', role: 'status', 'aria-live': 'polite', id: 'setup-state', text: 'Restarting on the new configuration…' });
    const next = el('p', {});
    show(el('h1', { text: 'Box provisioned' }),
      el('p', { class: 'result ok', text: `Site ${res.site}, gateway ${res.gateway}. The configuration is written.` }),
      el('section', { 'aria-labelledby': 'fp-h', class: 'control' },
        el('h2', { id: 'fp-h', text: 'Certificate to pin' }),
        el('p', { class: 'fingerprint', id: 'fp', text: fp || 'not available' }),
        el('p', { class: 'why', text: 'The box keeps this certificate. If your browser later shows another fingerprint for this address, do not sign in.' })),
      state, next);
    for (let i = 0; i < 120; i++) {
      await new Promise((ok) => setTimeout(ok, 500));
      const h = await api('GET', '/api/v1/healthz');
      if (h.status === 200 && h.body && h.body.status === 'ok') {
        state.textContent = 'The box is running as the site\'s gateway.';
        next.replaceChildren(el('a', { href: '#/', id: 'setup-signin', onclick: (ev) => { ev.preventDefault(); renderLogin('Sign in with your installer token, then scan the links for units.'); }, text: 'Sign in with your installer token' }));
        return;
      }
    }
    state.className = 'result bad';
    state.textContent = 'The box has not come back within a minute. Look at its console.';
  }

  async function login(body, err) {
    const r = await api('POST', '/web/session', body);
    if (r.status === 201) {
      csrf = r.body.csrf_token;
      await afterLogin();
      return;
    }
    err.textContent = errorText(r.status, r.body);
  }

  // ---------------------------------------------------------------------------------------------
  // Live updates
  // ---------------------------------------------------------------------------------------------

  // The stream sends a full snapshot first (`full`), then deltas: `units` (appeared or changed
  // shape, in full), `removed` (no longer visible) and `patches` (only values, qualities and read
  // times changed; points named by their index in the unit's `points`). A message with none of
  // them is a heartbeat.
  function merge(prev, msg) {
    if (msg.full) return msg.units || [];
    const gone = new Set(msg.removed || []);
    const fresh = new Map((msg.units || []).map((u) => [u.id, u]));
    const next = prev.filter((u) => !gone.has(u.id)).map((u) => fresh.get(u.id) || u);
    for (const u of fresh.values()) if (!prev.some((p) => p.id === u.id)) next.push(u);
    for (const t of msg.patches || []) {
      const i = next.findIndex((u) => u.id === t.id);
      if (i < 0) continue;
      const points = next[i].points.slice();
      for (const [k, value, quality, readAt] of t.values || []) {
        if (points[k]) points[k] = { ...points[k], value, quality, read_at: readAt };
      }
      for (const [readAt, ...idx] of t.read_at || []) {
        for (const k of idx) if (points[k]) points[k] = { ...points[k], read_at: readAt };
      }
      next[i] = { ...next[i], last_seen: t.last_seen, points };
    }
    return next;
  }

  function connect() {
    if (es) es.close();
    conn.textContent = 'Connecting…';
    es = new EventSource('/api/v1/units/stream');
    es.addEventListener('units', (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      lastMsgAt = performance.now();
      msgAt = Date.parse(msg.at);
      intervalMs = msg.interval_ms || 1000;
      units = merge(units, msg);
      conn.textContent = 'Live';
      refresh();
    });
    es.addEventListener('end', () => {
      signedOut('Your session has ended. Sign in again.');
    });
    es.addEventListener('error', () => {
      // EventSource reconnects by itself; say so, and let the stale marks show.
      conn.textContent = 'Connection lost — reconnecting…';
      refreshValues();
    });
  }

  setInterval(() => {
    if (!es) return;
    if (streamStale()) conn.textContent = 'No update for a while — values may be stale';
    refreshValues();
  }, 1000);

  function viewSignature() {
    // The admin and scan views are built from their own requests, not from the stream: a stream
    // message never rebuilds them (their unit lists are refreshed in place).
    if (location.hash === '#/admin' || location.hash === '#/scan') return '';
    // The structure (which units, which controls) changes only with access or inventory, and
    // once, when the first message replaces "Loading" (even with no unit to show).
    return (lastMsgAt ? 'loaded' : 'loading') + JSON.stringify(units.map((u) => [u.id, u.online, u.capabilities,
      u.points.map((p) => [p.name, p.writable]), u.commands.map((c) => [c.name, c.allowed])]));
  }

  function refresh() {
    const sig = location.hash + '|' + viewSignature();
    if (sig !== signature) {
      signature = sig;
      route();
    } else {
      refreshValues();
    }
  }

  function refreshValues() {
    for (const b of bindings) b();
  }

  // ---------------------------------------------------------------------------------------------
  // Views
  // ---------------------------------------------------------------------------------------------

  window.addEventListener('hashchange', () => {
    signature = '';
    route();
    main.focus();
  });

  function route() {
    if (!csrf) return;
    bindings = [];
    signature = location.hash + '|' + viewSignature();
    const m = location.hash.match(/^#\/unit\/([^/]+)$/);
    if (m) renderUnit(decodeURIComponent(m[1]));
    else if (location.hash === '#/admin') renderAdmin();
    else if (location.hash === '#/scan') renderScan();
    else renderSite();
  }

  const SUMMARY_POINTS = {
    'dse-gencomm': ['control_mode', 'engine_state', 'fuel_level', 'battery_voltage'],
    'coolmaster-va': ['on', 'mode', 'setpoint', 'room_temperature'],
  };

  function unitById(id) {
    return units.find((u) => u.id === id);
  }

  // A live value: text, age and quality refreshed in place every second.
  function liveValue(unitId, pointName) {
    const v = el('span', { class: 'val' });
    const age = el('span', { class: 'age' });
    const upd = () => {
      const u = unitById(unitId);
      const p = u && u.points.find((x) => x.name === pointName);
      if (!p) {
        v.textContent = '—';
        age.textContent = '';
        return;
      }
      v.textContent = fmtValue(p);
      const stale = isStale(p, u);
      v.className = 'val' + (stale ? ' stale' : '');
      const a = pointAge(p);
      age.textContent = (a === null ? 'not read yet' : fmtAge(a)) + (p.quality !== 'good' && p.quality !== 'stale' ? ` · ${words(p.quality)}` : '');
    };
    bindings.push(upd);
    upd();
    return [v, age];
  }

  function statusBadge(unitId) {
    const b = el('span', { class: 'badge' });
    const why = el('span', { class: 'muted' });
    const upd = () => {
      const u = unitById(unitId);
      if (!u) return;
      if (streamStale()) {
        b.className = 'badge stale';
        b.textContent = 'no live data';
      } else {
        b.className = 'badge ' + (u.online ? 'online' : 'offline');
        b.textContent = u.online ? 'online' : 'offline';
      }
      why.textContent = u.online ? '' : ` ${offlineReason(u)}`;
    };
    bindings.push(upd);
    upd();
    return [b, why];
  }

  function alarmList(unitId) {
    const list = el('ul', { class: 'alarms', 'aria-label': 'Active alarms' });
    const upd = () => {
      const u = unitById(unitId);
      const a = u ? alarms(u) : [];
      list.hidden = a.length === 0;
      list.replaceChildren(...a.map((t) => el('li', { text: t })));
    };
    bindings.push(upd);
    upd();
    return list;
  }

  function renderSite() {
    document.title = 'Site · sitegate';
    if (!lastMsgAt) {
      show(el('h1', { text: 'Site' }), el('p', { class: 'muted', text: 'Loading units…' }));
      return;
    }
    if (units.length === 0) {
      show(el('h1', { text: 'Site' }), el('p', { text: 'There are no units you can see on this box.' }));
      return;
    }
    const cards = units.map((u) => {
      const names = SUMMARY_POINTS[u.profile] || u.points.slice(0, 4).map((p) => p.name);
      const dl = el('dl', { class: 'vals' });
      for (const n of names) {
        const p = u.points.find((x) => x.name === n);
        if (!p) continue;
        dl.append(el('dt', { text: title(p) }), el('dd', {}, ...liveValue(u.id, n)));
      }
      return el('li', { class: 'card' },
        el('h2', {}, el('a', { href: `#/unit/${encodeURIComponent(u.id)}`, text: u.name || u.id })),
        el('p', {}, ...statusBadge(u.id)),
        dl,
        alarmList(u.id));
    });
    show(el('h1', { text: 'Site' }), el('ul', { class: 'grid', 'aria-label': 'Units' }, ...cards));
  }

  function renderUnit(id) {
    const u = unitById(id);
    const back = el('p', {}, el('a', { href: '#/', text: '← All units' }));
    if (!u) {
      document.title = 'Unit · sitegate';
      show(back, el('h1', { text: 'Unit not available' }),
        el('p', { text: lastMsgAt ? 'This unit does not exist or you no longer have access to it.' : 'Loading…' }));
      return;
    }
    document.title = `${u.name || u.id} · sitegate`;
    const ctrls = controls(u);
    const state = el('dl', { class: 'vals', 'aria-label': 'State' });
    for (const n of SUMMARY_POINTS[u.profile] || []) {
      const p = u.points.find((x) => x.name === n);
      if (p) state.append(el('dt', { text: title(p) }), el('dd', {}, ...liveValue(u.id, n)));
    }
    const rows = u.points.map((p) => el('tr', {},
      el('th', { scope: 'row' }, title(p), detail(p) ? el('span', { class: 'why block', text: detail(p) }) : null),
      el('td', {}, ...liveValue(u.id, p.name))));
    show(
      back,
      el('h1', { text: u.name || u.id }),
      el('p', {}, ...statusBadge(u.id), el('span', { class: 'muted', text: ` · ${u.profile}` })),
      state.childElementCount ? state : null,
      alarmList(u.id),
      el('h2', { text: 'Controls' }),
      ctrls,
      (u.capabilities || []).includes('diagnose') ? diagnostics(u) : null,
      el('h2', { text: 'Values' }),
      el('table', {},
        el('caption', { class: 'sr-only', text: `Values of ${u.name || u.id}` }),
        el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'Value' }), el('th', { scope: 'col', text: 'Reading' }))),
        el('tbody', {}, ...rows)),
    );
  }

  // Technician: link statistics and a raw register read (GET /units/{unit}/diagnostics).
  function diagnostics(u) {
    const base = `/api/v1/units/${encodeURIComponent(u.id)}/diagnostics`;
    const stats = el('dl', { class: 'vals', 'aria-label': 'Link statistics' });
    const statsOut = el('p', { class: 'result', role: 'status', 'aria-live': 'polite' });
    const refresh = el('button', { type: 'button', class: 'secondary', text: 'Load link statistics' });
    const row = (k, v) => stats.append(el('dt', { text: k }), el('dd', { text: v === undefined || v === null ? '—' : String(v) }));
    refresh.addEventListener('click', async () => {
      refresh.disabled = true;
      statsOut.className = 'result';
      statsOut.textContent = 'Loading…';
      const r = await api('GET', base);
      refresh.disabled = false;
      stats.replaceChildren();
      if (r.status !== 200) {
        statsOut.className = 'result bad';
        statsOut.textContent = `Error: ${errorText(r.status, r.body)}`;
        return;
      }
      const d = r.body;
      const l = d.link || {};
      statsOut.textContent = '';
      row('Slave', d.slave);
      row('Answering', d.online ? 'yes' : 'no');
      row('Failures in a row', d.consecutive_failures);
      row('Last success', d.last_success ? new Date(d.last_success).toLocaleString() : 'never');
      row('Last error', d.last_error || 'none');
      row('Link', `${l.link} (${l.kind}), ${l.connected ? 'connected' : 'not connected'}`);
      row('Requests', l.requests);
      row('Errors / timeouts / exceptions', `${l.errors} / ${l.timeouts} / ${l.exceptions}`);
      row('Retries', l.retries);
      row('Queue', l.queue_depth);
      row('Latency p50 / p99', l.latency_p50_ms === undefined ? '—' : `${l.latency_p50_ms} / ${l.latency_p99_ms} ms`);
    });

    const kind = el('select', { id: 'raw-kind', name: 'kind' },
      ...['holding', 'input', 'coil', 'discrete'].map((k) => el('option', { value: k, text: k })));
    const address = el('input', { id: 'raw-address', name: 'address', type: 'number', min: '0', max: '65535', value: '0', inputmode: 'numeric' });
    const count = el('input', { id: 'raw-count', name: 'count', type: 'number', min: '1', max: '125', value: '1', inputmode: 'numeric' });
    const read = el('button', { type: 'submit', text: 'Read' });
    const rawOut = el('p', { class: 'result', role: 'status', 'aria-live': 'polite' });
    const rawTable = el('table', { hidden: true });
    const form = el('form', { class: 'control', novalidate: true, 'aria-labelledby': 'raw-h' },
      el('h3', { id: 'raw-h', text: 'Raw register read' }),
      el('label', { for: 'raw-kind', text: 'Register kind' }), kind,
      el('label', { for: 'raw-address', text: 'Address (0-based)' }), address,
      el('label', { for: 'raw-count', text: 'Count' }), count,
      el('div', { class: 'row' }, read), rawOut, rawTable);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      read.disabled = true;
      rawOut.className = 'result';
      rawOut.textContent = 'Reading…';
      const q = new URLSearchParams({ kind: kind.value, address: address.value, count: count.value });
      const r = await api('GET', `${base}?${q}`);
      read.disabled = false;
      if (r.status !== 200 || !r.body.raw) {
        rawOut.className = 'result bad';
        rawOut.textContent = `Error: ${errorText(r.status, r.body)}`;
        rawTable.hidden = true;
        return;
      }
      const raw = r.body.raw;
      rawOut.className = 'result ok';
      rawOut.textContent = `Read ${raw.values.length} ${raw.kind} value(s) from ${raw.address}.`;
      rawTable.replaceChildren(
        el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'Address' }), el('th', { scope: 'col', text: 'Value' }), el('th', { scope: 'col', text: 'Hex' }))),
        el('tbody', {}, ...raw.values.map((v, i) => {
          const n = typeof v === 'boolean' ? (v ? 1 : 0) : Number(v);
          return el('tr', {}, el('td', { text: String(raw.address + i) }), el('td', { text: String(v) }),
            el('td', { text: `0x${n.toString(16).toUpperCase().padStart(4, '0')}` }));
        })));
      rawTable.hidden = false;
    });
    return el('section', { 'aria-labelledby': 'diag-h' },
      el('h2', { id: 'diag-h', text: 'Diagnostics' }),
      el('div', { class: 'controls' },
        el('div', { class: 'control' }, refresh, statsOut, stats),
        form),
      unitTest(u.id));
  }

  // Unit test (POST /units/{unit}/test): every point read now, judged by its quality. The last
  // result is kept per unit, so a rebuilt view still shows it.
  const lastTests = new Map();

  function unitTest(unitId, headingLevel) {
    const hid = `test-h-${unitId}`;
    const btn = el('button', { type: 'button', text: 'Test this unit', 'aria-describedby': `${hid}-why` });
    const out = el('div', { role: 'status', 'aria-live': 'polite' });
    const showResult = (r) => {
      if (r.status !== 200) {
        out.replaceChildren(el('p', { class: 'result bad', text: `Test failed: ${errorText(r.status, r.body)}` }));
        return;
      }
      const t = r.body;
      const bad = t.points.filter((p) => p.quality !== 'good');
      const verdict = t.passed
        ? `Passed: all ${t.points.length} values read with good quality (${t.duration_ms} ms).`
        : `Not passed: ${t.failures} of ${t.points.length} values not good${bad.length ? ` (${bad.map((p) => `${words(p.point)}: ${words(p.quality)}`).join(', ')})` : ''}.`;
      out.replaceChildren(
        el('p', { class: `result ${t.passed ? 'ok' : 'bad'}`, text: verdict }),
        el('div', { class: 'scroll', tabindex: '0', role: 'region', 'aria-label': `Unit test of ${unitId} (scrolls sideways)` },
          el('table', { class: 'unit-test' },
            el('caption', { class: 'sr-only', text: `Unit test of ${unitId}, ${fmtTime(t.at)}` }),
            el('thead', {}, el('tr', {}, ...['Value', 'Read', 'Quality'].map((h) => el('th', { scope: 'col', text: h })))),
            el('tbody', {}, ...t.points.map((p) => el('tr', { class: p.quality === 'good' ? '' : 'not-good' },
              el('th', { scope: 'row', text: title({ name: p.point }) }),
              el('td', { text: fmtValue({ value: p.value, unit: p.unit, type: typeof p.value === 'boolean' ? 'bool' : '' }) }),
              el('td', { text: words(p.quality) })))))));
    };
    btn.addEventListener('click', async () => {
      btn.disabled = true;
      out.replaceChildren(el('p', { class: 'result', text: 'Reading every value now…' }));
      const r = await api('POST', `/api/v1/units/${encodeURIComponent(unitId)}/test`);
      btn.disabled = false;
      lastTests.set(unitId, r);
      showResult(r);
    });
    if (lastTests.has(unitId)) showResult(lastTests.get(unitId));
    const H = headingLevel || 'h3';
    return el('div', { class: 'control unit-test-box', 'aria-labelledby': hid },
      el(H, { id: hid, text: `Unit test${headingLevel ? ` of ${unitId}` : ''}` }),
      el('p', { class: 'why', id: `${hid}-why`, text: 'Reads every value now and checks that each one reads with good quality. Nothing is written.' }),
      btn, out);
  }

  // Scan (GET/POST /scans, GET/DELETE /scans/{id}): probes slave ids on a link through the
  // daemon's own link task and suggests a profile for each device that answers.
  let scanTimer = null;

  function renderScan() {
    document.title = 'Scan · sitegate';
    if (scanTimer) {
      clearTimeout(scanTimer);
      scanTimer = null;
    }
    const out = el('p', { class: 'result', role: 'status', 'aria-live': 'polite' });
    const link = el('select', { id: 's-link', name: 'link' });
    const from = el('input', { id: 's-from', type: 'number', min: '1', max: '247', value: '1', inputmode: 'numeric' });
    const to = el('input', { id: 's-to', type: 'number', min: '1', max: '247', value: '247', inputmode: 'numeric' });
    const wait = el('input', { id: 's-timeout', type: 'number', min: '20', max: '2000', value: '200', inputmode: 'numeric' });
    const startBtn = el('button', { type: 'submit', text: 'Start scan' });
    const cancelBtn = el('button', { type: 'button', class: 'secondary', text: 'Cancel scan', hidden: true });
    const bar = el('progress', { id: 's-progress', max: '1', value: '0', 'aria-label': 'Scan progress' });
    const state = el('p', { id: 's-state' });
    const site = (me && me.site && me.site.capabilities) || [];
    const canConfigure = site.includes('configure');
    const { body, table } = listTable('Devices found', ['Slave id', 'Identifies as', 'Suggested profile', 'Unit']);
    const tests = el('div', { class: 'controls' });
    let current = null;
    const showScan = (sc) => {
      current = sc;
      const running = sc.status === 'running';
      bar.max = sc.total;
      bar.value = sc.probed;
      const what = `link ${sc.link}, ids ${sc.from}–${sc.to}`;
      const found = `${sc.found.length} device${sc.found.length === 1 ? '' : 's'} answered`;
      state.textContent = {
        running: `Scanning ${what}: ${sc.probed} of ${sc.total} ids probed, ${found}.`,
        done: `Scan of ${what} finished: ${sc.total} ids probed, ${found}.`,
        cancelled: `Scan of ${what} cancelled after ${sc.probed} of ${sc.total} ids; ${found}.`,
        failed: `Scan of ${what} stopped after ${sc.probed} of ${sc.total} ids: ${sc.error || 'the link failed'}.`,
      }[sc.status] || sc.status;
      state.className = sc.status === 'failed' ? 'result bad' : 'result';
      cancelBtn.hidden = !running;
      startBtn.disabled = running;
      body.replaceChildren(...sc.found.map((f) => el('tr', { 'data-slave': String(f.slave) },
        el('td', { text: String(f.slave) }),
        el('td', { text: f.identity.length ? f.identity.join(' / ') : '—' }),
        el('td', { text: f.profile ? `${f.profile} (by ${f.matched_by})` : 'no profile matched' }),
        el('td', {}, f.unit ? el('a', { href: `#/unit/${encodeURIComponent(f.unit)}`, text: f.unit })
          : (!running && canConfigure && f.profile ? addUnitForm(sc.link, f, out) : el('span', { class: 'muted', text: 'not configured' }))))));
      if (!running) {
        const ids = sc.found.filter((f) => f.unit).map((f) => f.unit);
        if (tests.dataset.ids !== ids.join(',')) {
          tests.dataset.ids = ids.join(',');
          tests.replaceChildren(...ids.map((id) => unitTest(id, 'h3')));
        }
      }
    };
    const follow = async (id) => {
      const r = await api('GET', `/api/v1/scans/${encodeURIComponent(id)}`);
      if (location.hash !== '#/scan') return;
      if (r.status !== 200) return setResult(out, 'bad', `Error: ${errorText(r.status, r.body)}`);
      showScan(r.body);
      if (r.body.status === 'running') scanTimer = setTimeout(() => follow(id), 500);
    };
    const form = el('form', { class: 'login', novalidate: true, 'aria-labelledby': 's-h' },
      el('h2', { id: 's-h', text: 'Scan a link' }),
      el('label', { for: 's-link', text: 'Link' }), link,
      el('label', { for: 's-from', text: 'From slave id' }), from,
      el('label', { for: 's-to', text: 'To slave id' }), to,
      el('label', { for: 's-timeout', text: 'Wait for each id (ms)' }), wait,
      el('div', { class: 'row' }, startBtn, cancelBtn));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      startBtn.disabled = true;
      setResult(out, '', '');
      const r = await api('POST', '/api/v1/scans', {
        link: link.value, from: Number(from.value), to: Number(to.value), timeout_ms: Number(wait.value),
      });
      if (r.status !== 202) {
        startBtn.disabled = false;
        return setResult(out, 'bad', `Not started: ${errorText(r.status, r.body)}`);
      }
      tests.dataset.ids = '';
      tests.replaceChildren();
      showScan(r.body);
      follow(r.body.id);
    });
    cancelBtn.addEventListener('click', async () => {
      if (!current) return;
      cancelBtn.disabled = true;
      const r = await api('DELETE', `/api/v1/scans/${encodeURIComponent(current.id)}`);
      cancelBtn.disabled = false;
      if (r.status !== 200) setResult(out, 'bad', `Error: ${errorText(r.status, r.body)}`);
      else setResult(out, '', 'Cancelling after the id being probed…');
    });
    const loadLinks = async () => {
      const r = await api('GET', '/api/v1/scans');
      if (r.status !== 200) return setResult(out, 'bad', `Error: ${errorText(r.status, r.body)}`);
      const keep = link.value;
      link.replaceChildren(...r.body.links.map((l) => el('option', { value: l, text: l })));
      if (r.body.links.includes(keep)) link.value = keep;
      return r.body;
    };
    (async () => {
      const data = await loadLinks();
      const last = data && data.scans[0];
      if (last) {
        showScan(last);
        if (last.status === 'running') follow(last.id);
      }
    })();
    show(el('p', {}, el('a', { href: '#/', text: '← All units' })),
      el('h1', { text: 'Find units on a link' }),
      el('p', { class: 'why', text: 'The box asks each slave id on the link who it is, between its own polls (nothing is written), and suggests a profile for each device that answers. Units already configured can be tested here.' }),
      canConfigure ? linksSection(loadLinks) : null,
      form, out,
      el('section', { 'aria-labelledby': 's-r-h' }, el('h2', { id: 's-r-h', text: 'Results' }), bar, state, table),
      el('section', { 'aria-labelledby': 's-t-h' }, el('h2', { id: 's-t-h', text: 'Unit tests' }), tests));
  }

  // Commissioning (needs `configure` on the site): the links of the config file, adding one,
  // and adding a unit a scan found. The box writes the config file and reloads; the page waits
  // until the change is live (a request during the reload may fail, so it asks again).
  async function untilLive(check) {
    for (let i = 0; i < 60; i += 1) {
      if (await check()) return true;
      await new Promise((done) => setTimeout(done, 500));
    }
    return false;
  }

  let reloadLinks = null;

  function linksSection(loadLinks) {
    const out = el('p', { class: 'result', role: 'status', 'aria-live': 'polite' });
    const { body, table } = listTable('Links in the config', ['Name', 'Kind', 'Address or device', 'Units', '']);
    const reload = async () => {
      const r = await api('GET', '/api/v1/config/links');
      if (r.status !== 200) return setResult(out, 'bad', `Error: ${errorText(r.status, r.body)}`);
      body.replaceChildren(...r.body.links.map((l) => {
        const remove = el('button', { type: 'button', class: 'secondary', text: 'Remove', 'aria-label': `Remove link ${l.name}` });
        remove.addEventListener('click', async () => {
          remove.disabled = true;
          setResult(out, '', `Removing link ${l.name}…`);
          const d = await api('DELETE', `/api/v1/config/links/${encodeURIComponent(l.name)}`);
          if (d.status !== 202) {
            remove.disabled = false;
            return setResult(out, 'bad', `Not removed: ${errorText(d.status, d.body)}`);
          }
          await untilLive(async () => { const s = await loadLinks(); return s && !s.links.includes(l.name); });
          setResult(out, 'ok', `Link ${l.name} removed.`);
          reload();
        });
        return el('tr', { 'data-link': l.name },
          el('td', { text: l.name }), el('td', { text: l.kind }),
          el('td', { text: l.address || `${l.device} ${l.baud} baud, parity ${l.parity}, ${l.data_bits}${(l.parity || 'n')[0].toUpperCase()}${l.stop_bits}` }),
          el('td', { text: l.units.length ? l.units.join(', ') : 'none' }),
          el('td', {}, l.units.length ? null : remove));
      }));
      if (!r.body.links.length) body.replaceChildren(el('tr', {}, el('td', { colspan: '5', text: 'No links yet: add the bus the units are on.' })));
    };
    const field = (id, label, input) => [el('label', { for: id, text: label }), input];
    const name = el('input', { id: 'l-name', name: 'name', required: true, autocomplete: 'off', value: 'bus' });
    const kind = el('select', { id: 'l-kind', name: 'kind' },
      el('option', { value: 'tcp', text: 'Modbus TCP' }),
      el('option', { value: 'rtu', text: 'Serial RS-485 (RTU)' }),
      el('option', { value: 'rtu-over-tcp', text: 'RTU over TCP (gateway)' }));
    const host = el('input', { id: 'l-host', name: 'host', autocomplete: 'off', inputmode: 'url' });
    const port = el('input', { id: 'l-port', name: 'port', type: 'number', min: '1', max: '65535', value: '502', inputmode: 'numeric' });
    const device = el('input', { id: 'l-device', name: 'device', autocomplete: 'off', value: '/dev/ttyUSB0' });
    const baud = el('input', { id: 'l-baud', name: 'baud', type: 'number', min: '1', value: '9600', inputmode: 'numeric' });
    const parity = el('select', { id: 'l-parity', name: 'parity' },
      el('option', { value: 'none', text: 'none' }), el('option', { value: 'even', text: 'even' }), el('option', { value: 'odd', text: 'odd' }));
    const dataBits = el('input', { id: 'l-data', name: 'data_bits', type: 'number', min: '7', max: '8', value: '8', inputmode: 'numeric' });
    const stopBits = el('input', { id: 'l-stop', name: 'stop_bits', type: 'number', min: '1', max: '2', value: '1', inputmode: 'numeric' });
    const net = el('div', {}, ...field('l-host', 'Host (IP address or name)', host), ...field('l-port', 'Port', port));
    const serial = el('div', { hidden: true }, ...field('l-device', 'Serial device', device), ...field('l-baud', 'Baud rate', baud),
      ...field('l-parity', 'Parity', parity), ...field('l-data', 'Data bits', dataBits), ...field('l-stop', 'Stop bits', stopBits));
    kind.addEventListener('change', () => {
      serial.hidden = kind.value !== 'rtu';
      net.hidden = kind.value === 'rtu';
    });
    const add = el('button', { type: 'submit', text: 'Add link' });
    const form = el('form', { class: 'login', novalidate: true, 'aria-labelledby': 'l-h' },
      el('h3', { id: 'l-h', text: 'Add a link' }),
      ...field('l-name', 'Link name', name), ...field('l-kind', 'Kind', kind), net, serial,
      el('div', { class: 'row' }, add));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const n = name.value.trim();
      const req = { name: n, kind: kind.value };
      if (kind.value === 'rtu') {
        Object.assign(req, { device: device.value.trim(), baud: Number(baud.value), parity: parity.value,
          data_bits: Number(dataBits.value), stop_bits: Number(stopBits.value) });
      } else {
        const h = host.value.trim();
        req.address = `${h.includes(':') ? `[${h}]` : h}:${port.value}`;
      }
      add.disabled = true;
      setResult(out, '', `Adding link ${n}…`);
      const r = await api('POST', '/api/v1/config/links', req);
      if (r.status !== 202) {
        add.disabled = false;
        return setResult(out, 'bad', `Not added: ${errorText(r.status, r.body)}`);
      }
      setResult(out, '', `Link ${n} is written to the config; the box is applying it…`);
      const live = await untilLive(async () => { const s = await loadLinks(); return s && s.links.includes(n); });
      add.disabled = false;
      setResult(out, live ? 'ok' : 'bad', live ? `Link ${n} is ready. Scan it below.` : `Link ${n} is written but not live yet; reload this page in a moment.`);
      reload();
    });
    reloadLinks = reload;
    reload();
    return el('section', { 'aria-labelledby': 'links-h' },
      el('h2', { id: 'links-h', text: 'Links' }), table, form, out);
  }

  // A found device's row: its unit id and name (editable), added with the suggested profile.
  function addUnitForm(linkName, f, out) {
    const idIn = el('input', { id: `u-id-${f.slave}`, name: 'id', value: `unit-${f.slave}`, autocomplete: 'off', 'aria-label': `Unit id for slave ${f.slave}` });
    const nameIn = el('input', { id: `u-name-${f.slave}`, name: 'name', value: '', placeholder: 'Name (optional)', autocomplete: 'off', 'aria-label': `Name for slave ${f.slave}` });
    const add = el('button', { type: 'submit', text: 'Add unit', 'aria-label': `Add unit at slave ${f.slave}` });
    const form = el('form', { class: 'inline', novalidate: true }, idIn, nameIn, add);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const id = idIn.value.trim();
      const req = { id, link: linkName, slave: f.slave, profile: f.profile };
      if (nameIn.value.trim()) req.name = nameIn.value.trim();
      add.disabled = true;
      setResult(out, '', `Adding unit ${id}…`);
      const r = await api('POST', '/api/v1/config/units', req);
      if (r.status !== 202) {
        add.disabled = false;
        return setResult(out, 'bad', `Unit ${id} not added: ${errorText(r.status, r.body)}`);
      }
      setResult(out, '', `Unit ${id} is written to the config; the box is applying it…`);
      const live = await untilLive(async () => {
        const u = await api('GET', '/api/v1/units');
        return u.status === 200 && u.body.units.some((x) => x.id === id);
      });
      if (!live) {
        add.disabled = false;
        return setResult(out, 'bad', `Unit ${id} is written but not live yet; reload this page in a moment.`);
      }
      form.replaceWith(el('a', { href: `#/unit/${encodeURIComponent(id)}`, text: id }));
      setResult(out, 'ok', `Unit ${id} added.`);
      if (reloadLinks) reloadLinks();
    });
    return form;
  }

  // Admin: who has which role where (GET /grants), delegate (POST /grants), revoke
  // (DELETE /grants/{id}); audit trail (GET /audit) with filters and paging. The daemon decides
  // every ceiling; the page shows its answer.
  function fmtScope(sc) {
    if (!sc) return '—';
    if (sc.site) return 'whole site';
    if (sc.group) return `group ${sc.group}`;
    if (sc.unit) return `unit ${sc.unit}`;
    return JSON.stringify(sc);
  }

  function renderAdmin() {
    document.title = 'Access & audit · sitegate';
    const site = (me && me.site && me.site.capabilities) || [];
    const parts = [el('p', {}, el('a', { href: '#/', text: '← All units' })), el('h1', { text: 'Access & audit' })];
    if (site.includes('manage_users')) parts.push(rolesSection(), grantsSection(), requestsSection(), lockoutsSection());
    if (me && me.user && me.user.owner) parts.push(businessesSection());
    if (site.includes('diagnose')) parts.push(auditSection());
    show(...parts);
  }

  // A table whose rows come from one GET, with a status line for errors and actions.
  function listTable(caption, headers) {
    const body = el('tbody', {});
    const table = el('div', { class: 'scroll', tabindex: '0', role: 'region', 'aria-label': `${caption} (scrolls sideways)` },
      el('table', {},
        el('caption', { class: 'sr-only', text: caption }),
        el('thead', {}, el('tr', {}, ...headers.map((h) => h
          ? el('th', { scope: 'col', text: h })
          : el('th', { scope: 'col' }, el('span', { class: 'sr-only', text: 'Actions' }))))),
        body));
    return { body, table };
  }

  function setResult(out, cls, text) {
    out.className = cls ? `result ${cls}` : 'result';
    out.textContent = text;
  }

  function fmtTime(t) {
    return t ? new Date(t).toLocaleString() : '—';
  }

  const REQUEST_STATUS = {
    pending: 'pending (waiting for the cloud)',
    granted: 'granted',
    denied: 'denied',
    expired: 'expired (30 days without an answer)',
  };

  const ORIGIN = { cloud: 'cloud', token: 'installer token' };

  // Who has which role where on this box (GET /roles): every grant in force in the scopes the
  // caller manages, with its source.
  let reloadRoles = null;

  // A page at a time (50 roles, in the daemon's order), "More people" for the next page, and a
  // search by email or user id (substring, any case), by source and by unit: the daemon filters
  // (a unit matches the roles on the whole site, on its group and on the unit itself).
  const ROLES_PAGE = 50;

  function rolesSection() {
    const out = el('p', { class: 'result', role: 'status', 'aria-live': 'polite' });
    const { body, table } = listTable('Who has access', ['Person', 'Role', 'Where', 'Until', 'Source']);
    const search = el('input', { id: 'w-search', type: 'search', maxlength: '64', autocomplete: 'off' });
    const origin = el('select', { id: 'w-origin' },
      el('option', { value: '', text: 'any source' }),
      el('option', { value: 'cloud', text: 'cloud' }),
      el('option', { value: 'token', text: 'installer token' }),
      el('option', { value: 'local', text: 'given here' }));
    const unit = el('select', { id: 'w-unit' });
    let unitIds = null;
    const fillUnits = () => {
      const ids = JSON.stringify(units.map((u) => [u.id, u.name]));
      if (ids === unitIds) return;
      unitIds = ids;
      const chosen = unit.value;
      unit.replaceChildren(el('option', { value: '', text: 'any unit' }),
        ...units.map((u) => el('option', { value: u.id, text: u.name || u.id })));
      if ([...unit.options].some((o) => o.value === chosen)) unit.value = chosen;
    };
    bindings.push(fillUnits);
    fillUnits();
    const more = el('button', { type: 'button', class: 'secondary', text: 'More people', hidden: true });
    let after = null;
    let shown = 0;
    const filtered = () => search.value.trim() !== '' || origin.value !== '' || unit.value !== '';
    const load = async (append) => {
      const q = new URLSearchParams({ limit: String(ROLES_PAGE) });
      if (search.value.trim()) q.set('user', search.value.trim());
      if (origin.value) q.set('origin', origin.value);
      if (unit.value) q.set('unit', unit.value);
      if (append && after !== null) q.set('after', after);
      const r = await api('GET', `/api/v1/roles?${q}`);
      if (r.status !== 200) return setResult(out, 'bad', `Error: ${errorText(r.status, r.body)}`);
      const rows = r.body.roles.map((g) => el('tr', { 'data-grant': g.id },
        el('td', { text: g.email || g.user }), el('td', { text: g.role }), el('td', { text: fmtScope(g.scope) }),
        el('td', { text: g.expires_at ? fmtTime(g.expires_at) : 'no end' }),
        el('td', { text: g.origin === 'local' ? `local, by ${g.delegator || '?'}` : (ORIGIN[g.origin] || g.origin) })));
      if (append) body.append(...rows);
      else body.replaceChildren(...rows);
      shown = body.childElementCount;
      after = r.body.next_after === undefined ? null : r.body.next_after;
      more.hidden = after === null;
      const n = `${shown} role${shown === 1 ? '' : 's'}`;
      const what = filtered() ? ' match' + (shown === 1 ? 'es' : '') : ' in force';
      setResult(out, '', after === null ? `${n}${what}.` : `${n} shown; more follow.`);
    };
    reloadRoles = () => load(false);
    const form = el('form', { class: 'row', novalidate: true, role: 'search', 'aria-label': 'Search who has access' },
      el('label', { for: 'w-search', text: 'Person (email or id)' }), search,
      el('label', { for: 'w-origin', text: 'Source' }), origin,
      el('label', { for: 'w-unit', text: 'Reaches unit' }), unit,
      el('button', { type: 'submit', text: 'Search' }));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      load(false);
    });
    origin.addEventListener('change', () => load(false));
    unit.addEventListener('change', () => load(false));
    more.addEventListener('click', () => load(true));
    load(false);
    return el('section', { 'aria-labelledby': 'w-h' }, el('h2', { id: 'w-h', text: 'Who has access' }),
      el('p', { class: 'why', text: 'Every role in force on this box in the scopes you manage: from the cloud, from installer tokens, and given here.' }),
      form, out, table, more);
  }

  function requestsSection() {
    const out = el('p', { class: 'result', role: 'status', 'aria-live': 'polite' });
    const { body, table } = listTable('Access requests', ['Person', 'Asks for', 'Where', 'Note', 'Sent', 'Status']);
    (async () => {
      const r = await api('GET', '/api/v1/access-requests');
      if (r.status !== 200) return setResult(out, 'bad', `Error: ${errorText(r.status, r.body)}`);
      body.replaceChildren(...r.body.requests.map((q) => el('tr', { 'data-request': q.id },
        el('td', { text: q.user || q.requester }), el('td', { text: q.role }), el('td', { text: fmtScope(q.scope) }),
        el('td', { text: q.note || '—' }), el('td', { text: fmtTime(q.created_at) }),
        el('td', { text: (REQUEST_STATUS[q.status] || q.status) + (q.resolved_at ? `, ${fmtTime(q.resolved_at)}` : '') }))));
      const open = r.body.requests.filter((q) => q.status === 'pending').length;
      setResult(out, '', r.body.requests.length === 0 ? 'No access requests.' : `${open} pending, ${r.body.requests.length} in all.`);
    })();
    return el('section', { 'aria-labelledby': 'r-h' }, el('h2', { id: 'r-h', text: 'Access requests' }),
      el('p', { class: 'why', text: 'Requests for access and delegations waiting for the cloud. The cloud grants or denies them; a request without an answer expires after 30 days.' }),
      out, table);
  }

  function lockoutsSection() {
    const out = el('p', { class: 'result', role: 'status', 'aria-live': 'polite' });
    const { body, table } = listTable('Sign-in lockouts', ['Who', 'Failed attempts', 'Last failure', 'Locked until', 'Next attempt', '']);
    const load = async () => {
      const r = await api('GET', '/api/v1/lockouts');
      if (r.status === 403) {
        section.hidden = true; // lockouts are for site admins and the site owner
        return;
      }
      if (r.status !== 200) return setResult(out, 'bad', `Error: ${errorText(r.status, r.body)}`);
      body.replaceChildren(...r.body.lockouts.map((l) => {
        const clear = el('button', { type: 'button', class: 'secondary', text: 'Clear', 'aria-label': `Clear the lockout of ${l.label || l.key}` });
        clear.addEventListener('click', async () => {
          clear.disabled = true;
          const rr = await api('DELETE', `/api/v1/lockouts/${encodeURIComponent(l.key)}`);
          if (rr.status === 204) setResult(out, 'ok', `Cleared: ${l.label || l.key} may sign in again.`);
          else setResult(out, 'bad', `Error: ${errorText(rr.status, rr.body)}`);
          await load();
        });
        return el('tr', { 'data-lockout': l.key },
          el('td', { text: l.label || l.key }), el('td', { text: String(l.failures) }), el('td', { text: fmtTime(l.last_failure) }),
          el('td', { text: l.locked_until ? fmtTime(l.locked_until) : 'not locked (delayed only)' }),
          el('td', { text: fmtTime(l.next_allowed) }), el('td', {}, clear));
      }));
      if (out.className === 'result' || r.body.lockouts.length === 0) {
        setResult(out, '', r.body.lockouts.length === 0 ? 'Nobody is locked out or delayed.' : `${r.body.lockouts.length} delayed or locked out.`);
      }
    };
    const section = el('section', { 'aria-labelledby': 'l-h' }, el('h2', { id: 'l-h', text: 'Sign-in lockouts' }),
      el('p', { class: 'why', text: 'After repeated failed sign-ins the box delays, then locks out, an account, a device or an address. Clear one when you know who it is.' }),
      out, table);
    load();
    return section;
  }

  function businessesSection() {
    const out = el('p', { class: 'result', role: 'status', 'aria-live': 'polite' });
    const { body, table } = listTable('Service companies', ['Company', 'People', 'Access', '']);
    const load = async () => {
      const r = await api('GET', '/api/v1/businesses');
      if (r.status !== 200) return setResult(out, 'bad', `Error: ${errorText(r.status, r.body)}`);
      body.replaceChildren(...r.body.businesses.map((b) => {
        const btn = el('button', {
          type: 'button',
          class: b.suspended ? '' : 'secondary',
          text: b.suspended ? 'Restore access' : 'Suspend access',
          'aria-label': `${b.suspended ? 'Restore access' : 'Suspend access'} of ${b.business}`,
        });
        btn.addEventListener('click', async () => {
          const n = b.members.length;
          if (!b.suspended && !window.confirm(`Suspend every role of ${b.business}'s ${n} ${n === 1 ? 'person' : 'people'} on this site (${b.members.join(', ')}), and every access they gave? You can restore it later.`)) return;
          btn.disabled = true;
          const path = `/api/v1/businesses/${encodeURIComponent(b.business)}/suspension`;
          const rr = b.suspended ? await api('DELETE', path) : await api('PUT', path, {});
          if (rr.status === 201 || rr.status === 200) {
            setResult(out, 'ok', b.suspended ? `${b.business} has its access back.` : `${b.business}'s access is suspended.`);
          } else {
            setResult(out, 'bad', `Error: ${errorText(rr.status, rr.body)}`);
          }
          await load();
        });
        const since = b.suspension && b.suspension.suspended_at ? ` since ${fmtTime(b.suspension.suspended_at)}` : '';
        return el('tr', { 'data-business': b.business },
          el('td', { text: b.business }), el('td', { text: b.members.join(', ') }),
          el('td', { text: b.suspended ? `suspended${since}` : 'active' }), el('td', {}, btn));
      }));
      if (r.body.businesses.length === 0) setResult(out, '', 'No service company has access to this site.');
    };
    load();
    return el('section', { 'aria-labelledby': 'b-h' }, el('h2', { id: 'b-h', text: 'Service companies' }),
      el('p', { class: 'why', text: 'As the site owner you can suspend a service company\'s access to this box at once, and restore it.' }),
      out, table);
  }

  function grantsSection() {
    const out = el('p', { class: 'result', role: 'status', 'aria-live': 'polite' });
    const body = el('tbody', {});
    const table = el('table', {},
      el('caption', { class: 'sr-only', text: 'Access given on this box' }),
      el('thead', {}, el('tr', {}, ...['Person', 'Role', 'Where', 'Until', 'Source', ''].map((h, i) =>
        el('th', { scope: 'col', text: h || undefined }, i === 5 ? el('span', { class: 'sr-only', text: 'Actions' }) : null)))),
      body);
    let first = true;
    const load = async () => {
      // After a delegation or revocation, "Who has access" is read again too.
      if (!first && reloadRoles) reloadRoles();
      first = false;
      const r = await api('GET', '/api/v1/grants');
      if (r.status !== 200) {
        out.className = 'result bad';
        out.textContent = `Error: ${errorText(r.status, r.body)}`;
        return;
      }
      body.replaceChildren(...r.body.grants.map((g) => {
        const revoke = el('button', { type: 'button', class: 'secondary', text: 'Revoke', 'aria-label': `Revoke ${g.role} of ${g.email || g.user} (${fmtScope(g.scope)})` });
        revoke.addEventListener('click', async () => {
          revoke.disabled = true;
          const rr = await api('DELETE', `/api/v1/grants/${encodeURIComponent(g.id)}`);
          if (rr.status === 200) {
            out.className = 'result ok';
            out.textContent = `Revoked ${g.role} of ${g.email || g.user}.`;
          } else if (rr.status === 202) {
            out.className = 'result warn';
            out.textContent = 'Revocation sent for approval; it takes effect when the cloud confirms it.';
          } else {
            out.className = 'result bad';
            out.textContent = `Error: ${errorText(rr.status, rr.body)}`;
          }
          await load();
        });
        const source = g.origin === 'local' && g.delegator ? `local, by ${g.delegator}` : g.origin;
        return el('tr', {},
          el('td', { text: g.email || g.user }), el('td', { text: g.role }), el('td', { text: fmtScope(g.scope) }),
          el('td', { text: g.expires_at ? new Date(g.expires_at).toLocaleString() : 'no end' }),
          el('td', { text: source }), el('td', {}, revoke));
      }));
    };
    load();

    const email = el('input', { id: 'd-email', type: 'email', autocomplete: 'off', required: true });
    const role = el('select', { id: 'd-role' }, ...['viewer', 'control-only', 'technician', 'admin'].map((r) => el('option', { value: r, text: r })));
    const where = el('select', { id: 'd-scope' });
    let whereIds = null;
    const fillWhere = () => {
      const ids = JSON.stringify(units.map((u) => [u.id, u.name]));
      if (ids === whereIds) return;
      whereIds = ids;
      const chosen = where.value;
      where.replaceChildren(el('option', { value: 'site', text: 'whole site' }),
        ...units.map((u) => el('option', { value: `unit:${u.id}`, text: `unit ${u.name || u.id}` })));
      if ([...where.options].some((o) => o.value === chosen)) where.value = chosen;
    };
    bindings.push(fillWhere);
    fillWhere();
    const until = el('input', { id: 'd-until', type: 'datetime-local' });
    const give = el('button', { type: 'submit', text: 'Give access' });
    const form = el('form', { class: 'login', novalidate: true, 'aria-labelledby': 'd-h' },
      el('h3', { id: 'd-h', text: 'Give access' }),
      el('label', { for: 'd-email', text: 'Email' }), email,
      el('p', { class: 'why', text: 'Accounts come from the cloud: give access to a person who already has an account on this site.' }),
      el('label', { for: 'd-role', text: 'Role' }), role,
      el('label', { for: 'd-scope', text: 'Where' }), where,
      el('label', { for: 'd-until', text: 'Until (empty: no end)' }), until,
      give);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const scope = where.value === 'site' ? { site: me.site.id || siteId() } : { unit: where.value.slice(5) };
      const req = { email: email.value.trim(), role: role.value, scope };
      if (until.value) req.expires_at = new Date(until.value).toISOString().replace(/\.\d{3}Z$/, 'Z');
      give.disabled = true;
      const r = await api('POST', '/api/v1/grants', req);
      give.disabled = false;
      if (r.status === 201) {
        out.className = 'result ok';
        out.textContent = `${req.email} now has ${req.role} on ${fmtScope(scope)}.`;
      } else if (r.status === 202) {
        out.className = 'result warn';
        out.textContent = 'Sent for approval; it takes effect when the cloud confirms it.';
      } else {
        out.className = 'result bad';
        out.textContent = `Error: ${errorText(r.status, r.body)}`;
      }
      await load();
    });
    return el('section', { 'aria-labelledby': 'g-h' }, el('h2', { id: 'g-h', text: 'Access given on this box' }),
      el('p', { class: 'why', text: 'Delegations made here, in the scopes you manage. Roles from the cloud are managed in the cloud.' }),
      out, table, form);
  }

  function siteId() {
    const g = (me && me.grants || []).find((x) => x.scope && x.scope.site);
    return g ? g.scope.site : '';
  }

  function auditSection() {
    const kind = el('input', { id: 'a-kind', type: 'text' });
    const actor = el('input', { id: 'a-actor', type: 'text' });
    const unit = el('input', { id: 'a-unit', type: 'text' });
    const apply = el('button', { type: 'submit', text: 'Filter' });
    const body = el('tbody', {});
    const more = el('button', { type: 'button', class: 'secondary', text: 'Older entries', hidden: true });
    const out = el('p', { class: 'result', role: 'status', 'aria-live': 'polite' });
    let before = null;
    const load = async (append) => {
      const q = new URLSearchParams({ limit: '20' });
      if (kind.value.trim()) q.set('kind', kind.value.trim());
      if (actor.value.trim()) q.set('actor', actor.value.trim());
      if (unit.value.trim()) q.set('unit', unit.value.trim());
      if (append && before !== null) q.set('before', String(before));
      const r = await api('GET', `/api/v1/audit?${q}`);
      if (r.status !== 200) {
        out.className = 'result bad';
        out.textContent = `Error: ${errorText(r.status, r.body)}`;
        return;
      }
      out.className = 'result';
      const rows = r.body.records.map((a) => el('tr', {},
        el('td', { text: String(a.seq) }), el('td', { text: new Date(a.at).toLocaleString() }),
        el('td', { text: a.kind }), el('td', { text: a.outcome }), el('td', { text: a.actor || '—' }),
        el('td', { text: a.unit || '—' }), el('td', { class: 'detail', text: JSON.stringify(a.detail) })));
      if (append) body.append(...rows);
      else body.replaceChildren(...rows);
      out.textContent = body.childElementCount === 0 ? 'No entries match.' : `${body.childElementCount} entries shown.`;
      before = r.body.next_before;
      more.hidden = before === null || before === undefined;
    };
    const form = el('form', { class: 'row', novalidate: true, 'aria-label': 'Audit filters' },
      el('label', { for: 'a-kind', text: 'Kind' }), kind,
      el('label', { for: 'a-actor', text: 'Actor' }), actor,
      el('label', { for: 'a-unit', text: 'Unit' }), unit, apply);
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      load(false);
    });
    more.addEventListener('click', () => load(true));
    load(false);
    // The chain badge (GET /audit/verify): the daemon walks the whole hash chain.
    const badge = el('p', { id: 'chain', role: 'status', 'aria-live': 'polite' }, el('span', { class: 'badge stale', text: 'checking the chain…' }));
    (async () => {
      const r = await api('GET', '/api/v1/audit/verify');
      if (r.status !== 200) {
        badge.replaceChildren(el('span', { class: 'badge stale', text: 'chain not checked' }), el('span', { class: 'muted', text: ` ${errorText(r.status, r.body)}` }));
        return;
      }
      const v = r.body;
      badge.replaceChildren(v.intact
        ? el('span', { class: 'badge online', text: `chain verified: ${v.records} records intact` })
        : el('span', { class: 'badge offline', text: `chain broken at record ${v.broken_at}` }),
      el('span', { class: 'muted', text: ` checked ${fmtTime(v.checked_at)}` }));
    })();
    return el('section', { 'aria-labelledby': 'au-h' },
      el('h2', { id: 'au-h', text: 'Audit trail' }), badge, form, out,
      el('div', { class: 'scroll', tabindex: '0', role: 'region', 'aria-label': 'Audit entries (scrolls sideways)' }, el('table', {},
        el('caption', { class: 'sr-only', text: 'Audit entries, newest first' }),
        el('thead', {}, el('tr', {}, ...['#', 'When', 'Kind', 'Outcome', 'Actor', 'Unit', 'Detail'].map((h) => el('th', { scope: 'col', text: h })))),
        body)),
      more);
  }

  function needText(cap) {
    return `Changing this needs the ${cap} permission, which your role on this unit does not include.`;
  }

  function controls(u) {
    const items = [];
    for (const p of u.points) {
      if (!p.write) continue;
      items.push(p.writable ? pointControl(u, p) : deniedControl(p, u.id));
    }
    for (const c of u.commands) items.push(commandControl(u, c));
    if (items.length === 0) return el('p', { class: 'muted', text: 'This unit has nothing you can change.' });
    const canAny = u.points.some((p) => p.writable) || u.commands.some((c) => c.allowed);
    const note = canAny ? null : el('p', { class: 'banner', text: 'You can view this unit but not change it. Ask the site admin if you need control.' });
    return el('div', {}, note, el('div', { class: 'controls' }, ...items));
  }

  let ctrlSeq = 0;

  function deniedControl(p, unitId) {
    return el('div', { class: 'control' },
      el('span', { class: 'label', text: title(p) }),
      detail(p) ? el('p', { class: 'why', text: detail(p) }) : null,
      el('div', { class: 'row' }, ...liveValue(unitId, p.name)),
      el('p', { class: 'why', text: needText(p.write) }));
  }

  // The outcome of a write, in words: ok / mismatch / unverified / error.
  function writeResult(out, r, p) {
    if (r.status === 200) {
      const rb = r.body.read_back;
      if (rb === null || rb === undefined) {
        out.className = 'result warn';
        out.textContent = 'Sent, but unverified: the unit was not read back.';
      } else if (JSON.stringify(rb) === JSON.stringify(r.body.written)) {
        out.className = 'result ok';
        out.textContent = `OK: the unit reads back ${fmtValue({ ...p, value: rb })}.`;
      } else {
        out.className = 'result bad';
        out.textContent = `Mismatch: sent ${fmtValue({ ...p, value: r.body.written })}, the unit reads back ${fmtValue({ ...p, value: rb })}.`;
      }
      return;
    }
    out.className = 'result bad';
    out.textContent = `Error: ${errorText(r.status, r.body)}`;
  }

  async function writePoint(u, p, value, out, btn) {
    btn.disabled = true;
    out.className = 'result';
    out.textContent = 'Sending…';
    const r = await api('PUT', `/api/v1/units/${encodeURIComponent(u.id)}/points/${encodeURIComponent(p.name)}`, { value });
    writeResult(out, r, p);
    btn.disabled = false;
  }

  function pointControl(u, p) {
    const id = `c-${++ctrlSeq}`;
    const out = el('p', { class: 'result', role: 'status', 'aria-live': 'polite' });
    const cur = liveValue(u.id, p.name);
    let input;
    let btn;
    if (p.type === 'bool') {
      btn = el('button', { type: 'button', id });
      const upd = () => {
        const pu = unitById(u.id);
        const pp = pu && pu.points.find((x) => x.name === p.name);
        const on = !!(pp && pp.value === true);
        btn.textContent = on ? 'Turn off' : 'Turn on';
        btn.setAttribute('aria-label', `${title(p)}: turn ${on ? 'off' : 'on'}`);
        btn.dataset.next = on ? 'false' : 'true';
      };
      bindings.push(upd);
      upd();
      btn.addEventListener('click', () => writePoint(u, p, btn.dataset.next === 'true', out, btn));
      return el('div', { class: 'control' },
        el('span', { class: 'label', text: title(p) }),
        detail(p) ? el('p', { class: 'why', text: detail(p) }) : null,
        el('div', { class: 'row' }, ...cur),
        el('div', { class: 'row' }, btn), out);
    }
    if (p.type === 'enum') {
      input = el('select', { id, name: p.name },
        ...(p.enum_labels || []).map((e) => el('option', { value: e.label, text: words(e.label) })));
      if (typeof p.value === 'string') input.value = p.value;
    } else {
      input = el('input', { id, name: p.name, type: 'number', step: 'any', inputmode: 'decimal' });
      if (p.min !== undefined) input.min = String(p.min);
      if (p.max !== undefined) input.max = String(p.max);
      if (typeof p.value === 'number') input.value = String(p.value);
    }
    btn = el('button', { type: 'submit', text: 'Set' });
    const range = (p.min !== undefined && p.max !== undefined)
      ? el('p', { class: 'why', id: `${id}-range`, text: `From ${p.min} to ${p.max}${p.unit ? ' ' + p.unit : ''}.` }) : null;
    if (range) input.setAttribute('aria-describedby', `${id}-range`);
    const form = el('form', { class: 'control', novalidate: true },
      el('label', { for: id, text: title(p) }),
      detail(p) ? el('p', { class: 'why', text: detail(p) }) : null,
      el('div', { class: 'row' }, el('span', { class: 'muted', text: 'Now: ' }), ...cur),
      el('div', { class: 'row' }, input, btn), range, out);
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      let value = input.value;
      if (p.type !== 'enum') {
        value = Number(input.value);
        if (input.value.trim() === '' || !Number.isFinite(value)) {
          out.className = 'result bad';
          out.textContent = 'Enter a number.';
          return;
        }
      }
      writePoint(u, p, value, out, btn);
    });
    return form;
  }

  const GEN_COMMANDS_CONFIRM = new Set(['start', 'stop', 'manual', 'auto']);

  function pointValue(unitId, name) {
    const u = unitById(unitId);
    const p = u && u.points.find((x) => x.name === name);
    return p ? p.value : undefined;
  }

  function commandControl(u, c) {
    const name = words(c.name);
    const label = name.charAt(0).toUpperCase() + name.slice(1);
    const desc = c.label && c.label !== c.name ? c.label : '';
    if (!c.allowed) {
      const id = `why-${++ctrlSeq}`;
      return el('div', { class: 'control' },
        el('span', { class: 'label', text: desc || label }),
        el('button', { type: 'button', disabled: true, 'aria-describedby': id, text: label }),
        el('p', { class: 'why', id, text: needText(c.capability) }));
    }
    const out = el('p', { class: 'result', role: 'status', 'aria-live': 'polite' });
    const btn = el('button', { type: 'button', class: c.name === 'stop' ? 'danger' : '', 'data-command': c.name, text: label });
    const run = async () => {
      btn.disabled = true;
      out.className = 'result';
      out.textContent = 'Sending…';
      const before = pointValue(u.id, 'engine_state');
      const r = await api('POST', `/api/v1/units/${encodeURIComponent(u.id)}/commands/${encodeURIComponent(c.name)}`, {});
      btn.disabled = false;
      if (r.status === 409 && r.body && r.body.error === 'not_possible_in_mode') {
        // The daemon read the mode and sent nothing: say why, in the unit's words.
        out.className = 'result warn';
        out.textContent = (c.name === 'start' && pointValue(u.id, 'control_mode') === 'stop')
          ? 'Not sent: the generator is in Stop mode, where a start does nothing. Switch it to Manual (or Auto) first.'
          : errorText(r.status, r.body);
        return;
      }
      if (r.status !== 200) {
        out.className = 'result bad';
        out.textContent = `Error: ${errorText(r.status, r.body)}`;
        return;
      }
      out.className = 'result ok';
      out.textContent = `Sent “${label}”; the unit acknowledged it.`;
      if (before !== undefined) watchEngine(u.id, out, before);
    };
    btn.addEventListener('click', () => {
      if (GEN_COMMANDS_CONFIRM.has(c.name)) confirmThen(u, c, label, desc, run);
      else run();
    });
    return el('div', { class: 'control' }, el('span', { class: 'label', text: desc || label }), btn, out);
  }

  // After a command, report the engine state as it changes (for up to a minute).
  function watchEngine(unitId, out, before) {
    let last = before;
    const started = performance.now();
    const line = el('span', {});
    out.append(' ', line);
    line.textContent = `Engine: ${words(before)}.`;
    const timer = setInterval(() => {
      const now = pointValue(unitId, 'engine_state');
      if (now !== undefined && now !== last) {
        last = now;
        line.textContent = `Engine: ${words(now)}.`;
      }
      if (performance.now() - started > 60000 || !line.isConnected) clearInterval(timer);
    }, 500);
  }

  function confirmThen(u, c, label, desc, run) {
    const mode = pointValue(u.id, 'control_mode');
    const warn = (c.name === 'start' && mode === 'stop')
      ? 'The generator is in Stop mode: a start will do nothing until it is in Manual (or Auto) mode.' : '';
    const dlg = el('dialog', { 'aria-labelledby': 'dlg-h', 'aria-describedby': 'dlg-p' },
      el('h2', { id: 'dlg-h', text: `${label}: ${u.name || u.id}?` }),
      el('p', { id: 'dlg-p', text: `This sends “${desc || label}” to ${u.name || u.id} now.` }),
      warn ? el('p', { class: 'banner', text: warn }) : null);
    const yes = el('button', { type: 'button', text: `Yes, ${label.toLowerCase()}` });
    const no = el('button', { type: 'button', class: 'secondary', text: 'Cancel' });
    dlg.append(el('div', { class: 'row' }, yes, no));
    const close = () => {
      dlg.close();
      dlg.remove();
    };
    yes.addEventListener('click', () => {
      close();
      run();
    });
    no.addEventListener('click', close);
    dlg.addEventListener('cancel', () => dlg.remove());
    document.body.append(dlg);
    dlg.showModal();
    no.focus();
  }

  start();
})();
