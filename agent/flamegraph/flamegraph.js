// Search, zoom and details for a flame graph drawn by agent/flamegraph/render.py.
// Each frame is <g class="f" data-x data-w data-d>: its start and width in the
// profile's value, and its depth; its <title> holds the label, then the details.
"use strict";
(function () {
  var svg = document.getElementById("flamegraph");
  var width = +svg.dataset.width;
  var pad = +svg.dataset.pad;
  var charWidth = +svg.dataset.charWidth;
  var total = +svg.dataset.total || 1;
  var details = document.getElementById("details");
  var matched = document.getElementById("matched");
  var searchButton = document.getElementById("search");
  var resetButton = document.getElementById("reset");
  var frames = Array.prototype.map.call(svg.querySelectorAll("g.f"), function (g) {
    var lines = g.querySelector("title").textContent.split("\n");
    return {
      g: g,
      x: +g.dataset.x,
      w: +g.dataset.w,
      d: +g.dataset.d,
      label: lines[0],
      details: lines[1],
      rect: g.querySelector("rect"),
      text: g.querySelector("text"),
    };
  });
  var term = null;

  function fit(label, pixels) {
    var chars = Math.floor((pixels - 6) / charWidth);
    if (chars < 3) return "";
    return label.length <= chars ? label : label.slice(0, chars - 2) + "..";
  }

  function place(frame, left, pixels) {
    frame.g.classList.remove("hidden");
    frame.rect.setAttribute("x", left.toFixed(2));
    frame.rect.setAttribute("width", pixels.toFixed(2));
    frame.text.setAttribute("x", (left + 3).toFixed(2));
    frame.text.textContent = fit(frame.label, pixels);
  }

  // Draws `focus` across the whole width: its descendants scaled with it, its
  // ancestors faded at full width, every other frame hidden.
  function zoom(focus) {
    var scale = (width - 2 * pad) / focus.w;
    frames.forEach(function (frame) {
      var inside = frame.x >= focus.x && frame.x + frame.w <= focus.x + focus.w;
      frame.g.classList.remove("parent");
      if (frame.d >= focus.d && inside) {
        place(frame, pad + (frame.x - focus.x) * scale, frame.w * scale);
      } else if (frame.d < focus.d && frame.x <= focus.x && frame.x + frame.w >= focus.x + focus.w) {
        frame.g.classList.add("parent");
        place(frame, pad, width - 2 * pad);
      } else {
        frame.g.classList.add("hidden");
      }
    });
    resetButton.classList.toggle("hidden", focus.d === 0);
  }

  // Marks the frames whose label matches `pattern` and shows the share of the
  // profile they cover (a frame inside another match is not counted twice).
  function search(pattern) {
    var re;
    try {
      re = new RegExp(pattern);
    } catch (error) {
      matched.textContent = "Invalid pattern: " + error.message;
      return;
    }
    var hits = frames.filter(function (frame) {
      var hit = re.test(frame.label);
      frame.g.classList.toggle("match", hit);
      return hit;
    });
    hits.sort(function (a, b) { return a.x - b.x || b.w - a.w; });
    var covered = 0;
    var end = -1;
    hits.forEach(function (frame) {
      if (frame.x >= end) {
        covered += frame.w;
        end = frame.x + frame.w;
      }
    });
    term = pattern;
    searchButton.textContent = "Reset Search";
    matched.textContent = "Matched: " + (100 * covered / total).toFixed(2) + "%";
  }

  function resetSearch() {
    frames.forEach(function (frame) { frame.g.classList.remove("match"); });
    term = null;
    searchButton.textContent = "Search";
    matched.textContent = " ";
  }

  function askSearch() {
    var pattern = window.prompt("Search for (a regular expression):", term || "");
    if (pattern) search(pattern);
  }

  frames.forEach(function (frame) {
    frame.g.addEventListener("click", function () { zoom(frame); });
    frame.g.addEventListener("mouseover", function () {
      details.textContent = frame.label + " · " + frame.details;
    });
    frame.g.addEventListener("mouseout", function () { details.textContent = " "; });
  });
  resetButton.addEventListener("click", function () { zoom(frames[0]); });
  searchButton.addEventListener("click", function () {
    if (term === null) askSearch(); else resetSearch();
  });
  window.addEventListener("keydown", function (event) {
    if ((event.ctrlKey || event.metaKey) && event.key === "f") {
      event.preventDefault();
      askSearch();
    } else if (event.key === "Escape") {
      zoom(frames[0]);
    }
  });
})();
