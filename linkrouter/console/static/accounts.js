// Accounts: each upstream account's status, 5 h and 7 d utilization with reset times,
// cooldowns; disable, enable, reset; adding one through the login flow (open the
// authorize URL, paste the code it shows).

import { api } from './api.js';
import { dialog, el, errorBox, fmtInt, fmtRelative, fmtTime, toast } from './dom.js';

// Utilization of one window as {percent, resets_at}: the API gives an object, older
// routers a 0-1 fraction.
function utilizationOf(account, name) {
  const seen = (account.utilization || {})[name];
  if (seen === undefined || seen === null) return null;
  if (typeof seen === 'number') return { percent: seen * 100, resets_at: null };
  return { percent: Number(seen.percent) || 0, resets_at: seen.resets_at || null };
}

function meter(name, seen) {
  if (!seen) {
    return el('div', { class: 'meter-row', dataset: { window: name } },
      el('span', { class: 'meter-name' }, name), el('span', { class: 'hint' }, 'not reported yet'));
  }
  const percent = Math.max(0, Math.min(100, seen.percent));
  const fill = el('div', { class: `meter-fill ${percent >= 90 ? 'high' : percent >= 70 ? 'mid' : 'low'}` });
  fill.style.width = `${percent}%`;
  return el('div', { class: 'meter-row', dataset: { window: name, percent: String(Math.round(percent)) } },
    el('span', { class: 'meter-name' }, name),
    el('div', { class: 'meter', role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': '100',
      'aria-valuenow': String(Math.round(percent)), 'aria-label': `${name} utilization` }, fill),
    el('span', { class: 'meter-value' }, `${Math.round(percent)}%`),
    el('span', { class: 'hint' }, seen.resets_at
      ? `resets ${fmtTime(seen.resets_at)} (${fmtRelative(seen.resets_at)})` : ''));
}

function facts(account) {
  const rows = [
    ['Kind', account.kind],
    ['Expires', account.expires_at ? `${fmtTime(account.expires_at)} (${fmtRelative(account.expires_at)})` : null],
    ['Cooling until', account.cooling_until ? `${fmtTime(account.cooling_until)} (${fmtRelative(account.cooling_until)})` : null],
    ['Paused until', account.paused_until ? `${fmtTime(account.paused_until)} (${fmtRelative(account.paused_until)})` : null],
    ['Resumes', account.resumes_at && !account.cooling_until && !account.paused_until
      ? `${fmtTime(account.resumes_at)} (${fmtRelative(account.resumes_at)})` : null],
    ['Requests', fmtInt(account.requests ?? account.requests_served ?? 0)],
    ['Last used', account.last_used_at ? fmtTime(account.last_used_at) : null],
    ['Source', account.source],
  ].filter(([, value]) => value !== null && value !== undefined && value !== '');
  return el('dl', { class: 'facts' }, rows.map(([name, value]) => [el('dt', {}, name), el('dd', {}, value)]));
}

export async function render(root) {
  const list = el('div', { class: 'accounts' }, el('p', { class: 'hint' }, 'Loading…'));
  const problem = el('div');

  async function load() {
    const data = await api('GET', 'api/accounts');
    const cards = data.accounts.map(card);
    list.replaceChildren(...(cards.length ? cards : [el('p', { class: 'hint' }, 'No upstream accounts.')]));
  }

  async function act(account, action, done) {
    problem.replaceChildren();
    try {
      await api('POST', `api/accounts/${encodeURIComponent(account.id)}/${action}`);
      toast(done);
      await load();
    } catch (e) {
      problem.replaceChildren(errorBox(e));
    }
  }

  function card(account) {
    const name = account.name || account.id;
    const status = account.status || (account.healthy ? 'ok' : 'unhealthy');
    const disabled = status === 'disabled';
    const toggle = disabled
      ? el('button', { type: 'button', class: 'enable', on: { click: () => act(account, 'enable', `Enabled ${name}.`) } }, 'Enable')
      : el('button', { type: 'button', class: 'quiet disable', on: { click: () => confirmDisable(account, name) } }, 'Disable');
    return el('article', { class: 'card account', dataset: { accountId: account.id, status } },
      el('header', {}, el('h2', {}, name), el('span', { class: `badge ${status}` }, status)),
      account.reason ? el('p', { class: 'reason' }, account.reason) : null,
      el('div', { class: 'meters' }, meter('5h', utilizationOf(account, '5h')), meter('7d', utilizationOf(account, '7d'))),
      facts(account),
      el('div', { class: 'actions' }, toggle,
        el('button', { type: 'button', class: 'quiet reset', title: 'Clear a cooldown or pause and re-read the credential',
          on: { click: () => act(account, 'reset', `Reset ${name}.`) } }, 'Reset')));
  }

  async function confirmDisable(account, name) {
    const ok = await dialog({ title: `Disable ${name}?`, ok: 'Disable', danger: true,
      body: el('p', {}, 'Requests stop going to this account (on every router within seconds) until it is enabled again.') });
    if (ok) await act(account, 'disable', `Disabled ${name}.`);
  }

  root.append(el('h1', {}, 'Accounts'), problem, list, loginCard(load));
  try {
    await load();
  } catch (e) {
    list.replaceChildren(errorBox(e));
  }
}

// Adding an account: a name, then the authorize page, then the code it shows.
function loginCard(reload) {
  const area = el('div');
  const name = el('input', { id: 'login-name', type: 'text', required: true, maxlength: '100', placeholder: 'team-max-2' });
  const problem = el('p', { class: 'error', role: 'alert' });
  const start = el('button', { type: 'submit' }, 'Start login');
  const form = el('form', { class: 'login-start' },
    el('div', { class: 'field' }, el('label', { for: 'login-name' }, 'Name of the new account'), name),
    el('div', { class: 'actions' }, start), problem);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    problem.textContent = '';
    start.disabled = true;
    try {
      const pending = await api('POST', 'api/accounts/login', { name: name.value.trim() });
      area.replaceChildren(finish(pending, name.value.trim(), () => {
        area.replaceChildren(form);
        form.reset();
        return reload();
      }));
    } catch (e) {
      problem.textContent = e.message;
    } finally {
      start.disabled = false;
    }
  });
  area.append(form);
  return el('section', { class: 'card login' }, el('h2', {}, 'Add an account (Claude login)'), area);
}

function finish(pending, name, done) {
  const code = el('input', { id: 'login-code', type: 'text', required: true, autocomplete: 'off',
    spellcheck: 'false', placeholder: 'code#state' });
  const problem = el('p', { class: 'error', role: 'alert' });
  const submit = el('button', { type: 'submit' }, 'Finish login');
  const link = el('a', { id: 'authorize-url', href: pending.authorize_url, target: '_blank',
    rel: 'noopener noreferrer', class: 'button' }, 'Open the Claude sign-in page');
  const form = el('form', { class: 'login-finish', dataset: { loginId: pending.login_id } },
    el('ol', {},
      el('li', {}, link, ' and sign in with the account to add.'),
      el('li', {}, 'Copy the code the page shows at the end and paste it here.')),
    el('div', { class: 'field wide' }, el('label', { for: 'login-code' }, 'Code'), code),
    el('div', { class: 'actions' },
      el('button', { type: 'button', class: 'quiet', on: { click: () => done() } }, 'Cancel'), submit),
    problem);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    problem.textContent = '';
    submit.disabled = true;
    try {
      await api('POST', `api/accounts/login/${encodeURIComponent(pending.login_id)}`, { code: code.value.trim() });
      toast(`Added ${name}.`);
      await done();
    } catch (e) {
      problem.textContent = e.message;
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}
