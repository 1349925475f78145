// Bar charts drawn as SVG: columns over time (stacked series) and horizontal bars by
// name, each with axes, gridlines, a tooltip per bar and the total in its caption.

import { el, fmtCompact, svg } from './dom.js';

const WIDTH = 960;

// Gridlines for values up to `max`: a round step, and the top of the axis.
function scale(max, count = 4) {
  if (!(max > 0)) return { top: 1, ticks: [0, 1] };
  const raw = max / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const top = Math.ceil(max / step - 1e-9) * step;
  const ticks = [];
  for (let t = 0; t <= top + step / 2; t += step) ticks.push(Number(t.toPrecision(12)));
  return { top, ticks };
}

function tooltip(text) {
  return svg('title', {}, text);
}

// Columns, one per category, each stacking the series' values.
export function columnChart({ name, categories, series, format, label = (c) => c }) {
  const height = 260;
  const left = 64;
  const right = 12;
  const top = 12;
  const bottom = 44;
  const plotWidth = WIDTH - left - right;
  const plotHeight = height - top - bottom;
  const totals = categories.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const { top: max, ticks } = scale(Math.max(0, ...totals));
  const y = (v) => top + plotHeight - (v / max) * plotHeight;
  const band = plotWidth / Math.max(1, categories.length);
  const barWidth = Math.max(1, band * 0.7);
  const chart = svg('svg', { viewBox: `0 0 ${WIDTH} ${height}`, class: 'chart-svg', role: 'img',
    'aria-label': name });
  for (const t of ticks) {
    chart.append(
      svg('line', { x1: left, x2: WIDTH - right, y1: y(t), y2: y(t), class: 'grid' }),
      svg('text', { x: left - 6, y: y(t) + 4, 'text-anchor': 'end', class: 'tick' }, format.axis(t)));
  }
  const every = Math.ceil(categories.length / 12);
  categories.forEach((category, i) => {
    const x = left + i * band + (band - barWidth) / 2;
    let base = 0;
    series.forEach((s, k) => {
      const value = s.values[i] || 0;
      if (value <= 0) return;
      chart.append(svg('rect', {
        x, width: barWidth, y: y(base + value), height: Math.max(0.5, y(base) - y(base + value)),
        class: `bar series-${k}`, 'data-value': value,
      }, tooltip(`${category} · ${s.name}: ${format.value(value)}`)));
      base += value;
    });
    if (i % every === 0) {
      chart.append(svg('text', { x: x + barWidth / 2, y: height - bottom + 18, 'text-anchor': 'middle',
        class: 'tick' }, label(category)));
    }
  });
  chart.append(
    svg('line', { x1: left, x2: WIDTH - right, y1: y(0), y2: y(0), class: 'axis' }),
    svg('line', { x1: left, x2: left, y1: top, y2: y(0), class: 'axis' }));
  return chart;
}

// Horizontal bars, largest first; beyond `most` bars the rest are summed into one.
export function barChart({ name, items, format, most = 12 }) {
  let rows = items.filter((item) => item.value > 0).sort((a, b) => b.value - a.value);
  if (rows.length > most) {
    const rest = rows.slice(most - 1);
    rows = rows.slice(0, most - 1).concat([{ label: `${rest.length} others`,
      value: rest.reduce((sum, item) => sum + item.value, 0) }]);
  }
  const rowHeight = 26;
  const left = 190;
  const right = 90;
  const top = 6;
  const bottom = 26;
  const height = top + Math.max(1, rows.length) * rowHeight + bottom;
  const plotWidth = WIDTH - left - right;
  const { top: max, ticks } = scale(Math.max(0, ...rows.map((r) => r.value)));
  const x = (v) => left + (v / max) * plotWidth;
  const base = top + rows.length * rowHeight;
  const chart = svg('svg', { viewBox: `0 0 ${WIDTH} ${height}`, class: 'chart-svg', role: 'img',
    'aria-label': name });
  for (const t of ticks) {
    chart.append(
      svg('line', { x1: x(t), x2: x(t), y1: top, y2: base, class: 'grid' }),
      svg('text', { x: x(t), y: base + 18, 'text-anchor': 'middle', class: 'tick' }, format.axis(t)));
  }
  rows.forEach((row, i) => {
    const middle = top + i * rowHeight + rowHeight / 2;
    const short = row.label.length > 28 ? row.label.slice(0, 27) + '…' : row.label;
    chart.append(
      svg('text', { x: left - 8, y: middle + 4, 'text-anchor': 'end', class: 'name' }, short,
        tooltip(row.label)),
      svg('rect', { x: left, y: middle - 9, width: Math.max(0.5, x(row.value) - left), height: 18,
        class: 'bar series-0', 'data-value': row.value }, tooltip(`${row.label}: ${format.value(row.value)}`)),
      svg('text', { x: x(row.value) + 6, y: middle + 4, class: 'value' }, format.value(row.value)));
  });
  chart.append(svg('line', { x1: left, x2: left, y1: top, y2: base, class: 'axis' }),
    svg('line', { x1: left, x2: WIDTH - right, y1: base, y2: base, class: 'axis' }));
  return chart;
}

export function legend(names) {
  return el('ul', { class: 'legend' },
    names.map((name, k) => el('li', {}, el('span', { class: `swatch series-${k}` }), name)));
}

// A chart with its caption (title and total), an optional legend and its data as a table.
export function chartCard({ key, title, total, chart, legendNames, table }) {
  return el('figure', { class: 'chart card', dataset: { chart: key } },
    el('figcaption', {}, el('span', { class: 'title' }, title), el('span', { class: 'total' }, total)),
    legendNames ? legend(legendNames) : null,
    chart || el('p', { class: 'hint empty' }, 'No usage in this window.'),
    table ? el('details', {}, el('summary', {}, 'Table'), table) : null);
}

export const USD = {
  value: (v) => (v >= 0.01 || v === 0 ? '$' + v.toFixed(2) : '$' + v.toPrecision(2)),
  axis: (v) => '$' + (v >= 1000 ? fmtCompact(v) : Number(v.toPrecision(3))),
};

export const COUNT = {
  value: (v) => fmtCompact(v),
  axis: (v) => fmtCompact(v),
};
