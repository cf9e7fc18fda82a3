// strongroom console: draws the usage chart from the page's JSON block (no inline script).
"use strict";
(function () {
  function size(bytes) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (Math.abs(bytes) >= 1024 && i < units.length - 1) { bytes /= 1024; i += 1; }
    return (i === 0 ? bytes.toFixed(0) : bytes.toFixed(1)) + " " + units[i];
  }
  function draw() {
    const canvas = document.getElementById("usage-chart");
    const data = document.getElementById("usage-data");
    if (!canvas || !data || typeof Chart === "undefined") { return; }
    const points = JSON.parse(data.textContent || "[]");
    const labels = points.map(function (p) {
      return new Date(p.t).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
    });
    new Chart(canvas, {
      type: "line",
      data: {
        labels: labels,
        datasets: [
          { label: "stored", data: points.map(function (p) { return p.bytes; }), yAxisID: "bytes",
            borderColor: "#1f4fd6", backgroundColor: "rgba(31,79,214,0.12)", fill: true, tension: 0.25, pointRadius: 2 },
          { label: "snapshots", data: points.map(function (p) { return p.snapshots; }), yAxisID: "count",
            borderColor: "#1d8a4e", borderDash: [5, 4], tension: 0.25, pointRadius: 0 }
        ]
      },
      options: {
        maintainAspectRatio: false, animation: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          bytes: { position: "left", beginAtZero: true, ticks: { callback: function (v) { return size(v); } } },
          count: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, ticks: { precision: 0 } },
          x: { ticks: { maxTicksLimit: 8 } }
        },
        plugins: { tooltip: { callbacks: { label: function (c) {
          return c.dataset.yAxisID === "bytes" ? "stored " + size(c.parsed.y) : c.parsed.y + " snapshots";
        } } } }
      }
    });
  }
  document.addEventListener("DOMContentLoaded", draw);
})();
