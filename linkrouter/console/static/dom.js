// Building the page: elements from plain data, text always as text (never parsed as
// HTML), and the few widgets every page shares.

const SVG_NS = 'http://www.w3.org/2000/svg';

function fill(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'on') {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (name === 'dataset') {
      Object.assign(node.dataset, value);
    } else if (name === 'text') {
      node.textContent = value;
    } else {
      node.setAttribute(name, value === true ? '' : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function el(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

export function fmtInt(n) {
  return integer.format(Number(n) || 0);
}

export function fmtUsd(n) {
  const value = Number(n) || 0;
  if (value === 0) return '$0.00';
  if (Math.abs(value) >= 100) return '$' + integer.format(value);
  if (Math.abs(value) >= 0.01) return '$' + value.toFixed(2);
  return '$' + value.toPrecision(2);
}

// 1234 -> 1.2k, for axes.
export function fmtCompact(n) {
  const value = Number(n) || 0;
  for (const [size, unit] of [[1e9, 'G'], [1e6, 'M'], [1e3, 'k']]) {
    if (Math.abs(value) >= size) return (value / size).toFixed(value % size === 0 ? 0 : 1) + unit;
  }
  return String(Math.round(value * 100) / 100);
}

function pad(n) {
  return String(n).padStart(2, '0');
}

// An ISO time as local "2026-01-31 14:05" (the full ISO time in its title).
export function fmtTime(iso) {
  if (!iso) return '—';
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return String(iso);
  return `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())} ` +
    `${pad(t.getHours())}:${pad(t.getMinutes())}`;
}

export function timeCell(iso) {
  return el('td', { title: iso || '' }, fmtTime(iso));
}

// "in 2 h 5 min" / "3 min ago"
export function fmtRelative(iso) {
  if (!iso) return '';
  const seconds = Math.round((new Date(iso).getTime() - Date.now()) / 1000);
  const size = Math.abs(seconds);
  let text;
  if (size < 60) text = `${size} s`;
  else if (size < 3600) text = `${Math.round(size / 60)} min`;
  else if (size < 86400) text = `${Math.floor(size / 3600)} h ${Math.round((size % 3600) / 60)} min`;
  else text = `${Math.floor(size / 86400)} d ${Math.round((size % 86400) / 3600)} h`;
  return seconds >= 0 ? `in ${text}` : `${text} ago`;
}

export function errorBox(error) {
  return el('p', { class: 'error', role: 'alert' }, error.message || String(error));
}

let toastTimer = null;

export function toast(message) {
  const box = document.getElementById('toast');
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, 4000);
}

// A modal dialog: resolves with the value of onOk (true when it has none), or null when
// cancelled. onOk may throw to keep the dialog open with the error shown.
export function dialog({ title, body, ok = 'OK', danger = false, onOk }) {
  return new Promise((resolve) => {
    const problem = el('p', { class: 'error', role: 'alert' });
    const okButton = el('button', { type: 'submit', class: danger ? 'danger' : '' }, ok);
    const form = el('form', { method: 'dialog' },
      el('h2', {}, title), body, problem,
      el('div', { class: 'actions' },
        el('button', { type: 'button', class: 'quiet', on: { click: () => close(null) } },
          'Cancel'),
        okButton));
    const box = el('dialog', { class: 'modal' }, form);
    let done = false;
    function close(value) {
      if (done) return;
      done = true;
      box.close();
      box.remove();
      resolve(value);
    }
    box.addEventListener('cancel', () => close(null));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      okButton.disabled = true;
      problem.textContent = '';
      try {
        close(onOk ? await onOk() : true);
      } catch (e) {
        problem.textContent = e.message || String(e);
      } finally {
        okButton.disabled = false;
      }
    });
    document.body.append(box);
    box.showModal();
  });
}

// Copy text to the clipboard; falls back to selecting it in the given input.
export async function copyText(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (e) {
    if (input) {
      input.focus();
      input.select();
      return document.execCommand && document.execCommand('copy');
    }
    return false;
  }
}
