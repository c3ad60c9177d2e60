// The operators' console of evolution events (ADR 0020): plain JavaScript, no build step. It drives
// the server's REST API with the `apikey` the operator signed in with (kept in sessionStorage, for
// this tab only) and receives live events over Socket.IO. Everything from the server is written
// as text (never as HTML).
'use strict';

(() => {
  const S = {
    key: sessionStorage.getItem('evo.apikey'),
    session: null,
    cleanups: [],
    live: {}, // per instance: {events: [...], seen: Set, lastId}
  };
  const $ = (id) => document.getElementById(id);
  const main = $('main');

  // ----- DOM helpers ---------------------------------------------------------------------------

  // h('button', {type: 'button', onclick: f, class: 'x'}, 'text', child, [more]) → element.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else if (k in el && typeof v !== 'string') el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    const add = (c) => {
      if (c === null || c === undefined || c === false) return;
      if (Array.isArray(c)) c.forEach(add);
      else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    };
    children.forEach(add);
    return el;
  }
  const svg = (tag, attrs) => {
    const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    return el;
  };

  function flash(text, bad) {
    const box = $('flash');
    box.replaceChildren();
    if (text) box.append(h('div', { class: bad ? 'notice bad' : 'notice' }, text));
  }

  const fmtTime = (iso) => {
    if (!iso) return '';
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
  };
  const eventKey = (name) => String(name).toUpperCase().replace(/[.-]/g, '_');

  // ----- API -----------------------------------------------------------------------------------

  async function api(method, path, body) {
    const init = { method, headers: { apikey: S.key || '' } };
    if (body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      return { ok: false, status: 0, data: null, messages: [`the server did not answer: ${e.message}`] };
    }
    const text = await response.text();
    let data = text;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      // not JSON: keep the text
    }
    const messages = data && data.response && Array.isArray(data.response.message) ? data.response.message : [];
    if (!response.ok && messages.length === 0) messages.push(`${response.status} ${response.statusText}`);
    return { ok: response.ok, status: response.status, data, messages };
  }

  const enc = encodeURIComponent;

  // Puts each `field: message` of a 400 under the input it names (`prefix.field…`), the rest on
  // the form.
  function showErrors(form, messages, prefix) {
    form.querySelectorAll('.field-error').forEach((e) => e.replaceChildren());
    form.querySelectorAll('[aria-invalid]').forEach((e) => e.removeAttribute('aria-invalid'));
    const general = [];
    for (const m of messages) {
      const match = /^([^:\s]+):\s*(.*)$/s.exec(m);
      let field = null;
      if (match) {
        let path = match[1];
        if (prefix && path.startsWith(`${prefix}.`)) path = path.slice(prefix.length + 1);
        else if (prefix) path = null;
        if (path) field = path.split(/[.[]/)[0];
      }
      const slot = field && form.querySelector(`.field-error[data-field="${CSS.escape(field)}"]`);
      if (slot) {
        slot.append(h('div', {}, m));
        const input = form.querySelector(`[data-name="${CSS.escape(field)}"]`);
        if (input) input.setAttribute('aria-invalid', 'true');
      } else {
        general.push(m);
      }
    }
    const box = form.querySelector('.form-error');
    box.replaceChildren(...general.map((m) => h('div', {}, m)));
    const first = form.querySelector('[aria-invalid="true"]');
    if (first) first.focus();
  }

  // ----- routing -------------------------------------------------------------------------------

  function cleanup() {
    while (S.cleanups.length) {
      try {
        S.cleanups.pop()();
      } catch (_) {
        // already gone
      }
    }
  }

  function route() {
    const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
    return { page: parts[0] || '', name: parts[1] || '' };
  }

  async function render() {
    cleanup();
    if (S.key && !S.session) {
      const r = await api('GET', '/console/api/session');
      if (r.ok) S.session = r.data;
      else forget();
    }
    if (!S.session) return signIn();
    $('nav').hidden = false;
    $('who').textContent =
      S.session.access === 'global' ? 'signed in with the global key' : `signed in as instance ${S.session.instance}`;
    let { page, name } = route();
    const own = S.session.access === 'instance' ? S.session.instance : null;
    if (!page || page === 'signin') {
      location.hash = own ? `#/instance/${enc(own)}` : '#/instances';
      return;
    }
    main.replaceChildren();
    if (page === 'instances') return instancesPage();
    if (page === 'metrics') return metricsPage();
    if (!name) name = own || '';
    if (page === 'instance') return settingsPage(name);
    if (page === 'live') return livePage(name);
    if (page === 'deliveries') return deliveriesPage(name);
    main.append(h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/instances' }, 'Back to the instances')));
  }

  function forget() {
    S.key = null;
    S.session = null;
    sessionStorage.removeItem('evo.apikey');
    $('nav').hidden = true;
  }

  window.addEventListener('hashchange', () => {
    flash('');
    render();
  });
  $('signout').addEventListener('click', () => {
    forget();
    S.live = {};
    flash('Signed out.');
    location.hash = '#/signin';
    render();
  });

  // ----- sign in -------------------------------------------------------------------------------

  function signIn() {
    $('nav').hidden = true;
    const input = h('input', { type: 'password', id: 'apikey', autocomplete: 'off', required: true, 'data-name': 'apikey' });
    const form = h(
      'form',
      { id: 'signin', class: 'card', novalidate: true },
      h('label', { for: 'apikey' }, 'Global API key or instance token'),
      input,
      h('div', { class: 'field-error', 'data-field': 'apikey' }),
      h('div', { class: 'form-error', role: 'alert' }),
      h('button', { type: 'submit' }, 'Sign in'),
      h('p', { class: 'hint' }, 'The global key (AUTHENTICATION_API_KEY) sees every instance; an instance token its own only.'),
    );
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const key = input.value.trim();
      if (!key) return showErrors(form, ['apikey: enter the global API key or an instance token'], null);
      S.key = key;
      const r = await api('GET', '/console/api/session');
      if (!r.ok) {
        S.key = null;
        return showErrors(form, [`apikey: refused (${r.status}): ${r.messages.join('; ')}`], null);
      }
      S.session = r.data;
      sessionStorage.setItem('evo.apikey', key);
      location.hash = S.session.access === 'global' ? '#/instances' : `#/instance/${enc(S.session.instance)}`;
    });
    main.replaceChildren(h('h1', {}, 'Sign in'), form);
    input.focus();
  }

  // ----- instances -----------------------------------------------------------------------------

  function tabs(name, current) {
    const link = (page, text) =>
      h('a', { href: `#/${page}/${enc(name)}`, 'aria-current': page === current ? 'page' : null }, text);
    return h(
      'nav',
      { class: 'tabs', 'aria-label': `Instance ${name}` },
      link('instance', 'Settings'),
      link('live', 'Live'),
      link('deliveries', 'Deliveries'),
    );
  }

  async function instancesPage() {
    main.append(h('h1', {}, 'Instances'));
    const global = S.session.access === 'global';
    if (global) main.append(createForm());
    const holder = h('div', { id: 'instances' }, h('p', { class: 'hint' }, 'Loading…'));
    main.append(holder);
    const r = await api('GET', '/instance/fetchInstances');
    if (!r.ok) return holder.replaceChildren(h('div', { class: 'notice bad' }, r.messages.join('; ')));
    const list = r.data || [];
    if (list.length === 0) return holder.replaceChildren(h('p', {}, 'No instance yet.'));
    const rows = list.map((i) => {
      const channels = Object.entries(i.settings || {})
        .filter(([, v]) => v && v.enabled)
        .map(([k]) => h('span', { class: 'badge ok' }, k));
      return h(
        'tr',
        { 'data-instance': i.instanceName },
        h('td', {}, h('a', { href: `#/instance/${enc(i.instanceName)}` }, i.instanceName)),
        h('td', {}, channels.length ? channels : h('span', { class: 'hint' }, 'none')),
        h('td', { class: 'hide-narrow' }, fmtTime(i.createdAt)),
        h(
          'td',
          {},
          h('a', { href: `#/live/${enc(i.instanceName)}` }, 'Live'),
          ' · ',
          h('a', { href: `#/deliveries/${enc(i.instanceName)}` }, 'Deliveries'),
          ' ',
          deleteButton(i.instanceName),
        ),
      );
    });
    holder.replaceChildren(
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          {},
          h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Enabled channels'), h('th', { class: 'hide-narrow' }, 'Created'), h('th', {}, ''))),
          h('tbody', {}, rows),
        ),
      ),
    );
  }

  function deleteButton(name) {
    let armed = false;
    const button = h('button', {
      type: 'button',
      class: 'danger',
      'aria-label': `Delete instance ${name}`,
      onclick: async () => {
        if (!armed) {
          armed = true;
          button.textContent = `Confirm: delete ${name}`;
          return;
        }
        button.disabled = true;
        const r = await api('DELETE', `/instance/delete/${enc(name)}`);
        if (!r.ok) {
          button.disabled = false;
          return flash(`Could not delete ${name}: ${r.messages.join('; ')}`, true);
        }
        delete S.live[name];
        flash(`Deleted ${name}.`);
        render();
      },
    }, 'Delete');
    return button;
  }

  function createForm() {
    const form = h(
      'form',
      { id: 'create', class: 'card', novalidate: true },
      h('h2', {}, 'Create an instance'),
      h('div', { class: 'row' },
        h('div', {},
          h('label', { for: 'new-name' }, 'Name'),
          h('input', { type: 'text', id: 'new-name', 'data-name': 'instanceName', autocomplete: 'off', placeholder: 'minha-instancia' }),
          h('div', { class: 'field-error', 'data-field': 'instanceName' })),
        h('div', {},
          h('label', { for: 'new-token' }, 'Token (optional, at least 8 characters)'),
          h('input', { type: 'password', id: 'new-token', 'data-name': 'token', autocomplete: 'new-password' }),
          h('div', { class: 'field-error', 'data-field': 'token' }))),
      h('div', { class: 'form-error', role: 'alert' }),
      h('button', { type: 'submit' }, 'Create'),
    );
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const body = { instanceName: $('new-name').value.trim() };
      const token = $('new-token').value.trim();
      if (token) body.token = token;
      const r = await api('POST', '/instance/create', body);
      if (!r.ok) return showErrors(form, r.messages, null);
      const name = r.data.instance.instanceName;
      await render();
      // The token is the instance's own credential: shown once, like the API's `hash`.
      flash(token ? `Created ${name}.` : `Created ${name}. Its token (shown only now): ${r.data.hash}`);
      const row = document.querySelector(`tr[data-instance="${CSS.escape(name)}"] a`);
      if (row) row.focus();
    });
    return form;
  }

  // ----- settings ------------------------------------------------------------------------------

  // The fields of each channel's settings object; fields the server returns beyond these are
  // edited by their JSON type.
  const FIELDS = {
    webhook: [
      ['enabled', 'bool', 'Enabled'],
      ['url', 'text', 'URL'],
      ['events', 'events', 'Events'],
      ['byEvents', 'bool', 'One URL per event (byEvents)'],
      ['base64', 'bool', 'Media as base64'],
      ['headers', 'json', 'Extra headers (JSON object; values are kept secret)'],
      ['secret', 'secrets', 'Signing secrets (whsec_…, several separated by spaces; empty: the server\'s)'],
    ],
    pusher: [
      ['enabled', 'bool', 'Enabled'],
      ['appId', 'text', 'App id'],
      ['key', 'text', 'Key'],
      ['secret', 'text', 'Secret'],
      ['cluster', 'text', 'Cluster'],
      ['useTLS', 'bool', 'Use TLS'],
      ['host', 'text', 'Host (optional)'],
      ['port', 'number', 'Port (optional)'],
      ['events', 'events', 'Events'],
    ],
    default: [
      ['enabled', 'bool', 'Enabled'],
      ['events', 'events', 'Events'],
    ],
  };
  const typeOf = (v) =>
    typeof v === 'boolean' ? 'bool' : typeof v === 'number' ? 'number' : typeof v === 'string' ? 'text' : 'json';

  function fieldInput(channel, name, kind, label, value) {
    const id = `f-${channel}-${name}`;
    const error = h('div', { class: 'field-error', 'data-field': name, id: `${id}-error` });
    const common = { id, 'data-name': name, 'data-kind': kind, 'aria-describedby': `${id}-error` };
    if (kind === 'bool') {
      return h('div', {}, h('label', { class: 'inline', for: id },
        h('input', { ...common, type: 'checkbox', checked: Boolean(value) }), label), error);
    }
    if (kind === 'events') {
      const chosen = new Set((value || []).map(eventKey));
      const boxes = S.session.events.map((ev) =>
        h('label', { class: 'inline' }, h('input', { type: 'checkbox', value: ev, checked: chosen.has(ev) }), ev));
      return h('div', {},
        h('fieldset', { class: 'plain', ...common, style: null },
          h('legend', {}, `${label} (none checked: every event)`), h('div', { class: 'events-grid' }, boxes)),
        error);
    }
    let input;
    if (kind === 'json') {
      input = h('textarea', { ...common, rows: 3 });
      input.value = value === undefined || value === null ? '' : JSON.stringify(value, null, 1);
    } else if (kind === 'secrets') {
      input = h('input', { ...common, type: 'text', autocomplete: 'off' });
      input.value = Array.isArray(value) ? value.join(' ') : value || '';
    } else {
      input = h('input', { ...common, type: kind === 'number' ? 'number' : 'text', autocomplete: 'off' });
      input.value = value === undefined || value === null ? '' : String(value);
    }
    return h('div', {}, h('label', { for: id }, label), input, error);
  }

  // The settings object the form holds, or throws [field, message].
  function readForm(form) {
    const out = {};
    for (const el of form.querySelectorAll('[data-kind]')) {
      const name = el.dataset.name;
      switch (el.dataset.kind) {
        case 'bool':
          out[name] = el.checked;
          break;
        case 'events':
          out[name] = [...el.querySelectorAll('input:checked')].map((c) => c.value);
          break;
        case 'number':
          if (el.value.trim() !== '') out[name] = Number(el.value);
          break;
        case 'secrets': {
          const list = el.value.split(/\s+/).filter(Boolean);
          if (list.length === 1) out[name] = list[0];
          else if (list.length > 1) out[name] = list;
          break;
        }
        case 'json':
          if (el.value.trim() !== '') {
            try {
              out[name] = JSON.parse(el.value);
            } catch (e) {
              throw [name, `${name}: not valid JSON (${e.message})`];
            }
          }
          break;
        default:
          if (el.value.trim() !== '') out[name] = el.value.trim();
      }
    }
    return out;
  }

  function channelForm(instance, channel, value) {
    const specs = FIELDS[channel] || FIELDS.default;
    const known = new Set(specs.map((s) => s[0]));
    const extra = Object.keys(value || {}).filter((k) => !known.has(k)).map((k) => [k, typeOf(value[k]), k]);
    const form = h('form', { class: 'card channel', id: `channel-${channel}`, novalidate: true },
      h('h2', {}, channel, ' ', value ? h('span', { class: value.enabled ? 'badge ok' : 'badge' }, value.enabled ? 'enabled' : 'disabled') : h('span', { class: 'badge' }, 'not set')),
      [...specs, ...extra].map(([name, kind, label]) => fieldInput(channel, name, kind, label, value ? value[name] : undefined)),
      value && JSON.stringify(value).includes('**REDACTED**')
        ? h('p', { class: 'hint' }, 'Values shown as **REDACTED** are stored secrets: leave them as they are to keep them.')
        : null,
      h('div', { class: 'form-error', role: 'alert' }),
      h('button', { type: 'submit' }, `Save ${channel}`));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      let settings;
      try {
        settings = readForm(form);
      } catch ([, message]) {
        return showErrors(form, [`${channel}.${message}`], channel);
      }
      const r = await api('POST', `/console/api/settings/${enc(channel)}/${enc(instance)}`, { [channel]: settings });
      if (!r.ok) return showErrors(form, r.messages, channel);
      const fresh = channelForm(instance, channel, r.data[channel]);
      form.replaceWith(fresh);
      flash(`Saved the ${channel} settings of ${instance}.`);
      fresh.querySelector('button[type=submit]').focus();
    });
    return form;
  }

  async function settingsPage(name) {
    main.append(h('h1', {}, name), tabs(name, 'instance'));
    const holder = h('div', {}, h('p', { class: 'hint' }, 'Loading…'));
    main.append(holder);
    const found = await Promise.all(S.session.channels.map((c) => api('GET', `/console/api/settings/${enc(c)}/${enc(name)}`)));
    const refused = found.find((r) => !r.ok);
    if (refused) return holder.replaceChildren(h('div', { class: 'notice bad', role: 'alert' }, refused.messages.join('; ')));
    holder.replaceChildren(
      testEventForm(name),
      ...S.session.channels.map((c, i) => channelForm(name, c, found[i].data)),
    );
  }

  function testEventForm(name) {
    const select = h('select', { id: 'test-event', 'data-name': 'event' },
      S.session.events.map((ev) => h('option', { value: ev, selected: ev === 'MESSAGES_UPSERT' }, ev)));
    const data = h('textarea', { id: 'test-data', 'data-name': 'data', rows: 3 });
    data.value = JSON.stringify({ message: { conversation: 'test from the console' } });
    const result = h('div', { id: 'test-result', role: 'status' });
    const form = h('form', { class: 'card', id: 'test', novalidate: true },
      h('h2', {}, 'Send a test event'),
      h('div', { class: 'row' },
        h('div', {}, h('label', { for: 'test-event' }, 'Event'), select, h('div', { class: 'field-error', 'data-field': 'event' })),
        h('div', {}, h('label', { for: 'test-data' }, 'data (JSON)'), data, h('div', { class: 'field-error', 'data-field': 'data' }))),
      h('div', { class: 'form-error', role: 'alert' }),
      h('button', { type: 'submit' }, 'Send test event'),
      result);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      let payload;
      try {
        payload = data.value.trim() ? JSON.parse(data.value) : null;
      } catch (err) {
        return showErrors(form, [`data: not valid JSON (${err.message})`], null);
      }
      showErrors(form, [], null);
      const r = await api('POST', `/events/${enc(name)}`, { event: select.value, data: payload });
      if (!r.ok) return showErrors(form, r.messages, null);
      const id = r.data.ids[0];
      result.replaceChildren(h('p', {}, 'Accepted: ', h('span', { class: 'mono', 'data-event-id': id }, id), ' · ',
        h('a', { href: `#/deliveries/${enc(name)}` }, 'see its deliveries')));
    });
    return form;
  }

  // ----- live ----------------------------------------------------------------------------------

  async function livePage(name) {
    main.append(h('h1', {}, name), tabs(name, 'live'));
    if (!S.session.websocket) {
      return main.append(h('div', { class: 'notice' },
        'Live events come over Socket.IO, which is off on this server: start it with WEBSOCKET_ENABLED=true.'));
    }
    const ws = await api('GET', `/console/api/settings/websocket/${enc(name)}`);
    if (!ws.ok) return main.append(h('div', { class: 'notice bad', role: 'alert' }, ws.messages.join('; ')));
    if (!ws.data || !ws.data.enabled) {
      const enable = h('button', {
        type: 'button',
        onclick: async () => {
          const events = ws.data ? ws.data.events : [];
          const r = await api('POST', `/console/api/settings/websocket/${enc(name)}`, { websocket: { enabled: true, events } });
          if (!r.ok) return flash(r.messages.join('; '), true);
          render();
        },
      }, 'Enable the websocket channel');
      return main.append(h('div', { class: 'notice' },
        `The events of ${name} are not sent to Socket.IO: its websocket channel is ${ws.data ? 'disabled' : 'not set'}. `, enable));
    }
    const state = S.live[name] || (S.live[name] = { events: [], seen: new Set(), lastId: null });
    const status = h('span', { id: 'live-status', class: 'badge' }, 'connecting');
    const note = h('span', { id: 'live-note', class: 'hint' });
    const list = h('ul', { class: 'live-list', id: 'live-list', 'aria-live': 'off' });
    let paused = false;
    let held = [];
    const pause = h('button', {
      type: 'button',
      id: 'pause',
      class: 'secondary',
      'aria-pressed': 'false',
      onclick: () => {
        paused = !paused;
        pause.setAttribute('aria-pressed', String(paused));
        pause.textContent = paused ? 'Resume' : 'Pause';
        if (!paused) {
          held.forEach(show);
          held = [];
          note.textContent = '';
        }
      },
    }, 'Pause');
    const clear = h('button', { type: 'button', class: 'secondary', onclick: () => { list.replaceChildren(); state.events = []; } }, 'Clear');
    main.append(h('div', { class: 'card' }, h('p', {}, 'Socket.IO: ', status, ' ', note), pause, clear,
      h('p', { class: 'hint' }, 'Newest first; click an event for its payload. Reconnecting replays what was missed.')), list);

    function item(ev) {
      const pre = h('pre', {});
      pre.textContent = JSON.stringify(ev.payload, null, 2);
      return h('li', { 'data-id': ev.id, 'data-event': ev.event },
        h('details', {}, h('summary', {}, `${fmtTime(ev.payload.date_time || ev.at)} · ${ev.event} · ${ev.id}`), pre));
    }
    function show(ev) {
      list.prepend(item(ev));
      while (list.children.length > 200) list.lastChild.remove();
    }
    state.events.slice(-200).forEach(show);
    function receive(eventName, payload) {
      if (!payload || typeof payload !== 'object') return;
      const id = payload.id || `${eventName}-${Date.now()}`;
      if (state.seen.has(id)) return;
      state.seen.add(id);
      state.lastId = payload.id || state.lastId;
      const ev = { id, event: payload.event || eventName, payload, at: new Date().toISOString() };
      state.events.push(ev);
      if (state.events.length > 200) state.events.shift();
      if (paused) {
        held.push(ev);
        note.textContent = `paused: ${held.length} new`;
      } else {
        show(ev);
      }
    }
    const socket = window.io(`/${enc(name)}`, {
      path: '/socket.io',
      auth: (cb) => cb(state.lastId ? { apikey: S.key, lastEventId: state.lastId } : { apikey: S.key }),
      reconnectionDelayMax: 5000,
    });
    S.cleanups.push(() => socket.close());
    socket.on('connect', () => {
      status.className = 'badge ok';
      status.textContent = 'connected';
    });
    socket.on('disconnect', (reason) => {
      status.className = 'badge pending';
      status.textContent = `disconnected (${reason}); reconnecting`;
    });
    socket.on('connect_error', (err) => {
      status.className = 'badge bad';
      status.textContent = `refused: ${err.message}`;
    });
    socket.onAny((eventName, payload) => {
      if (eventName === 'replay') {
        note.textContent = `replayed ${payload.replayed} missed event(s)${payload.complete ? '' : ` (incomplete: ${payload.error || 'limit reached'})`}`;
        return;
      }
      receive(eventName, payload);
    });
  }

  // ----- deliveries ----------------------------------------------------------------------------

  async function deliveriesPage(name) {
    main.append(h('h1', {}, name), tabs(name, 'deliveries'));
    const opt = (v, t) => h('option', { value: v }, t || v);
    const channel = h('select', { id: 'f-channel' }, opt('', 'any'), S.session.channels.map((c) => opt(c)));
    const status = h('select', { id: 'f-status' }, opt('', 'any'), ['pending', 'failed', 'dead', 'delivered'].map((s) => opt(s)));
    const event = h('select', { id: 'f-event' }, opt('', 'any'), S.session.events.map((e) => opt(e)));
    const since = h('input', { type: 'datetime-local', id: 'f-since' });
    const until = h('input', { type: 'datetime-local', id: 'f-until' });
    const limit = h('input', { type: 'number', id: 'f-limit', min: 1, max: 1000, value: 100 });
    const auto = h('input', { type: 'checkbox', id: 'f-auto', checked: true });
    const filters = h('form', { class: 'card', id: 'filters', novalidate: true },
      h('div', { class: 'row' },
        h('div', {}, h('label', { for: 'f-channel' }, 'Channel'), channel),
        h('div', {}, h('label', { for: 'f-status' }, 'Status'), status),
        h('div', {}, h('label', { for: 'f-event' }, 'Event'), event),
        h('div', {}, h('label', { for: 'f-since' }, 'Accepted from'), since),
        h('div', {}, h('label', { for: 'f-until' }, 'until'), until),
        h('div', {}, h('label', { for: 'f-limit' }, 'Newest'), limit)),
      h('div', { class: 'form-error', role: 'alert' }),
      h('button', { type: 'submit' }, 'Apply'),
      h('label', { class: 'inline', for: 'f-auto' }, auto, 'refresh every 2 s'),
      h('p', { class: 'hint' }, 'Event and time window filter the newest deliveries the server returns.'));
    const dead = h('div', { id: 'dead' });
    const table = h('div', { id: 'log', class: 'table-wrap' });
    main.append(filters, h('h2', {}, 'Dead letters by channel'), dead, h('h2', {}, 'Delivery log'), table);
    const open = new Set();
    let last = '';
    let lastDead = '';

    async function load() {
      const q = new URLSearchParams();
      if (channel.value) q.set('channel', channel.value);
      if (status.value) q.set('status', status.value);
      q.set('limit', limit.value || '100');
      const [r, d] = await Promise.all([
        api('GET', `/deliveries/${enc(name)}?${q}`),
        api('GET', `/deliveries/${enc(name)}?status=dead&limit=1000`),
      ]);
      if (!r.ok) return showErrors(filters, r.messages, null);
      showErrors(filters, [], null);
      const from = since.value ? new Date(since.value).getTime() : null;
      const to = until.value ? new Date(until.value).getTime() : null;
      const rows = (r.data || []).filter((x) => {
        const t = new Date(x.created_at).getTime();
        return (!event.value || eventKey(x.event) === event.value) && (from === null || t >= from) && (to === null || t <= to);
      });
      const key = JSON.stringify(rows);
      if (key !== last) {
        last = key;
        table.replaceChildren(logTable(rows));
      }
      if (d.ok) {
        const deadKey = JSON.stringify(d.data.map((x) => x.id));
        if (deadKey !== lastDead) {
          lastDead = deadKey;
          dead.replaceChildren(deadCards(d.data));
        }
      }
    }

    function logTable(rows) {
      if (rows.length === 0) return h('p', { class: 'hint' }, 'No delivery matches.');
      const body = rows.map((x) => {
        const attempts = (x.attempt_log || []).map((a) =>
          h('li', {}, `#${a.attempt} ${fmtTime(a.at)}: ${a.outcome}${a.status ? ` (HTTP ${a.status})` : ''}, ${a.latency_ms} ms${a.error ? ` — ${a.error}` : ''}`));
        const details = h('details', { open: open.has(x.id) },
          // The log keeps the attempts of every round (a redrive starts a new one).
          h('summary', {}, `${Math.max(x.attempts, attempts.length)} attempt(s)`),
          attempts.length ? h('ol', { class: 'attempts' }, attempts) : h('p', { class: 'hint' }, 'no attempt yet'),
          x.next_attempt_at ? h('p', { class: 'hint' }, `next attempt ${fmtTime(x.next_attempt_at)}`) : null);
        details.addEventListener('toggle', () => (details.open ? open.add(x.id) : open.delete(x.id)));
        const retry = x.status === 'dead'
          ? h('button', { type: 'button', class: 'secondary', 'aria-label': `Retry delivery ${x.id}`, onclick: () => act('POST', `/deliveries/${x.id}/retry`, `Delivery ${x.id} sent again.`) }, 'Retry')
          : null;
        return h('tr', { 'data-delivery': x.id, 'data-event-id': x.event_id, 'data-channel': x.channel, 'data-status': x.status },
          h('td', {}, String(x.id)),
          h('td', {}, x.event, h('div', { class: 'mono hint hide-narrow' }, x.event_id)),
          h('td', {}, x.channel, h('div', { class: 'hint hide-narrow wrap' }, x.destination)),
          h('td', {}, h('span', { class: `badge ${x.status}` }, x.status)),
          h('td', {}, details),
          h('td', { class: 'hide-narrow' }, fmtTime(x.created_at)),
          // The log keeps the last error after a later success: shown as history then.
          h('td', { class: 'wrap' }, x.status === 'delivered' && x.last_error ? h('span', { class: 'hint' }, `earlier: ${x.last_error}`) : x.last_error || '', retry));
      });
      return h('table', {},
        h('thead', {}, h('tr', {}, ['#', 'Event', 'Channel', 'Status', 'Attempts', 'Accepted', 'Last error'].map((t, i) =>
          h('th', { class: i === 5 ? 'hide-narrow' : null }, t)))),
        h('tbody', {}, body));
    }

    function deadCards(list) {
      const by = {};
      for (const x of list) by[x.channel] = (by[x.channel] || 0) + 1;
      const names = Object.keys(by).sort();
      if (names.length === 0) return h('p', { class: 'hint', id: 'no-dead' }, 'No dead letters.');
      return h('div', { class: 'health' }, names.map((c) => {
        let armed = false;
        const purge = h('button', {
          type: 'button',
          class: 'danger',
          onclick: () => {
            if (!armed) {
              armed = true;
              purge.textContent = `Confirm: purge ${c}`;
              return;
            }
            act('DELETE', `/deliveries/${enc(name)}/dead`, `Purged the ${c} dead letters.`, { channel: c });
          },
        }, 'Purge');
        return h('div', { class: 'card', 'data-dead-channel': c },
          h('strong', {}, c), ' ', h('span', { class: 'badge dead' }, `${by[c]} dead`), h('br'),
          h('button', { type: 'button', onclick: () => act('POST', `/deliveries/${enc(name)}/redrive`, null, { channel: c }) }, `Redrive ${c}`),
          purge);
      }));
    }

    async function act(method, path, message, body) {
      const r = await api(method, path, body);
      if (!r.ok) return flash(r.messages.join('; '), true);
      flash(message || `Sent ${r.data.redriven} dead letter(s) again.`);
      load();
    }

    filters.addEventListener('submit', (e) => {
      e.preventDefault();
      last = '';
      load();
    });
    await load();
    const timer = setInterval(() => auto.checked && load(), 2000);
    S.cleanups.push(() => clearInterval(timer));
  }

  // ----- metrics -------------------------------------------------------------------------------

  const COLORS = ['#0b5cad', '#17803d', '#b3261e', '#a15c00', '#6f42c1', '#0f8a8a', '#6b6b6b'];

  // Prometheus text → {name: [{labels, value}]}.
  function parseMetrics(text) {
    const out = {};
    for (const line of text.split('\n')) {
      if (!line || line.startsWith('#')) continue;
      const m = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
      if (!m) continue;
      const labels = {};
      for (const l of (m[2] || '').matchAll(/(\w+)="([^"]*)"/g)) labels[l[1]] = l[2];
      (out[m[1]] || (out[m[1]] = [])).push({ labels, value: Number(m[3]) });
    }
    return out;
  }

  function chart(id, title, unit, digits) {
    const box = svg('svg', { viewBox: '0 0 300 100', preserveAspectRatio: 'none', role: 'img', 'aria-label': title });
    const legend = h('div', { class: 'legend' });
    const el = h('div', { class: 'card chart', id }, h('strong', {}, title), box, legend);
    const fmt = (v) => (v || 0).toFixed(digits);
    let peak = 0;
    return {
      el,
      draw(series) {
        const max = Math.max(1, ...series.flatMap((s) => s.points));
        peak = Math.max(peak, ...series.flatMap((s) => s.points));
        // The highest value drawn since the page opened (what the browser test reads).
        el.dataset.peak = String(peak);
        el.dataset.samples = String(Math.max(0, ...series.map((s) => s.points.length)));
        box.replaceChildren();
        series.forEach((s, i) => {
          const n = s.points.length;
          // Oldest sample kept on the left edge, newest on the right (up to 60: two minutes).
          // (One sample: a flat line at its value.)
          const points = n === 1 ? [s.points[0], s.points[0]] : s.points;
          const pts = points.map((v, j) => `${(j * 300) / Math.max(points.length - 1, 1)},${98 - (96 * v) / max}`).join(' ');
          if (n) box.append(svg('polyline', { points: pts, fill: 'none', stroke: COLORS[i % COLORS.length], 'stroke-width': 2, 'vector-effect': 'non-scaling-stroke' }));
        });
        const top = svg('text', { x: 4, y: 12, 'font-size': 10, fill: '#5b6470' });
        top.textContent = `max ${fmt(max)} ${unit}`;
        box.append(top);
        const now = series.map((s) => `${s.name} ${fmt(s.points[s.points.length - 1])}`).join(', ');
        box.setAttribute('aria-label', `${title}: ${now || 'no data'}`);
        legend.replaceChildren(...series.map((s, i) =>
          h('span', { 'data-series': s.name }, h('i', { style: null, class: `c${i}` }), `${s.name}: ${fmt(s.points[s.points.length - 1])}`)));
        legend.querySelectorAll('i').forEach((dot, i) => { dot.style.background = COLORS[i % COLORS.length]; });
      },
    };
  }

  async function metricsPage() {
    main.append(h('h1', {}, 'Metrics'), h('p', { class: 'hint' }, 'Server-wide (every instance): /metrics sampled every 2 s, /ready every 10 s.'));
    const health = h('div', { class: 'health', id: 'health' }, h('p', { class: 'hint' }, 'Checking…'));
    const charts = {
      accepted: chart('chart-accepted', 'Events accepted per second', '/s', 1),
      delivered: chart('chart-delivered', 'Deliveries per second', '/s', 1),
      failed: chart('chart-failed', 'Failed attempts per second', '/s', 1),
      backlog: chart('chart-backlog', 'Backlog (pending + in flight)', '', 0),
      dead: chart('chart-dead', 'Dead letters', '', 0),
    };
    main.append(h('h2', {}, 'Channel health'), health, h('h2', {}, 'Flow'),
      h('div', { class: 'charts' }, Object.values(charts).map((c) => c.el)));
    const history = {};
    let previous = null;
    const push = (chartName, series, value) => {
      const key = `${chartName}/${series}`;
      const list = history[key] || (history[key] = []);
      list.push(value);
      if (list.length > 60) list.shift();
    };
    const seriesOf = (chartName) =>
      Object.keys(history).filter((k) => k.startsWith(`${chartName}/`)).sort()
        .map((k) => ({ name: k.slice(chartName.length + 1), points: history[k] }));

    let round = 0;
    async function sample() {
      // /ready runs every sink's health check: every 10 s (and at once), the metrics every 2 s.
      const checkHealth = round % 5 === 0;
      round += 1;
      const [m, ready] = await Promise.all([
        fetch('/metrics').then((r) => r.text()).catch(() => null),
        checkHealth ? fetch('/ready').then((r) => r.json()).catch(() => null) : null,
      ]);
      if (ready && ready.checks) {
        health.replaceChildren(...Object.entries(ready.checks).map(([name, v]) =>
          h('div', { class: 'card', 'data-health': name },
            h('strong', {}, name), ' ', h('span', { class: v === 'ok' ? 'badge ok' : 'badge bad' }, v === 'ok' ? 'ok' : 'failing'),
            v === 'ok' ? null : h('div', { class: 'hint' }, String(v)))));
      }
      if (!m) return;
      const now = { t: performance.now(), v: parseMetrics(m) };
      const get = (name) => now.v[name] || [];
      const byChannel = (name) => Object.fromEntries(get(name).map((x) => [x.labels.channel, x.value]));
      const counters = {
        accepted: { all: (get('evolution_events_accepted_total')[0] || { value: 0 }).value },
        delivered: byChannel('evolution_deliveries_delivered_total'),
        failed: byChannel('evolution_deliveries_failed_attempts_total'),
      };
      if (previous) {
        const dt = Math.max(0.001, (now.t - previous.t) / 1000);
        for (const [chartName, values] of Object.entries(counters)) {
          for (const [series, v] of Object.entries(values)) {
            const before = previous.counters[chartName][series];
            push(chartName, series === 'all' ? 'accepted' : series, Math.max(0, (v - (before ?? v)) / dt));
          }
        }
      }
      const backlog = {};
      const deadCount = {};
      for (const x of get('evolution_queue_depth')) {
        const c = x.labels.channel;
        if (x.labels.state === 'dead') deadCount[c] = x.value;
        else backlog[c] = (backlog[c] || 0) + x.value;
      }
      Object.entries(backlog).forEach(([c, v]) => push('backlog', c, v));
      Object.entries(deadCount).forEach(([c, v]) => push('dead', c, v));
      previous = { t: now.t, counters };
      for (const [chartName, c] of Object.entries(charts)) c.draw(seriesOf(chartName));
    }
    await sample();
    const timer = setInterval(sample, 2000);
    S.cleanups.push(() => clearInterval(timer));
  }

  render();
})();
