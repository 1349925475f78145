// Tokens: the list (label, status, limits, last use, spend), issuing one with limits
// (shown once, with a copy button), revoking one (after a confirmation), editing limits.

import { api, query } from './api.js';
import { copyText, dialog, el, errorBox, fmtInt, fmtTime, fmtUsd, timeCell, toast } from './dom.js';
import { limitsFields, limitsText } from './limits.js';

const TTL_CHOICES = [['24', '1 day'], ['168', '7 days'], ['720', '30 days'], ['2160', '90 days'],
  ['8760', '1 year']];
const SPEND_WINDOW = '30d';
// Rows drawn at first, and at each "Show more".
const PAGE = 200;

function statusOf(token, now) {
  if (token.revoked) return 'revoked';
  if (token.expires_at && new Date(token.expires_at).getTime() <= now) return 'expired';
  return 'active';
}

function nameOf(token) {
  return token.label || `(no label) ${token.id.slice(0, 8)}`;
}

export async function render(root) {
  const state = { tokens: [], spend: new Map(), filter: '', shown: PAGE };
  const list = el('div', { class: 'list' }, el('p', { class: 'hint' }, 'Loading…'));
  const shown = el('div', { class: 'issued' });
  const filter = el('input', { type: 'search', placeholder: 'Filter by label or id', 'aria-label': 'Filter tokens' });
  const count = el('span', { class: 'hint', id: 'token-count' });
  const statusFilter = el('select', { id: 'token-status', 'aria-label': 'Show tokens' },
    [['all', 'All'], ['active', 'Active'], ['expired', 'Expired'], ['revoked', 'Revoked']]
      .map(([value, text]) => el('option', { value }, text)));

  async function load() {
    const [listed, spent] = await Promise.all([
      api('GET', 'api/tokens'),
      api('GET', 'api/usage?' + query({ since: SPEND_WINDOW, group_by: 'token' })),
    ]);
    state.tokens = listed.tokens.slice().sort((a, b) =>
      String(b.created_at || '').localeCompare(String(a.created_at || '')));
    state.spend = new Map(spent.rows.map((row) => [row.token_id, row.cost_usd]));
    draw();
    // The page's own timing (devtools, and the test of a thousand tokens): after the next
    // frame the list has been laid out and painted.
    requestAnimationFrame(() => setTimeout(() => performance.mark('linkrouter:tokens-painted')));
  }

  // The rows matching the filter, newest first; the first `state.shown` of them drawn
  // (a DOM of a thousand rows takes Chromium longer to lay out than the whole API call).
  function draw() {
    const now = Date.now();
    const needle = state.filter.toLowerCase();
    const wanted = statusFilter.value;
    const rows = state.tokens.filter((t) => (!needle ||
      (t.label || '').toLowerCase().includes(needle) || t.id.includes(needle)) &&
      (wanted === 'all' || statusOf(t, now) === wanted));
    count.textContent = `${rows.length} of ${state.tokens.length} tokens`;
    const body = el('tbody');
    const more = el('div', { class: 'more' });
    function extend(from) {
      const fragment = document.createDocumentFragment();
      for (const token of rows.slice(from, state.shown)) fragment.append(row(token, statusOf(token, now)));
      body.append(fragment);
      const left = rows.length - state.shown;
      more.replaceChildren(left > 0 ? el('button', { type: 'button', class: 'quiet', id: 'show-more',
        on: { click: () => { const from = state.shown; state.shown += PAGE; extend(from); } } },
      `Show ${Math.min(left, PAGE)} more (${left} not shown)`) : '');
    }
    extend(0);
    list.replaceChildren(el('table', { class: 'tokens' },
      el('colgroup', {}, ['label', 'status', 'limits', 'time', 'time', 'time', 'num', 'num', 'actions']
        .map((name) => el('col', { class: `c-${name}` }))),
      el('thead', {}, el('tr', {}, ['Label', 'Status', 'Limits', 'Created', 'Expires', 'Last use',
        'Requests', `Spend ${SPEND_WINDOW}`, ''].map((h) => el('th', { scope: 'col' }, h)))),
      body), more);
  }

  function row(token, status) {
    const actions = el('td', { class: 'actions' });
    if (status !== 'revoked') {
      actions.append(
        el('button', { type: 'button', class: 'quiet edit', on: { click: () => edit(token) } }, 'Edit limits'),
        el('button', { type: 'button', class: 'danger revoke', on: { click: () => revoke(token) } }, 'Revoke'));
    }
    return el('tr', { dataset: { tokenId: token.id, status } },
      el('td', { class: 'label', title: token.id }, nameOf(token)),
      el('td', {}, el('span', { class: `badge ${status}` }, status)),
      el('td', { class: 'limits' }, limitsText(token.limits)),
      timeCell(token.created_at),
      timeCell(token.expires_at),
      timeCell(token.last_used_at),
      el('td', { class: 'num' }, fmtInt(token.request_count)),
      el('td', { class: 'num spend' }, fmtUsd(state.spend.get(token.id) || 0)),
      actions);
  }

  async function revoke(token) {
    const done = await dialog({
      title: 'Revoke this token?',
      body: el('p', {}, `“${nameOf(token)}” stops working on every router within seconds, `,
        'answers still streaming included. This cannot be undone.'),
      ok: 'Revoke', danger: true,
      onOk: () => api('DELETE', `api/tokens/${encodeURIComponent(token.id)}`),
    });
    if (done) {
      toast(`Revoked ${nameOf(token)}.`);
      await load();
    }
  }

  async function edit(token) {
    const labelId = 'edit-label';
    const label = el('input', { id: labelId, type: 'text', maxlength: '200', value: token.label || '' });
    const fields = limitsFields(token.limits);
    const done = await dialog({
      title: `Edit ${nameOf(token)}`,
      body: el('div', {}, el('div', { class: 'field wide' }, el('label', { for: labelId }, 'Label'), label),
        fields.node),
      ok: 'Save',
      onOk: () => api('PATCH', `api/tokens/${encodeURIComponent(token.id)}`,
        { label: label.value, limits: fields.read() }),
    });
    if (done) {
      toast(`Saved ${nameOf(done)}.`);
      await load();
    }
  }

  root.append(el('h1', {}, 'Tokens'), issueForm(shown, load), shown,
    el('div', { class: 'toolbar' }, filter, statusFilter, count), list);
  filter.addEventListener('input', () => {
    state.filter = filter.value.trim();
    state.shown = PAGE;
    draw();
  });
  statusFilter.addEventListener('change', () => {
    state.shown = PAGE;
    draw();
  });
  try {
    await load();
  } catch (e) {
    list.replaceChildren(errorBox(e));
  }
}

function issueForm(shown, reload) {
  const label = el('input', { id: 'issue-label', name: 'label', type: 'text', maxlength: '200', required: true,
    placeholder: 'alice' });
  const ttl = el('select', { id: 'issue-ttl', name: 'ttl_hours' },
    TTL_CHOICES.map(([hours, text]) => el('option', { value: hours, selected: hours === '720' }, text)));
  const fields = limitsFields(null);
  const problem = el('p', { class: 'error', role: 'alert' });
  const button = el('button', { type: 'submit' }, 'Issue token');
  const form = el('form', { class: 'card issue' },
    el('h2', {}, 'Issue a token'),
    el('div', { class: 'grid' },
      el('div', { class: 'field' }, el('label', { for: 'issue-label' }, 'Label (who it is for)'), label),
      el('div', { class: 'field' }, el('label', { for: 'issue-ttl' }, 'Valid for'), ttl)),
    fields.node, problem, el('div', { class: 'actions' }, button));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    problem.textContent = '';
    button.disabled = true;
    try {
      const limits = fields.read();
      const body = { label: label.value.trim(), ttl_hours: Number(ttl.value) };
      if (limits) body.limits = limits;
      const issued = await api('POST', 'api/tokens', body);
      showOnce(shown, issued);
      form.reset();
      await reload();
    } catch (e) {
      problem.textContent = e.message;
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

// The new token, shown once: it is not stored, so it cannot be shown again.
function showOnce(shown, issued) {
  const value = el('input', { id: 'issued-token', type: 'text', readonly: true, value: issued.token,
    'aria-label': 'The new token', spellcheck: 'false' });
  const copied = el('span', { class: 'hint', role: 'status' });
  const copy = el('button', { type: 'button', id: 'copy-token' }, 'Copy');
  copy.addEventListener('click', async () => {
    copied.textContent = (await copyText(issued.token, value)) ? 'Copied.' : 'Select it and copy by hand.';
  });
  const dismiss = el('button', { type: 'button', class: 'quiet' }, 'Done');
  dismiss.addEventListener('click', () => shown.replaceChildren());
  shown.replaceChildren(el('div', { class: 'card once', dataset: { tokenId: issued.id } },
    el('h2', {}, `Token for ${issued.label || '(no label)'}`),
    el('p', {}, `Copy it now: it is shown only this once. It expires ${fmtTime(issued.expires_at)}.`),
    el('div', { class: 'copy' }, value, copy, dismiss), copied,
    el('p', { class: 'hint' }, `Limits: ${limitsText(issued.limits)}`)));
}
