// Audit: who changed what, when and from where (GET /api/audit?since=).

import { api, query } from './api.js';
import { el, errorBox, timeCell } from './dom.js';

const WINDOWS = [['1d', 'Last day'], ['7d', 'Last 7 days'], ['30d', 'Last 30 days'], ['90d', 'Last 90 days']];
const FAMILIES = [['', 'Every change'], ['token', 'Tokens'], ['account', 'Accounts'],
  ['console', 'Console sign-ins'], ['admin', 'Refused admin keys']];
let chosen = '7d';
let family = '';

function detailText(detail) {
  if (detail === null || detail === undefined || detail === '') return '';
  if (typeof detail === 'string') return detail;
  return Object.entries(detail).map(([k, v]) => `${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`).join('; ');
}

export async function render(root) {
  const select = el('select', { id: 'audit-window', 'aria-label': 'Window' },
    WINDOWS.map(([value, text]) => el('option', { value, selected: value === chosen }, text)));
  const kinds = el('select', { id: 'audit-action', 'aria-label': 'Which changes' },
    FAMILIES.map(([value, text]) => el('option', { value, selected: value === family }, text)));
  const list = el('div', {}, el('p', { class: 'hint' }, 'Loading…'));
  root.append(el('div', { class: 'toolbar' }, el('h1', {}, 'Audit'), kinds, select), list);

  async function load() {
    try {
      const wanted = { since: chosen, limit: '500' };
      if (family) wanted.action = family;
      const data = await api('GET', 'api/audit?' + query(wanted));
      const rows = data.rows || data.events || [];
      if (!rows.length) {
        list.replaceChildren(el('p', { class: 'hint' }, 'No changes in this window.'));
        return;
      }
      list.replaceChildren(el('table', { class: 'audit' },
        el('thead', {}, el('tr', {}, ['When', 'Who', 'From', 'What', 'Target', 'Outcome', 'Detail']
          .map((h) => el('th', { scope: 'col' }, h)))),
        el('tbody', {}, rows.map((row) => el('tr', { dataset: { action: row.action, outcome: row.outcome, target: row.target || '' } },
          timeCell(row.at), el('td', {}, row.actor), el('td', {}, row.address),
          el('td', { class: 'action' }, row.action), el('td', {}, row.target || ''),
          el('td', {}, el('span', { class: `badge ${row.outcome === 'ok' ? 'active' : 'revoked'}` }, row.outcome)),
          el('td', { class: 'detail' }, detailText(row.detail)))))));
    } catch (e) {
      list.replaceChildren(errorBox(e));
    }
  }
  select.addEventListener('change', () => {
    chosen = select.value;
    load();
  });
  kinds.addEventListener('change', () => {
    family = kinds.value;
    load();
  });
  await load();
}
