// Usage: spend and tokens per day (or hour), per person (token), model and account over
// a chosen window, as charts and tables, from GET /api/usage.

import { api, query } from './api.js';
import { el, errorBox, fmtInt, fmtUsd } from './dom.js';
import { COUNT, USD, barChart, chartCard, columnChart } from './charts.js';

const WINDOWS = [['24h', 'Last 24 hours'], ['7d', 'Last 7 days'], ['30d', 'Last 30 days'],
  ['90d', 'Last 90 days']];
const KINDS = [['input_tokens', 'input'], ['output_tokens', 'output'],
  ['cache_read_tokens', 'cache read'], ['cache_write_tokens', 'cache write']];
const COLUMNS = [['requests', 'Requests'], ...KINDS.map(([k, n]) => [k, n[0].toUpperCase() + n.slice(1)]),
  ['cost_usd', 'Spend']];
let chosen = '7d';

function tokensOf(row) {
  return KINDS.reduce((sum, [key]) => sum + (row[key] || 0), 0);
}

// Every bucket (UTC day or hour) of the window, oldest first, so gaps show as zero.
function buckets(window, by) {
  const hours = { '24h': 24, '7d': 7 * 24, '30d': 30 * 24, '90d': 90 * 24 }[window];
  const now = Date.now();
  const out = [];
  if (by === 'hour') {
    const end = Math.floor(now / 3600e3);
    for (let h = end - hours; h <= end; h += 1) out.push(new Date(h * 3600e3).toISOString().slice(0, 13) + ':00:00Z');
  } else {
    const end = Math.floor(now / 86400e3);
    for (let d = Math.floor((now - hours * 3600e3) / 86400e3); d <= end; d += 1) {
      out.push(new Date(d * 86400e3).toISOString().slice(0, 10));
    }
  }
  return out;
}

function table(keyTitle, rows, keyOf) {
  return el('table', { class: 'usage' },
    el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, keyTitle),
      COLUMNS.map(([, title]) => el('th', { scope: 'col', class: 'num' }, title)))),
    el('tbody', {}, rows.map((row) => el('tr', {}, el('td', {}, keyOf(row)),
      COLUMNS.map(([key]) => el('td', { class: 'num' }, key === 'cost_usd' ? fmtUsd(row[key]) : fmtInt(row[key])))))));
}

function personOf(rows) {
  const seen = new Map();
  for (const row of rows) {
    const name = row.label || `(no label) ${row.token_id.slice(0, 8)}`;
    seen.set(name, (seen.get(name) || 0) + 1);
  }
  return (row) => {
    const name = row.label || `(no label) ${row.token_id.slice(0, 8)}`;
    return seen.get(name) > 1 ? `${name} (${row.token_id.slice(0, 8)})` : name;
  };
}

function byName(key, title, rows, nameOf) {
  const sorted = rows.slice().sort((a, b) => b.cost_usd - a.cost_usd);
  const spend = sorted.reduce((sum, row) => sum + row.cost_usd, 0);
  return chartCard({
    key, title, total: `${fmtUsd(spend)} total`,
    chart: sorted.length ? barChart({ name: title, format: USD,
      items: sorted.map((row) => ({ label: nameOf(row), value: row.cost_usd })) }) : null,
    table: table(title.replace(/^Spend per /, '').replace(/^./, (c) => c.toUpperCase()), sorted, nameOf),
  });
}

async function draw(content, window) {
  const by = window === '24h' ? 'hour' : 'day';
  const [time, tokens, models, accounts] = await Promise.all([by, 'token', 'model', 'account'].map(
    (group) => api('GET', 'api/usage?' + query({ since: window, group_by: group }))));
  const totals = time.totals;
  const slots = buckets(window, by);
  const rowOf = new Map(time.rows.map((row) => [row[by], row]));
  const zero = { requests: 0, cost_usd: 0 };
  const series = slots.map((slot) => rowOf.get(slot) || zero);
  const label = by === 'hour' ? (s) => s.slice(11, 16) : (s) => s.slice(5);
  const per = by === 'hour' ? 'hour' : 'day';
  const timeTable = table(per === 'hour' ? 'Hour (UTC)' : 'Day (UTC)',
    slots.map((slot) => ({ ...(rowOf.get(slot) || zero), slot })), (row) => row.slot);
  const any = time.rows.length > 0;
  content.replaceChildren(
    el('div', { class: 'totals card' },
      el('div', {}, el('span', { class: 'big', id: 'total-spend' }, fmtUsd(totals.cost_usd)), ' spent'),
      el('div', {}, el('span', { class: 'big' }, fmtInt(totals.requests)), ' requests'),
      el('div', {}, el('span', { class: 'big' }, fmtInt(tokensOf(totals))), ' tokens (',
        KINDS.map(([key, name]) => `${fmtInt(totals[key])} ${name}`).join(', '), ')')),
    chartCard({
      key: `spend-per-${per}`, title: `Spend per ${per}`, total: `${fmtUsd(totals.cost_usd)} total`,
      chart: any ? columnChart({ name: `Spend per ${per}`, categories: slots, label, format: USD,
        series: [{ name: 'spend', values: series.map((row) => row.cost_usd) }] }) : null,
      table: timeTable,
    }),
    chartCard({
      key: `tokens-per-${per}`, title: `Tokens per ${per}`, total: `${fmtInt(tokensOf(totals))} total`,
      legendNames: KINDS.map(([, name]) => name),
      chart: any ? columnChart({ name: `Tokens per ${per}`, categories: slots, label, format: COUNT,
        series: KINDS.map(([key, name]) => ({ name, values: series.map((row) => row[key] || 0) })) }) : null,
    }),
    byName('per-person', 'Spend per person', tokens.rows, personOf(tokens.rows)),
    byName('per-model', 'Spend per model', models.rows, (row) => row.model || '(unknown)'),
    byName('per-account', 'Spend per account', accounts.rows, (row) => row.account || '(unknown)'));
}

export async function render(root) {
  const select = el('select', { id: 'usage-window', 'aria-label': 'Window' },
    WINDOWS.map(([value, text]) => el('option', { value, selected: value === chosen }, text)));
  const content = el('div', { class: 'usage-content' }, el('p', { class: 'hint' }, 'Loading…'));
  root.append(el('div', { class: 'toolbar' }, el('h1', {}, 'Usage'), select), content);
  async function load() {
    try {
      await draw(content, chosen);
    } catch (e) {
      content.replaceChildren(errorBox(e));
    }
  }
  select.addEventListener('change', () => {
    chosen = select.value;
    load();
  });
  await load();
}
