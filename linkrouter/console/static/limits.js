// A token's limits (DESIGN §9) as form fields, and in short form for the list.

import { el, fmtUsd } from './dom.js';

export const WINDOWS = ['5h', '1d', '7d', '30d'];

function numberField(name, label, value, step) {
  const id = `limit-${name}-${Math.random().toString(36).slice(2, 8)}`;
  const input = el('input', {
    id, name, type: 'number', min: '0', step, inputmode: 'decimal',
    value: value === undefined || value === null ? '' : String(value),
  });
  return { input, node: el('div', { class: 'field' }, el('label', { for: id }, label), input) };
}

// Fields for limits (prefilled from `limits`); read() gives the limits object for the
// API, or null for none.
export function limitsFields(limits) {
  const current = limits || {};
  const budgets = current.budget_usd || {};
  const rpm = numberField('rpm', 'Requests per minute', current.rpm, '1');
  const concurrency = numberField('concurrency', 'Concurrent requests', current.concurrency, '1');
  const budget = WINDOWS.map((w) => [w, numberField(`budget-${w}`, `Budget ${w} (USD)`, budgets[w], 'any')]);
  const modelsId = `limit-models-${Math.random().toString(36).slice(2, 8)}`;
  const models = el('input', {
    id: modelsId, name: 'models', type: 'text', placeholder: 'claude-sonnet-*, claude-haiku-*',
    value: (current.models || []).join(', '),
  });
  const node = el('fieldset', { class: 'limits' },
    el('legend', {}, 'Limits (empty: none)'),
    el('div', { class: 'grid' }, rpm.node, concurrency.node, budget.map(([, f]) => f.node)),
    el('div', { class: 'field wide' }, el('label', { for: modelsId }, 'Models allowed (patterns)'), models));

  function whole(field, name) {
    const text = field.input.value.trim();
    if (!text) return undefined;
    const n = Number(text);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a whole number of at least 1.`);
    return n;
  }

  function read() {
    const out = {};
    const r = whole(rpm, 'Requests per minute');
    if (r !== undefined) out.rpm = r;
    const c = whole(concurrency, 'Concurrent requests');
    if (c !== undefined) out.concurrency = c;
    const money = {};
    for (const [w, field] of budget) {
      const text = field.input.value.trim();
      if (!text) continue;
      const n = Number(text);
      if (!Number.isFinite(n) || n < 0) throw new Error(`Budget ${w} must be a number of dollars.`);
      money[w] = n;
    }
    if (Object.keys(money).length) out.budget_usd = money;
    const patterns = models.value.split(/[\s,]+/).filter(Boolean);
    if (patterns.length) out.models = patterns;
    return Object.keys(out).length ? out : null;
  }

  return { node, read };
}

// "60 rpm · 4 at once · $10/5h · claude-sonnet-*"
export function limitsText(limits) {
  if (!limits || !Object.keys(limits).length) return 'none';
  const parts = [];
  if (limits.rpm) parts.push(`${limits.rpm} rpm`);
  if (limits.concurrency) parts.push(`${limits.concurrency} at once`);
  for (const [w, usd] of Object.entries(limits.budget_usd || {})) parts.push(`${fmtUsd(usd)}/${w}`);
  if (limits.models && limits.models.length) parts.push(limits.models.join(' '));
  return parts.join(' · ');
}
