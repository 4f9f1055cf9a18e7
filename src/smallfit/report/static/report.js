document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    var dir = 1;
    function sort() {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var num = th.getAttribute("data-type") === "num";
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-sort");
        var y = b.cells[col].getAttribute("data-sort");
        if (num) {
          x = x === "" ? Infinity : parseFloat(x);
          y = y === "" ? Infinity : parseFloat(y);
        }
        return (x < y ? -1 : x > y ? 1 : 0) * dir;
      });
      rows.forEach(function (r) { body.appendChild(r); });
      dir = -dir;
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") sort(); });
  });
});
