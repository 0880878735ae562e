// The index's table: sort by a column's button, filter by the selects and the search box.
// Reads cell text and data attributes and moves rows; it never writes HTML.
(function () {
  "use strict";
  var table = document.getElementById("variants");
  if (!table) return;
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var search = document.getElementById("filter-text");
  var selects = Array.prototype.slice.call(document.querySelectorAll("select[data-filter]"));
  var shown = document.getElementById("shown");

  function filter() {
    var text = search.value.trim().toLowerCase();
    var count = 0;
    rows.forEach(function (row) {
      var keep = !text || row.textContent.toLowerCase().indexOf(text) !== -1;
      selects.forEach(function (select) {
        if (select.value && row.getAttribute("data-" + select.getAttribute("data-filter")) !== select.value) {
          keep = false;
        }
      });
      row.hidden = !keep;
      if (keep) count += 1;
    });
    shown.textContent = String(count);
  }

  function cellKey(row, column) {
    var cell = row.cells[column];
    var value = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    return value;
  }

  function sortBy(header) {
    var column = header.cellIndex;
    var numeric = header.getAttribute("data-type") === "number";
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      if (th.hasAttribute("aria-sort")) th.setAttribute("aria-sort", "none");
    });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var order = rows.map(function (row, i) { return { row: row, i: i, key: cellKey(row, column) }; });
    order.sort(function (a, b) {
      if (a.key === "" || b.key === "") {  // a blank (n/a) goes last either way
        return (a.key === "") - (b.key === "") || a.i - b.i;
      }
      var diff = numeric ? parseFloat(a.key) - parseFloat(b.key) : a.key.localeCompare(b.key);
      return (ascending ? diff : -diff) || a.i - b.i;
    });
    order.forEach(function (entry) { body.appendChild(entry.row); });
  }

  Array.prototype.forEach.call(table.querySelectorAll("thead button[data-sort]"), function (button) {
    button.addEventListener("click", function () { sortBy(button.parentNode); });
  });
  search.addEventListener("input", filter);
  selects.forEach(function (select) { select.addEventListener("change", filter); });
  document.getElementById("controls").hidden = false;
  filter();
})();
