// tokenwarden's web console. Every action goes through the REST API (/v1) with the session
// cookie (HttpOnly: this script never sees it) and the session's CSRF token, kept only in this
// variable. Every element is built with textContent or safe attributes, never HTML from data.
'use strict';

const PAGE_SIZE = 50;        // roots (or matches) per page of the tree
const LOAD_CAP = 20000;      // tokens loaded for the tree at most
const OWN_TOOLS = ['whoami', 'list_tokens', 'get_token', 'create_token', 'update_token',
  'scope_token', 'pause_token', 'resume_token', 'rotate_token', 'revoke_token', 'delete_token',
  'verify_token', 'list_buckets', 'list_audit_events', 'list_access_events'];

const state = {
  csrf: null,
  me: null,               // whoami record
  tokens: new Map(),      // id -> record
  children: new Map(),    // parent id -> [ids]
  loaded: false,
  truncated: false,
  expanded: new Set(),
  page: 0,
  search: '',
  status: '',
  showEnded: false,       // revoked and expired tokens are hidden unless asked for
  keepNotice: false,      // a notice set just before a navigation survives it
};

const $ = (id) => document.getElementById(id);

// el('a', {href: '#/x', class: 'name'}, 'text', child…): strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) throw new Error('no event attributes');
    if (key === 'class') node.className = value;
    else if (key === 'checked' || key === 'disabled' || key === 'selected') node[key] = true;
    else if (key === 'value') node.value = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function notice(message, isError) {
  const box = $('notice');
  box.textContent = message || '';
  box.className = isError ? 'error' : '';
  if (isError) box.setAttribute('role', 'alert'); else box.setAttribute('role', 'status');
}

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code;
  }
}

async function api(method, path, body) {
  const headers = { 'X-CSRF-Token': state.csrf || '' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let value = {};
  try { value = text ? JSON.parse(text) : {}; } catch { value = { detail: text }; }
  if (!response.ok) {
    const error = new ApiError(response.status, value);
    if (response.status === 401) signedOut(error.message);
    throw error;
  }
  return value;
}

// ---- sign-in and sign-out -------------------------------------------------------------

// The CSRF token lives in this origin's storage (scheme, host and port), never in a cookie:
// cookies reach every port of a host, so another server on this machine could read or plant
// one; the token it would need stays here.
const CSRF_KEY = 'tokenwarden.console.csrf';
function keepCsrf(value) {
  state.csrf = value;
  try {
    if (value) localStorage.setItem(CSRF_KEY, value); else localStorage.removeItem(CSRF_KEY);
  } catch { /* storage refused: this tab keeps it in memory */ }
}
function storedCsrf() {
  try { return localStorage.getItem(CSRF_KEY); } catch { return null; }
}

function signedOut(message) {
  keepCsrf(null); state.me = null; state.tokens.clear(); state.children.clear();
  state.loaded = false;
  $('nav').hidden = true;
  $('view').hidden = true;
  $('view').replaceChildren();
  $('sign-in').hidden = false;
  notice(message || '', Boolean(message));
  $('sign-in-token').focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = $('sign-in-token');
  const secret = input.value.trim();
  input.value = '';
  try {
    const response = await fetch('/console/session', {
      method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token: secret }),
    });
    const value = await response.json().catch(() => ({}));
    if (!response.ok) {
      notice(value.detail || `sign-in failed (HTTP ${response.status})`, true);
      input.focus();
      return;
    }
    keepCsrf(value.csrf);
    await started();
  } catch (error) {
    notice(`sign-in failed: ${error.message}`, true);
  }
}

async function signOut() {
  try { await api('DELETE', '/console/session'); } catch { /* the session is gone anyway */ }
  signedOut('Signed out.');
  history.replaceState(null, '', '#/tokens');
}

async function started() {
  state.me = await api('GET', '/v1/whoami');
  state.expanded.add(state.me.id);
  $('sign-in').hidden = true;
  $('nav').hidden = false;
  $('view').hidden = false;
  $('whoami').textContent = `Signed in as ${state.me.name} (${state.me.id}${state.me.admin ? ', admin' : ''})`;
  notice('');
  if (!location.hash || location.hash === '#') location.hash = '#/tokens';
  else await route();
}

// ---- loading tokens --------------------------------------------------------------------

async function loadTokens() {
  state.tokens.clear(); state.children.clear(); state.truncated = false;
  let cursor = null;
  do {
    const query = new URLSearchParams({ limit: '100', order: 'asc' });
    if (cursor) query.set('cursor', cursor);
    const page = await api('GET', `/v1/tokens?${query}`);
    for (const record of page.records) state.tokens.set(record.id, record);
    cursor = page.has_more ? page.next_cursor : null;
    const progress = $('tree-summary');
    if (progress && cursor) progress.textContent = `Loading tokens… ${state.tokens.size} so far`;
    if (state.tokens.size >= LOAD_CAP) { state.truncated = Boolean(cursor); break; }
  } while (cursor);
  for (const record of state.tokens.values()) {
    const parent = record.parent_id && state.tokens.has(record.parent_id) ? record.parent_id : '';
    if (!state.children.has(parent)) state.children.set(parent, []);
    state.children.get(parent).push(record.id);
  }
  state.loaded = true;
}

async function ensureTokens() { if (!state.loaded) await loadTokens(); }

// The token and everything below it that is loaded.
function subtree(id) {
  const out = [];
  const stack = [id];
  while (stack.length) {
    const next = stack.pop();
    out.push(next);
    for (const child of state.children.get(next) || []) stack.push(child);
  }
  return out;
}

// Roots minted by tokens of `ids` outside them, transitively, with their subtrees
// (what revoke's include_minted also reaches).
function mintedOutside(ids) {
  const reached = new Set(ids);
  const extra = new Set();
  let grew = true;
  while (grew) {
    grew = false;
    for (const record of state.tokens.values()) {
      if (reached.has(record.id) || !reached.has(record.created_by)) continue;
      for (const id of subtree(record.id)) {
        if (!reached.has(id)) { reached.add(id); extra.add(id); grew = true; }
      }
    }
  }
  return [...extra];
}

const live = (id) => {
  const record = state.tokens.get(id);
  return record && record.status !== 'revoked' && record.status !== 'expired';
};

// ---- small renderers -------------------------------------------------------------------

function when(value) {
  if (!value) return 'never';
  return value.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function statusBadge(record) {
  const status = record.effective_status || record.status;
  return el('span', { class: `status ${status}` }, status.replaceAll('_', ' '));
}

function mintedBy(record) {
  if (record.created_by === 'owner') return 'owner';
  const minter = state.tokens.get(record.created_by);
  return minter ? `${minter.name} (${record.created_by})` : record.created_by;
}

function field(label, id, input) {
  return el('div', {}, el('label', { for: id }, label), input);
}

function show(title, ...content) {
  const view = $('view');
  view.replaceChildren(el('h2', { id: 'view-title', tabindex: '-1' }, title), ...content);
  for (const link of document.querySelectorAll('#nav a')) {
    const current = location.hash.startsWith(link.getAttribute('href'));
    if (current) link.setAttribute('aria-current', 'page'); else link.removeAttribute('aria-current');
  }
}

function failed(error) {
  if (error instanceof ApiError && error.status === 401) return;
  notice(error.message, true);
}

function table(columns, rows) {
  return el('div', { class: 'scroll' }, el('table', {},
    el('thead', {}, el('tr', {}, columns.map(([title]) => el('th', { scope: 'col' }, title)))),
    el('tbody', {}, rows.map((row) => el('tr', {}, columns.map(([, cell]) => {
      const value = cell(row);
      return el('td', {}, value instanceof Node ? value : text(value));
    }))))));
}

function text(value) {
  if (value === null || value === undefined) return '';
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

// ---- the token tree --------------------------------------------------------------------

// Revoked or expired, itself or by an ancestor: gone for the tree unless asked for.
function ended(record) {
  const status = record.effective_status || record.status;
  return /revoked|expired/.test(status);
}

function visibleChildren(id) {
  const kids = state.children.get(id) || [];
  return state.showEnded ? kids : kids.filter((kid) => !ended(state.tokens.get(kid)));
}

function nodeLine(record, depth) {
  const kids = visibleChildren(record.id);
  const open = state.expanded.has(record.id);
  const line = el('div', { class: 'node' });
  if (kids.length) {
    const toggle = el('button', {
      type: 'button', class: 'toggle', 'aria-expanded': open ? 'true' : 'false',
      'aria-label': `${open ? 'Collapse' : 'Expand'} the ${kids.length} children of ${record.name}`,
      'data-toggle': record.id,
    }, `${open ? '▾' : '▸'} ${kids.length}`);
    toggle.addEventListener('click', () => {
      if (state.expanded.has(record.id)) state.expanded.delete(record.id);
      else state.expanded.add(record.id);
      renderTree(record.id);
    });
    line.append(toggle);
  } else {
    line.append(el('span', { class: 'toggle', 'aria-hidden': 'true' }, ''));
  }
  const uses = record.max_uses === null
    ? `${record.use_count} uses`
    : `${record.use_count} uses, ${record.remaining_uses} left`;
  line.append(
    el('a', { class: 'name', href: `#/token/${record.id}`, 'data-id': record.id }, record.name),
    statusBadge(record),
    el('span', { class: 'meta' },
      `${record.id} · expires ${when(record.expires_at)} · last used ${when(record.last_used_at)} · ${uses} · minted by ${mintedBy(record)}`),
  );
  const item = el('li', { id: `node-${record.id}`, 'aria-level': String(depth + 1) }, line);
  if (kids.length && open) {
    item.append(el('ul', {}, kids.map((kid) => nodeLine(state.tokens.get(kid), depth + 1))));
  }
  return item;
}

function matches(record) {
  if (!state.status && !state.showEnded && ended(record)) return false;
  if (state.status && (record.effective_status || record.status) !== state.status
      && record.status !== state.status) return false;
  if (!state.search) return true;
  const needle = state.search.toLowerCase();
  return [record.name, record.description || '', record.id]
    .some((value) => value.toLowerCase().includes(needle));
}

function lineagePath(record) {
  const names = [];
  let parent = record.parent_id && state.tokens.get(record.parent_id);
  while (parent) {
    names.unshift(parent.name);
    parent = parent.parent_id && state.tokens.get(parent.parent_id);
  }
  return names.length ? `under ${names.join(' › ')}` : 'root';
}

async function viewTokens() {
  if (!state.loaded) {
    show('Tokens', el('p', { id: 'tree-summary', class: 'meta', role: 'status' }, 'Loading tokens…'));
    await loadTokens();
  }
  const search = el('input', { type: 'search', id: 'filter-search', value: state.search,
    placeholder: 'name, description or id' });
  const status = el('select', { id: 'filter-status' },
    ['', 'active', 'paused', 'revoked', 'expired', 'paused_by_ancestor', 'revoked_by_ancestor',
      'expired_by_ancestor'].map((s) => el('option', { value: s, selected: s === state.status },
      s ? s.replaceAll('_', ' ') : 'any status')));
  const showEnded = el('input', { type: 'checkbox', id: 'show-ended', checked: state.showEnded });
  const apply = () => {
    state.search = search.value.trim(); state.status = status.value; state.showEnded = showEnded.checked;
    state.page = 0; renderTree();
  };
  search.addEventListener('input', apply);
  status.addEventListener('change', apply);
  showEnded.addEventListener('change', apply);
  const reload = el('button', { type: 'button', id: 'reload' }, 'Reload');
  reload.addEventListener('click', () => { state.loaded = false; viewTokens().catch(failed); });
  const expandAll = el('button', { type: 'button', id: 'expand-all' }, 'Expand all');
  expandAll.addEventListener('click', () => {
    for (const parent of state.children.keys()) if (parent && visibleChildren(parent).length) state.expanded.add(parent);
    renderTree();
  });
  const collapseAll = el('button', { type: 'button', id: 'collapse-all' }, 'Collapse all');
  collapseAll.addEventListener('click', () => { state.expanded.clear(); renderTree(); });
  show('Tokens',
    el('div', { class: 'toolbar' },
      field('Search', 'filter-search', search),
      field('Status', 'filter-status', status),
      el('div', {}, el('label', { class: 'inline', for: 'show-ended' }, showEnded, 'Show revoked and expired')),
      el('div', {}, reload, expandAll, collapseAll)),
    el('p', { id: 'tree-summary', class: 'meta' }),
    el('div', { id: 'tree' }),
    el('div', { class: 'pager', id: 'pager' }));
  renderTree();
}

function renderTree(focusToggle) {
  const holder = $('tree');
  if (!holder) return;
  const filtering = state.search || state.status;
  const items = filtering
    ? [...state.tokens.values()].filter(matches)
    : visibleChildren('').map((id) => state.tokens.get(id));
  const pages = Math.max(1, Math.ceil(items.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  const shown = items.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
  $('tree-summary').textContent = `${state.tokens.size} tokens${state.truncated ? ` (the first ${LOAD_CAP} only)` : ''}; `
    + (filtering ? `${items.length} match` : `${items.length} at the top level`);
  if (filtering) {
    holder.replaceChildren(el('ul', { class: 'tree', 'aria-label': 'Matching tokens' },
      shown.map((record) => {
        const item = nodeLine(record, 0);
        item.querySelector('.meta').append(` · ${lineagePath(record)}`);
        return item;
      })));
  } else {
    holder.replaceChildren(el('ul', { class: 'tree', 'aria-label': 'Tokens by lineage' },
      shown.map((record) => nodeLine(record, 0))));
  }
  const pager = $('pager');
  pager.replaceChildren();
  if (pages > 1) {
    const prev = el('button', { type: 'button', id: 'page-prev', disabled: state.page === 0 }, 'Previous page');
    const next = el('button', { type: 'button', id: 'page-next', disabled: state.page >= pages - 1 }, 'Next page');
    prev.addEventListener('click', () => { state.page -= 1; renderTree(); });
    next.addEventListener('click', () => { state.page += 1; renderTree(); });
    pager.append(prev, el('span', {}, ` page ${state.page + 1} of ${pages} `), next);
  }
  if (focusToggle) {
    const toggle = holder.querySelector(`[data-toggle="${focusToggle}"]`);
    if (toggle) toggle.focus();
  }
}

// ---- one token -------------------------------------------------------------------------

function confirmAction(title, message) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = message;
  dialog.returnValue = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.showModal();
    $('confirm-cancel').focus();
  });
}

function secretPanel(record, what) {
  const code = el('code', { id: 'new-secret' }, record.token);
  const copy = el('button', { type: 'button', id: 'copy-secret' }, 'Copy the secret');
  copy.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(record.token);
      copy.textContent = 'Copied';
    } catch {
      const range = document.createRange();
      range.selectNodeContents(code);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      copy.textContent = 'Selected: press Ctrl+C';
    }
  });
  return el('div', { class: 'secret', role: 'alert', id: 'secret-panel' },
    el('strong', {}, `${what}: this secret is shown once.`),
    ' Copy it now and keep it somewhere safe; tokenwarden stores only its hash and cannot show it again.',
    code, copy);
}

function describeCount(ids, noun) {
  const reached = ids.filter(live).length;
  return `${reached} ${reached === 1 ? 'token' : 'tokens'}${noun}`;
}

async function viewToken(id) {
  await ensureTokens();
  const record = await api('GET', `/v1/tokens/${encodeURIComponent(id)}`);
  state.tokens.set(record.id, record);
  const rows = [
    ['Name', record.name], ['Id', record.id], ['Description', record.description || '—'],
    ['Status', statusBadge(record)], ['Buckets', record.buckets.join(', ')],
    ['Tools', record.tools.join(', ')], ['Denied tools', record.deny_tools.join(', ') || '—'],
    ['Read-only', record.read_only ? 'yes' : 'no'], ['Admin', record.admin ? 'yes' : 'no'],
    ['Allowed IPs', record.allowed_ips.join(', ') || 'any'],
    ['Parent', record.parent_id || 'none (root)'], ['Minted by', mintedBy(record)],
    ['Depth', record.depth], ['Secret', record.masked], ['Expires', when(record.expires_at)],
    ['Uses', `${record.use_count}${record.max_uses === null ? '' : ` of ${record.max_uses}`}`],
    ['Rate limit', record.rate_limit_per_minute === null ? 'none' : `${record.rate_limit_per_minute} per minute`],
    ['Last used', when(record.last_used_at)], ['Created', when(record.created_at)],
    ['Updated', when(record.updated_at)], ['Metadata', JSON.stringify(record.metadata)],
  ];
  const tree = subtree(record.id);
  const below = tree.length - 1;
  const buttons = [];
  const action = (label, idName, handler, danger) => {
    const button = el('button', { type: 'button', id: idName, class: danger ? 'danger' : '' }, label);
    button.addEventListener('click', () => handler().catch(failed));
    buttons.push(button);
  };
  const includeMinted = el('input', { type: 'checkbox', id: 'include-minted' });
  const grace = el('input', { type: 'number', id: 'rotate-grace', min: '0', max: '86400', value: '60' });
  action('Edit scope', 'edit-scope', async () => { location.hash = `#/scope/${record.id}`; });
  action('Create a child', 'create-child', async () => { location.hash = `#/create/${record.id}`; });
  action('Pause', 'pause', async () => {
    const ok = await confirmAction('Pause this token?',
      `Pausing ${record.name} stops ${describeCount(tree, '')} (it and ${below} below it) until resumed.`);
    if (!ok) return;
    await api('POST', `/v1/tokens/${record.id}/pause`, {});
    state.loaded = false; notice(`Paused ${record.name}.`); await viewToken(record.id);
  });
  action('Resume', 'resume', async () => {
    const ok = await confirmAction('Resume this token?',
      `Resuming ${record.name} lets ${describeCount(tree, '')} act again (it and ${below} below it), unless paused themselves.`);
    if (!ok) return;
    await api('POST', `/v1/tokens/${record.id}/resume`, {});
    state.loaded = false; notice(`Resumed ${record.name}.`); await viewToken(record.id);
  });
  action('Rotate', 'rotate', async () => {
    const seconds = Number(grace.value || '60');
    const ok = await confirmAction('Rotate this secret?',
      `Rotating ${record.name} reaches 1 token: a new secret is issued and the old one works for ${seconds} more seconds.`);
    if (!ok) return;
    const rotated = await api('POST', `/v1/tokens/${record.id}/rotate`, { grace_seconds: seconds });
    state.loaded = false;
    await viewToken(record.id);
    $('view').insertBefore(secretPanel(rotated, 'Rotated'), $('view').children[1]);
    $('copy-secret').focus();
  });
  action('Revoke', 'revoke', async () => {
    const minted = includeMinted.checked ? mintedOutside(tree) : [];
    const reach = [...tree, ...minted];
    const ok = await confirmAction('Revoke for good?',
      `Revoking ${record.name} reaches ${describeCount(reach, '')}: it and ${below} below it`
      + (includeMinted.checked ? `, and ${minted.length} minted by them outside this subtree` : '')
      + '. Revocation cannot be undone.');
    if (!ok) return;
    const result = await api('POST', `/v1/tokens/${record.id}/revoke`, { include_minted: includeMinted.checked });
    state.loaded = false;
    state.keepNotice = true;
    notice(`Revoked ${record.name}, ${result.revoked_descendants} descendants and ${result.revoked_minted} minted elsewhere.`);
    location.hash = '#/tokens';
  }, true);
  show(record.name,
    el('dl', { class: 'record', id: 'token-record' }, rows.flatMap(([label, value]) => [el('dt', {}, label), el('dd', {}, value)])),
    el('h3', {}, 'Actions'),
    el('div', {}, buttons),
    el('label', { class: 'inline', for: 'include-minted' }, includeMinted,
      'Revoke also every token this subtree minted elsewhere (include_minted)'),
    field('Rotation grace (seconds the old secret keeps working)', 'rotate-grace', grace),
    el('h3', {}, `Children (${(state.children.get(record.id) || []).length})`),
    el('ul', {}, (state.children.get(record.id) || []).map((kid) => {
      const child = state.tokens.get(kid);
      return el('li', {}, el('a', { href: `#/token/${kid}` }, child.name), ' ', statusBadge(child));
    })));
}

// ---- scope: buckets and tools from the catalogue ----------------------------------------

async function catalogue() {
  const [buckets, tools] = await Promise.all([
    api('GET', '/v1/buckets').catch(() => ({ buckets: [] })),
    api('GET', '/v1/tools').catch(() => ({ tools: [] })),
  ]);
  return { buckets: buckets.buckets || [], tools: tools.tools || [] };
}

// Checkboxes of buckets and tools (with "all" and free patterns) for a scope form; `current`
// is what is chosen now. Returns the fieldsets and a function reading the choice.
function scopeChooser(known, current) {
  const bucketNames = [...new Set(known.buckets.map((b) => b.name).concat(current.buckets.filter((b) => b !== '*')))];
  const toolNames = [...new Set(known.tools.map((t) => t.name))];
  const chosen = (list, name) => list.includes(name);
  const allBuckets = el('input', { type: 'checkbox', id: 'bucket-all', checked: chosen(current.buckets, '*') });
  const bucketBoxes = bucketNames.map((name, i) => el('label', { class: 'inline', for: `bucket-${i}` },
    el('input', { type: 'checkbox', id: `bucket-${i}`, 'data-bucket': name, checked: chosen(current.buckets, name) }), name));
  const allTools = el('input', { type: 'checkbox', id: 'tool-all', checked: chosen(current.tools, '*') });
  const groups = new Map();
  for (const name of toolNames) {
    const bucket = bucketNames.find((b) => name.startsWith(`${b}__`)) || 'tokenwarden';
    if (!groups.has(bucket)) groups.set(bucket, []);
    groups.get(bucket).push(name);
  }
  let n = 0;
  const toolBoxes = [];
  const toolFieldsets = [...groups].map(([bucket, names]) => el('fieldset', {},
    el('legend', {}, bucket === 'tokenwarden' ? 'tokenwarden’s own tools' : `Tools of ${bucket}`),
    bucket === 'tokenwarden' ? null : (() => {
      const id = `tool-${n++}`;
      const box = el('input', { type: 'checkbox', id, 'data-tool': `${bucket}__*`, checked: chosen(current.tools, `${bucket}__*`) });
      toolBoxes.push(box);
      return el('label', { class: 'inline', for: id }, box, `all of ${bucket} (${bucket}__*)`);
    })(),
    names.map((name) => {
      const id = `tool-${n++}`;
      const box = el('input', { type: 'checkbox', id, 'data-tool': name, checked: chosen(current.tools, name) });
      toolBoxes.push(box);
      return el('label', { class: 'inline', for: id }, box, name);
    })));
  const offered = new Set(toolBoxes.map((b) => b.dataset.tool).concat(['*']));
  const patterns = el('input', { type: 'text', id: 'tool-patterns',
    value: current.tools.filter((t) => !offered.has(t)).join(' '), placeholder: 'list_* github__*' });
  const fieldsets = [
    el('fieldset', { id: 'buckets-fieldset' }, el('legend', {}, 'Buckets'),
      el('label', { class: 'inline', for: 'bucket-all' }, allBuckets, 'all buckets (*)'), bucketBoxes),
    el('fieldset', { id: 'tools-fieldset' }, el('legend', {}, 'Tools'),
      el('label', { class: 'inline', for: 'tool-all' }, allTools, 'all tools (*)'),
      toolFieldsets,
      field('More tool names or patterns (space-separated; a pattern ends in *)', 'tool-patterns', patterns)),
  ];
  const read = () => {
    const buckets = allBuckets.checked ? ['*'] : bucketBoxes.map((l) => l.querySelector('input')).filter((b) => b.checked).map((b) => b.dataset.bucket);
    const tools = allTools.checked ? ['*'] : toolBoxes.filter((b) => b.checked).map((b) => b.dataset.tool)
      .concat(patterns.value.split(/[\s,]+/).filter(Boolean));
    return { buckets, tools };
  };
  return { fieldsets, read };
}

async function viewScope(id) {
  const [record, known] = await Promise.all([api('GET', `/v1/tokens/${encodeURIComponent(id)}`), catalogue()]);
  const chooser = scopeChooser(known, record);
  const readOnly = el('input', { type: 'checkbox', id: 'scope-read-only', checked: record.read_only });
  const form = el('form', { id: 'scope-form' }, chooser.fieldsets,
    el('label', { class: 'inline', for: 'scope-read-only' }, readOnly, 'Read-only (only tools marked read-only)'),
    el('div', {}, el('button', { type: 'submit', class: 'primary', id: 'scope-save' }, 'Save scope'),
      el('a', { href: `#/token/${record.id}` }, 'Cancel')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const { buckets, tools } = chooser.read();
    try {
      await api('PATCH', `/v1/tokens/${record.id}`, { buckets, tools, read_only: readOnly.checked });
      state.loaded = false;
      state.keepNotice = true;
      notice(`Scope of ${record.name} saved.`);
      location.hash = `#/token/${record.id}`;
    } catch (error) { failed(error); }
  });
  show(`Scope of ${record.name}`,
    el('p', {}, 'A token never holds more than its parent: a choice beyond it is refused and changes nothing.'),
    form);
}

// ---- create ----------------------------------------------------------------------------

async function viewCreate(parentId) {
  await ensureTokens();
  const known = await catalogue();
  const parentRecord = parentId ? state.tokens.get(parentId) || await api('GET', `/v1/tokens/${encodeURIComponent(parentId)}`) : state.me;
  const inherit = { buckets: parentRecord.buckets, tools: parentRecord.tools };
  const chooser = scopeChooser(known, inherit);
  const name = el('input', { type: 'text', id: 'create-name', required: true, maxlength: '128' });
  const description = el('input', { type: 'text', id: 'create-description', maxlength: '1024' });
  const parent = el('select', { id: 'create-parent' },
    el('option', { value: parentId || 'self', selected: true }, parentId ? `child of ${parentRecord.name}` : `child of me (${state.me.name})`),
    parentId ? el('option', { value: 'self' }, `child of me (${state.me.name})`) : null,
    state.me.admin ? el('option', { value: 'none' }, 'a root token (no parent)') : null);
  const ttl = el('input', { type: 'number', id: 'create-ttl', min: '1', placeholder: 'no expiry (or the parent’s)' });
  const readOnly = el('input', { type: 'checkbox', id: 'create-read-only', checked: parentRecord.read_only });
  const form = el('form', { id: 'create-form' },
    field('Name', 'create-name', name),
    field('Description (optional)', 'create-description', description),
    field('Parent', 'create-parent', parent),
    chooser.fieldsets,
    el('label', { class: 'inline', for: 'create-read-only' }, readOnly, 'Read-only'),
    field('Lifetime in seconds (optional)', 'create-ttl', ttl),
    el('button', { type: 'submit', class: 'primary', id: 'create-submit' }, 'Create token'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const { buckets, tools } = chooser.read();
    const body = { name: name.value.trim(), parent: parent.value, buckets, tools };
    if (description.value.trim()) body.description = description.value.trim();
    if (readOnly.checked) body.read_only = true;
    if (ttl.value) body.ttl_seconds = Number(ttl.value);
    try {
      const created = await api('POST', '/v1/tokens', body);
      state.loaded = false;
      show(`Created ${created.name}`, secretPanel(created, 'Created'),
        el('p', {}, el('a', { href: `#/token/${created.id}`, id: 'created-link' }, `See ${created.name} (${created.id})`)));
      $('copy-secret').focus();
    } catch (error) { failed(error); }
  });
  show('Create a token', el('p', {}, 'The new token starts with its parent’s scope; narrow it here. It can never hold more than its parent or you.'), form);
}

// ---- logs, buckets, OAuth --------------------------------------------------------------

async function viewLog(kind) {
  const audit = kind === 'audit';
  const filters = audit ? ['token_id', 'action', 'since'] : ['token_id', 'lineage_id', 'tool', 'bucket', 'outcome', 'since', 'until'];
  const params = new URLSearchParams(location.hash.split('?')[1] || '');
  const inputs = filters.map((name) => el('input', { type: 'text', id: `log-${name}`, value: params.get(name) || '',
    placeholder: name === 'since' || name === 'until' ? '2026-01-01T00:00:00.000Z' : '' }));
  const form = el('form', { id: 'log-form', class: 'toolbar' },
    filters.map((name, i) => field(name.replace('_', ' '), `log-${name}`, inputs[i])),
    el('div', {}, el('button', { type: 'submit', id: 'log-apply' }, 'Apply filters')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    filters.forEach((name, i) => { if (inputs[i].value.trim()) query.set(name, inputs[i].value.trim()); });
    location.hash = `#/${kind}?${query}`;
  });
  const query = new URLSearchParams();
  for (const name of filters) if (params.get(name)) query.set(name, params.get(name));
  query.set('limit', '100');
  if (params.get('cursor')) query.set('cursor', params.get('cursor'));
  const page = await api('GET', `/v1/${kind}?${query}`);
  const columns = audit
    ? [['At', (e) => when(e.at)], ['Actor', (e) => e.actor], ['Action', (e) => e.action], ['Target', (e) => e.target], ['Changes', (e) => e.changes]]
    : [['At', (e) => when(e.at)], ['Token', (e) => e.token_id], ['Tool', (e) => e.tool], ['Bucket', (e) => e.bucket], ['Outcome', (e) => e.outcome], ['Via', (e) => e.via], ['ms', (e) => e.duration_ms]];
  const more = page.has_more ? (() => {
    const next = new URLSearchParams(params); next.set('cursor', page.next_cursor);
    return el('a', { href: `#/${kind}?${next}`, id: 'log-next' }, 'Older events');
  })() : null;
  show(audit ? 'Audit log' : 'Access log', form,
    page.events.length ? table(columns, page.events) : el('p', {}, 'No events match.'), el('p', {}, more));
}

async function viewBuckets() {
  const [{ buckets }, { tools }] = await Promise.all([api('GET', '/v1/buckets'), api('GET', '/v1/tools')]);
  show('Buckets',
    buckets.length ? el('div', {}, buckets.map((bucket) => el('section', { class: 'bucket' },
      el('h3', {}, bucket.name, ' ', el('span', { class: `status ${bucket.status === 'connected' ? 'active' : 'paused'}` }, bucket.status)),
      el('p', { class: 'meta' }, `${bucket.transport}; ${bucket.tools} tools you may call`, bucket.error ? ` — ${bucket.error}` : ''),
      el('ul', {}, tools.filter((t) => t.name.startsWith(`${bucket.name}__`)).map((t) =>
        el('li', {}, el('code', {}, t.name), t.read_only ? ' (read-only)' : '')))))) 
      : el('p', {}, 'No upstream MCP servers are configured (serve --upstreams FILE), or this token holds none.'),
    el('h3', {}, 'tokenwarden’s own tools you may call'),
    el('ul', {}, tools.filter((t) => OWN_TOOLS.includes(t.name)).map((t) => el('li', {}, el('code', {}, t.name)))));
}

async function viewOAuth() {
  const [clients, grants] = await Promise.all([api('GET', '/v1/oauth/clients'), api('GET', '/v1/oauth/grants')]);
  const remove = (client) => {
    const button = el('button', { type: 'button', class: 'danger', 'data-remove': client.client_id,
      'aria-label': `Remove client ${client.client_name}` }, 'Remove');
    button.addEventListener('click', async () => {
      const reach = grants.grants.filter((g) => g.client_id === client.client_id).length;
      const ok = await confirmAction('Remove this client?',
        `Removing ${client.client_name} ends its ${reach} ${reach === 1 ? 'grant' : 'grants'} and revokes their access tokens.`);
      if (!ok) return;
      try {
        await api('DELETE', `/v1/oauth/clients/${encodeURIComponent(client.client_id)}`);
        state.loaded = false; notice(`Removed ${client.client_name}.`); await viewOAuth();
      } catch (error) { failed(error); }
    });
    return button;
  };
  show('OAuth clients and grants',
    el('h3', {}, 'Clients'),
    clients.clients.length ? table([['Name', (c) => c.client_name], ['Client id', (c) => c.client_id],
      ['Redirect URIs', (c) => (c.redirect_uris || []).join(' ')], ['Registered', (c) => when(c.created_at)], ['', remove]], clients.clients)
      : el('p', {}, 'No client has registered.'),
    el('h3', {}, 'Grants'),
    grants.grants.length ? table([['Client', (g) => g.client_name], ['Approver', (g) => g.approver],
      ['Access token', (g) => (g.access_token_status === 'deleted' ? g.access_token
        : el('a', { href: `#/token/${g.access_token}`, 'aria-label': `Token ${g.access_token} of this grant (revoke it there)` }, g.access_token))],
      ['Status', (g) => g.access_token_status], ['Buckets', (g) => g.buckets],
      ['Tools', (g) => g.tools], ['Created', (g) => when(g.created_at)]], grants.grants)
      : el('p', {}, 'No grants.'));
}

// ---- routing ---------------------------------------------------------------------------

async function route() {
  if (!state.csrf) return;
  const hash = location.hash || '#/tokens';
  const [path] = hash.slice(1).split('?');
  const parts = path.split('/').filter(Boolean);
  try {
    if (parts[0] === 'token' && parts[1]) await viewToken(parts[1]);
    else if (parts[0] === 'scope' && parts[1]) await viewScope(parts[1]);
    else if (parts[0] === 'create') await viewCreate(parts[1]);
    else if (parts[0] === 'audit' || parts[0] === 'access') await viewLog(parts[0]);
    else if (parts[0] === 'buckets') await viewBuckets();
    else if (parts[0] === 'oauth') await viewOAuth();
    else await viewTokens();
    const title = $('view-title');
    if (title && document.activeElement === document.body) title.focus();
  } catch (error) { failed(error); }
}

window.addEventListener('hashchange', () => {
  if (!state.keepNotice) notice('');
  state.keepNotice = false;
  route().then(() => { const t = $('view-title'); if (t) t.focus(); }); });
$('sign-in-form').addEventListener('submit', signIn);
$('sign-out').addEventListener('click', signOut);

(async () => {
  // A reloaded page carries on with the token kept at sign-in; the server checks it with the
  // cookie on every request.
  const csrf = storedCsrf();
  const response = csrf
    ? await fetch('/console/session', { credentials: 'same-origin', headers: { 'X-CSRF-Token': csrf } })
    : null;
  if (response && response.ok) {
    state.csrf = csrf;
    try { await started(); } catch (error) { failed(error); }
  } else {
    signedOut('');
  }
})();
