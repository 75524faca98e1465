// KPI dashboard charts (Chart.js, served locally) and the print button of the reports.
// Data comes from <script type="application/json"> blocks: the CSP forbids inline scripts.
(function () {
  'use strict';

  document.querySelectorAll('[data-print]').forEach(function (button) {
    button.addEventListener('click', function () { window.print(); });
  });

  var source = document.getElementById('kpi-trend-data');
  if (!source || typeof window.Chart === 'undefined') {
    return;
  }
  var data = JSON.parse(source.textContent);
  var RED = '#c62828', BLUE = '#1d5fbf', GREY = '#8c959f', GREEN = '#1a7f37';

  // Rates are shown in percent, durations in minutes.
  function scale(kind, v) {
    if (v === null || v === undefined) { return null; }
    if (kind === 'pct') { return Math.round(v * 1000) / 10; }
    if (kind === 'sec') { return Math.round(v / 6) / 10; }
    return v;
  }
  function unit(kind) { return kind === 'pct' ? ' %' : kind === 'sec' ? ' min' : ''; }
  function missed(key, v) {
    var target = data.targets[key];
    if (v === null || v === undefined || target === null || target === undefined) { return false; }
    return data.better[key] === 'lower' ? v > target + 1e-9 : v < target - 1e-9;
  }

  document.querySelectorAll('canvas[data-trend]').forEach(function (canvas) {
    var key = canvas.getAttribute('data-trend');
    var kind = data.formats[key];
    var raw = data.series[key] || [];
    var values = raw.map(function (v) { return scale(kind, v); });
    var colors = raw.map(function (v) { return missed(key, v) ? RED : BLUE; });
    var datasets = [{
      label: data.names[key], data: values, borderColor: BLUE, backgroundColor: colors,
      pointBackgroundColor: colors, pointBorderColor: colors, pointRadius: 4, spanGaps: true, tension: 0.2
    }];
    var target = data.targets[key];
    if (target !== null && target !== undefined) {
      datasets.push({
        label: data.labels_target, data: data.labels.map(function () { return scale(kind, target); }),
        borderColor: GREY, borderDash: [6, 4], borderWidth: 1.5, pointRadius: 0, fill: false
      });
    }
    new window.Chart(canvas, {
      type: 'line',
      data: { labels: data.labels, datasets: datasets },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { label: function (ctx) { return ctx.dataset.label + ': ' + ctx.formattedValue + unit(kind); } } }
        },
        scales: { y: kind === 'pct' ? { min: 0, max: 100, ticks: { callback: function (v) { return v + '%'; } } }
                                    : { beginAtZero: true } }
      }
    });
  });

  var sla = document.querySelector('canvas[data-sla-chart]');
  if (sla && data.sla && data.sla.length) {
    new window.Chart(sla, {
      type: 'bar',
      data: {
        labels: data.sla.map(function (p) { return p.policy; }),
        datasets: [{
          data: data.sla.map(function (p) { return scale('pct', p.value); }),
          backgroundColor: BLUE
        }]
      },
      options: {
        indexAxis: 'y', responsive: true, maintainAspectRatio: false, animation: false,
        plugins: { legend: { display: false } },
        scales: { x: { min: 0, max: 100, ticks: { callback: function (v) { return v + '%'; } } } }
      }
    });
  }
})();
