// The driver's app: log in (OAuth 2.0 authorization code + PKCE), the station (SoC gauge,
// V2G availability, live power flow, errors and what to do), settings (each user action
// sent once with its own Idempotency-Key, shown pending until the controller answers), and
// the history of sessions. Talks to `v2g api` only; live data by Server-Sent Events.
import { fetchEventSource } from './vendor/fetch-event-source/index.js';

const $ = (id) => document.getElementById(id);
const API = '/api/v1';
const state = { cfg: null, meta: null, token: null, station: null, live: null, chart: null, points: [[], []],
  netDownSince: null };

// ------------------------------------------------------------------ login (PKCE, RFC 7636)

function b64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

async function provider() {
  if (!state.meta) {
    const r = await fetch(state.cfg.issuer.replace(/\/$/, '') + '/.well-known/openid-configuration');
    state.meta = await r.json();
  }
  return state.meta;
}

async function login() {
  const meta = await provider();
  const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
  const challenge = b64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
  const st = b64url(crypto.getRandomValues(new Uint8Array(16)));
  sessionStorage.setItem('pkce', JSON.stringify({ verifier, state: st }));
  const q = new URLSearchParams({ response_type: 'code', client_id: state.cfg.client_id,
    redirect_uri: location.origin + '/', scope: state.cfg.scope, state: st, code_challenge: challenge,
    code_challenge_method: 'S256', resource: state.cfg.audience });
  location.assign(meta.authorization_endpoint + '?' + q);
}

async function finishLogin(params) {
  const saved = JSON.parse(sessionStorage.getItem('pkce') || 'null');
  sessionStorage.removeItem('pkce');
  history.replaceState(null, '', '/');
  if (!saved || saved.state !== params.get('state')) throw new Error('login answer does not match the request');
  const meta = await provider();
  const r = await fetch(meta.token_endpoint, { method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code: params.get('code'),
      redirect_uri: location.origin + '/', client_id: state.cfg.client_id, code_verifier: saved.verifier,
      resource: state.cfg.audience }) });
  const t = await r.json();
  if (!r.ok) throw new Error(t.error_description || t.error || 'login refused');
  sessionStorage.setItem('token', t.access_token);
}

function showLogin(why) {
  stopLive();
  sessionStorage.removeItem('token');
  state.token = null;
  show('login');
  $('who').textContent = '';
  $('logout').hidden = true;
  $('login-why').textContent = why || 'Log in to see and steer your station.';
}

// ------------------------------------------------------------------ API calls

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.msg)) || `HTTP ${status}`);
    this.status = status; this.body = body || {};
  }
}

async function api(path, opts = {}) {
  const headers = { Authorization: 'Bearer ' + state.token, ...(opts.headers || {}) };
  let r;
  try {
    r = await fetch(API + path, { ...opts, headers });
  } catch (e) {
    netDown();
    throw e;
  }
  netUp();
  const body = await r.json().catch(() => null);
  if (r.status === 401) {
    showLogin('Your login has ended (V2G-401): log in again.');
    throw new ApiError(401, body);
  }
  if (!r.ok) throw new ApiError(r.status, body);
  return body;
}

// one user action = one Idempotency-Key: a retry after a network failure reuses it, and a
// second tap while it runs is not sent at all
function action(btnOrInput, out, path, body, done) {
  if (btnOrInput.dataset.pending) return;
  const key = crypto.randomUUID();
  btnOrInput.dataset.pending = key;
  btnOrInput.disabled = true;
  out.className = 'result pending';
  out.textContent = 'Sending… waiting for the station';
  const attempt = async (n) => {
    try {
      const r = await api(path, { method: 'POST', headers: { 'Content-Type': 'application/json',
        'Idempotency-Key': key }, body: JSON.stringify(body) });
      out.className = 'result ok';
      out.textContent = 'Done: ' + r.msg;
      if (done) done(r);
    } catch (e) {
      if (!(e instanceof ApiError) && n < 3) {          // the network: try again, same key
        out.textContent = 'Network trouble, retrying…';
        setTimeout(() => attempt(n + 1), 1000 * (n + 1));
        return;
      }
      if (e instanceof ApiError && e.status === 401) return;
      out.className = 'result err';
      out.textContent = e instanceof ApiError ? `${e.body.code || 'Error'}: ${e.message}` : 'Network offline: not sent';
    }
    delete btnOrInput.dataset.pending;
    btnOrInput.disabled = false;
  };
  attempt(0);
}

// ------------------------------------------------------------------ screens

function show(name) {
  for (const s of ['login', 'pick', 'station']) $(s).hidden = s !== name;
}

const fmtTime = (iso) => iso ? new Date(iso).toLocaleString([], { dateStyle: 'short', timeStyle: 'short' }) : '–';
const pct = (v) => v === null || v === undefined ? '–' : `${Math.round(v)} %`;

function netDown() {
  if (state.netDownSince) return;
  state.netDownSince = new Date();
  $('net').hidden = false;
  $('net').textContent = 'Network offline since ' + state.netDownSince.toLocaleTimeString();
}

function netUp() {
  state.netDownSince = null;
  $('net').hidden = true;
}

function renderStatus(s) {
  state.status = s;
  $('st-name').textContent = s.station;
  const off = $('offline');
  if (!s.online) {
    off.hidden = false;
    off.textContent = s.offline_since ? `Station offline since ${fmtTime(s.offline_since)}` : 'Station offline: never seen';
  } else {
    off.hidden = true;
  }
  $('soc').textContent = pct(s.soc_pct);
  $('floor').textContent = pct(s.floor_pct);
  $('target').textContent = pct(s.target_pct);
  $('g-fill').style.width = (s.soc_pct || 0) + '%';
  $('g-floor').style.left = (s.floor_pct ?? 0) + '%';
  $('g-floor').hidden = s.floor_pct === null || s.floor_pct === undefined;
  $('g-target').style.left = (s.target_pct ?? 0) + '%';
  $('g-target').hidden = s.target_pct === null || s.target_pct === undefined;
  const v = $('v2g');
  v.textContent = s.v2g.text;
  v.className = 'v2g ' + (s.v2g.available ? 'yes' : 'no');
  $('mode').textContent = [s.mode && `Mode: ${s.mode}`, s.departure && `departure ${fmtTime(s.departure)}`]
    .filter(Boolean).join(' · ');
  renderFlow(s.power_w);
  $('cap').textContent = s.discharge_capacity_wh === null || s.discharge_capacity_wh === undefined ? '–'
    : `${(s.discharge_capacity_wh / 1000).toFixed(1)} kWh`;
  $('amps').textContent = s.current_a === null || s.current_a === undefined ? '–'
    : s.current_a < 0 ? `${s.discharge_a.toFixed(1)} A out` : `${s.charge_a.toFixed(1)} A in`;
  $('grid').textContent = s.grid_v ? `${s.grid_v.toFixed(0)} V · ${s.grid_hz.toFixed(2)} Hz` : '–';
  $('seen').textContent = fmtTime(s.last_seen);
  const errs = s.errors || [];
  $('errors-card').hidden = errs.length === 0;
  $('errors').replaceChildren(...errs.map((e) => {
    const li = document.createElement('li');
    li.innerHTML = '<b></b> <span class="m"></span><span class="what"></span>';
    li.querySelector('b').textContent = e.code;
    li.querySelector('.m').textContent = e.meaning;
    li.querySelector('.what').textContent = e.action;
    return li;
  }));
  if (!$('co').dataset.pending && s.charge_only !== null && s.charge_only !== undefined) $('co').checked = !!s.charge_only;
}

function renderFlow(w) {
  const f = $('flow');
  if (w === null || w === undefined) { f.textContent = '–'; f.className = 'flow'; return; }
  const kw = (w / 1000).toFixed(1);
  f.textContent = w > 0 ? `+${kw} kW charging` : w < 0 ? `${kw} kW discharging` : '0 kW';
  f.className = 'flow ' + (w > 0 ? 'in' : w < 0 ? 'out' : '');
}

function makeChart() {
  const el = $('chart');
  el.replaceChildren();
  const opts = { width: el.clientWidth || 320, height: 180, legend: { show: false },
    scales: { x: { time: true } },
    axes: [{}, { label: 'kW', size: 50 }],
    series: [{}, { label: 'power', stroke: '#0b6e4f', width: 2, fill: '#0b6e4f22' }] };
  state.points = [[], []];
  state.chart = new uPlot(opts, state.points, el);
}

function addPoints(pts) {
  const [xs, ys] = state.points;
  for (const p of pts) {
    const t = Date.parse(p.t) / 1000;
    if (xs.length && t <= xs[xs.length - 1]) continue;
    xs.push(t); ys.push(p.w === null ? null : p.w / 1000);
  }
  const cut = xs.length ? xs[xs.length - 1] - 300 : 0;       // the last five minutes
  while (xs.length && xs[0] < cut) { xs.shift(); ys.shift(); }
  state.chart.setData(state.points);
  const last = pts[pts.length - 1];
  if (last) renderFlow(last.w);
  document.body.dataset.lastPower = last ? String(last.w) : '';
}

function stopLive() {
  if (state.live) state.live.abort();
  state.live = null;
}

function startLive(sid) {
  stopLive();
  const ctl = new AbortController();
  state.live = ctl;
  fetchEventSource(`${API}/stations/${encodeURIComponent(sid)}/live`, {
    headers: { Authorization: 'Bearer ' + state.token },
    signal: ctl.signal,
    openWhenHidden: true,
    async onopen(r) {
      if (r.status === 401) { showLogin('Your login has ended (V2G-401): log in again.'); throw new Error('401'); }
      if (!r.ok) throw new Error('HTTP ' + r.status);
      netUp();
    },
    onmessage(m) {
      const d = m.data ? JSON.parse(m.data) : null;
      if (m.event === 'status') renderStatus(d);
      else if (m.event === 'telemetry') addPoints(d.points);
      else if (m.event === 'auth') { showLogin('Your login has ended (V2G-401): log in again.'); ctl.abort(); }
    },
    onerror(e) {
      if (e && e.message === '401') throw e;          // stop: back to login
      netDown();
      return 2000;                                       // retry in 2 s
    },
  }).catch(() => {});
}

async function openStation(sid) {
  state.station = sid;
  show('station');
  tab('now');
  makeChart();
  const s = await api(`/stations/${encodeURIComponent(sid)}`);
  renderStatus(s);
  if (s.target_pct !== null && s.target_pct !== undefined) { $('t-range').value = s.target_pct; }
  $('t-val').textContent = $('t-range').value + ' %';
  const to = new Date(), from = new Date(to - 300e3);
  const tel = await api(`/stations/${encodeURIComponent(sid)}/telemetry?from=${from.toISOString()}` +
    `&to=${to.toISOString()}&points=300`);
  addPoints(tel.points);
  startLive(sid);
}

async function loadHistory() {
  const sid = state.station;
  const r = await api(`/stations/${encodeURIComponent(sid)}/sessions?limit=50`);
  const kwh = (wh) => wh === null || wh === undefined ? '–' : wh < 1000 ? `${wh} Wh` : `${(wh / 1000).toFixed(2)} kWh`;
  $('sessions').querySelector('tbody').replaceChildren(...r.sessions.map((x) => {
    const tr = document.createElement('tr');
    for (const v of [fmtTime(x.start), x.end ? fmtTime(x.end) : 'plugged in', kwh(x.energy_in_wh),
      kwh(x.energy_out_wh), `${pct(x.soc_start_pct)} → ${pct(x.soc_end_pct)}`, pct(x.soc_min_pct),
      (x.peak_discharge_w / 1000).toFixed(1)]) {
      const td = document.createElement('td'); td.textContent = v; tr.append(td);
    }
    return tr;
  }));
  const rows = [...r.sessions].reverse();
  const el = $('echart');
  el.replaceChildren();
  const data = [rows.map((_, i) => i + 1), rows.map((x) => (x.energy_in_wh || 0) / 1000),
    rows.map((x) => -(x.energy_out_wh || 0) / 1000)];
  const bars = uPlot.paths.bars({ size: [0.6, 40] });
  state.echart = new uPlot({ width: el.clientWidth || 320, height: 180,
    scales: { x: { time: false, range: [0.5, rows.length + 0.5] } },
    axes: [{ label: 'session', incrs: [1] }, { label: 'kWh', size: 60 }],
    series: [{}, { label: 'in', fill: '#0b6e4f', stroke: '#0b6e4f', paths: bars },
      { label: 'out', fill: '#e65100', stroke: '#e65100', paths: bars }] }, data, el);
}

function tab(name) {
  for (const b of document.querySelectorAll('.tabs button')) b.classList.toggle('on', b.dataset.tab === name);
  $('tab-now').hidden = name !== 'now';
  $('tab-history').hidden = name !== 'history';
  if (name === 'history') loadHistory().catch(() => {});
}

// ------------------------------------------------------------------ wiring

function wire() {
  $('login-btn').onclick = () => login();
  $('logout').onclick = () => showLogin('Logged out.');
  for (const b of document.querySelectorAll('.tabs button')) b.onclick = () => tab(b.dataset.tab);
  $('t-range').oninput = () => { $('t-val').textContent = $('t-range').value + ' %'; };
  $('r-range').oninput = () => { $('r-val').textContent = $('r-range').value + ' %'; };
  $('r-val').textContent = $('r-range').value + ' %';
  $('t-send').onclick = () => {
    const body = { soc_pct: Number($('t-range').value) };
    const dep = $('t-dep').value;
    if (dep) body.departure = new Date(dep).toISOString();
    action($('t-send'), $('t-res'), `/stations/${encodeURIComponent(state.station)}/soc-target`, body);
  };
  $('r-send').onclick = () => action($('r-send'), $('r-res'),
    `/stations/${encodeURIComponent(state.station)}/reserve-margin`, { pct: Number($('r-range').value) });
  $('co').onchange = () => action($('co'), $('co-res'), `/stations/${encodeURIComponent(state.station)}/charge-only`,
    { on: $('co').checked });
  window.addEventListener('offline', netDown);
  window.addEventListener('online', () => { if (state.station) startLive(state.station); });
  window.addEventListener('resize', () => {
    if (state.chart) state.chart.setSize({ width: $('chart').clientWidth, height: 180 });
    if (state.echart && $('echart').clientWidth) state.echart.setSize({ width: $('echart').clientWidth, height: 180 });
  });
}

async function main() {
  wire();
  if ('serviceWorker' in navigator) navigator.serviceWorker.register('/sw.js').catch(() => {});
  try {
    state.cfg = await (await fetch(API + '/config')).json();
  } catch (e) {
    netDown();
    return;
  }
  const params = new URLSearchParams(location.search);
  try {
    if (params.has('code')) await finishLogin(params);
    else if (params.has('error')) throw new Error(params.get('error_description') || params.get('error'));
  } catch (e) {
    showLogin('Login failed: ' + e.message);
    return;
  }
  state.token = sessionStorage.getItem('token');
  if (!state.token) { showLogin(); return; }
  try {
    const r = await api('/stations');
    $('who').textContent = r.user;
    $('logout').hidden = false;
    if (r.stations.length === 1) await openStation(r.stations[0].station);
    else {
      show('pick');
      $('stations').replaceChildren(...r.stations.map((s) => {
        const li = document.createElement('li');
        const b = document.createElement('button');
        b.textContent = `${s.station} — ${s.v2g.text || ''}`;
        b.onclick = () => openStation(s.station);
        li.append(b);
        return li;
      }));
      if (!r.stations.length) $('stations').textContent = 'No station is assigned to you yet.';
    }
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) netDown();
  }
}

main();
